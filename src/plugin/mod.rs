//! Plugins: custom adapters and bots written by users as WebAssembly components and run by
//! herald in a wasmtime sandbox. A plugin targets a versioned WIT world (`plugins/wit/`); each
//! world version has its own host module (`v0_1` for adapters; `bot_v0_1` and `bot_v0_2` for
//! bots, both served, called through `bot`). This module owns loading (from the store, through the compiled-artifact
//! cache), the per-plugin failure counters, and the bounded, blocking calls. It must not post
//! anything: ingress turns an adapter's output into events and sends them down the same
//! filter → group → post path as the built-in adapters; the outgoing worker posts a bot's
//! replies as the bot.

/// A world's WIT `content` variant as herald's message content. Each world's bindings have
/// their own (identical) `types::Content`; this writes the conversion once for both.
macro_rules! content_from_wit {
    () => {
        fn content(c: types::Content) -> Content {
            match c {
                types::Content::Text(content) => Content::Text(model::Text { content }),
                types::Content::Markdown(m) => Content::Markdown(model::Markdown {
                    title: m.title,
                    text: m.text,
                }),
                types::Content::Link(l) => Content::Link(model::Link {
                    title: l.title,
                    text: l.text,
                    message_url: l.url,
                    pic_url: l.pic_url,
                }),
                types::Content::ActionCard(a) => Content::ActionCard(model::ActionCard {
                    title: a.title,
                    text: a.text,
                    single_title: None,
                    single_url: None,
                    btns: a
                        .buttons
                        .into_iter()
                        .map(|b| model::ActionButton {
                            title: b.title,
                            action_url: b.url,
                        })
                        .collect(),
                    btn_orientation: Some(if a.vertical { "0" } else { "1" }.to_string()),
                }),
            }
        }
    };
}

#[macro_use]
mod bot_glue;
mod bot;
#[cfg(test)]
mod bot_contract;
pub mod bot_v0_1;
pub mod bot_v0_2;
mod cache;
pub mod cli;
#[cfg(test)]
mod contract;
mod runtime;
pub mod stats;
pub mod v0_1;
mod wasi;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

use crate::adapt::Facts;
use crate::config::PluginsConfig;
use crate::ids::{OrgId, PluginId};
use crate::model::{At, Content};
use crate::store::Store;

pub use bot::{BotReply, WORLDS as BOT_WORLDS};
pub use cache::WASMTIME_VERSION;
pub use runtime::{Compiled, Guest, Runtime};

/// A webhook as a plugin sees it.
#[derive(Debug, Clone)]
pub struct PluginRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// One message a plugin asks to post, already checked against DingTalk's rules.
#[derive(Debug, Clone, Serialize)]
pub struct PluginMessage {
    pub event: String,
    #[serde(serialize_with = "content_json")]
    pub content: Content,
    pub at: At,
    pub mention_hints: Vec<String>,
    pub facts: Facts,
    pub dedupe_key: Option<String>,
    pub thread_key: Option<String>,
}

fn content_json<S: serde::Serializer>(c: &Content, s: S) -> Result<S::Ok, S::Error> {
    let mut map = serde_json::Map::new();
    map.insert("msgtype".into(), c.msgtype().into());
    map.insert(c.msgtype().into(), c.body_json());
    map.serialize(s)
}

/// The sender-facing answer a plugin chose instead of herald's default.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(serialize_with = "lossy_text")]
    pub body: Vec<u8>,
}

fn lossy_text<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginOutput {
    pub messages: Vec<PluginMessage>,
    pub reply: Option<PluginReply>,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin declined the request (its `rejection`): the sender gets this status.
    #[error("{message}")]
    Rejected { status: u16, message: String },
    #[error("the plugin ran past its {0} ms deadline and was stopped")]
    Deadline(u64),
    #[error("the plugin exceeded its memory limit of {0} MiB and was stopped")]
    Memory(usize),
    #[error("the plugin failed: {0}")]
    Trap(String),
    #[error("the plugin returned an invalid message: {0}")]
    BadOutput(String),
    /// An upload or a file that is not a usable plugin.
    #[error("{0}")]
    Invalid(String),
    #[error("every plugin slot is busy")]
    Busy,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What a plugin's calls have come to (stored across restarts by `stats`).
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema, PartialEq, Eq)]
pub struct PluginStats {
    pub calls: u64,
    pub ok: u64,
    /// The plugin declined the request (its `rejection`): not a failure of the plugin.
    pub rejected: u64,
    /// Failures of the plugin itself, by kind.
    pub deadline_exceeded: u64,
    pub memory_exceeded: u64,
    pub traps: u64,
    pub invalid_output: u64,
}

impl PluginStats {
    fn count<T>(&mut self, result: &Result<T, PluginError>) {
        self.calls += 1;
        match result {
            Ok(_) => self.ok += 1,
            Err(PluginError::Rejected { .. }) => self.rejected += 1,
            Err(PluginError::Deadline(_)) => self.deadline_exceeded += 1,
            Err(PluginError::Memory(_)) => self.memory_exceeded += 1,
            Err(PluginError::Trap(_)) => self.traps += 1,
            Err(PluginError::BadOutput(_)) => self.invalid_output += 1,
            Err(_) => {}
        }
    }
}

