//! Bot plugins as the outgoing worker calls them: one conversation event in, the bot's checked
//! replies out, on a blocking thread under the same slots, deadline, memory cap and per-plugin
//! counters as adapter calls, whichever bot world version the plugin targets. Posting the
//! replies is the worker's business, not this module's.

use std::collections::BTreeMap;

use super::{bot_v0_1, bot_v0_2, Compiled, Guest, HostState, PluginError, Plugins, Runtime};
use crate::ids::{OrgId, PluginId};
use crate::model::{At, Content};
use crate::store::Store;

/// Every bot world herald serves, as `GET /api/v1/plugins` names them.
pub const WORLDS: [&str; 2] = [bot_v0_1::WORLD, bot_v0_2::WORLD];

/// Replies one event may post: a bot that answers with more is broken, not chatty.
pub(super) const MAX_REPLIES: usize = 10;

/// One reply a bot plugin asks to post, already checked against DingTalk's rules.
#[derive(Debug, Clone)]
pub struct BotReply {
    pub content: Content,
    pub at: At,
    /// The thread to post it in (`herald:bot@0.2.0` and later); none: the top level.
    pub thread_key: Option<String>,
}

/// A DingTalk-format message, as `herald plugin run` prints it, with herald's `threadKey`
/// when the reply names a thread.
impl serde::Serialize for BotReply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("msgtype", self.content.msgtype())?;
        map.serialize_entry(self.content.msgtype(), &self.content.body_json())?;
        map.serialize_entry("at", &self.at)?;
        if let Some(thread) = &self.thread_key {
            map.serialize_entry("threadKey", thread)?;
        }
        map.end()
    }
}

/// Checks every reply of one event as the DingTalk-format endpoints would (`reply` converts
/// one from a world version's type).
pub(super) fn replies<M>(
    messages: Vec<M>,
    reply: impl Fn(M) -> Result<BotReply, String>,
) -> Result<Vec<BotReply>, PluginError> {
    if messages.len() > MAX_REPLIES {
        return Err(PluginError::BadOutput(format!(
            "{} replies to one event; at most {MAX_REPLIES}",
            messages.len()
        )));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| reply(m).map_err(|e| PluginError::BadOutput(format!("message {i}: {e}"))))
        .collect()
}

/// One reply, if its content is a valid, non-empty message.
pub(super) fn reply(
    content: Content,
    at: At,
    thread_key: Option<String>,
) -> Result<BotReply, String> {
    content.validate()?;
    if content.plain_text().trim().is_empty() {
        return Err("a reply must not be empty".into());
    }
    Ok(BotReply {
        content,
        at,
        thread_key,
    })
}

/// Runs a bot plugin's `on-event` in a fresh instance, by the world version it targets.
pub fn call(
    runtime: &Runtime,
    compiled: &Compiled,
    state: HostState,
    payload: &str,
) -> Result<Vec<BotReply>, PluginError> {
    match compiled.guest {
        Guest::Bot02(_) => bot_v0_2::call(runtime, compiled, state, payload),
        _ => bot_v0_1::call(runtime, compiled, state, payload),
    }
}

impl Plugins {
    /// Runs bot plugin `id` of `org` on one event (`payload`, the callback body an HTTP bot
    /// would get), with the bot's config; counts the outcome.
    pub async fn run_bot(
        &self,
        store: &dyn Store,
        org: OrgId,
        id: PluginId,
        config: BTreeMap<String, String>,
        payload: String,
    ) -> Result<Vec<BotReply>, PluginError> {
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
            call(&runtime, &compiled, state, &payload)
        })
        .await
        .map_err(|e| PluginError::Internal(e.into()))?;
        super::lock(&self.stats)
            .entry(id)
            .or_default()
            .count(&result);
        result
    }
}
