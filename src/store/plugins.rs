//! Storage of the plugin registry: content-addressed component bytes and each org's named,
//! versioned entries. Both backends run the same statements, expanded by `plugin_store_impl!`.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, Result, SqliteStore, StoreError};
use crate::clock;
use crate::ids::{OrgId, PluginId};
use crate::plugin::PluginStats;
use crate::robot::RobotSpec;

/// A plugin as registered; the component bytes are fetched separately (`plugin_wasm`).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRecord {
    pub id: PluginId,
    pub org_id: OrgId,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub world: String,
    pub size: i64,
    pub created_at_ms: i64,
    /// The calls counted in the store (the last second's may still be in memory).
    pub stats: PluginStats,
}

/// An upload that passed validation.
#[derive(Debug, Clone)]
pub struct NewPlugin<'a> {
    pub org_id: OrgId,
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    pub world: &'a str,
    pub wasm: &'a [u8],
}

#[async_trait]
pub trait PluginStore: Send + Sync {
    /// Registers a plugin; `Conflict` when the org already has this name and version.
    async fn create_plugin(&self, plugin: &NewPlugin<'_>) -> Result<PluginRecord>;
    async fn get_plugin(&self, org: OrgId, id: PluginId) -> Result<PluginRecord>;
    async fn list_plugins(
        &self,
        org: OrgId,
        after: Option<PluginId>,
        limit: i64,
    ) -> Result<Vec<PluginRecord>>;
    /// The component bytes of one of the org's plugins.
    async fn plugin_wasm(&self, org: OrgId, id: PluginId) -> Result<Vec<u8>>;
    /// Removes one of the org's plugins, its counters, and its bytes when no other entry
    /// shares them; `Conflict` (naming them) while robots of the org use it.
    async fn delete_plugin(&self, org: OrgId, id: PluginId) -> Result<()>;
    /// Adds counted calls to each plugin's stored counters.
    async fn add_plugin_stats(&self, deltas: &[(PluginId, PluginStats)]) -> Result<()>;
}

/// A registry row with its stored counters (zero before the first flush).
const COLUMNS: &str =
    "p.id, p.org_id, p.name, p.version, p.sha256, p.world, p.size, p.created_at, \
     COALESCE(s.calls, 0) AS calls, COALESCE(s.ok, 0) AS ok, COALESCE(s.rejected, 0) AS rejected, \
     COALESCE(s.deadline_exceeded, 0) AS deadline_exceeded, \
     COALESCE(s.memory_exceeded, 0) AS memory_exceeded, COALESCE(s.traps, 0) AS traps, \
     COALESCE(s.invalid_output, 0) AS invalid_output";
const FROM: &str = "plugins p LEFT JOIN plugin_stats s ON s.plugin_id = p.id";

/// The counters' columns, in `PluginStats` order.
const STAT_COLUMNS: [&str; 7] = [
    "calls",
    "ok",
    "rejected",
    "deadline_exceeded",
    "memory_exceeded",
    "traps",
    "invalid_output",
];

fn stat_values(s: &PluginStats) -> [i64; 7] {
    [
        s.calls,
        s.ok,
        s.rejected,
        s.deadline_exceeded,
        s.memory_exceeded,
        s.traps,
        s.invalid_output,
    ]
    .map(|n| n as i64)
}

/// `UPSERT` adding a delta to a plugin's counters (the same text on both backends).
fn add_stats_sql() -> String {
    let names = STAT_COLUMNS.join(", ");
    let params: Vec<String> = (2..=8).map(|i| format!("${i}")).collect();
    let sums: Vec<String> = STAT_COLUMNS
        .iter()
        .map(|c| format!("{c} = plugin_stats.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO plugin_stats (plugin_id, {names}) VALUES ($1, {}) \
         ON CONFLICT (plugin_id) DO UPDATE SET {}",
        params.join(", "),
        sums.join(", ")
    )
}

/// Names of the robots (of plugin kind) whose spec names `plugin`.
fn robots_using(rows: &[(i64, String, String)], plugin: PluginId) -> Vec<String> {
    rows.iter()
        .filter(|(_, _, spec)| {
            serde_json::from_str::<RobotSpec>(spec)
                .is_ok_and(|s| s.plugin_id.and_then(|p| p.parse::<PluginId>().ok()) == Some(plugin))
        })
        .map(|(robot, name, _)| format!("{name:?} (id {robot})"))
        .collect()
}

macro_rules! plugin_store_impl {
    ($store:ty, $row:ty) => {
        impl $store {
            fn plugin_from_row(row: &$row) -> Result<PluginRecord> {
                Ok(PluginRecord {
                    id: PluginId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    sha256: row.try_get("sha256")?,
                    world: row.try_get("world")?,
                    size: row.try_get("size")?,
                    created_at_ms: row.try_get("created_at")?,
                    stats: Self::plugin_stats_from_row(row)?,
                })
            }

            fn plugin_stats_from_row(row: &$row) -> Result<PluginStats> {
                let mut n = [0u64; 7];
                for (value, column) in n.iter_mut().zip(STAT_COLUMNS) {
                    *value = row.try_get::<i64, _>(column)?.max(0) as u64;
                }
                let [calls, ok, rejected, deadline_exceeded, memory_exceeded, traps, invalid_output] = n;
                Ok(PluginStats {
                    calls,
                    ok,
                    rejected,
                    deadline_exceeded,
                    memory_exceeded,
                    traps,
                    invalid_output,
                })
            }
        }

        #[async_trait]
        impl PluginStore for $store {
            async fn create_plugin(&self, p: &NewPlugin<'_>) -> Result<PluginRecord> {
                let mut tx = self.writer().begin().await?;
                sqlx::query(
                    "INSERT INTO plugin_blobs (sha256, wasm) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING",
                )
                .bind(p.sha256)
                .bind(p.wasm)
                .execute(&mut *tx)
                .await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO plugins (org_id, name, version, sha256, world, size, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (org_id, name, version) DO NOTHING RETURNING id",
                )
                .bind(p.org_id.0)
                .bind(p.name)
                .bind(p.version)
                .bind(p.sha256)
                .bind(p.world)
                .bind(p.wasm.len() as i64)
                .bind(clock::now_ms())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "plugin {:?} version {:?} exists; upload under a new version",
                        p.name, p.version
                    ))
                })?;
                let row = sqlx::query(&format!("SELECT {COLUMNS} FROM {FROM} WHERE p.id = $1"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Self::plugin_from_row(&row)
            }

            async fn get_plugin(&self, org: OrgId, id: PluginId) -> Result<PluginRecord> {
                let row = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM {FROM} WHERE p.id = $1 AND p.org_id = $2"
                ))
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound("plugin"))?;
                Self::plugin_from_row(&row)
            }

            async fn list_plugins(
                &self,
                org: OrgId,
                after: Option<PluginId>,
                limit: i64,
            ) -> Result<Vec<PluginRecord>> {
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM {FROM} WHERE p.org_id = $1 AND p.id > $2 ORDER BY p.id LIMIT $3"
                ))
                .bind(org.0)
                .bind(after.map_or(0, |p| p.0))
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::plugin_from_row).collect()
            }

            async fn plugin_wasm(&self, org: OrgId, id: PluginId) -> Result<Vec<u8>> {
                sqlx::query_scalar(
                    "SELECT b.wasm FROM plugins p JOIN plugin_blobs b ON b.sha256 = p.sha256 \
                     WHERE p.id = $1 AND p.org_id = $2",
                )
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound("plugin"))
            }

            async fn delete_plugin(&self, org: OrgId, id: PluginId) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                let sha256: String =
                    sqlx::query_scalar("SELECT sha256 FROM plugins WHERE id = $1 AND org_id = $2")
                        .bind(id.0)
                        .bind(org.0)
                        .fetch_optional(&mut *tx)
                        .await?
                        .ok_or(StoreError::NotFound("plugin"))?;
                let robots: Vec<(i64, String, String)> = sqlx::query_as(
                    "SELECT id, name, spec FROM robots WHERE org_id = $1 AND kind = 'plugin' ORDER BY id",
                )
                .bind(org.0)
                .fetch_all(&mut *tx)
                .await?;
                let users = robots_using(&robots, id);
                if !users.is_empty() {
                    return Err(StoreError::Conflict(format!(
                        "plugin {id} is used by robot {}: switch or delete those robots first",
                        users.join(", ")
                    )));
                }
                for statement in [
                    "DELETE FROM plugins WHERE id = $1",
                    "DELETE FROM plugin_stats WHERE plugin_id = $1",
                ] {
                    sqlx::query(statement).bind(id.0).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "DELETE FROM plugin_blobs WHERE sha256 = $1 \
                     AND NOT EXISTS (SELECT 1 FROM plugins WHERE sha256 = $1)",
                )
                .bind(&sha256)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn add_plugin_stats(&self, deltas: &[(PluginId, PluginStats)]) -> Result<()> {
                let sql = add_stats_sql();
                let mut tx = self.writer().begin().await?;
                for (id, delta) in deltas {
                    let mut query = sqlx::query(&sql).bind(id.0);
                    for value in stat_values(delta) {
                        query = query.bind(value);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

plugin_store_impl!(SqliteStore, sqlx::sqlite::SqliteRow);
plugin_store_impl!(PgStore, sqlx::postgres::PgRow);
