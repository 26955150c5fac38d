//! Storage of incoming robots and of the cards their grouped events update. Both backends run
//! the same statements, expanded by `robot_store_impl!`.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, Result, SqliteStore, StoreError};
use crate::clock;
use crate::ids::{ConversationId, MessageId, OrgId, RobotId, UserId};
use crate::robot::{NewRobot, Robot, RobotKind, RobotSpec};

#[async_trait]
pub trait RobotStore: Send + Sync {
    async fn create_robot(&self, robot: &NewRobot) -> Result<Robot>;
    async fn get_robot(&self, org: OrgId, id: RobotId) -> Result<Robot>;
    /// The robot a webhook URL names, in any org: the token is the credential.
    async fn robot_by_token(&self, token: &str) -> Result<Option<Robot>>;
    async fn list_robots(
        &self,
        org: OrgId,
        after: Option<RobotId>,
        limit: i64,
    ) -> Result<Vec<Robot>>;
    /// Writes back name, conversation, token, secret and spec.
    async fn save_robot(&self, robot: &Robot) -> Result<()>;
    async fn delete_robot(&self, org: OrgId, id: RobotId) -> Result<()>;
    /// The card message of a grouped object, if one was posted.
    async fn robot_card(&self, robot: RobotId, object_key: &str) -> Result<Option<MessageId>>;
    async fn set_robot_card(
        &self,
        robot: RobotId,
        object_key: &str,
        message: MessageId,
    ) -> Result<()>;
    /// Upserts mention-map entries (source, external name → user); a `None` user removes one.
    async fn set_mentions(&self, org: OrgId, entries: &[MentionEntry]) -> Result<()>;
    async fn list_mentions(&self, org: OrgId) -> Result<Vec<MentionEntry>>;
    /// The users that the given external names of a source map to.
    async fn map_mentions(
        &self,
        org: OrgId,
        source: &str,
        externals: &[String],
    ) -> Result<Vec<UserId>>;
}

/// One line of an org's mention map.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MentionEntry {
    /// `github`, `gitlab`, or `alert` (label values of Alertmanager, Grafana and PagerDuty).
    pub source: String,
    /// The login or label value as the sender writes it.
    pub external: String,
    /// The member it means; null removes the entry.
    pub user_id: Option<UserId>,
}

const COLUMNS: &str =
    "id, org_id, kind, conversation_id, name, access_token, secret, spec, created_at";

