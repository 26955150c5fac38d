//! Storage of outgoing bots: the bots, the conversations they are installed in, and the
//! durable delivery queue with every attempt. Deliveries are queued by the fanout hook
//! (`enqueue_bot_events_tx`) inside the transaction that writes the event, so an event is
//! never lost or queued twice. Both backends run the same statements, expanded by
//! `bot_store_impl!`; only the claim's row locking differs.

use async_trait::async_trait;
use sqlx::Row;

use super::{
    message_from_parts, ChunkJob, MessageRecord, PgStore, Result, SqliteStore, StoreError,
};
use crate::clock;
use crate::ids::{BotId, ConversationId, DeliveryId, OrgId};
use crate::model::{ConversationKind, EventKind, Role, Sender, SenderKind};
use crate::outgoing::payload::{self, EventContext};
use crate::outgoing::triggers::{self, BotEvent, Rules, Trigger};

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
    pub callback_url: String,
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
    pub callback_url: String,
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
    pub triggers: Option<Vec<Trigger>>,
    pub keywords: Option<Vec<String>>,
    pub events: Option<Vec<BotEvent>>,
    pub conversations: Option<Vec<ConversationId>>,
    pub enabled: Option<bool>,
}

/// Where a delivery stands. Stored as a small integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending = 0,
    Delivered = 1,
    Failed = 2,
}

impl DeliveryState {
    pub fn code(self) -> i32 {
        self as i32
    }
    pub fn from_code(code: i32) -> DeliveryState {
        match code {
            1 => DeliveryState::Delivered,
            2 => DeliveryState::Failed,
            _ => DeliveryState::Pending,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<DeliveryState> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            _ => return None,
        })
    }
}

/// What the delivery worker asks for in one claim.
#[derive(Debug, Clone)]
pub struct DeliveryClaim {
    pub now_ms: i64,
    pub lease_until_ms: i64,
    /// At most this many per bot (its concurrency).
    pub per_bot: i64,
    pub limit: i64,
    /// Bots whose slots are all busy.
    pub exclude: Vec<BotId>,
}

/// A leased delivery, ready to send.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: DeliveryId,
    pub bot_id: BotId,
    pub conversation_id: ConversationId,
    pub event_id: String,
    pub event: String,
    pub payload: String,
    pub attempts: i64,
}

/// One recorded attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at_ms: i64,
    pub status: Option<i32>,
    pub latency_ms: i64,
    pub response: Option<String>,
    pub error: Option<String>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(i64),
    Failed,
}

#[derive(Debug, Clone)]
pub struct DeliveryOutcome {
    pub delivery_id: DeliveryId,
    pub bot_id: BotId,
    pub attempt: Attempt,
    pub next: NextStep,
}

/// A bot the recorder just disabled after failing for too long.
#[derive(Debug, Clone)]
pub struct DisabledBot {
    pub id: BotId,
    pub org_id: OrgId,
    pub name: String,
    pub failing_since_ms: i64,
}

