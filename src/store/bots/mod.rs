//! Storage of outgoing bots: the bots and the conversations they are installed in
//! (`registry`), and the durable delivery queue with every attempt (`deliveries`). Deliveries
//! are queued by the fanout hook (`enqueue_bot_events_tx`) inside the transaction that writes
//! the event, so an event is never lost or queued twice. Both backends run the same
//! statements, expanded by one macro per area; only the claim's row locking differs.

mod deliveries;
mod registry;

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{Result, StoreError};
use crate::ids::{BotId, ConversationId, OrgId, PluginId};
use crate::model::{Sender, SenderKind};
use crate::outgoing::triggers::{BotEvent, Trigger};

pub use deliveries::*;

/// The member-like id under which a bot is @-mentioned and sends its replies.
pub fn chatbot_user_id(id: BotId) -> String {
    format!("bot_{id}")
}

/// The bot behind a `chatbot_user_id`, if the string is one.
pub fn parse_chatbot_user_id(s: &str) -> Option<BotId> {
    s.strip_prefix("bot_")?.parse().ok()
}

/// An outgoing bot as stored.
#[derive(Debug, Clone)]
pub struct Bot {
    pub id: BotId,
    pub org_id: OrgId,
    pub name: String,
    /// Empty for a bot that runs a plugin.
    pub callback_url: String,
    /// A `herald:bot` plugin of the org that answers the events instead of a URL.
    pub plugin_id: Option<PluginId>,
    /// What the plugin's `config` import reads.
    pub config: BTreeMap<String, String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until_ms: i64,
    pub triggers: Vec<Trigger>,
    pub keywords: Vec<String>,
    pub events: Vec<BotEvent>,
    pub conversations: Vec<ConversationId>,
    pub enabled: bool,
    pub failing_since_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    pub created_at_ms: i64,
}

impl Bot {
    pub fn chatbot_user_id(&self) -> String {
        chatbot_user_id(self.id)
    }

    /// The secrets that sign a callback at `now`: the current one, then the previous one
    /// while the rotation overlap lasts.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let Some(previous) = &self.previous_secret {
            if now_ms < self.previous_secret_until_ms {
                secrets.push(previous);
            }
        }
        secrets
    }

    /// How the bot's replies are signed as a sender.
    pub fn sender(&self) -> Sender {
        Sender {
            id: self.chatbot_user_id(),
            kind: SenderKind::Bot,
            name: self.name.clone(),
        }
    }
}

/// A bot to create, validated by the API layer.
#[derive(Debug, Clone)]
pub struct NewBot {
    pub org_id: OrgId,
    pub name: String,
    /// Empty when `plugin_id` is set.
    pub callback_url: String,
    pub plugin_id: Option<PluginId>,
    pub config: BTreeMap<String, String>,
    pub secret: String,
    pub triggers: Vec<Trigger>,
    pub keywords: Vec<String>,
    pub events: Vec<BotEvent>,
    pub conversations: Vec<ConversationId>,
}

/// Changes to a bot; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct BotPatch {
    pub name: Option<String>,
    pub callback_url: Option<String>,
    /// Another plugin (a new version) for a plugin bot.
    pub plugin_id: Option<PluginId>,
    pub config: Option<BTreeMap<String, String>>,
    pub triggers: Option<Vec<Trigger>>,
    pub keywords: Option<Vec<String>>,
    pub events: Option<Vec<BotEvent>>,
    pub conversations: Option<Vec<ConversationId>>,
    pub enabled: Option<bool>,
}

/// Outgoing bots and their delivery queue.
#[async_trait]
pub trait BotStore: Send + Sync {
    async fn create_bot(&self, new: &NewBot) -> Result<Bot>;
    async fn get_bot(&self, org: OrgId, id: BotId) -> Result<Bot>;
    /// A bot in any org, for the worker and for sessionWebhook tokens (already verified).
    async fn bot_by_id(&self, id: BotId) -> Result<Option<Bot>>;
    async fn list_bots(&self, org: OrgId, after: Option<BotId>, limit: i64) -> Result<Vec<Bot>>;
    /// Applies the patch; returns the bot and the conversations it was newly installed in.
    async fn update_bot(
        &self,
        org: OrgId,
        id: BotId,
        patch: &BotPatch,
    ) -> Result<(Bot, Vec<ConversationId>)>;
    async fn delete_bot(&self, org: OrgId, id: BotId) -> Result<()>;
    /// Makes `secret` current; the old one keeps signing until `previous_until_ms`.
    async fn rotate_bot_secret(
        &self,
        org: OrgId,
        id: BotId,
        secret: &str,
        previous_until_ms: i64,
    ) -> Result<Bot>;
    /// The enabled bots installed in the conversation.
    async fn bots_in(&self, conversation: ConversationId) -> Result<Vec<BotId>>;

    /// The org's group for bot notices, if made.
    async fn notice_group(&self, org: OrgId) -> Result<Option<ConversationId>>;
    /// Records the org's notice group (the first one recorded wins) and returns it.
    async fn set_notice_group(&self, org: OrgId, group: ConversationId) -> Result<ConversationId>;
}

fn json_list<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>> {
    serde_json::from_str(text).map_err(|e| StoreError::Other(anyhow::anyhow!("stored list: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Other(e.into()))
}

fn config_map(text: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Other(anyhow::anyhow!("stored config: {e}")))
}

const BOT_COLUMNS: &str = "id, org_id, name, callback_url, secret, previous_secret, \
    previous_secret_until, triggers, keywords, events, enabled, failing_since, disabled_reason, created_at, \
    plugin_id, config";
