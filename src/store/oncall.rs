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

/// One row of a spec table (`escalation_policies`, `rotations`): an org's named JSON spec.
struct SpecRow {
    id: i64,
    org_id: i64,
    name: String,
    spec: String,
    created_at: i64,
}

impl SpecRow {
    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        serde_json::from_str(&self.spec)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("stored {what} spec: {e}")))
    }

    fn into_policy(self) -> Result<Policy> {
        Ok(Policy {
            spec: self.parse(POLICIES.what)?,
            id: PolicyId(self.id),
            org_id: OrgId(self.org_id),
            name: self.name,
            created_at_ms: self.created_at,
        })
    }

    fn into_rotation(self) -> Result<Rotation> {
        Ok(Rotation {
            spec: self.parse(ROTATIONS.what)?,
            id: RotationId(self.id),
            org_id: OrgId(self.org_id),
            name: self.name,
            created_at_ms: self.created_at,
        })
    }
}

/// A spec table and what its rows are called in errors.
struct SpecTable {
    table: &'static str,
    what: &'static str,
}

const POLICIES: SpecTable = SpecTable {
    table: "escalation_policies",
    what: "escalation policy",
};
const ROTATIONS: SpecTable = SpecTable {
    table: "rotations",
    what: "rotation",
};

fn spec_text<T: serde::Serialize>(spec: &T) -> Result<String> {
    serde_json::to_string(spec).map_err(|e| StoreError::Other(e.into()))
}

/// Expands `OnCallStore` for a backend: its type and its database. Policies and rotations
/// share one set of statements over their spec tables.
macro_rules! oncall_store_impl {
    ($store:ty, $db:ty) => {
        impl $store {
            fn spec_row(row: &<$db as sqlx::Database>::Row) -> Result<SpecRow> {
                Ok(SpecRow {
                    id: row.try_get("id")?,
                    org_id: row.try_get("org_id")?,
                    name: row.try_get("name")?,
                    spec: row.try_get("spec")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            async fn create_spec(&self, t: &SpecTable, org: OrgId, name: &str, spec: String) -> Result<SpecRow> {
                let row = sqlx::query(&format!(
                    "INSERT INTO {} (org_id, name, spec, created_at) VALUES ($1, $2, $3, $4) \
                     RETURNING id, org_id, name, spec, created_at",
                    t.table
                ))
                .bind(org.0)
                .bind(name)
                .bind(spec)
                .bind(clock::now_ms())
                .fetch_one(self.writer())
                .await?;
                Self::spec_row(&row)
            }

            async fn get_spec(&self, t: &SpecTable, org: OrgId, id: i64) -> Result<SpecRow> {
                let row = sqlx::query(&format!(
                    "SELECT id, org_id, name, spec, created_at FROM {} WHERE id = $1 AND org_id = $2",
                    t.table
                ))
                .bind(id)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound(t.what))?;
                Self::spec_row(&row)
            }

            async fn list_specs(&self, t: &SpecTable, org: OrgId, after: i64, limit: i64) -> Result<Vec<SpecRow>> {
                let rows = sqlx::query(&format!(
                    "SELECT id, org_id, name, spec, created_at FROM {} \
                     WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    t.table
                ))
                .bind(org.0)
                .bind(after)
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::spec_row).collect()
            }

            async fn save_spec(&self, t: &SpecTable, org: OrgId, id: i64, name: &str, spec: String) -> Result<()> {
                let updated = sqlx::query(&format!(
                    "UPDATE {} SET name = $1, spec = $2 WHERE id = $3 AND org_id = $4",
                    t.table
                ))
                .bind(name)
                .bind(spec)
                .bind(id)
                .bind(org.0)
                .execute(self.writer())
                .await?
                .rows_affected();
                if updated == 0 {
                    return Err(StoreError::NotFound(t.what));
                }
                Ok(())
            }

            async fn delete_spec(&self, t: &SpecTable, org: OrgId, id: i64) -> Result<()> {
                let deleted = sqlx::query(&format!("DELETE FROM {} WHERE id = $1 AND org_id = $2", t.table))
                    .bind(id)
                    .bind(org.0)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound(t.what));
                }
                Ok(())
            }
        }

        #[async_trait]
        impl OnCallStore for $store {
            async fn create_policy(&self, org: OrgId, name: &str, spec: &PolicySpec) -> Result<Policy> {
                self.create_spec(&POLICIES, org, name, spec_text(spec)?).await?.into_policy()
            }

            async fn get_policy(&self, org: OrgId, id: PolicyId) -> Result<Policy> {
                self.get_spec(&POLICIES, org, id.0).await?.into_policy()
            }

            async fn list_policies(&self, org: OrgId, after: Option<PolicyId>, limit: i64) -> Result<Vec<Policy>> {
                let rows = self.list_specs(&POLICIES, org, after.map_or(0, |p| p.0), limit).await?;
                rows.into_iter().map(SpecRow::into_policy).collect()
            }

            async fn save_policy(&self, policy: &Policy) -> Result<()> {
                let spec = spec_text(&policy.spec)?;
                self.save_spec(&POLICIES, policy.org_id, policy.id.0, &policy.name, spec).await
            }

            async fn delete_policy(&self, org: OrgId, id: PolicyId) -> Result<()> {
                self.delete_spec(&POLICIES, org, id.0).await
            }

            async fn create_rotation(&self, org: OrgId, name: &str, spec: &RotationSpec) -> Result<Rotation> {
                self.create_spec(&ROTATIONS, org, name, spec_text(spec)?).await?.into_rotation()
            }

            async fn get_rotation(&self, org: OrgId, id: RotationId) -> Result<Rotation> {
                self.get_spec(&ROTATIONS, org, id.0).await?.into_rotation()
            }

            async fn list_rotations(&self, org: OrgId, after: Option<RotationId>, limit: i64) -> Result<Vec<Rotation>> {
                let rows = self.list_specs(&ROTATIONS, org, after.map_or(0, |r| r.0), limit).await?;
                rows.into_iter().map(SpecRow::into_rotation).collect()
            }

            async fn save_rotation(&self, rotation: &Rotation) -> Result<()> {
                let spec = spec_text(&rotation.spec)?;
                self.save_spec(&ROTATIONS, rotation.org_id, rotation.id.0, &rotation.name, spec).await
            }

            async fn delete_rotation(&self, org: OrgId, id: RotationId) -> Result<()> {
                self.delete_spec(&ROTATIONS, org, id.0).await
            }
        }
    };
}

oncall_store_impl!(SqliteStore, sqlx::Sqlite);
oncall_store_impl!(PgStore, sqlx::Postgres);