/// The store of one call: what the host functions may see (this robot's config only).
pub struct HostState {
    pub(crate) plugin: String,
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) limits: runtime::Limits,
    pub(crate) log_lines: u32,
    /// WASI's empty context, made on a WASI plugin's first WASI call (see `wasi`).
    pub(crate) wasi: Option<Box<wasi::WasiState>>,
    /// The guest's stderr goes to this process's stderr instead of nowhere: only for
    /// `herald plugin run`, where an author wants an interpreter's traceback.
    pub(crate) guest_stderr: bool,
}

impl HostState {
    pub fn new(plugin: impl Into<String>, config: BTreeMap<String, String>) -> HostState {
        HostState {
            plugin: plugin.into(),
            config,
            limits: runtime::Limits::default(),
            log_lines: 0,
            wasi: None,
            guest_stderr: false,
        }
    }
}

/// The server's plugins: the lazily started runtime, compiled plugins by id, and counters.
pub struct Plugins {
    settings: PluginsConfig,
    cache_dir: PathBuf,
    runtime: OnceLock<Result<Arc<Runtime>, String>>,
    /// Compiled plugins by id. A plugin row never changes (a new version is a new row, and
    /// neither backend reuses an id), so an id names one component for good and its entry
    /// cannot go stale; the disk cache below it is keyed by content, wasmtime and engine.
    loaded: Mutex<HashMap<PluginId, Arc<Compiled>>>,
    stats: Mutex<HashMap<PluginId, PluginStats>>,
    /// Held for writing while a flush moves counts from memory to the store, and for reading
    /// while an answer adds the two up, so no answer sees a count in neither place (or both).
    flushing: tokio::sync::RwLock<()>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Plugins {
    pub fn new(settings: PluginsConfig, cache_dir: PathBuf) -> Plugins {
        let slots = settings.max_concurrent_calls.max(1) as usize;
        Plugins {
            settings,
            cache_dir,
            runtime: OnceLock::new(),
            loaded: Mutex::default(),
            stats: Mutex::default(),
            flushing: tokio::sync::RwLock::new(()),
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
        }
    }

    /// The engine, built on first use so a server without plugins reserves nothing.
    fn runtime(&self) -> Result<Arc<Runtime>, PluginError> {
        self.runtime
            .get_or_init(|| {
                Runtime::new(&self.settings, Some(self.cache_dir.clone()))
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| PluginError::Internal(anyhow::anyhow!(e)))
    }

    /// Validates and compiles an upload (on a blocking thread).
    pub async fn check(&self, wasm: Bytes) -> Result<Arc<Compiled>, PluginError> {
        let runtime = self.runtime()?;
        tokio::task::spawn_blocking(move || runtime.compile(&wasm).map(Arc::new))
            .await
            .map_err(|e| PluginError::Internal(e.into()))?
    }

    /// Keeps a plugin compiled at upload, so its first call does not compile again.
    pub fn remember(&self, id: PluginId, compiled: Arc<Compiled>) {
        lock(&self.loaded).insert(id, compiled);
    }

    /// Runs plugin `id` of `org` on a request, with the robot's config; counts the outcome.
    pub async fn run(
        &self,
        store: &dyn Store,
        org: OrgId,
        id: PluginId,
        config: BTreeMap<String, String>,
        request: PluginRequest,
    ) -> Result<PluginOutput, PluginError> {
        let compiled = self.load(store, org, id).await?;
        let runtime = self.runtime()?;
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PluginError::Busy)?;
        let state = HostState::new(id.to_string(), config);
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            runtime.call(&compiled, state, &request)
        })
        .await
        .map_err(|e| PluginError::Internal(e.into()))?;
        lock(&self.stats).entry(id).or_default().count(&result);
        result
    }

    /// The compiled plugin, loaded from the store (through the disk cache) the first time.
    async fn load(
        &self,
        store: &dyn Store,
        org: OrgId,
        id: PluginId,
    ) -> Result<Arc<Compiled>, PluginError> {
        if let Some(compiled) = lock(&self.loaded).get(&id) {
            return Ok(compiled.clone());
        }
        let wasm = store.plugin_wasm(org, id).await.map_err(|e| match e {
            crate::store::StoreError::NotFound(_) => {
                PluginError::Invalid("the robot's plugin no longer exists".into())
            }
            e => PluginError::Internal(e.into()),
        })?;
        let compiled = self.check(wasm.into()).await?;
        self.remember(id, compiled.clone());
        Ok(compiled)
    }

    /// Hold while reading stored counts and adding `stats` to them: keeps a flush out.
    pub async fn counts_steady(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.flushing.read().await
    }

    /// The plugin's counts not flushed to the store yet.
    pub fn stats(&self, id: PluginId) -> PluginStats {
        lock(&self.stats).get(&id).copied().unwrap_or_default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
