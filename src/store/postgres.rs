//! PostgreSQL, for operators who outgrow one machine. Several herald processes may share one
//! database: tasks are claimed with `FOR UPDATE SKIP LOCKED` plus a short lease, one
//! conversation's tasks strictly in order, and pts counters are locked in user order so
//! concurrent fanouts never deadlock each other.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use super::shared::shared_store_impl;
use super::*;
use crate::clock;
use crate::config::Config;
use crate::model::{Role, SenderKind};

/// How long a claimed task stays hidden from other processes before it is retried.
const LEASE_MS: i64 = 15_000;

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn open(config: &Config) -> anyhow::Result<PgStore> {
        let options: PgConnectOptions = config.database_url.parse()?;
        let options = options.log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(config.postgres.max_connections)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool })
    }

    pub(super) fn writer(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn reader(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn ids_from(param: &str) -> String {
        format!("SELECT CAST(value AS BIGINT) AS id FROM jsonb_array_elements_text(CAST({param} AS jsonb)) AS value")
    }

    pub(super) fn strings_from(param: &str) -> String {
        format!("SELECT value FROM jsonb_array_elements_text(CAST({param} AS jsonb)) AS value")
    }

    /// One transaction per message: PostgreSQL commits concurrent transactions together
    /// (its WAL flush is shared), so no grouping is needed here.
    async fn enqueue_message_impl(&self, message: &Message) -> Result<Enqueued> {
        let mut tx = self.writer().begin().await?;
        let enqueued = Self::enqueue_in(&mut tx, message, clock::now_ms()).await?;
        tx.commit().await?;
        Ok(enqueued)
    }

    /// Leases the head task of up to `limit` conversations of this lane. A conversation whose
    /// head is leased elsewhere is skipped entirely, which keeps its events in order.
    async fn claim_tasks_impl(&self, lane: u32, lanes: u32, limit: i64) -> Result<Vec<QueuedTask>> {
        let now = clock::now_ms();
        let rows = sqlx::query(
            "UPDATE tasks SET locked_until = $4 WHERE id IN ( \
               SELECT t.id FROM tasks t \
               WHERE t.conversation_id % $1 = $2 AND t.run_at <= $3 AND t.locked_until <= $3 \
                 AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.conversation_id = t.conversation_id AND o.id < t.id) \
               ORDER BY t.id LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING id, payload, attempts, run_at",
        )
        .bind(lanes as i64)
        .bind(lane as i64)
        .bind(now)
        .bind(now + LEASE_MS)
        .bind(limit)
        .fetch_all(self.writer())
        .await?;
        let mut tasks: Vec<QueuedTask> = rows
            .iter()
            .map(Self::queued_task_from_row)
            .collect::<Result<_>>()?;
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    /// One statement: lock the recipients' counters in user order, bump them, and insert the
    /// inbox rows from the bumped values.
    async fn fan_out_chunk_impl(&self, job: &ChunkJob<'_>) -> Result<ChunkOutcome> {
        let mut tx = self.writer().begin().await?;
        if !Self::claim_chunk_tx(&mut tx, job).await? {
            tx.rollback().await?;
            return Ok(ChunkOutcome::default());
        }
        if let Some(message) = job.new_message {
            Self::insert_message_tx(&mut tx, message, job.now_ms).await?;
        }
        let sql = format!(
            "WITH locked AS ( \
               SELECT p.user_id FROM user_pts p JOIN members m ON m.user_id = p.user_id \
               WHERE m.conversation_id = $1 AND m.user_id % $2 = $3 AND m.joined_task <= $7 \
               ORDER BY p.user_id FOR UPDATE OF p), \
             bumped AS ( \
               UPDATE user_pts p SET pts = p.pts + 1 FROM locked l WHERE p.user_id = l.user_id \
               RETURNING p.user_id, p.pts) \
             INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT user_id, pts, $4, $1, $5, $6 FROM bumped {}",
            if job.want_recipients {
                "RETURNING user_id"
            } else {
                ""
            }
        );
        let recipients: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(job.conversation_id.0)
            .bind(job.chunks as i64)
            .bind(job.chunk as i64)
            .bind(job.kind.code() as i32)
            .bind(job.ref_id)
            .bind(job.now_ms)
            .bind(job.task_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut recipients: Vec<UserId> = recipients.into_iter().map(UserId).collect();
        if job.chunk == 0 && !job.also_notify.is_empty() {
            recipients.extend(self.notify_non_members(&mut tx, job).await?);
        }
        tx.commit().await?;
        Ok(ChunkOutcome {
            applied: true,
            recipients,
        })
    }

    async fn notify_non_members(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        job: &ChunkJob<'_>,
    ) -> Result<Vec<UserId>> {
        let sql = format!(
            "WITH targets AS (SELECT id FROM ({}) AS ids WHERE id NOT IN \
               (SELECT user_id FROM members WHERE conversation_id = $1)), \
             bumped AS (UPDATE user_pts p SET pts = p.pts + 1 FROM targets t WHERE p.user_id = t.id \
               RETURNING p.user_id, p.pts) \
             INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT user_id, pts, $3, $1, $4, $5 FROM bumped RETURNING user_id",
            Self::ids_from("$2")
        );
        let ids: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(job.conversation_id.0)
            .bind(ids_json(job.also_notify))
            .bind(job.kind.code() as i32)
            .bind(job.ref_id)
            .bind(job.now_ms)
            .fetch_all(&mut **tx)
            .await?;
        Ok(ids.into_iter().map(UserId).collect())
    }
}

shared_store_impl!(PgStore, sqlx::Postgres);
