//! The embedded default: one SQLite file in the data directory, in WAL mode. One writer
//! connection (SQLite has a single writer anyway; one connection avoids busy retries) and a
//! small pool of readers that never block it. One herald process per file: `serve` holds a
//! lock on the data directory.
//!
//! Accepting a message is a group commit: every enqueue waiting while the writer syncs goes
//! into the next transaction together, and each caller is answered after that commit, so a
//! burst of webhooks costs one fsync per group instead of one per message.

use std::collections::HashMap;
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
    pending: Arc<Pending>,
    /// `fanout.direct_max_members`.
    direct_max_members: i64,
}

/// Enqueues waiting for a commit: the group commit loop takes them, and so does a fanout batch
/// about to commit (see `fan_out_batch_impl`), so that one commit and one fsync serve both.
#[derive(Default)]
struct Pending {
    queue: std::sync::Mutex<std::collections::VecDeque<PendingEnqueue>>,
    arrived: tokio::sync::Notify,
}

impl Pending {
    fn push(&self, enqueue: PendingEnqueue) {
        self.lock().push_back(enqueue);
        self.arrived.notify_one();
    }

    /// Up to `GROUP_COMMIT_MAX - group.len()` more, in arrival order.
    fn take_into(&self, group: &mut Vec<PendingEnqueue>) {
        let mut queue = self.lock();
        let n = queue
            .len()
            .min(GROUP_COMMIT_MAX.saturating_sub(group.len()));
        group.extend(queue.drain(..n));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<PendingEnqueue>> {
        // A panic while holding the lock leaves a consistent queue: keep using it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A message waiting for the next group commit, and where its answer goes.
struct PendingEnqueue {
    message: Message,
    answer: tokio::sync::oneshot::Sender<Result<Enqueued>>,
}

/// The most messages one group commit takes.
const GROUP_COMMIT_MAX: usize = 256;
/// How many times a group commit lets other tasks run to gather more of the group (`gather`).
const GATHER_YIELDS: usize = 2;

impl SqliteStore {
    /// Locks the rows a `SELECT` reads against concurrent deletes until commit (PostgreSQL;
    /// SQLite has one writer, which already excludes them).
    const FOR_SHARE: &'static str = "";

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
        // No ping before each acquire: the connection is a thread of this process, not a socket
        // that can die quietly, and the ping was one more hand-off to that thread per commit.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, CREATE_GROUP_NEW).await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.read_only(true))
            .await?;
        let pending = Arc::new(Pending::default());
        let direct_max_members = i64::from(config.fanout.direct_max_members);
        tokio::spawn(group_commit_loop(
            writer.clone(),
            pending.clone(),
            direct_max_members,
        ));
        Ok(SqliteStore {
            writer,
            reader,
            pending,
            direct_max_members,
        })
    }

    /// Queues the message for the next group commit and waits for it.
    async fn enqueue_message_impl(&self, message: &Message) -> Result<Enqueued> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let pending = PendingEnqueue {
            message: message.clone(),
            answer,
        };
        self.pending.push(pending);
        answered
            .await
            .map_err(|_| StoreError::Other(anyhow::anyhow!("the SQLite writer has stopped")))?
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
    /// conversations between workers and each lane runs its tasks one by one. The tasks come
    /// back as one JSON row, not a row each (each row is a hand-off between threads).
    async fn claim_tasks_impl(&self, lane: u32, lanes: u32, limit: i64) -> Result<Vec<QueuedTask>> {
        let claimed: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(id, json(payload), attempts, run_at, members, planned)) FROM ( \
             SELECT id, payload, attempts, run_at, \
             (SELECT member_count FROM conversations c WHERE c.id = tasks.conversation_id) AS members, \
             (SELECT COUNT(*) FROM fanout_plans p WHERE p.task_id = tasks.id) AS planned \
             FROM tasks WHERE conversation_id % $1 = $2 ORDER BY id LIMIT $3)",
        )
        .bind(lanes as i64)
        .bind(lane as i64)
        .bind(limit)
        .fetch_one(self.reader())
        .await?;
        type Claimed = (i64, Task, i64, i64, Option<i64>, i64);
        let rows: Vec<Claimed> =
            serde_json::from_str(&claimed).map_err(|e| anyhow::anyhow!("claimed tasks: {e}"))?;
        let mut tasks: Vec<QueuedTask> = rows
            .into_iter()
            .map(
                |(id, task, attempts, run_at_ms, members, planned)| QueuedTask {
                    id,
                    task,
                    attempts,
                    run_at_ms,
                    members: members.unwrap_or(0),
                    planned: planned != 0,
                },
            )
            .collect();
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    /// Set-based fanout: bump every recipient's pts, then insert their inbox rows from the
    /// bumped counters, all in one transaction (see LIMITS.md for why this shape is fastest).
    async fn fan_out_chunk_impl(&self, job: &ChunkJob<'_>) -> Result<ChunkOutcome> {
        let mut tx = self.writer().begin().await?;
        let Some(bot_events) = Self::claim_chunk_tx(&mut tx, job).await? else {
            tx.rollback().await?;
            return Ok(ChunkOutcome::default());
        };
        for message in job.run_messages() {
            // Written at enqueue; this covers tasks queued by versions that wrote it here.
            Self::insert_message_tx(&mut tx, message, job.now_ms).await?;
        }
        let (member_pts, follower_pts) = if job.followers.is_empty() {
            (Self::fan_out_one_tx(&mut tx, job).await?, Vec::new())
        } else {
            Self::fan_out_run_tx(&mut tx, job).await?
        };
        let mut recipients = written_to(&member_pts, &follower_pts);
        if job.chunk == 0 && !job.also_notify.is_empty() {
            recipients.extend(self.notify_non_members(&mut tx, job).await?);
        }
        tx.commit().await?;
        Ok(ChunkOutcome {
            applied: true,
            recipients,
            member_pts,
            follower_pts,
            bot_events,
        })
    }

    /// A single message's chunk: bump the recipients' counters, then insert their rows from
    /// the bumped values.
    async fn fan_out_one_tx(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        job: &ChunkJob<'_>,
    ) -> Result<MemberPts> {
        sqlx::query(
            "UPDATE user_pts SET pts = pts + 1 WHERE user_id IN \
             (SELECT user_id FROM members WHERE conversation_id = $1 AND user_id >= $2 AND user_id < $3 AND joined_task <= $4)",
        )
        .bind(job.conversation_id.0)
        .bind(job.first_user)
        .bind(job.end_user)
        .bind(job.task_id)
        .execute(&mut **tx)
        .await?;
        let insert = format!(
            "INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT p.user_id, p.pts, $4, $1, $5, $6 FROM members m JOIN user_pts p ON p.user_id = m.user_id \
             WHERE m.conversation_id = $1 AND m.user_id >= $2 AND m.user_id < $3 AND m.joined_task <= $7 {}",
            if job.want_recipients { "RETURNING user_id, pts" } else { "" }
        );
        let recipients: Vec<(i64, i64)> = sqlx::query_as(&insert)
            .bind(job.conversation_id.0)
            .bind(job.first_user)
            .bind(job.end_user)
            .bind(job.kind.code() as i32)
            .bind(job.ref_id)
            .bind(job.now_ms)
            .bind(job.task_id)
            .fetch_all(&mut **tx)
            .await?;
        Ok(recipients
            .into_iter()
            .map(|(user, pts)| (UserId(user), pts))
            .collect())
    }

    /// A run's chunk, as on PostgreSQL: one bump per recipient by the number of the run's
    /// messages they get (those queued from the task that added them on, a tail of the run),
    /// so message `k` of `K` lands at `pts - K + k`. `$7` holds the run as `[[task, ref], …]`.
    async fn fan_out_run_tx(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        job: &ChunkJob<'_>,
    ) -> Result<(MemberPts, Vec<MemberPts>)> {
        let refs = job.run_refs();
        let tasks = job.run_task_ids();
        let items: Vec<[i64; 2]> = tasks.iter().zip(&refs).map(|(t, r)| [*t, *r]).collect();
        let items = serde_json::to_string(&items).map_err(anyhow::Error::from)?;
        let count = refs.len() as i64;
        let last = tasks.last().copied().unwrap_or(job.task_id);
        sqlx::query(
            "UPDATE user_pts SET pts = pts + ( \
               SELECT CASE WHEN m.joined_task <= $4 THEN $5 \
                 ELSE (SELECT COUNT(*) FROM json_each($6) i WHERE i.value ->> 0 >= m.joined_task) END \
               FROM members m WHERE m.conversation_id = $1 AND m.user_id = user_pts.user_id) \
             WHERE user_id IN (SELECT user_id FROM members WHERE conversation_id = $1 \
               AND user_id >= $2 AND user_id < $3 AND joined_task <= $7)",
        )
        .bind(job.conversation_id.0)
        .bind(job.first_user)
        .bind(job.end_user)
        .bind(job.task_id)
        .bind(count)
        .bind(&items)
        .bind(last)
        .execute(&mut **tx)
        .await?;
        let insert = format!(
            "INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT p.user_id, p.pts - $5 + i.key + 1, $4, $1, i.value ->> 1, $6 \
             FROM members m JOIN user_pts p ON p.user_id = m.user_id \
             JOIN json_each($7) i ON i.value ->> 0 >= m.joined_task \
             WHERE m.conversation_id = $1 AND m.user_id >= $2 AND m.user_id < $3 AND m.joined_task <= $8 {}",
            if job.want_recipients {
                "RETURNING user_id, pts, ref_id"
            } else {
                ""
            }
        );
        let written: Vec<(i64, i64, i64)> = sqlx::query_as(&insert)
            .bind(job.conversation_id.0)
            .bind(job.first_user)
            .bind(job.end_user)
            .bind(job.kind.code() as i32)
            .bind(count)
            .bind(job.now_ms)
            .bind(&items)
            .bind(last)
            .fetch_all(&mut **tx)
            .await?;
        Ok(split_run_pts(&refs, written))
    }

    /// The batched form of `fan_out_chunk_impl` for new messages to small groups: tasks whose
    /// row is already gone (an earlier run) are skipped; each member's counter is bumped once
    /// by the number of the batch's messages they receive, and their rows take the bumped
    /// values in queue order. One command does it all (which tasks are live and which of their
    /// groups have bots, the counters, the rows, the written pts as one JSON row, the task
    /// deletes); the outgoing-bot hook runs after it, in the same transaction, only when a
    /// group has bots.
    async fn fan_out_batch_impl(&self, jobs: &[ChunkJob<'_>]) -> Result<Vec<ChunkOutcome>> {
        let mut tx = self.writer().begin().await?;
        let all: Vec<&ChunkJob<'_>> = jobs.iter().collect();
        let want = jobs.iter().any(|j| j.want_recipients);
        let rows = sqlx::query(if want {
            BATCH_FANOUT_SQL_RETURNING
        } else {
            BATCH_FANOUT_SQL
        })
        .bind(batch_rows_json(&all))
        .bind(jobs.first().map_or(0, |j| j.now_ms))
        .fetch_all(&mut *tx)
        .await?;
        let json_column = |row: usize, column: usize| -> Result<&str> {
            let row = rows
                .get(row)
                .ok_or_else(|| anyhow::anyhow!("batch fanout: row {row} missing"))?;
            Ok(row.try_get::<&str, _>(column)?)
        };
        let parse = |text: &str| -> Result<Vec<serde_json::Value>> {
            Ok(serde_json::from_str(text).map_err(|e| anyhow::anyhow!("batch fanout: {e}"))?)
        };
        let live: std::collections::HashSet<i64> = parse(json_column(0, 0)?)?
            .iter()
            .filter_map(serde_json::Value::as_i64)
            .collect();
        let with_bots: std::collections::HashSet<i64> = parse(json_column(0, 1)?)?
            .iter()
            .filter_map(serde_json::Value::as_i64)
            .collect();
        let written: Vec<(i64, i64, i64)> = if want {
            serde_json::from_str(json_column(1, 0)?)
                .map_err(|e| anyhow::anyhow!("batch fanout: {e}"))?
        } else {
            Vec::new()
        };
        let mut bot_events = false;
        for job in jobs {
            if live.contains(&job.task_id) && with_bots.contains(&job.conversation_id.0) {
                bot_events |= Self::enqueue_bot_events_tx(&mut tx, job).await?;
            }
        }
        // Enqueues waiting for the writer commit with this batch: one commit (and fsync) for
        // both. If they fail, so does the batch (its tasks are retried one by one).
        let mut group = Vec::new();
        self.pending.take_into(&mut group);
        if group.is_empty() {
            tx.commit().await?;
        } else {
            let enqueued = Self::enqueue_group_tx(&mut tx, &group, self.direct_max_members).await;
            let committed = match enqueued {
                Ok(outcomes) => tx
                    .commit()
                    .await
                    .map(|()| outcomes)
                    .map_err(StoreError::from),
                Err(e) => Err(e),
            };
            let failed = committed.as_ref().err().map(|e| e.to_string());
            answer(group, committed);
            if let Some(why) = failed {
                return Err(StoreError::Other(anyhow::anyhow!("{why}")));
            }
        }
        Ok(batch_outcomes(jobs, &live, written, bot_events))
    }

    /// The group commit's statements inside an open transaction.
    async fn enqueue_group_tx(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        group: &[PendingEnqueue],
        direct_max_members: i64,
    ) -> Result<Vec<Enqueued>> {
        let (query, messages) = group_query(group, GROUP_ENQUEUE_SQL, direct_max_members)?;
        let rows = query.fetch_all(&mut **tx).await?;
        enqueue_outcomes(&messages, &rows)
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

/// Commits waiting enqueues in groups: takes what has queued up (at most
/// `GROUP_COMMIT_MAX`), writes all in one transaction and answers each caller after the commit.
/// A failed commit fails the whole group; nothing in it was acknowledged. The writer connection
/// is taken before the group, so enqueues that wait while a fanout batch holds it go into that
/// batch's commit instead.
async fn group_commit_loop(writer: SqlitePool, pending: Arc<Pending>, direct_max_members: i64) {
    loop {
        pending.arrived.notified().await;
        loop {
            let conn = match writer.acquire().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "group commit: no writer connection; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let mut group = Vec::new();
            gather(&pending, &mut group).await;
            if group.is_empty() {
                break;
            }
            let results = commit_group(conn, &group, direct_max_members).await;
            answer(group, results);
        }
    }
}

/// Hands each waiting caller its outcome, or the group's error.
fn answer(group: Vec<PendingEnqueue>, results: Result<Vec<Enqueued>>) {
    match results {
        Ok(results) => {
            for (p, result) in group.into_iter().zip(results) {
                let _ = p.answer.send(Ok(result));
            }
        }
        Err(e) => {
            let why = e.to_string();
            for p in group {
                let _ = p
                    .answer
                    .send(Err(StoreError::Other(anyhow::anyhow!("{why}"))));
            }
        }
    }
}

/// Takes what is waiting into the group. Each time the queue runs dry it first lets the other
/// ready tasks run once: right after a commit the answered requests' connections send their
/// next requests, and without the yield the loop would wake on the first of them and commit it
/// nearly alone, paying a commit (and an fsync) per request or two.
async fn gather(pending: &Pending, group: &mut Vec<PendingEnqueue>) {
    let mut yields = 0;
    loop {
        let before = group.len();
        pending.take_into(group);
        if group.len() >= GROUP_COMMIT_MAX {
            return;
        }
        if group.len() == before {
            if yields == GATHER_YIELDS {
                return;
            }
            yields += 1;
            tokio::task::yield_now().await;
        }
    }
}

/// The batch fanout's statements (see `fan_out_batch_impl`). `$1` holds the batch as
/// `[seq, conversation, task, kind, ref]` rows; `b` keeps the ones whose task is still queued.
macro_rules! batch_fanout_sql {
    ($returning:expr) => {
        concat!(
            "SELECT (SELECT json_group_array(id) FROM tasks WHERE id IN \
               (SELECT json_extract(value, '$[2]') FROM json_each($1))), \
             (SELECT json_group_array(DISTINCT conversation_id) FROM bot_installs WHERE conversation_id IN \
               (SELECT json_extract(value, '$[1]') FROM json_each($1))); \
             WITH b AS (", batch_fanout_sql!(@b), "), \
               r AS (SELECT m.user_id AS user_id, COUNT(*) AS n FROM b \
                 JOIN members m ON m.conversation_id = b.conv AND m.joined_task <= b.task GROUP BY m.user_id) \
             UPDATE user_pts SET pts = pts + r.n FROM r WHERE user_pts.user_id = r.user_id; \
             WITH b AS (", batch_fanout_sql!(@b), "), ", batch_fanout_sql!(@r), " \
             INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT r.user_id, p.pts - r.n + r.k, r.kind, r.conv, r.ref, $2 \
             FROM r JOIN user_pts p ON p.user_id = r.user_id WHERE true; ",
            $returning,
            "DELETE FROM tasks WHERE id IN (SELECT json_extract(value, '$[2]') FROM json_each($1));"
        )
    };
    (@b) => {
        "SELECT json_extract(value, '$[0]') AS seq, json_extract(value, '$[1]') AS conv, \
         json_extract(value, '$[2]') AS task, json_extract(value, '$[3]') AS kind, \
         json_extract(value, '$[4]') AS ref FROM json_each($1) \
         WHERE json_extract(value, '$[2]') IN (SELECT id FROM tasks)"
    };
    (@r) => {
        "r AS (SELECT m.user_id AS user_id, b.conv AS conv, b.kind AS kind, b.ref AS ref, \
           ROW_NUMBER() OVER (PARTITION BY m.user_id ORDER BY b.seq) AS k, \
           COUNT(*) OVER (PARTITION BY m.user_id) AS n \
           FROM b JOIN members m ON m.conversation_id = b.conv AND m.joined_task <= b.task)"
    };
}

const BATCH_FANOUT_SQL: &str = batch_fanout_sql!("");
/// The same, with the written `(user, pts, ref)` rows as one JSON row (for live connections).
const BATCH_FANOUT_SQL_RETURNING: &str = batch_fanout_sql!(concat!(
    "WITH b AS (",
    batch_fanout_sql!(@b),
    "), ",
    batch_fanout_sql!(@r),
    " SELECT json_group_array(json_array(r.user_id, p.pts - r.n + r.k, r.ref)) \
     FROM r JOIN user_pts p ON p.user_id = r.user_id; "
));

/// Writes the group as one command to the writer's thread: `BEGIN IMMEDIATE`, the dedupe
/// claims, the messages, their tasks, `COMMIT`. Every statement takes the whole group as one
/// JSON array and the only row that comes back is one JSON array of dedupe holders, because
/// each command and each returned row is a hand-off between threads, and on a loaded 2-core
/// machine those hand-offs, not SQLite, were most of a webhook's cost.
async fn commit_group(
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    group: &[PendingEnqueue],
    direct_max_members: i64,
) -> Result<Vec<Enqueued>> {
    let (query, messages) = group_query(group, GROUP_COMMIT_SQL, direct_max_members)?;
    let rows = one_command(conn, query).await?;
    enqueue_outcomes(&messages, &rows)
}

/// The group's statements with its rows bound: `sql` is `GROUP_COMMIT_SQL`, or its body alone
/// inside a transaction that is already open.
fn group_query<'a>(
    group: &'a [PendingEnqueue],
    sql: &'static str,
    direct_max_members: i64,
) -> Result<(
    sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'static>>,
    Vec<&'a Message>,
)> {
    let now = clock::now_ms();
    let messages: Vec<&Message> = group.iter().map(|p| &p.message).collect();
    let keyed: Vec<(i64, &str, i64)> = messages
        .iter()
        .filter_map(|m| Some((m.conversation_id.0, m.dedupe_key.as_deref()?, m.id.0)))
        .collect();
    let arrivals: Vec<(i64, i64, Option<&str>, i64)> = messages
        .iter()
        .map(|m| {
            let key = m.dedupe_key.as_deref();
            (m.id.0, m.conversation_id.0, key, m.created_at_ms)
        })
        .collect();
    let query = sqlx::query(sql)
        .bind(to_json(&keyed)?)
        .bind(message_rows_json(&messages)?)
        .bind(now)
        .bind(to_json(&arrivals)?)
        .bind(direct_max_members)
        .bind(EventKind::MessageCreated.code());
    Ok((query, messages))
}

/// Which of the group's messages were new, from its row of dedupe holders, and which of those
/// were written to their members directly, from the row that follows it.
fn enqueue_outcomes(
    messages: &[&Message],
    rows: &[sqlx::sqlite::SqliteRow],
) -> Result<Vec<Enqueued>> {
    let column = |row: usize, column: usize| -> Result<&str> {
        let row = rows
            .get(row)
            .ok_or_else(|| anyhow::anyhow!("group commit: row {row} missing"))?;
        Ok(row.try_get::<&str, _>(column)?)
    };
    let parse = |what: &str, text: &str| -> Result<Vec<(i64, i64)>> {
        Ok(serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{what}: {e}"))?)
    };
    let holders: HashMap<i64, i64> = parse("dedupe holders", column(0, 0)?)?
        .into_iter()
        .collect();
    let direct: Vec<i64> =
        serde_json::from_str(column(1, 0)?).map_err(|e| anyhow::anyhow!("direct messages: {e}"))?;
    let mut delivered: HashMap<i64, Vec<(UserId, i64)>> =
        direct.into_iter().map(|id| (id, Vec::new())).collect();
    let written: Vec<(i64, i64, i64)> =
        serde_json::from_str(column(1, 1)?).map_err(|e| anyhow::anyhow!("direct rows: {e}"))?;
    for (message, user, pts) in written {
        if let Some(members) = delivered.get_mut(&message) {
            members.push((UserId(user), pts));
        }
    }
    Ok(messages
        .iter()
        .map(|m| match holders.get(&m.id.0) {
            Some(&holder) if holder != m.id.0 => Enqueued::Duplicate(MessageId(holder)),
            _ => match delivered.remove(&m.id.0) {
                Some(members) => Enqueued::Delivered(m.id, members),
                None => Enqueued::New(m.id),
            },
        })
        .collect())
}

/// The group commit. A message is new unless its dedupe key was already held (earlier, or by
/// an earlier message of the group, in arrival order); only new messages are written. A new
/// message to a small idle group (`direct` below) is fanned out right here, like a batch
/// fanout: each member's counter goes up by the number of the group's messages they get and
/// their rows take the bumped values in arrival order. Every other new message gets a task,
/// whose ids follow arrival order.
const GROUP_COMMIT_SQL: &str = concat!("BEGIN IMMEDIATE; ", group_enqueue_sql!(), "COMMIT;");

/// The writer connection's scratch table for the group commit's new messages (see
/// `group_enqueue_sql`): in memory, private to the connection, emptied by each group.
const CREATE_GROUP_NEW: &str = "CREATE TEMP TABLE IF NOT EXISTS group_new \
    (seq INTEGER NOT NULL, id INTEGER NOT NULL, conv INTEGER NOT NULL, at INTEGER NOT NULL, \
     direct INTEGER NOT NULL)";

/// The group commit's statements without `BEGIN`/`COMMIT`, for a transaction already open.
const GROUP_ENQUEUE_SQL: &str = group_enqueue_sql!();

/// `$1` holds the dedupe claims as `[conversation, key, message]` rows, `$2` the message rows
/// (`message_rows_json`), `$3` the time, `$4` the messages as `[message, conversation, key,
/// created]` in arrival order, `$5` the largest group written directly and `$6` the
/// `message.created` kind. A task's payload is built from its message's row (see
/// `task_payload_sql`). Returns one row of dedupe holders, then one row of the directly
/// written messages and their `[message, user, pts]`.
macro_rules! group_enqueue_sql {
    () => {
        concat!(
            "INSERT INTO dedupe (conversation_id, dedupe_key, message_id, created_at) \
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), $3 \
      FROM json_each($1) WHERE true ORDER BY key \
      ON CONFLICT (conversation_id, dedupe_key) DO NOTHING; \
    SELECT json_group_array(json_array(json_extract(k.value, '$[2]'), d.message_id)) \
      FROM json_each($1) k JOIN dedupe d \
      ON d.conversation_id = json_extract(k.value, '$[0]') AND d.dedupe_key = json_extract(k.value, '$[1]'); \
    INSERT INTO messages (id, org_id, conversation_id, sender_id, sender_kind, sender_name, \
      msgtype, content, at, thread_key, dedupe_key, recalled, created_at, updated_at) \
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
      json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
      json_extract(value, '$[6]'), json_extract(value, '$[7]'), json_extract(value, '$[8]'), \
      json_extract(value, '$[9]'), json_extract(value, '$[10]'), 0, json_extract(value, '$[11]'), $3 \
      FROM json_each($2) m WHERE json_extract(m.value, '$[10]') IS NULL OR EXISTS ( \
        SELECT 1 FROM dedupe d WHERE d.conversation_id = json_extract(m.value, '$[2]') \
        AND d.dedupe_key = json_extract(m.value, '$[10]') AND d.message_id = json_extract(m.value, '$[0]')) \
      ORDER BY key; \
    DELETE FROM temp.group_new; \
    WITH ", group_enqueue_sql!(@new), " \
    INSERT INTO temp.group_new (seq, id, conv, at, direct) \
      SELECT n.seq, n.id, n.conv, n.at, ", group_enqueue_sql!(@direct), " FROM n; \
    WITH r AS (SELECT m.user_id AS user_id, COUNT(*) AS n FROM temp.group_new d \
        JOIN members m ON m.conversation_id = d.conv WHERE d.direct GROUP BY m.user_id) \
    UPDATE user_pts SET pts = pts + r.n FROM r WHERE user_pts.user_id = r.user_id; \
    WITH ", group_enqueue_sql!(@rows), " \
    INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
      SELECT r.user_id, p.pts - r.n + r.k, $6, r.conv, r.id, r.at \
      FROM r JOIN user_pts p ON p.user_id = r.user_id WHERE true; \
    WITH ", group_enqueue_sql!(@rows), " \
    SELECT (SELECT json_group_array(id) FROM temp.group_new WHERE direct), \
      (SELECT json_group_array(json_array(r.id, r.user_id, p.pts - r.n + r.k)) \
        FROM r JOIN user_pts p ON p.user_id = r.user_id); \
    INSERT INTO tasks (conversation_id, payload, attempts, run_at, locked_until, created_at) \
      SELECT m.conversation_id, ", task_payload_sql!(), ", 0, $3, 0, $3 \
      FROM temp.group_new n JOIN messages m ON m.id = n.id WHERE NOT n.direct ORDER BY n.seq; "
        )
    };
    // `n`: the group's new messages (`seq` is arrival order), kept in `temp.group_new` for
    // the statements that follow (worked out once, not once per statement).
    (@new) => {
        "n AS (SELECT key AS seq, json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS conv, \
           json_extract(value, '$[3]') AS at FROM json_each($4) x WHERE json_extract(x.value, '$[2]') IS NULL OR EXISTS ( \
             SELECT 1 FROM dedupe k WHERE k.conversation_id = json_extract(x.value, '$[1]') \
             AND k.dedupe_key = json_extract(x.value, '$[2]') AND k.message_id = json_extract(x.value, '$[0]')))"
    };
    // Whether a new message is written directly: to a group small enough, with no bot to hear
    // it (bot deliveries are queued by the lanes) and nothing of its own queued (a message
    // never overtakes its group's queue). Decided before the group's tasks are written, so
    // all of a conversation's messages in the group go the same way.
    (@direct) => {
        "($5 > 0 \
           AND COALESCE((SELECT c.member_count FROM conversations c WHERE c.id = n.conv), $5 + 1) <= $5 \
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.conversation_id = n.conv) \
           AND NOT EXISTS (SELECT 1 FROM bot_installs b WHERE b.conversation_id = n.conv))"
    };
    // Each member's rows: `k` of the `n` directly written messages they get.
    (@rows) => {
        "r AS (SELECT m.user_id AS user_id, d.conv AS conv, d.id AS id, d.at AS at, \
           ROW_NUMBER() OVER (PARTITION BY m.user_id ORDER BY d.seq) AS k, \
           COUNT(*) OVER (PARTITION BY m.user_id) AS n \
           FROM temp.group_new d JOIN members m ON m.conversation_id = d.conv WHERE d.direct)"
    };
}
use group_enqueue_sql;

/// A queued message's task (`Task::Post`) as serde writes it, built from its `messages` row
/// `m`: the row was just written, so the group binds each message once, not twice.
macro_rules! task_payload_sql {
    () => {
        "json_object('type', 'post', 'message', json_object( \
      'id', CAST(m.id AS TEXT), 'org_id', CAST(m.org_id AS TEXT), \
      'conversation_id', CAST(m.conversation_id AS TEXT), \
      'sender', json_object('id', m.sender_id, 'kind', m.sender_kind, 'name', m.sender_name), \
      'msgtype', m.msgtype, 'content', json(m.content), 'at', json(m.at), \
      'thread_key', m.thread_key, 'dedupe_key', m.dedupe_key, 'created_at_ms', m.created_at))"
    };
}
use task_payload_sql;

/// Runs a query that opens and commits its own transaction (`BEGIN …; …; COMMIT;`) as one
/// command on one writer connection. A failed statement stops the command with the
/// transaction still open, so it is rolled back before the connection goes back to the pool;
/// a connection that cannot even roll back is closed instead of reused.
async fn one_command<'q>(
    mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
) -> Result<Vec<sqlx::sqlite::SqliteRow>> {
    match query.fetch_all(&mut *conn).await {
        Ok(rows) => Ok(rows),
        Err(e) => {
            if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                let none_open = rollback.to_string().contains("no transaction is active");
                if !none_open {
                    tracing::warn!(error = %rollback, "rollback failed; closing the connection");
                    let _ = sqlx::Connection::close(conn.detach()).await;
                }
            }
            Err(e.into())
        }
    }
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    Ok(serde_json::to_string(value).map_err(anyhow::Error::from)?)
}

/// The messages as the JSON rows the group insert reads, columns in its order.
fn message_rows_json(messages: &[&Message]) -> Result<String> {
    type Row<'a> = (
        i64,
        i64,
        i64,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        String,
        String,
        Option<&'a str>,
        Option<&'a str>,
        i64,
    );
    let rows: Vec<Row<'_>> = messages
        .iter()
        .map(|m| {
            Ok((
                m.id.0,
                m.org_id.0,
                m.conversation_id.0,
                m.sender.id.as_str(),
                m.sender.kind.as_str(),
                m.sender.name.as_str(),
                m.content.msgtype(),
                m.content.body_string(),
                serde_json::to_string(&m.at)?,
                m.thread_key.as_deref(),
                m.dedupe_key.as_deref(),
                m.created_at_ms,
            ))
        })
        .collect::<std::result::Result<_, serde_json::Error>>()
        .map_err(anyhow::Error::from)?;
    to_json(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{At, Content, Sender, Text};

    fn message(id: i64, org: OrgId, conversation: ConversationId, key: &str) -> Message {
        Message {
            id: MessageId(id),
            org_id: org,
            conversation_id: conversation,
            sender: Sender {
                id: "1".into(),
                kind: SenderKind::User,
                name: "admin".into(),
            },
            content: Content::Text(Text {
                content: format!("message {id}"),
            }),
            at: At::default(),
            thread_key: None,
            dedupe_key: Some(key.into()),
            recalled: false,
            created_at_ms: 1,
        }
    }

    /// A fresh store (kept in the returned directory) with a group of its admin alone and
    /// nothing queued; groups
    /// of up to `direct_max_members` are written by the enqueue itself.
    async fn store_with_group(
        direct_max_members: u32,
    ) -> (
        tempfile::TempDir,
        SqliteStore,
        OrgId,
        UserId,
        ConversationId,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.data_dir = dir.path().to_path_buf();
        config.fanout.direct_max_members = direct_max_members;
        let store = SqliteStore::open(&config).await.unwrap();
        let org = store.bootstrap().await.unwrap().default_org.id;
        let admin = store.find_user(org, "admin").await.unwrap().id;
        let conversation = store
            .create_conversation(&NewConversation {
                org_id: org,
                kind: ConversationKind::Group,
                title: "g".into(),
                owner_id: admin,
                members: vec![admin],
                bot: None,
            })
            .await
            .unwrap()
            .id;
        // No lane runs here: drop the group's announcements, as if they were done.
        sqlx::query("DELETE FROM tasks")
            .execute(store.writer())
            .await
            .unwrap();
        (dir, store, org, admin, conversation)
    }

    /// A group commit whose statement fails leaves nothing behind (its dedupe claim is rolled
    /// back with it) and the writer connection keeps working: the one-command transaction is
    /// closed before the connection goes back to the pool.
    #[tokio::test]
    async fn a_failed_group_commit_rolls_back_and_the_writer_goes_on() {
        let (_dir, store, org, _, conversation) = store_with_group(0).await;
        let first = message(10, org, conversation, "a");
        assert_eq!(
            store.enqueue_message_impl(&first).await.unwrap(),
            Enqueued::New(MessageId(10))
        );
        // Same message id, new key: the dedupe claim succeeds, the message insert fails.
        let clash = message(10, org, conversation, "b");
        assert!(store.enqueue_message_impl(&clash).await.is_err());
        assert_eq!(
            store.dedupe_lookup(conversation, "b").await.unwrap(),
            None,
            "the failed group's dedupe claim was rolled back"
        );
        let next = message(11, org, conversation, "b");
        assert_eq!(
            store.enqueue_message_impl(&next).await.unwrap(),
            Enqueued::New(MessageId(11))
        );
        let again = message(12, org, conversation, "a");
        assert_eq!(
            store.enqueue_message_impl(&again).await.unwrap(),
            Enqueued::Duplicate(MessageId(10))
        );
    }

    /// An enqueue waiting while a fanout batch holds the writer is committed by that batch's
    /// transaction and answered only after it commits; a clash in it fails the batch too, and
    /// leaves nothing of either behind. The enqueues are queued without waking the group
    /// commit loop, so only the batch can take them.
    #[tokio::test]
    async fn a_fanout_batch_commits_the_enqueues_waiting_for_it() {
        let (_dir, store, org, admin, conversation) = store_with_group(0).await;
        let waiting = |id: i64, key: &str| {
            let (answer, answered) = tokio::sync::oneshot::channel();
            store.pending.lock().push_back(PendingEnqueue {
                message: message(id, org, conversation, key),
                answer,
            });
            answered
        };
        let batch = |task_id: i64, ref_id: i64| ChunkJob {
            task_id,
            kind: crate::model::EventKind::MessageCreated,
            conversation_id: conversation,
            ref_id,
            new_message: None,
            chunk: 0,
            chunks: 1,
            first_user: i64::MIN,
            end_user: i64::MAX,
            also_notify: &[],
            want_recipients: false,
            now_ms: 1,
            followers: &[],
        };
        let queued_task = |message: i64| {
            let store = &store;
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT id FROM tasks WHERE CAST(json_extract(payload, '$.message.id') AS INTEGER) = $1",
                )
                .bind(message)
                .fetch_optional(store.reader())
                .await
                .unwrap()
            }
        };

        store
            .enqueue_message_impl(&message(20, org, conversation, "a"))
            .await
            .unwrap();
        let first_task = queued_task(20).await.unwrap();
        // Lets the loop go back to waiting for a wake-up, which `waiting` never sends.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answered = waiting(21, "b");
        store
            .fan_out_batch_impl(&[batch(first_task, 20)])
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .expect("the batch answered the waiting enqueue");
        assert_eq!(answer.unwrap().unwrap(), Enqueued::New(MessageId(21)));
        assert!(queued_task(20).await.is_none(), "the batch's task is done");
        let second_task = queued_task(21)
            .await
            .expect("the waiting message is queued");

        // Message id 21 again: its insert fails, so the batch fails and is rolled back too.
        let answered = waiting(21, "c");
        assert!(store
            .fan_out_batch_impl(&[batch(second_task, 21)])
            .await
            .is_err());
        let answer = tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .expect("the batch answered the waiting enqueue");
        assert!(answer.unwrap().is_err());
        assert_eq!(
            queued_task(21).await,
            Some(second_task),
            "the batch was rolled back"
        );
        assert_eq!(store.dedupe_lookup(conversation, "c").await.unwrap(), None);
        assert_eq!(
            store.head_pts(admin).await.unwrap(),
            1,
            "message 20 only (no lane runs here)"
        );
    }

