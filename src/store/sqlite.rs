//! The embedded default: one SQLite file in the data directory, in WAL mode. One writer
//! connection (SQLite has a single writer anyway; one connection avoids busy retries) and a
//! small pool of readers that never block it. One herald process per file: `serve` holds a
//! lock on the data directory.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::shared::shared_store_impl;
use super::*;
use crate::clock;
use crate::config::{Config, Synchronous};
use crate::model::{Role, SenderKind};

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `herald.db` in the data directory and migrates it.
    pub async fn open(config: &Config) -> anyhow::Result<SqliteStore> {
        std::fs::create_dir_all(&config.data_dir)?;
        let path = config.data_dir.join("herald.db");
        let synchronous = match config.sqlite.synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            .statement_cache_capacity(256);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    pub(super) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(super) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Rows `id` of a bound JSON array of integers.
    pub(super) fn ids_from(param: &str) -> String {
        format!("SELECT CAST(value AS INTEGER) AS id FROM json_each({param})")
    }

    /// Rows of a bound JSON array of strings.
    pub(super) fn strings_from(param: &str) -> String {
        format!("SELECT value FROM json_each({param})")
    }

    /// Only this process writes the file (the data-dir lock), and it wakes its own
    /// connections.
    async fn watch_inbox_impl(&self) -> Result<Option<tokio::sync::mpsc::Receiver<InboxChange>>> {
        Ok(None)
    }

    /// The process is the only one on this file, so claiming is a plain read: lanes split the
    /// conversations between workers and each lane runs its tasks one by one.
    async fn claim_tasks_impl(&self, lane: u32, lanes: u32, limit: i64) -> Result<Vec<QueuedTask>> {
        let rows = sqlx::query(
            "SELECT id, payload, attempts, run_at FROM tasks \
             WHERE conversation_id % $1 = $2 ORDER BY id LIMIT $3",
        )
        .bind(lanes as i64)
        .bind(lane as i64)
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(Self::queued_task_from_row).collect()
    }

    /// Set-based fanout: bump every recipient's pts, then insert their inbox rows from the
    /// bumped counters, all in one transaction (see LIMITS.md for why this shape is fastest).
    async fn fan_out_chunk_impl(&self, job: &ChunkJob<'_>) -> Result<ChunkOutcome> {
        let mut tx = self.writer().begin().await?;
        if !Self::claim_chunk_tx(&mut tx, job).await? {
            tx.rollback().await?;
            return Ok(ChunkOutcome::default());
        }
        if let Some(message) = job.new_message {
            Self::insert_message_tx(&mut tx, message, job.now_ms).await?;
        }
        sqlx::query(
            "UPDATE user_pts SET pts = pts + 1 WHERE user_id IN \
             (SELECT user_id FROM members WHERE conversation_id = $1 AND user_id % $2 = $3 AND joined_task <= $4)",
        )
        .bind(job.conversation_id.0)
        .bind(job.chunks as i64)
        .bind(job.chunk as i64)
        .bind(job.task_id)
        .execute(&mut *tx)
        .await?;
        let insert = format!(
            "INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT p.user_id, p.pts, $4, $1, $5, $6 FROM members m JOIN user_pts p ON p.user_id = m.user_id \
             WHERE m.conversation_id = $1 AND m.user_id % $2 = $3 AND m.joined_task <= $7 {}",
            if job.want_recipients { "RETURNING user_id, pts" } else { "" }
        );
        let recipients: Vec<(i64, i64)> = sqlx::query_as(&insert)
            .bind(job.conversation_id.0)
            .bind(job.chunks as i64)
            .bind(job.chunk as i64)
            .bind(job.kind.code() as i32)
            .bind(job.ref_id)
            .bind(job.now_ms)
            .bind(job.task_id)
            .fetch_all(&mut *tx)
            .await?;
        let member_pts: Vec<(UserId, i64)> = recipients
            .into_iter()
            .map(|(user, pts)| (UserId(user), pts))
            .collect();
        let mut recipients: Vec<UserId> = member_pts.iter().map(|(user, _)| *user).collect();
        if job.chunk == 0 && !job.also_notify.is_empty() {
            recipients.extend(self.notify_non_members(&mut tx, job).await?);
        }
        tx.commit().await?;
        Ok(ChunkOutcome {
            applied: true,
            recipients,
            member_pts,
        })
    }

    /// Writes the event to `also_notify` users who are not (or no longer) members.
    async fn notify_non_members(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        job: &ChunkJob<'_>,
    ) -> Result<Vec<UserId>> {
        let targets = format!(
            "SELECT id FROM ({}) AS ids WHERE id NOT IN \
             (SELECT user_id FROM members WHERE conversation_id = $1)",
            Self::ids_from("$2")
        );
        sqlx::query(&format!(
            "UPDATE user_pts SET pts = pts + 1 WHERE user_id IN ({targets})"
        ))
        .bind(job.conversation_id.0)
        .bind(ids_json(job.also_notify))
        .execute(&mut **tx)
        .await?;
        let ids: Vec<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT p.user_id, p.pts, $3, $1, $4, $5 FROM user_pts p WHERE p.user_id IN ({targets}) \
             RETURNING user_id"
        ))
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

shared_store_impl!(SqliteStore, sqlx::Sqlite);
