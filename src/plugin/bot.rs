//! Bot plugins as the outgoing worker calls them: one conversation event in, the bot's checked
//! replies out, on a blocking thread under the same slots, deadline, memory cap and per-plugin
//! counters as adapter calls. Posting the replies is the worker's business, not this module's.

use std::collections::BTreeMap;

use super::{bot_v0_1, BotReply, HostState, PluginError, Plugins};
use crate::ids::{OrgId, PluginId};
use crate::store::Store;

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
            bot_v0_1::call(&runtime, &compiled, state, &payload)
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