    /// A message to a small group with nothing queued is in its members' inboxes when the
    /// enqueue answers, with consecutive pts and no task left behind; the group's next message
    /// goes the same way.
    #[tokio::test]
    async fn a_message_to_an_idle_small_group_is_written_by_its_enqueue() {
        let (_dir, store, org, admin, conversation) = store_with_group(100).await;
        let before = store.head_pts(admin).await.unwrap();
        for (id, key) in [(30, "a"), (31, "b")] {
            let answer = store
                .enqueue_message_impl(&message(id, org, conversation, key))
                .await
                .unwrap();
            let pts = before + id - 29;
            assert_eq!(
                answer,
                Enqueued::Delivered(MessageId(id), vec![(admin, pts)])
            );
        }
        assert_eq!(store.head_pts(admin).await.unwrap(), before + 2);
        assert_eq!(queued_tasks(&store, conversation).await, 0);
        let again = store
            .enqueue_message_impl(&message(32, org, conversation, "a"))
            .await
            .unwrap();
        assert_eq!(again, Enqueued::Duplicate(MessageId(30)));
        assert_eq!(store.head_pts(admin).await.unwrap(), before + 2);
    }

    /// A message never overtakes its group's queue: while the group has a task queued (a
    /// retry, a membership change), its new messages are queued behind it, and so is a message
    /// to a group larger than `direct_max_members`.
    #[tokio::test]
    async fn a_message_behind_a_queued_task_or_to_a_larger_group_is_queued() {
        let (_dir, store, org, admin, conversation) = store_with_group(100).await;
        let before = store.head_pts(admin).await.unwrap();
        sqlx::query(
            "INSERT INTO tasks (conversation_id, payload, attempts, run_at, locked_until, created_at) \
             VALUES ($1, '{}', 3, 0, 0, 0)",
        )
        .bind(conversation.0)
        .execute(store.writer())
        .await
        .unwrap();
        let sent = message(40, org, conversation, "a");
        assert_queued_not_written(&store, &sent, admin, before, 2).await;

        let (_dir, store, org, admin, conversation) = store_with_group(0).await;
        let sent = message(41, org, conversation, "a");
        assert_queued_not_written(&store, &sent, admin, before, 1).await;
    }

