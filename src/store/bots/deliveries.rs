//! The durable delivery queue: claiming due deliveries (per bot and conversation, oldest
//! first), recording every attempt and its consequence, disabling bots that keep failing, and
//! redelivery.

use async_trait::async_trait;
use sqlx::Row;

use crate::clock;
use crate::ids::{BotId, ConversationId, DeliveryId, OrgId};
use crate::store::{PgStore, Result, SqliteStore, StoreError};

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

/// The durable delivery queue of outgoing bots, with every attempt recorded.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
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
}

macro_rules! delivery_store_impl {
    ($store:ty, $db:ty, $lock:literal, $single_process:literal) => {
        impl $store {
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
        impl DeliveryStore for $store {
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
        }
    };
}

delivery_store_impl!(SqliteStore, sqlx::Sqlite, "", true);
delivery_store_impl!(PgStore, sqlx::Postgres, "FOR UPDATE SKIP LOCKED", false);
