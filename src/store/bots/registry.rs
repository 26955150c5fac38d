//! Bots and where they are installed, and the fanout hook that turns a conversation event into
//! deliveries for the bots that hear it.

use async_trait::async_trait;
use sqlx::Row;

use crate::clock;
use crate::ids::{BotId, ConversationId, OrgId, PluginId};
use crate::model::{ConversationKind, EventKind, Role, Sender, SenderKind};
use crate::outgoing::payload::{self, EventContext};
use crate::outgoing::triggers::{self, Rules};
use crate::store::{
    message_from_parts, ChunkJob, MessageRecord, PgStore, Result, SqliteStore, StoreError,
};

use super::*;

macro_rules! bot_store_impl {
    ($store:ty, $db:ty) => {
        impl $store {
            fn bot_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Bot> {
                Ok(Bot {
                    id: BotId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    name: row.try_get("name")?,
                    callback_url: row.try_get("callback_url")?,
                    plugin_id: row.try_get::<Option<i64>, _>("plugin_id")?.map(PluginId),
                    config: config_map(row.try_get("config")?)?,
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
            /// True when it queued any delivery (the outgoing worker is woken only then).
            pub(in crate::store) async fn enqueue_bot_events_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                job: &ChunkJob<'_>,
            ) -> Result<bool> {
                let relevant = matches!(
                    job.kind,
                    EventKind::MessageCreated | EventKind::MessageRecalled
                        | EventKind::MessageUpdated | EventKind::MemberJoined
                        | EventKind::MemberLeft
                );
                if job.chunk != 0 || !relevant {
                    return Ok(false);
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
                    return Ok(false);
                }
                let context = Self::event_context_tx(tx, job).await?;
                let mut queued = false;
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
                    queued = true;
                }
                Ok(queued)
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
                    // A message is updated many times: each update is its own event.
                    event_id: if job.kind == EventKind::MessageUpdated {
                        format!("evt_{}_{}_{}", job.kind.code(), job.ref_id, job.task_id)
                    } else {
                        format!("evt_{}_{}", job.kind.code(), job.ref_id)
                    },
                    conversation_id: job.conversation_id,
                    conversation_kind: ConversationKind::parse(row.try_get::<&str, _>("kind")?),
                    conversation_title: row.try_get("title")?,
                    message: job.new_message.cloned(),
                    sender_staff_id: None,
                    sender_is_admin: false,
                    details: None,
                    created_at_ms: job.now_ms,
                };
                if matches!(job.kind, EventKind::MessageRecalled | EventKind::MessageUpdated) {
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
        }

        #[async_trait]
        impl BotStore for $store {
            async fn create_bot(&self, new: &NewBot) -> Result<Bot> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO bots (org_id, name, callback_url, secret, previous_secret, previous_secret_until, \
                     triggers, keywords, events, enabled, failing_since, disabled_reason, created_at, updated_at, \
                     plugin_id, config) \
                     VALUES ($1, $2, $3, $4, NULL, 0, $5, $6, $7, $8, NULL, NULL, $9, $9, $10, $11) RETURNING id",
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
                .bind(new.plugin_id.map(|p| p.0))
                .bind(to_json(&new.config)?)
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
                     enabled = $6, updated_at = $7, plugin_id = $10, config = $11, \
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
                .bind(patch.plugin_id.or(old.plugin_id).map(|p| p.0))
                .bind(to_json(patch.config.as_ref().unwrap_or(&old.config))?)
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

bot_store_impl!(SqliteStore, sqlx::Sqlite);
bot_store_impl!(PgStore, sqlx::Postgres);
