//! Durable burst coalescing: events about one grouped object that arrive within the robot's
//! burst window after its card was last touched wait here (already rendered) until the window
//! closes; `ingress::burst` then applies them as one card update and one follow-up. Rows are
//! marked flushed rather than deleted for a day, so a sender's redelivery of a coalesced event
//! is still recognised.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, Result, SqliteStore};
use crate::ids::{OrgId, RobotId};
use crate::model::At;

/// How long flushed rows stay to recognise redeliveries.
const KEEP_FLUSHED_MS: i64 = 86_400_000;

/// One coalesced event, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct BurstEvent {
    pub id: i64,
    pub robot: RobotId,
    pub org: OrgId,
    pub object_key: String,
    pub due_at_ms: i64,
    pub msgtype: String,
    pub content: serde_json::Value,
    pub at: At,
    pub dedupe_key: Option<String>,
}

/// A robot's object whose burst window has closed.
#[derive(Debug, Clone, PartialEq)]
pub struct DueBurst {
    pub robot: RobotId,
    pub org: OrgId,
    pub object_key: String,
}

#[async_trait]
pub trait BurstStore: Send + Sync {
    /// When the object's card was created or last updated, if it has one.
    async fn card_touched_at(&self, robot: RobotId, object_key: &str) -> Result<Option<i64>>;
    async fn touch_card(&self, robot: RobotId, object_key: &str, now_ms: i64) -> Result<()>;
    /// Queues an event of a burst (its `id` is ignored). Returns the burst's due time: the
    /// earliest of the waiting events', so a burst never outlives its first window.
    async fn add_burst_event(&self, event: &BurstEvent) -> Result<i64>;
    /// Whether an event with this delivery key waits in, or was flushed from, a burst.
    async fn burst_has_delivery(&self, robot: RobotId, dedupe_key: &str) -> Result<bool>;
    /// The earliest due time of any waiting burst.
    async fn next_burst_due(&self) -> Result<Option<i64>>;
    async fn due_bursts(&self, now_ms: i64) -> Result<Vec<DueBurst>>;
    /// The waiting events of one object, oldest first.
    async fn burst_events(&self, robot: RobotId, object_key: &str) -> Result<Vec<BurstEvent>>;
    /// Marks events up to `last_id` flushed and touches the card, in one transaction.
    async fn finish_burst(
        &self,
        robot: RobotId,
        object_key: &str,
        last_id: i64,
        now_ms: i64,
    ) -> Result<()>;
    /// Moves a burst's due time (when its follow-up was throttled).
    async fn delay_burst(&self, robot: RobotId, object_key: &str, due_ms: i64) -> Result<()>;
}

const EVENT_COLUMNS: &str =
    "id, robot_id, org_id, object_key, due_at, msgtype, content, at_json, dedupe_key";