/// A delivery with its attempts, as listed.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: DeliveryId,
    pub conversation_id: ConversationId,
    pub event_id: String,
    pub event: String,
    pub state: DeliveryState,
    pub next_attempt_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub attempts: Vec<Attempt>,
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

    /// Leases due deliveries: per (bot, conversation) only the oldest pending one.
    async fn claim_deliveries(&self, claim: &DeliveryClaim) -> Result<Vec<ClaimedDelivery>>;
    /// Records attempts and their consequences in one transaction; disables bots that have
    /// failed for `disable_after_ms` and returns them.
    async fn record_deliveries(
        &self,
        outcomes: &[DeliveryOutcome],
        now_ms: i64,
        disable_after_ms: i64,
    ) -> Result<Vec<DisabledBot>>;
    /// Frees every lease at start (SQLite: one process, so no lease can be live).
    async fn release_delivery_leases(&self) -> Result<()>;
    /// Newest first; `before` is the cursor.
    async fn list_deliveries(
        &self,
        bot: BotId,
        state: Option<DeliveryState>,
        before: Option<DeliveryId>,
        limit: i64,
    ) -> Result<Vec<Delivery>>;
    /// Queues one delivery again, or every failed one created since `since_ms`.
    async fn redeliver(
        &self,
        bot: BotId,
        delivery: Option<DeliveryId>,
        since_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64>;
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

const BOT_COLUMNS: &str = "id, org_id, name, callback_url, secret, previous_secret, \
    previous_secret_until, triggers, keywords, events, enabled, failing_since, disabled_reason, created_at";

macro_rules! bot_store_impl {
    ($store:ty, $db:ty, $lock:literal, $single_process:literal) => {
        impl $store {
            fn bot_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Bot> {
                Ok(Bot {
                    id: BotId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    name: row.try_get("name")?,
                    callback_url: row.try_get("callback_url")?,
                    secret: row.try_get("secret")?,
                    previous_secret: row.try_get("previous_secret")?,
                    previous_secret_until_ms: row.try_get("previous_secret_until")?,
                    triggers: json_list(row.try_get("triggers")?)?,
                    keywords: json_list(row.try_get("keywords")?)?,
                    events: json_list(row.try_get("events")?)?,
                    conversations: Vec::new(),
                    enabled: row.try_get("enabled")?,
                    failing_since_ms: row.try_get("failing_since")?,
                    disabled_reason: row.try_get("disabled_reason")?,
                    created_at_ms: row.try_get("created_at")?,
                })
            }

            async fn bot_conversations<'e, E>(executor: E, bot: BotId) -> Result<Vec<ConversationId>>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT conversation_id FROM bot_installs WHERE bot_id = $1 ORDER BY conversation_id",
                )
                .bind(bot.0)
                .fetch_all(executor)
                .await?;
                Ok(ids.into_iter().map(ConversationId).collect())
            }

            async fn load_bot_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                org: OrgId,
                id: BotId,
            ) -> Result<Bot> {
                let row = sqlx::query(&format!("SELECT {BOT_COLUMNS} FROM bots WHERE id = $1 AND org_id = $2"))
                    .bind(id.0)
                    .bind(org.0)
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or(StoreError::NotFound("bot"))?;
                let mut bot = Self::bot_from_row(&row)?;
                bot.conversations = Self::bot_conversations(&mut **tx, id).await?;
                Ok(bot)
            }

            /// Installs the bot in conversations of its org; unknown ids are an error.
            async fn install_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                org: OrgId,
                bot: BotId,
                conversations: &[ConversationId],
            ) -> Result<()> {
                for conversation in conversations {
                    let found: Option<i64> = sqlx::query_scalar(
                        "SELECT id FROM conversations WHERE id = $1 AND org_id = $2",
                    )
                    .bind(conversation.0)
                    .bind(org.0)
                    .fetch_optional(&mut **tx)
                    .await?;
                    if found.is_none() {
                        return Err(StoreError::Invalid(format!("unknown conversation id {conversation}")));
                    }
                    sqlx::query(
                        "INSERT INTO bot_installs (bot_id, conversation_id) VALUES ($1, $2) \
                         ON CONFLICT (conversation_id, bot_id) DO NOTHING",
                    )
                    .bind(bot.0)
                    .bind(conversation.0)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }

            /// The fanout hook: queues this event for every installed bot that hears it, in
            /// the transaction that writes the event (chunk 0 only, which runs exactly once).
            pub(super) async fn enqueue_bot_events_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                job: &ChunkJob<'_>,
            ) -> Result<()> {
                let relevant = matches!(
                    job.kind,
                    EventKind::MessageCreated | EventKind::MessageRecalled
                        | EventKind::MemberJoined | EventKind::MemberLeft
                );
                if job.chunk != 0 || !relevant {
                    return Ok(());
                }
                let rows = sqlx::query(
                    "SELECT b.id, b.name, b.triggers, b.keywords, b.events FROM bot_installs i \
                     JOIN bots b ON b.id = i.bot_id WHERE i.conversation_id = $1 AND b.enabled = $2 \
                     ORDER BY b.id",
                )
                .bind(job.conversation_id.0)
                .bind(true)
                .fetch_all(&mut **tx)
                .await?;
                if rows.is_empty() {
                    return Ok(());
                }
                let context = Self::event_context_tx(tx, job).await?;
                for row in &rows {
                    let id = BotId(row.try_get("id")?);
                    let rules = Rules {
                        chatbot_user_id: chatbot_user_id(id),
                        name: row.try_get("name")?,
                        triggers: json_list(row.try_get("triggers")?)?,
                        keywords: json_list(row.try_get("keywords")?)?,
                        events: json_list(row.try_get("events")?)?,
                    };
                    let Some(event) = triggers::event_for(
                        &rules,
                        job.kind,
                        context.conversation_kind,
                        context.message.as_ref(),
                    ) else {
                        continue;
                    };
                    let body = payload::build(&rules, event, &context);
                    sqlx::query(
                        "INSERT INTO bot_deliveries (bot_id, conversation_id, event_id, event, payload, \
                         state, attempts, run_at, locked_until, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, 0, 0, $6, 0, $6, $6)",
                    )
                    .bind(id.0)
                    .bind(job.conversation_id.0)
                    .bind(&context.event_id)
                    .bind(event.name())
                    .bind(body.to_string())
                    .bind(job.now_ms)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }

            /// What a bot event says about the conversation, the message and its sender.
            async fn event_context_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                job: &ChunkJob<'_>,
            ) -> Result<EventContext> {
                let row = sqlx::query("SELECT kind, title FROM conversations WHERE id = $1")
                    .bind(job.conversation_id.0)
                    .fetch_one(&mut **tx)
                    .await?;
                let mut context = EventContext {
                    event_id: format!("evt_{}_{}", job.kind.code(), job.ref_id),
                    conversation_id: job.conversation_id,
                    conversation_kind: ConversationKind::parse(row.try_get::<&str, _>("kind")?),
                    conversation_title: row.try_get("title")?,
                    message: job.new_message.cloned(),
                    sender_staff_id: None,
                    sender_is_admin: false,
                    details: None,
                    created_at_ms: job.now_ms,
                };
                if job.kind == EventKind::MessageRecalled {
                    context.message = Self::message_record_tx(tx, job.ref_id).await?;
                }
                if matches!(job.kind, EventKind::MemberJoined | EventKind::MemberLeft) {
                    let details: Option<String> =
                        sqlx::query_scalar("SELECT details FROM conv_events WHERE id = $1")
                            .bind(job.ref_id)
                            .fetch_optional(&mut **tx)
                            .await?;
                    context.details = details.and_then(|d| serde_json::from_str(&d).ok());
                }
                if let Some(m) = &context.message {
                    context.created_at_ms = m.created_at_ms;
                    if let (SenderKind::User, Ok(user)) = (m.sender.kind, m.sender.id.parse::<i64>()) {
                        let row = sqlx::query("SELECT staff_id, role FROM users WHERE id = $1")
                            .bind(user)
                            .fetch_optional(&mut **tx)
                            .await?;
                        if let Some(row) = row {
                            context.sender_staff_id = row.try_get("staff_id")?;
                            context.sender_is_admin =
                                Role::parse(row.try_get::<&str, _>("role")?) == Role::Admin;
                        }
                    }
                }
                Ok(context)
            }

            async fn message_record_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                id: i64,
            ) -> Result<Option<MessageRecord>> {
                let row = sqlx::query(
                    "SELECT id, org_id, conversation_id, sender_id, sender_kind, sender_name, msgtype, \
                     content, at, thread_key, dedupe_key, recalled, created_at FROM messages WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let sender = Sender {
                    id: row.try_get("sender_id")?,
                    kind: SenderKind::parse(row.try_get::<&str, _>("sender_kind")?),
                    name: row.try_get("sender_name")?,
                };
                let message = message_from_parts(
                    row.try_get("id")?,
                    row.try_get("org_id")?,
                    row.try_get("conversation_id")?,
                    sender,
                    row.try_get::<&str, _>("msgtype")?,
                    row.try_get::<&str, _>("content")?,
                    row.try_get::<&str, _>("at")?,
                    row.try_get("thread_key")?,
                    row.try_get("dedupe_key")?,
                    row.try_get("recalled")?,
                    row.try_get("created_at")?,
                )?;
                Ok(Some(MessageRecord::from(&message)))
            }

            /// One failed attempt's effect on its bot: start or continue the failure run, and
            /// disable the bot once the run is long enough.
            async fn note_failure_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                bot: BotId,
                now_ms: i64,
                disable_after_ms: i64,
            ) -> Result<Option<DisabledBot>> {
                let row = sqlx::query(
                    "UPDATE bots SET failing_since = COALESCE(failing_since, $1) \
                     WHERE id = $2 AND enabled = $3 RETURNING failing_since, org_id, name",
                )
                .bind(now_ms)
                .bind(bot.0)
                .bind(true)
                .fetch_optional(&mut **tx)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let since: i64 = row.try_get("failing_since")?;
                if now_ms - since < disable_after_ms {
                    return Ok(None);
                }
                let reason = format!(
                    "disabled at {}: every callback failed since {}",
                    clock::rfc3339(now_ms),
                    clock::rfc3339(since)
                );
                sqlx::query("UPDATE bots SET enabled = $1, disabled_reason = $2, updated_at = $3 WHERE id = $4")
                    .bind(false)
                    .bind(reason)
                    .bind(now_ms)
                    .bind(bot.0)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(
                    "UPDATE bot_deliveries SET state = 2, locked_until = 0, updated_at = $1 \
                     WHERE bot_id = $2 AND state = 0",
                )
                .bind(now_ms)
                .bind(bot.0)
                .execute(&mut **tx)
                .await?;
                Ok(Some(DisabledBot {
                    id: bot,
                    org_id: OrgId(row.try_get("org_id")?),
                    name: row.try_get("name")?,
                    failing_since_ms: since,
                }))
            }

            async fn record_one_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                outcome: &DeliveryOutcome,
                now_ms: i64,
            ) -> Result<()> {
                let a = &outcome.attempt;
                sqlx::query(
                    "INSERT INTO bot_attempts (delivery_id, at, status, latency_ms, response, error) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(outcome.delivery_id.0)
                .bind(a.at_ms)
                .bind(a.status)
                .bind(a.latency_ms)
                .bind(&a.response)
                .bind(&a.error)
                .execute(&mut **tx)
                .await?;
                let (state, run_at) = match outcome.next {
                    NextStep::Delivered => (DeliveryState::Delivered, now_ms),
                    NextStep::RetryAt(at) => (DeliveryState::Pending, at),
                    NextStep::Failed => (DeliveryState::Failed, now_ms),
                };
                sqlx::query(
                    "UPDATE bot_deliveries SET state = $1, attempts = attempts + 1, run_at = $2, \
                     locked_until = 0, updated_at = $3 WHERE id = $4 AND state = 0",
                )
                .bind(state.code())
                .bind(run_at)
                .bind(now_ms)
                .bind(outcome.delivery_id.0)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
        }

        #[async_trait]
        impl BotStore for $store {
            async fn create_bot(&self, new: &NewBot) -> Result<Bot> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO bots (org_id, name, callback_url, secret, previous_secret, previous_secret_until, \
                     triggers, keywords, events, enabled, failing_since, disabled_reason, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, NULL, 0, $5, $6, $7, $8, NULL, NULL, $9, $9) RETURNING id",
                )
                .bind(new.org_id.0)
                .bind(&new.name)
                .bind(&new.callback_url)
                .bind(&new.secret)
                .bind(to_json(&new.triggers)?)
                .bind(to_json(&new.keywords)?)
                .bind(to_json(&new.events)?)
                .bind(true)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                Self::install_tx(&mut tx, new.org_id, BotId(id), &new.conversations).await?;
                let bot = Self::load_bot_tx(&mut tx, new.org_id, BotId(id)).await?;
                tx.commit().await?;
                Ok(bot)
            }

            async fn get_bot(&self, org: OrgId, id: BotId) -> Result<Bot> {
                let mut tx = self.reader().begin().await?;
                let bot = Self::load_bot_tx(&mut tx, org, id).await?;
                tx.commit().await?;
                Ok(bot)
            }

            async fn bot_by_id(&self, id: BotId) -> Result<Option<Bot>> {
                let row = sqlx::query(&format!("SELECT {BOT_COLUMNS} FROM bots WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(self.reader())
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let mut bot = Self::bot_from_row(&row)?;
                bot.conversations = Self::bot_conversations(self.reader(), id).await?;
                Ok(Some(bot))
            }

            async fn list_bots(&self, org: OrgId, after: Option<BotId>, limit: i64) -> Result<Vec<Bot>> {
                let rows = sqlx::query(&format!(
                    "SELECT {BOT_COLUMNS} FROM bots WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3"
                ))
                .bind(org.0)
                .bind(after.map_or(0, |b| b.0))
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                let mut bots = Vec::with_capacity(rows.len());
                for row in &rows {
                    let mut bot = Self::bot_from_row(row)?;
                    bot.conversations = Self::bot_conversations(self.reader(), bot.id).await?;
                    bots.push(bot);
                }
                Ok(bots)
            }

            async fn update_bot(
                &self,
                org: OrgId,
                id: BotId,
                patch: &BotPatch,
            ) -> Result<(Bot, Vec<ConversationId>)> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let old = Self::load_bot_tx(&mut tx, org, id).await?;
                let enable = patch.enabled == Some(true) && !old.enabled;
                let enabled = patch.enabled.unwrap_or(old.enabled);
                sqlx::query(
                    "UPDATE bots SET name = $1, callback_url = $2, triggers = $3, keywords = $4, events = $5, \
                     enabled = $6, updated_at = $7, \
                     failing_since = CASE WHEN $8 THEN NULL ELSE failing_since END, \
                     disabled_reason = CASE WHEN $8 THEN NULL WHEN $6 THEN disabled_reason ELSE COALESCE(disabled_reason, 'disabled by an admin') END \
                     WHERE id = $9",
                )
                .bind(patch.name.as_ref().unwrap_or(&old.name))
                .bind(patch.callback_url.as_ref().unwrap_or(&old.callback_url))
                .bind(to_json(patch.triggers.as_ref().unwrap_or(&old.triggers))?)
                .bind(to_json(patch.keywords.as_ref().unwrap_or(&old.keywords))?)
                .bind(to_json(patch.events.as_ref().unwrap_or(&old.events))?)
                .bind(enabled)
                .bind(now)
                .bind(enable)
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
                let mut added = Vec::new();
                if let Some(wanted) = &patch.conversations {
                    for gone in old.conversations.iter().filter(|c| !wanted.contains(c)) {
                        sqlx::query("DELETE FROM bot_installs WHERE bot_id = $1 AND conversation_id = $2")
                            .bind(id.0)
                            .bind(gone.0)
                            .execute(&mut *tx)
                            .await?;
                    }
                    added = wanted.iter().filter(|c| !old.conversations.contains(c)).copied().collect();
                    Self::install_tx(&mut tx, org, id, &added).await?;
                }
                let bot = Self::load_bot_tx(&mut tx, org, id).await?;
                tx.commit().await?;
                Ok((bot, added))
            }

            async fn delete_bot(&self, org: OrgId, id: BotId) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                let deleted = sqlx::query("DELETE FROM bots WHERE id = $1 AND org_id = $2")
                    .bind(id.0)
                    .bind(org.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound("bot"));
                }
                for sql in [
                    "DELETE FROM bot_installs WHERE bot_id = $1",
                    "DELETE FROM bot_attempts WHERE delivery_id IN (SELECT id FROM bot_deliveries WHERE bot_id = $1)",
                    "DELETE FROM bot_deliveries WHERE bot_id = $1",
                ] {
                    sqlx::query(sql).bind(id.0).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn rotate_bot_secret(
                &self,
                org: OrgId,
                id: BotId,
                secret: &str,
                previous_until_ms: i64,
            ) -> Result<Bot> {
                let mut tx = self.writer().begin().await?;
                let updated = sqlx::query(
                    "UPDATE bots SET previous_secret = secret, previous_secret_until = $1, secret = $2, \
                     updated_at = $3 WHERE id = $4 AND org_id = $5",
                )
                .bind(previous_until_ms)
                .bind(secret)
                .bind(clock::now_ms())
                .bind(id.0)
                .bind(org.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    return Err(StoreError::NotFound("bot"));
                }
                let bot = Self::load_bot_tx(&mut tx, org, id).await?;
                tx.commit().await?;
                Ok(bot)
            }

            async fn bots_in(&self, conversation: ConversationId) -> Result<Vec<BotId>> {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT b.id FROM bot_installs i JOIN bots b ON b.id = i.bot_id \
                     WHERE i.conversation_id = $1 AND b.enabled = $2",
                )
                .bind(conversation.0)
                .bind(true)
                .fetch_all(self.reader())
                .await?;
                Ok(ids.into_iter().map(BotId).collect())
            }

            async fn claim_deliveries(&self, claim: &DeliveryClaim) -> Result<Vec<ClaimedDelivery>> {
                // Ids are integers, so listing them inline is safe.
                let exclude = if claim.exclude.is_empty() {
                    String::new()
                } else {
                    let ids: Vec<String> = claim.exclude.iter().map(|b| b.0.to_string()).collect();
                    format!("AND bot_id NOT IN ({})", ids.join(","))
                };
                // Heads first (the oldest pending delivery of each bot and conversation, one
                // pass over the partial order index), then only the due, unleased ones, at
                // most `per_bot` per bot.
                let sql = format!(
                    "UPDATE bot_deliveries SET locked_until = $1 WHERE id IN ( \
                       SELECT id FROM bot_deliveries WHERE locked_until <= $2 AND id IN ( \
                         SELECT id FROM ( \
                           SELECT d.id, ROW_NUMBER() OVER (PARTITION BY d.bot_id ORDER BY d.id) AS rn \
                           FROM (SELECT MIN(id) AS id FROM bot_deliveries WHERE state = 0 {exclude} \
                                 GROUP BY bot_id, conversation_id) heads \
                           JOIN bot_deliveries d ON d.id = heads.id JOIN bots b ON b.id = d.bot_id \
                           WHERE d.run_at <= $2 AND d.locked_until <= $2 AND b.enabled = $3 \
                         ) ranked WHERE rn <= $4 ORDER BY id LIMIT $5) {}) \
                     RETURNING id, bot_id, conversation_id, event_id, event, payload, attempts",
                    $lock
                );
                let rows = sqlx::query(&sql)
                    .bind(claim.lease_until_ms)
                    .bind(claim.now_ms)
                    .bind(true)
                    .bind(claim.per_bot)
                    .bind(claim.limit)
                    .fetch_all(self.writer())
                    .await?;
                let mut claimed = rows
                    .iter()
                    .map(|row| {
                        Ok(ClaimedDelivery {
                            id: DeliveryId(row.try_get("id")?),
                            bot_id: BotId(row.try_get("bot_id")?),
                            conversation_id: ConversationId(row.try_get("conversation_id")?),
                            event_id: row.try_get("event_id")?,
                            event: row.try_get("event")?,
                            payload: row.try_get("payload")?,
                            attempts: row.try_get("attempts")?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                claimed.sort_by_key(|d| d.id);
                Ok(claimed)
            }

            async fn record_deliveries(
                &self,
                outcomes: &[DeliveryOutcome],
                now_ms: i64,
                disable_after_ms: i64,
            ) -> Result<Vec<DisabledBot>> {
                let mut tx = self.writer().begin().await?;
                let mut disabled = Vec::new();
                let mut succeeded = std::collections::BTreeSet::new();
                for outcome in outcomes {
                    Self::record_one_tx(&mut tx, outcome, now_ms).await?;
                    if outcome.next == NextStep::Delivered {
                        succeeded.insert(outcome.bot_id.0);
                    } else if let Some(bot) =
                        Self::note_failure_tx(&mut tx, outcome.bot_id, now_ms, disable_after_ms).await?
                    {
                        disabled.push(bot);
                    }
                }
                // A success ends the bot's failure run (once per bot and batch).
                for bot in succeeded {
                    sqlx::query("UPDATE bots SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                        .bind(bot)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(disabled)
            }

            async fn release_delivery_leases(&self) -> Result<()> {
                if $single_process {
                    sqlx::query("UPDATE bot_deliveries SET locked_until = 0 WHERE state = 0 AND locked_until > 0")
                        .execute(self.writer())
                        .await?;
                }
                Ok(())
            }

            async fn list_deliveries(
                &self,
                bot: BotId,
                state: Option<DeliveryState>,
                before: Option<DeliveryId>,
                limit: i64,
            ) -> Result<Vec<Delivery>> {
                let rows = sqlx::query(
                    "SELECT id, conversation_id, event_id, event, state, run_at, created_at FROM bot_deliveries \
                     WHERE bot_id = $1 AND id < $2 AND ($3 < 0 OR state = $3) ORDER BY id DESC LIMIT $4",
                )
                .bind(bot.0)
                .bind(before.map_or(i64::MAX, |d| d.0))
                .bind(state.map_or(-1, |s| s.code()))
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                let mut deliveries = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: i64 = row.try_get("id")?;
                    let state = DeliveryState::from_code(row.try_get("state")?);
                    let attempts = sqlx::query(
                        "SELECT at, status, latency_ms, response, error FROM bot_attempts \
                         WHERE delivery_id = $1 ORDER BY id",
                    )
                    .bind(id)
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(|a| {
                        Ok(Attempt {
                            at_ms: a.try_get("at")?,
                            status: a.try_get("status")?,
                            latency_ms: a.try_get("latency_ms")?,
                            response: a.try_get("response")?,
                            error: a.try_get("error")?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                    deliveries.push(Delivery {
                        id: DeliveryId(id),
                        conversation_id: ConversationId(row.try_get("conversation_id")?),
                        event_id: row.try_get("event_id")?,
                        event: row.try_get("event")?,
                        state,
                        next_attempt_at_ms: (state == DeliveryState::Pending)
                            .then(|| row.try_get("run_at"))
                            .transpose()?,
                        created_at_ms: row.try_get("created_at")?,
                        attempts,
                    });
                }
                Ok(deliveries)
            }

            async fn redeliver(
                &self,
                bot: BotId,
                delivery: Option<DeliveryId>,
                since_ms: Option<i64>,
                now_ms: i64,
            ) -> Result<u64> {
                let reset = "UPDATE bot_deliveries SET state = 0, attempts = 0, run_at = $1, locked_until = 0, \
                             updated_at = $1 WHERE bot_id = $2";
                let done = match delivery {
                    Some(id) => {
                        let exists: Option<i64> = sqlx::query_scalar(
                            "SELECT id FROM bot_deliveries WHERE id = $1 AND bot_id = $2",
                        )
                        .bind(id.0)
                        .bind(bot.0)
                        .fetch_optional(self.reader())
                        .await?;
                        if exists.is_none() {
                            return Err(StoreError::NotFound("delivery"));
                        }
                        sqlx::query(&format!("{reset} AND id = $3 AND state <> 0"))
                            .bind(now_ms)
                            .bind(bot.0)
                            .bind(id.0)
                            .execute(self.writer())
                            .await?
                    }
                    None => sqlx::query(&format!("{reset} AND state = 2 AND created_at >= $3"))
                        .bind(now_ms)
                        .bind(bot.0)
                        .bind(since_ms.unwrap_or(0))
                        .execute(self.writer())
                        .await?,
                };
                Ok(done.rows_affected())
            }

            async fn notice_group(&self, org: OrgId) -> Result<Option<ConversationId>> {
                let id: Option<i64> =
                    sqlx::query_scalar("SELECT conversation_id FROM bot_notice_groups WHERE org_id = $1")
                        .bind(org.0)
                        .fetch_optional(self.reader())
                        .await?;
                Ok(id.map(ConversationId))
            }

            async fn set_notice_group(&self, org: OrgId, group: ConversationId) -> Result<ConversationId> {
                sqlx::query(
                    "INSERT INTO bot_notice_groups (org_id, conversation_id) VALUES ($1, $2) \
                     ON CONFLICT (org_id) DO NOTHING",
                )
                .bind(org.0)
                .bind(group.0)
                .execute(self.writer())
                .await?;
                let id: i64 =
                    sqlx::query_scalar("SELECT conversation_id FROM bot_notice_groups WHERE org_id = $1")
                        .bind(org.0)
                        .fetch_one(self.writer())
                        .await?;
                Ok(ConversationId(id))
            }
        }
    };
}

bot_store_impl!(SqliteStore, sqlx::Sqlite, "", true);
bot_store_impl!(PgStore, sqlx::Postgres, "FOR UPDATE SKIP LOCKED", false);
