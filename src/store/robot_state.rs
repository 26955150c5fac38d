//! What robots remember between webhooks: the last conclusion of each CI job (for the
//! "on status change" filter), the fields a card keeps across updates, and the counts of
//! events posted and skipped. Both backends run the same statements, expanded by
//! `robot_state_impl!`. Rows belong to a robot and go when it is deleted.

use async_trait::async_trait;
use serde_json::Value;

use super::{PgStore, Result, SqliteStore};
use crate::clock;
use crate::ids::RobotId;

/// Counts to add to a robot's stats for one event name.
#[derive(Debug, Clone, PartialEq)]
pub struct StatDelta {
    pub robot: RobotId,
    pub event: String,
    pub posted: i64,
    pub skipped: i64,
}

#[async_trait]
pub trait RobotStateStore: Send + Sync {
    /// The fields a grouped object's card keeps across updates (a JSON object), if saved.
    async fn card_fields(&self, robot: RobotId, object_key: &str) -> Result<Option<Value>>;
    async fn set_card_fields(&self, robot: RobotId, object_key: &str, fields: &Value)
        -> Result<()>;
    /// Adds counts to robots' stats, all in one transaction.
    async fn add_robot_stats(&self, deltas: &[StatDelta]) -> Result<()>;
    /// A robot's counts: (event name, posted, skipped).
    async fn robot_stats(&self, robot: RobotId) -> Result<Vec<(String, i64, i64)>>;
    /// The last finished conclusion the robot saw for a CI job and branch.
    async fn ci_conclusion(&self, robot: RobotId, ci_key: &str) -> Result<Option<String>>;
    /// Remembers a CI job's latest finished conclusion.
    async fn set_ci_conclusion(&self, robot: RobotId, ci_key: &str, conclusion: &str)
        -> Result<()>;
}

macro_rules! robot_state_impl {
    ($store:ty) => {
        #[async_trait]
        impl RobotStateStore for $store {
            async fn add_robot_stats(&self, deltas: &[StatDelta]) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                for d in deltas {
                    sqlx::query(
                        "INSERT INTO robot_stats (robot_id, event, posted, skipped) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (robot_id, event) DO UPDATE \
                         SET posted = robot_stats.posted + excluded.posted, \
                         skipped = robot_stats.skipped + excluded.skipped",
                    )
                    .bind(d.robot.0)
                    .bind(&d.event)
                    .bind(d.posted)
                    .bind(d.skipped)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn card_fields(&self, robot: RobotId, object_key: &str) -> Result<Option<Value>> {
                let text: Option<String> = sqlx::query_scalar(
                    "SELECT fields FROM robot_card_fields WHERE robot_id = $1 AND object_key = $2",
                )
                .bind(robot.0)
                .bind(object_key)
                .fetch_optional(self.reader())
                .await?;
                Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
            }

            async fn set_card_fields(&self, robot: RobotId, object_key: &str, fields: &Value) -> Result<()> {
                sqlx::query(
                    "INSERT INTO robot_card_fields (robot_id, object_key, fields) VALUES ($1, $2, $3) \
                     ON CONFLICT (robot_id, object_key) DO UPDATE SET fields = excluded.fields",
                )
                .bind(robot.0)
                .bind(object_key)
                .bind(fields.to_string())
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn robot_stats(&self, robot: RobotId) -> Result<Vec<(String, i64, i64)>> {
                Ok(sqlx::query_as(
                    "SELECT event, posted, skipped FROM robot_stats WHERE robot_id = $1 ORDER BY event",
                )
                .bind(robot.0)
                .fetch_all(self.reader())
                .await?)
            }

            async fn ci_conclusion(&self, robot: RobotId, ci_key: &str) -> Result<Option<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT conclusion FROM robot_ci_state WHERE robot_id = $1 AND ci_key = $2",
                )
                .bind(robot.0)
                .bind(ci_key)
                .fetch_optional(self.reader())
                .await?)
            }

            async fn set_ci_conclusion(
                &self,
                robot: RobotId,
                ci_key: &str,
                conclusion: &str,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO robot_ci_state (robot_id, ci_key, conclusion, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (robot_id, ci_key) DO UPDATE \
                     SET conclusion = excluded.conclusion, updated_at = excluded.updated_at",
                )
                .bind(robot.0)
                .bind(ci_key)
                .bind(conclusion)
                .bind(clock::now_ms())
                .execute(self.writer())
                .await?;
                Ok(())
            }
        }
    };
}

robot_state_impl!(SqliteStore);
robot_state_impl!(PgStore);