macro_rules! burst_store_impl {
    ($store:ty, $row:ty) => {
        impl $store {
            fn burst_from_row(row: &$row) -> Result<BurstEvent> {
                let content: &str = row.try_get("content")?;
                let at: &str = row.try_get("at_json")?;
                Ok(BurstEvent {
                    id: row.try_get("id")?,
                    robot: RobotId(row.try_get("robot_id")?),
                    org: OrgId(row.try_get("org_id")?),
                    object_key: row.try_get("object_key")?,
                    due_at_ms: row.try_get("due_at")?,
                    msgtype: row.try_get("msgtype")?,
                    content: serde_json::from_str(content).map_err(anyhow::Error::from)?,
                    at: serde_json::from_str(at).map_err(anyhow::Error::from)?,
                    dedupe_key: row.try_get("dedupe_key")?,
                })
            }
        }

        #[async_trait]
        impl BurstStore for $store {
            async fn card_touched_at(&self, robot: RobotId, object_key: &str) -> Result<Option<i64>> {
                Ok(sqlx::query_scalar(
                    "SELECT updated_at FROM robot_cards WHERE robot_id = $1 AND object_key = $2",
                )
                .bind(robot.0)
                .bind(object_key)
                .fetch_optional(self.reader())
                .await?)
            }

            async fn touch_card(&self, robot: RobotId, object_key: &str, now_ms: i64) -> Result<()> {
                sqlx::query("UPDATE robot_cards SET updated_at = $3 WHERE robot_id = $1 AND object_key = $2")
                    .bind(robot.0)
                    .bind(object_key)
                    .bind(now_ms)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn add_burst_event(&self, e: &BurstEvent) -> Result<i64> {
                let mut tx = self.writer().begin().await?;
                let due: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(due_at) FROM robot_bursts \
                     WHERE robot_id = $1 AND object_key = $2 AND flushed_at IS NULL",
                )
                .bind(e.robot.0)
                .bind(&e.object_key)
                .fetch_one(&mut *tx)
                .await?;
                let due = due.unwrap_or(e.due_at_ms);
                sqlx::query(
                    "INSERT INTO robot_bursts (robot_id, org_id, object_key, due_at, msgtype, content, at_json, dedupe_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(e.robot.0)
                .bind(e.org.0)
                .bind(&e.object_key)
                .bind(due)
                .bind(&e.msgtype)
                .bind(e.content.to_string())
                .bind(serde_json::to_string(&e.at).map_err(anyhow::Error::from)?)
                .bind(&e.dedupe_key)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(due)
            }

            async fn burst_has_delivery(&self, robot: RobotId, dedupe_key: &str) -> Result<bool> {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM robot_bursts WHERE robot_id = $1 AND dedupe_key = $2 LIMIT 1",
                )
                .bind(robot.0)
                .bind(dedupe_key)
                .fetch_optional(self.reader())
                .await?;
                Ok(found.is_some())
            }

            async fn next_burst_due(&self) -> Result<Option<i64>> {
                Ok(sqlx::query_scalar("SELECT MIN(due_at) FROM robot_bursts WHERE flushed_at IS NULL")
                    .fetch_one(self.reader())
                    .await?)
            }

            async fn due_bursts(&self, now_ms: i64) -> Result<Vec<DueBurst>> {
                let rows = sqlx::query(
                    "SELECT DISTINCT robot_id, org_id, object_key FROM robot_bursts \
                     WHERE flushed_at IS NULL AND due_at <= $1",
                )
                .bind(now_ms)
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(DueBurst {
                            robot: RobotId(r.try_get("robot_id")?),
                            org: OrgId(r.try_get("org_id")?),
                            object_key: r.try_get("object_key")?,
                        })
                    })
                    .collect()
            }

            async fn burst_events(&self, robot: RobotId, object_key: &str) -> Result<Vec<BurstEvent>> {
                let rows = sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM robot_bursts \
                     WHERE robot_id = $1 AND object_key = $2 AND flushed_at IS NULL ORDER BY id"
                ))
                .bind(robot.0)
                .bind(object_key)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::burst_from_row).collect()
            }

            async fn finish_burst(&self, robot: RobotId, object_key: &str, last_id: i64, now_ms: i64) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                sqlx::query(
                    "UPDATE robot_bursts SET flushed_at = $4 \
                     WHERE robot_id = $1 AND object_key = $2 AND id <= $3 AND flushed_at IS NULL",
                )
                .bind(robot.0)
                .bind(object_key)
                .bind(last_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE robot_cards SET updated_at = $3 WHERE robot_id = $1 AND object_key = $2")
                    .bind(robot.0)
                    .bind(object_key)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM robot_bursts WHERE flushed_at < $1")
                    .bind(now_ms - KEEP_FLUSHED_MS)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delay_burst(&self, robot: RobotId, object_key: &str, due_ms: i64) -> Result<()> {
                sqlx::query(
                    "UPDATE robot_bursts SET due_at = $3 \
                     WHERE robot_id = $1 AND object_key = $2 AND flushed_at IS NULL",
                )
                .bind(robot.0)
                .bind(object_key)
                .bind(due_ms)
                .execute(self.writer())
                .await?;
                Ok(())
            }
        }
    };
}

burst_store_impl!(SqliteStore, sqlx::sqlite::SqliteRow);
burst_store_impl!(PgStore, sqlx::postgres::PgRow);
