//! Storage of escalation policies and on-call rotations: each one JSON spec per row, owned by
//! an org. Both backends run the same statements, expanded by `oncall_store_impl!`.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, Result, SqliteStore, StoreError};
use crate::alerts::policy::{Policy, PolicySpec};
use crate::alerts::rotation::{Rotation, RotationSpec};
use crate::clock;
use crate::ids::{OrgId, PolicyId, RotationId};

#[async_trait]
pub trait OnCallStore: Send + Sync {
    async fn create_policy(&self, org: OrgId, name: &str, spec: &PolicySpec) -> Result<Policy>;
    async fn get_policy(&self, org: OrgId, id: PolicyId) -> Result<Policy>;
    async fn list_policies(
        &self,
        org: OrgId,
        after: Option<PolicyId>,
        limit: i64,
    ) -> Result<Vec<Policy>>;
    async fn save_policy(&self, policy: &Policy) -> Result<()>;
    async fn delete_policy(&self, org: OrgId, id: PolicyId) -> Result<()>;

    async fn create_rotation(
        &self,
        org: OrgId,
        name: &str,
        spec: &RotationSpec,
    ) -> Result<Rotation>;
    async fn get_rotation(&self, org: OrgId, id: RotationId) -> Result<Rotation>;
    async fn list_rotations(
        &self,
        org: OrgId,
        after: Option<RotationId>,
        limit: i64,
    ) -> Result<Vec<Rotation>>;
    async fn save_rotation(&self, rotation: &Rotation) -> Result<()>;
    async fn delete_rotation(&self, org: OrgId, id: RotationId) -> Result<()>;
}

/// Expands `OnCallStore` for a backend: its type and its database.
macro_rules! oncall_store_impl {
    ($store:ty, $db:ty) => {
        impl $store {
            fn rotation_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Rotation> {
                let spec: &str = row.try_get("spec")?;
                Ok(Rotation {
                    id: RotationId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    name: row.try_get("name")?,
                    spec: serde_json::from_str(spec)
                        .map_err(|e| anyhow::anyhow!("stored rotation spec: {e}"))?,
                    created_at_ms: row.try_get("created_at")?,
                })
            }

            fn policy_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Policy> {
                let spec: &str = row.try_get("spec")?;
                Ok(Policy {
                    id: PolicyId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    name: row.try_get("name")?,
                    spec: serde_json::from_str(spec)
                        .map_err(|e| anyhow::anyhow!("stored policy spec: {e}"))?,
                    created_at_ms: row.try_get("created_at")?,
                })
            }
        }

        #[async_trait]
        impl OnCallStore for $store {
            async fn create_policy(&self, org: OrgId, name: &str, spec: &PolicySpec) -> Result<Policy> {
                let text = serde_json::to_string(spec).map_err(anyhow::Error::from)?;
                let row = sqlx::query(
                    "INSERT INTO escalation_policies (org_id, name, spec, created_at) VALUES ($1, $2, $3, $4) \
                     RETURNING id, org_id, name, spec, created_at",
                )
                .bind(org.0)
                .bind(name)
                .bind(text)
                .bind(clock::now_ms())
                .fetch_one(self.writer())
                .await?;
                Self::policy_from_row(&row)
            }

            async fn get_policy(&self, org: OrgId, id: PolicyId) -> Result<Policy> {
                let row = sqlx::query(
                    "SELECT id, org_id, name, spec, created_at FROM escalation_policies WHERE id = $1 AND org_id = $2",
                )
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound("escalation policy"))?;
                Self::policy_from_row(&row)
            }

            async fn list_policies(&self, org: OrgId, after: Option<PolicyId>, limit: i64) -> Result<Vec<Policy>> {
                let rows = sqlx::query(
                    "SELECT id, org_id, name, spec, created_at FROM escalation_policies \
                     WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(org.0)
                .bind(after.map_or(0, |p| p.0))
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::policy_from_row).collect()
            }

            async fn save_policy(&self, policy: &Policy) -> Result<()> {
                let text = serde_json::to_string(&policy.spec).map_err(anyhow::Error::from)?;
                let updated = sqlx::query(
                    "UPDATE escalation_policies SET name = $1, spec = $2 WHERE id = $3 AND org_id = $4",
                )
                .bind(&policy.name)
                .bind(text)
                .bind(policy.id.0)
                .bind(policy.org_id.0)
                .execute(self.writer())
                .await?
                .rows_affected();
                if updated == 0 {
                    return Err(StoreError::NotFound("escalation policy"));
                }
                Ok(())
            }

            async fn delete_policy(&self, org: OrgId, id: PolicyId) -> Result<()> {
                let deleted = sqlx::query("DELETE FROM escalation_policies WHERE id = $1 AND org_id = $2")
                    .bind(id.0)
                    .bind(org.0)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound("escalation policy"));
                }
                Ok(())
            }

            async fn create_rotation(&self, org: OrgId, name: &str, spec: &RotationSpec) -> Result<Rotation> {
                let text = serde_json::to_string(spec).map_err(anyhow::Error::from)?;
                let row = sqlx::query(
                    "INSERT INTO rotations (org_id, name, spec, created_at) VALUES ($1, $2, $3, $4) \
                     RETURNING id, org_id, name, spec, created_at",
                )
                .bind(org.0)
                .bind(name)
                .bind(text)
                .bind(clock::now_ms())
                .fetch_one(self.writer())
                .await?;
                Self::rotation_from_row(&row)
            }

            async fn get_rotation(&self, org: OrgId, id: RotationId) -> Result<Rotation> {
                let row = sqlx::query(
                    "SELECT id, org_id, name, spec, created_at FROM rotations WHERE id = $1 AND org_id = $2",
                )
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound("rotation"))?;
                Self::rotation_from_row(&row)
            }

            async fn list_rotations(&self, org: OrgId, after: Option<RotationId>, limit: i64) -> Result<Vec<Rotation>> {
                let rows = sqlx::query(
                    "SELECT id, org_id, name, spec, created_at FROM rotations \
                     WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(org.0)
                .bind(after.map_or(0, |r| r.0))
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::rotation_from_row).collect()
            }

            async fn save_rotation(&self, rotation: &Rotation) -> Result<()> {
                let text = serde_json::to_string(&rotation.spec).map_err(anyhow::Error::from)?;
                let updated = sqlx::query("UPDATE rotations SET name = $1, spec = $2 WHERE id = $3 AND org_id = $4")
                    .bind(&rotation.name)
                    .bind(text)
                    .bind(rotation.id.0)
                    .bind(rotation.org_id.0)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                if updated == 0 {
                    return Err(StoreError::NotFound("rotation"));
                }
                Ok(())
            }

            async fn delete_rotation(&self, org: OrgId, id: RotationId) -> Result<()> {
                let deleted = sqlx::query("DELETE FROM rotations WHERE id = $1 AND org_id = $2")
                    .bind(id.0)
                    .bind(org.0)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound("rotation"));
                }
                Ok(())
            }

        }
    };
}

oncall_store_impl!(SqliteStore, sqlx::Sqlite);
oncall_store_impl!(PgStore, sqlx::Postgres);