    /// Enqueues `sent` and checks that it was queued (the conversation then holds `queued`
    /// tasks) and that `member`'s pts did not move from `before`.
    async fn assert_queued_not_written(
        store: &SqliteStore,
        sent: &Message,
        member: UserId,
        before: i64,
        queued: i64,
    ) {
        let answer = store.enqueue_message_impl(sent).await.unwrap();
        assert_eq!(answer, Enqueued::New(sent.id));
        assert_eq!(store.head_pts(member).await.unwrap(), before);
        assert_eq!(queued_tasks(store, sent.conversation_id).await, queued);
    }

    async fn queued_tasks(store: &SqliteStore, conversation: ConversationId) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE conversation_id = $1")
            .bind(conversation.0)
            .fetch_one(store.reader())
            .await
            .unwrap()
    }
    /// A queued message's task payload is built by SQL from its row; it must read back as the
    /// message serde would have written, every field included.
    #[tokio::test]
    async fn a_queued_message_task_carries_the_message_as_serde_writes_it() {
        let (_dir, store, org, _, conversation) = store_with_group(0).await;
        let mut sent = message(50, org, conversation, "k\"ey");
        sent.sender.kind = SenderKind::Robot;
        sent.sender.name = "CI \u{1F916} \"bot\"".into();
        sent.thread_key = Some("repo#1".into());
        sent.at = At {
            at_user_ids: vec!["7".into()],
            at_mobiles: vec!["+86-1".into()],
            is_at_all: true,
        };
        sent.content = Content::Text(Text {
            content: "line\nwith \\ \"quotes\" and <b>".into(),
        });
        let answer = store.enqueue_message_impl(&sent).await.unwrap();
        assert_eq!(answer, Enqueued::New(MessageId(50)));
        let payload: String =
            sqlx::query_scalar("SELECT payload FROM tasks WHERE conversation_id = $1")
                .bind(conversation.0)
                .fetch_one(store.reader())
                .await
                .unwrap();
        let task: Task = serde_json::from_str(&payload).unwrap();
        let expected = Task::Post {
            message: Box::new(MessageRecord::from(&sent)),
        };
        assert_eq!(
            serde_json::to_value(&task).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
    }

    /// Groups of any size write each of their messages once.
    #[tokio::test]
    async fn groups_of_every_size_write_each_message_once() {
        let (_dir, store, org, admin, conversation) = store_with_group(100).await;
        let before = store.head_pts(admin).await.unwrap();
        let mut next = 100;
        for len in [1usize, 2, 3, 5, 17, 256] {
            let mut answers = Vec::new();
            for _ in 0..len {
                next += 1;
                let (answer, answered) = tokio::sync::oneshot::channel();
                store.pending.lock().push_back(PendingEnqueue {
                    message: message(next, org, conversation, &format!("k{next}")),
                    answer,
                });
                answers.push(answered);
            }
            store.pending.arrived.notify_one();
            for answered in answers {
                let answer = answered.await.unwrap().unwrap();
                assert!(matches!(answer, Enqueued::Delivered(_, ref to) if to.len() == 1));
            }
        }
        let written = next - 100;
        assert_eq!(store.head_pts(admin).await.unwrap(), before + written);
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE id > 100")
            .fetch_one(store.reader())
            .await
            .unwrap();
        assert_eq!(count, written);
    }

    /// A head claimed while a lower task id of its conversation was still queued (on
    /// PostgreSQL, ids are taken at insert and can commit out of order) takes no followers: a
    /// sender's next message must not ride ahead of its previous one. The lowest task does.
    #[tokio::test]
    async fn no_message_rides_ahead_of_a_lower_queued_task() {
        let (_dir, store, org, _, conversation) = store_with_group(0).await;
        // Two members, so a chunk of one makes the task a multi-chunk one (runs need that).
        let other = NewUser {
            name: "other".into(),
            mobile: None,
            email: None,
            staff_id: None,
            role: None,
        };
        let other = store.create_users(org, &[other]).await.unwrap()[0].id;
        store
            .add_members(org, conversation, &[other])
            .await
            .unwrap();
        sqlx::query("DELETE FROM tasks")
            .execute(store.writer())
            .await
            .unwrap();
        for id in [60, 61, 62] {
            store
                .enqueue_message_impl(&message(id, org, conversation, &format!("k{id}")))
                .await
                .unwrap();
        }
        let tasks: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM tasks WHERE conversation_id = $1 ORDER BY id")
                .bind(conversation.0)
                .fetch_all(store.reader())
                .await
                .unwrap();
        assert_eq!(tasks.len(), 3);
        let riders = |plan: ChunkPlan| plan.followers.iter().map(|f| f.id).collect::<Vec<_>>();
        let plan = store
            .chunk_plan(tasks[1], conversation, 1, 15)
            .await
            .unwrap();
        assert_eq!(
            riders(plan),
            Vec::<i64>::new(),
            "task {} is still queued",
            tasks[0]
        );
        let plan = store
            .chunk_plan(tasks[0], conversation, 1, 15)
            .await
            .unwrap();
        assert_eq!(riders(plan), tasks[1..].to_vec());
    }
}