macro_rules! robot_store_impl {
    ($store:ty, $row:ty) => {
        impl $store {
            fn robot_from_row(row: &$row) -> Result<Robot> {
                let kind: &str = row.try_get("kind")?;
                let spec: &str = row.try_get("spec")?;
                Ok(Robot {
                    id: RobotId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    kind: RobotKind::parse(kind)
                        .ok_or_else(|| anyhow::anyhow!("stored robot kind {kind:?}"))?,
                    conversation_id: ConversationId(row.try_get("conversation_id")?),
                    name: row.try_get("name")?,
                    access_token: row.try_get("access_token")?,
                    secret: row.try_get("secret")?,
                    spec: serde_json::from_str::<RobotSpec>(spec)
                        .map_err(|e| anyhow::anyhow!("stored robot spec: {e}"))?,
                    created_at_ms: row.try_get("created_at")?,
                })
            }
        }

        #[async_trait]
        impl RobotStore for $store {
            async fn create_robot(&self, robot: &NewRobot) -> Result<Robot> {
                let spec = serde_json::to_string(&robot.spec).map_err(anyhow::Error::from)?;
                let row = sqlx::query(&format!(
                    "INSERT INTO robots (org_id, kind, conversation_id, name, access_token, secret, spec, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
                ))
                .bind(robot.org_id.0)
                .bind(robot.kind.as_str())
                .bind(robot.conversation_id.0)
                .bind(&robot.name)
                .bind(&robot.access_token)
                .bind(&robot.secret)
                .bind(spec)
                .bind(clock::now_ms())
                .fetch_one(self.writer())
                .await?;
                Self::robot_from_row(&row)
            }

            async fn get_robot(&self, org: OrgId, id: RobotId) -> Result<Robot> {
                let row = sqlx::query(&format!("SELECT {COLUMNS} FROM robots WHERE id = $1 AND org_id = $2"))
                    .bind(id.0)
                    .bind(org.0)
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or(StoreError::NotFound("robot"))?;
                Self::robot_from_row(&row)
            }

            async fn robot_by_token(&self, token: &str) -> Result<Option<Robot>> {
                let row = sqlx::query(&format!("SELECT {COLUMNS} FROM robots WHERE access_token = $1"))
                    .bind(token)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(Self::robot_from_row).transpose()
            }

            async fn list_robots(&self, org: OrgId, after: Option<RobotId>, limit: i64) -> Result<Vec<Robot>> {
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM robots WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3"
                ))
                .bind(org.0)
                .bind(after.map_or(0, |r| r.0))
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::robot_from_row).collect()
            }

            async fn save_robot(&self, robot: &Robot) -> Result<()> {
                let spec = serde_json::to_string(&robot.spec).map_err(anyhow::Error::from)?;
                let updated = sqlx::query(
                    "UPDATE robots SET name = $1, conversation_id = $2, access_token = $3, secret = $4, spec = $5 \
                     WHERE id = $6 AND org_id = $7",
                )
                .bind(&robot.name)
                .bind(robot.conversation_id.0)
                .bind(&robot.access_token)
                .bind(&robot.secret)
                .bind(spec)
                .bind(robot.id.0)
                .bind(robot.org_id.0)
                .execute(self.writer())
                .await?
                .rows_affected();
                if updated == 0 {
                    return Err(StoreError::NotFound("robot"));
                }
                Ok(())
            }

            async fn delete_robot(&self, org: OrgId, id: RobotId) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                let deleted = sqlx::query("DELETE FROM robots WHERE id = $1 AND org_id = $2")
                    .bind(id.0)
                    .bind(org.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound("robot"));
                }
                for table in [
                    "robot_cards",
                    "robot_card_fields",
                    "robot_ci_state",
                    "robot_stats",
                    "robot_bursts",
                ] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE robot_id = $1"))
                        .bind(id.0)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn robot_card(&self, robot: RobotId, object_key: &str) -> Result<Option<MessageId>> {
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT message_id FROM robot_cards WHERE robot_id = $1 AND object_key = $2",
                )
                .bind(robot.0)
                .bind(object_key)
                .fetch_optional(self.reader())
                .await?;
                Ok(id.map(MessageId))
            }

            async fn set_mentions(&self, org: OrgId, entries: &[MentionEntry]) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                for entry in entries {
                    match entry.user_id {
                        Some(user) => {
                            sqlx::query(
                                "INSERT INTO mention_map (org_id, source, external, user_id) VALUES ($1, $2, $3, $4) \
                                 ON CONFLICT (org_id, source, external) DO UPDATE SET user_id = excluded.user_id",
                            )
                            .bind(org.0)
                            .bind(&entry.source)
                            .bind(&entry.external)
                            .bind(user.0)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            sqlx::query("DELETE FROM mention_map WHERE org_id = $1 AND source = $2 AND external = $3")
                                .bind(org.0)
                                .bind(&entry.source)
                                .bind(&entry.external)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_mentions(&self, org: OrgId) -> Result<Vec<MentionEntry>> {
                let rows = sqlx::query(
                    "SELECT source, external, user_id FROM mention_map WHERE org_id = $1 ORDER BY source, external",
                )
                .bind(org.0)
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(MentionEntry {
                            source: r.try_get("source")?,
                            external: r.try_get("external")?,
                            user_id: Some(UserId(r.try_get("user_id")?)),
                        })
                    })
                    .collect()
            }

            async fn map_mentions(&self, org: OrgId, source: &str, externals: &[String]) -> Result<Vec<UserId>> {
                let externals = super::strings_json(externals);
                let sql = format!(
                    "SELECT DISTINCT user_id FROM mention_map WHERE org_id = $1 AND source = $2 AND external IN ({})",
                    Self::strings_from("$3")
                );
                let ids: Vec<i64> = sqlx::query_scalar(&sql)
                    .bind(org.0)
                    .bind(source)
                    .bind(externals)
                    .fetch_all(self.reader())
                    .await?;
                Ok(ids.into_iter().map(UserId).collect())
            }

            async fn set_robot_card(&self, robot: RobotId, object_key: &str, message: MessageId) -> Result<()> {
                sqlx::query(
                    "INSERT INTO robot_cards (robot_id, object_key, message_id, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (robot_id, object_key) DO UPDATE SET message_id = excluded.message_id, \
                     updated_at = excluded.updated_at",
                )
                .bind(robot.0)
                .bind(object_key)
                .bind(message.0)
                .bind(clock::now_ms())
                .execute(self.writer())
                .await?;
                Ok(())
            }
        }
    };
}

robot_store_impl!(SqliteStore, sqlx::sqlite::SqliteRow);
robot_store_impl!(PgStore, sqlx::postgres::PgRow);
