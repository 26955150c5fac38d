//! The host side of `herald:adapter@0.1.0` (plugins/wit/adapter-0.1.0): the generated bindings,
//! the four host functions a plugin may call, and the conversion of its output into herald's
//! types. Frozen with the WIT: a new world version gets a new module beside this one.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::component::{HasSelf, Linker};

use super::{HostState, PluginError, PluginMessage, PluginOutput, PluginReply, PluginRequest};
use crate::adapt::Facts;
use crate::model::{self, At, Content};

wasmtime::component::bindgen!({
    path: "plugins/wit/adapter-0.1.0",
    world: "adapter",
});

pub use self::herald::adapter::host::Level;
use self::herald::adapter::types;

/// The world's name as `GET /api/v1/plugins` shows it.
pub const WORLD: &str = "herald:adapter/adapter@0.1.0";

/// Log lines a plugin may write per call; the rest are dropped, so a chatty plugin cannot
/// flood herald's log.
const MAX_LOG_LINES: u32 = 32;
const MAX_LOG_BYTES: usize = 1024;

/// Adds the host functions of this world version to a linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Adapter::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

impl herald::adapter::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let message = truncate(&message, MAX_LOG_BYTES);
        let plugin = self.plugin.as_str();
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(&data);
        mac.finalize().into_bytes().to_vec()
    }

    fn now_ms(&mut self) -> i64 {
        crate::clock::now_ms()
    }
}

impl herald::adapter::types::Host for HostState {}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl From<&PluginRequest> for types::HttpRequest {
    fn from(r: &PluginRequest) -> Self {
        types::HttpRequest {
            method: r.method.clone(),
            path: r.path.clone(),
            query: r.query.clone(),
            headers: r.headers.clone(),
            body: r.body.to_vec(),
        }
    }
}

/// Turns what `handle` returned into herald's output, checking every message as the
/// DingTalk-format endpoints would.
pub fn output(
    result: Result<types::Output, types::Rejection>,
) -> Result<PluginOutput, PluginError> {
    let out = result.map_err(|r| PluginError::Rejected {
        status: if (400..500).contains(&r.status) {
            r.status
        } else {
            400
        },
        message: r.message,
    })?;
    let messages = out
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(m).map_err(|e| PluginError::BadOutput(format!("message {i}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let reply = out.reply.map(|r| PluginReply {
        status: r.status,
        headers: r.headers,
        body: r.body,
    });
    Ok(PluginOutput { messages, reply })
}

fn message(m: types::Message) -> Result<PluginMessage, String> {
    if m.event.trim().is_empty() {
        return Err("event must not be empty".into());
    }
    let content = content(m.content);
    content.validate()?;
    let f = m.facts;
    Ok(PluginMessage {
        event: m.event,
        content,
        at: At {
            at_user_ids: m.mentions.user_ids,
            at_mobiles: m.mentions.mobiles,
            is_at_all: m.mentions.all,
        },
        mention_hints: m.mentions.hints,
        facts: Facts {
            branch: f.branch,
            tag: f.tag,
            labels: f.labels,
            actor: f.actor,
            actor_is_bot: f.actor_is_bot,
            draft: None,
            conclusion: f.conclusion,
            severity: f.severity,
            paths: Vec::new(),
            ci_key: None,
        },
        dedupe_key: m.dedupe_key,
        thread_key: m.thread_key,
    })
}

content_from_wit!();
