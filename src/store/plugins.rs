//! Storage of the plugin registry: content-addressed component bytes and each org's named,
//! versioned entries. Both backends run the same statements, expanded by `plugin_store_impl!`.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, Result, SqliteStore, StoreError};
use crate::clock;
use crate::ids::{OrgId, PluginId};

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
}

const COLUMNS: &str = "id, org_id, name, version, sha256, world, size, created_at";

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
                let row = sqlx::query(&format!(
                    "INSERT INTO plugins (org_id, name, version, sha256, world, size, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (org_id, name, version) DO NOTHING RETURNING {COLUMNS}"
                ))
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
                tx.commit().await?;
                Self::plugin_from_row(&row)
            }

            async fn get_plugin(&self, org: OrgId, id: PluginId) -> Result<PluginRecord> {
                let row = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM plugins WHERE id = $1 AND org_id = $2"
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
                    "SELECT {COLUMNS} FROM plugins WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3"
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
        }
    };
}

plugin_store_impl!(SqliteStore, sqlx::sqlite::SqliteRow);
plugin_store_impl!(PgStore, sqlx::postgres::PgRow);
