//! PostgreSQL, for operators who outgrow one machine. Several herald processes may share one
//! database: tasks are claimed with `FOR UPDATE SKIP LOCKED` plus a short lease, one
//! conversation's tasks strictly in order, and pts counters are updated in user order so
//! concurrent fanouts do not deadlock each other.

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

/// The channel a fanout notifies on commit; other processes wake their connections from it.
const INBOX_CHANNEL: &str = "herald_inbox";
/// NOTIFY payloads must stay under 8,000 bytes; past this many extra users the payload says
/// "wake every member" instead of naming them.
const MAX_NOTIFIED_USERS: usize = 200;

pub struct PgStore {
    pool: PgPool,
    /// Tags this process's notifications, so it does not wake its connections twice.
    origin: u64,
}

impl PgStore {
    /// Locks the rows a `SELECT` reads against concurrent deletes until commit (PostgreSQL;
    /// SQLite has one writer, which already excludes them).
    const FOR_SHARE: &'static str = " FOR SHARE";

    /// Claims the message's dedupe key (if any) and queues its Post task inside `tx`;
    /// the caller commits.
    async fn enqueue_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        message: &Message,
        now: i64,
    ) -> Result<Enqueued> {
        if let Some(key) = &message.dedupe_key {
            let claimed = sqlx::query(
                "INSERT INTO dedupe (conversation_id, dedupe_key, message_id, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (conversation_id, dedupe_key) DO NOTHING",
            )
            .bind(message.conversation_id.0)
            .bind(key)
            .bind(message.id.0)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                let existing: i64 = sqlx::query_scalar(
                    "SELECT message_id FROM dedupe WHERE conversation_id = $1 AND dedupe_key = $2",
                )
                .bind(message.conversation_id.0)
                .bind(key)
                .fetch_one(&mut **tx)
                .await?;
                return Ok(Enqueued::Duplicate(MessageId(existing)));
            }
        }
        // The message row is written with its task, not by the fanout: a card
        // update or a recall that arrives before the fanout has run then finds the
        // message, and its event follows the post in the same lane.
        let record = MessageRecord::from(message);
        Self::insert_message_tx(tx, &record, now).await?;
        let task = Task::Post {
            message: Box::new(record),
        };
        Self::enqueue_tx(tx, &task, now).await?;
        Ok(Enqueued::New(message.id))
    }

    fn queued_task_from_row(row: &<sqlx::Postgres as sqlx::Database>::Row) -> Result<QueuedTask> {
        let payload: &str = row.try_get("payload")?;
        Ok(QueuedTask {
            id: row.try_get("id")?,
            task: task_from_payload(payload)?,
            attempts: row.try_get("attempts")?,
            run_at_ms: row.try_get("run_at")?,
            members: row.try_get::<Option<i64>, _>("members")?.unwrap_or(0),
            planned: row.try_get::<Option<i64>, _>("planned")?.unwrap_or(0) != 0,
        })
    }

    /// A batch's `claim_chunk_tx`: deletes the task rows and queues outgoing-bot events
    /// for the tasks it deleted; returns their ids (the tasks this run owns) and whether
    /// any delivery was queued.
    async fn claim_batch_tx(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        jobs: &[ChunkJob<'_>],
    ) -> Result<(std::collections::HashSet<i64>, bool)> {
        let task_ids: Vec<i64> = jobs.iter().map(|j| j.task_id).collect();
        let live: std::collections::HashSet<i64> = sqlx::query_scalar(&format!(
            "DELETE FROM tasks WHERE id IN ({}) RETURNING id",
            Self::ids_from("$1")
        ))
        .bind(serde_json::to_string(&task_ids).map_err(anyhow::Error::from)?)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
        let conversations: Vec<i64> = jobs.iter().map(|j| j.conversation_id.0).collect();
        let with_bots: std::collections::HashSet<i64> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT conversation_id FROM bot_installs WHERE conversation_id IN ({})",
            Self::ids_from("$1")
        ))
        .bind(serde_json::to_string(&conversations).map_err(anyhow::Error::from)?)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
        let mut queued = false;
        for job in jobs {
            if live.contains(&job.task_id) && with_bots.contains(&job.conversation_id.0) {
                queued |= Self::enqueue_bot_events_tx(tx, job).await?;
            }
        }
        Ok((live, queued))
    }

    pub async fn open(config: &Config) -> anyhow::Result<PgStore> {
        let options: PgConnectOptions = config.database_url.parse()?;
        let options = options.log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(config.postgres.max_connections)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PgStore {
            pool,
            origin: rand::random(),
        })
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
             RETURNING id, payload, attempts, run_at, \
               (SELECT member_count FROM conversations c WHERE c.id = tasks.conversation_id) AS members, \
             (SELECT COUNT(*) FROM fanout_plans p WHERE p.task_id = tasks.id) AS planned",
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

    /// Retries a chunk that lost a deadlock: the statement orders its row locks, so one is
    /// rare (a plan the planner was not allowed to pick), and the chunk is idempotent.
    async fn fan_out_chunk_impl(&self, job: &ChunkJob<'_>) -> Result<ChunkOutcome> {
        let mut attempt = 0;
        loop {
            match self.fan_out_chunk_once(job).await {
                Err(StoreError::Db(e)) if is_lock_conflict(&e) && attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(
                        chunk = job.chunk,
                        attempt,
                        "fanout lost a lock conflict; retrying"
                    );
                }
                other => return other,
            }
        }
    }

    /// One statement bumps the recipients' counters and inserts the inbox rows from the bumped
    /// values. Concurrent fanouts to overlapping groups must take the counters' row locks in
    /// one order or they deadlock: the recipients come sorted by user id and, with hash and
    /// merge joins off for this transaction, drive a nested loop over the counters' primary
    /// key, so each row is locked in user order as it is updated. An explicit
    /// `SELECT … FOR UPDATE` pass would do the same at the cost of a second write (and WAL
    /// record) per member.
    async fn fan_out_chunk_once(&self, job: &ChunkJob<'_>) -> Result<ChunkOutcome> {
        let mut tx = self.writer().begin().await?;
        let Some(bot_events) = Self::claim_chunk_tx(&mut tx, job).await? else {
            tx.rollback().await?;
            return Ok(ChunkOutcome::default());
        };
        for message in job.run_messages() {
            // Written at enqueue; this covers tasks queued by versions that wrote it here.
            Self::insert_message_tx(&mut tx, message, job.now_ms).await?;
        }
        sqlx::query(
            "SELECT set_config('enable_hashjoin', 'off', true), \
                    set_config('enable_mergejoin', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        let (member_pts, follower_pts) = if job.followers.is_empty() {
            (Self::fan_out_one_tx(&mut tx, job).await?, Vec::new())
        } else {
            Self::fan_out_run_tx(&mut tx, job).await?
        };
        let mut recipients = written_to(&member_pts, &follower_pts);
        if job.chunk == 0 && !job.also_notify.is_empty() {
            recipients.extend(self.notify_non_members(&mut tx, job).await?);
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(INBOX_CHANNEL)
            .bind(self.inbox_notice(job))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ChunkOutcome {
            applied: true,
            recipients,
            member_pts,
            follower_pts,
            bot_events,
        })
    }

    /// A single message's chunk: one statement bumps the recipients' counters and inserts
    /// their rows from the bumped values (see `fan_out_chunk_once` for the lock order).
    async fn fan_out_one_tx(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        job: &ChunkJob<'_>,
    ) -> Result<MemberPts> {
        let sql = format!(
            "WITH recipients AS MATERIALIZED ( \
               SELECT m.user_id FROM members m \
               WHERE m.conversation_id = $1 AND m.user_id >= $2 AND m.user_id < $3 AND m.joined_task <= $7 \
               ORDER BY m.user_id), \
             bumped AS ( \
               UPDATE user_pts p SET pts = p.pts + 1 FROM recipients r WHERE p.user_id = r.user_id \
               RETURNING p.user_id, p.pts) \
             INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT user_id, pts, $4, $1, $5, $6 FROM bumped {}",
            if job.want_recipients {
                "RETURNING user_id, pts"
            } else {
                ""
            }
        );
        let recipients: Vec<(i64, i64)> = sqlx::query_as(&sql)
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

    /// A run's chunk: each recipient's counter is bumped once, by the number of the run's
    /// messages they get, and their rows take the bumped values in queue order. A member gets
    /// the messages queued from the task that added them on (`joined_task`), always a tail of
    /// the run, so message `k` of `K` lands at `pts - K + k` for every recipient. Returns the
    /// written pts per message (head, then followers) when recipients were asked for.
    async fn fan_out_run_tx(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        job: &ChunkJob<'_>,
    ) -> Result<(MemberPts, Vec<MemberPts>)> {
        let refs = job.run_refs();
        let tasks = job.run_task_ids();
        let sql = format!(
            "WITH items AS (SELECT i.ref, i.task, i.k FROM unnest($5::bigint[], $7::bigint[]) \
               WITH ORDINALITY AS i(ref, task, k)), \
             recipients AS MATERIALIZED ( \
               SELECT m.user_id, m.joined_task, \
                 CASE WHEN m.joined_task <= $9 THEN $8::bigint \
                      ELSE (SELECT COUNT(*) FROM items WHERE items.task >= m.joined_task) END AS n \
               FROM members m \
               WHERE m.conversation_id = $1 AND m.user_id >= $2 AND m.user_id < $3 AND m.joined_task <= $10 \
               ORDER BY m.user_id), \
             bumped AS ( \
               UPDATE user_pts p SET pts = p.pts + r.n FROM recipients r WHERE p.user_id = r.user_id \
               RETURNING p.user_id, p.pts, r.joined_task) \
             INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT b.user_id, b.pts - $8::bigint + i.k, $4, $1, i.ref, $6 \
             FROM bumped b JOIN items i ON i.task >= b.joined_task {}",
            if job.want_recipients {
                "RETURNING user_id, pts, ref_id"
            } else {
                ""
            }
        );
        let written: Vec<(i64, i64, i64)> = sqlx::query_as(&sql)
            .bind(job.conversation_id.0)
            .bind(job.first_user)
            .bind(job.end_user)
            .bind(job.kind.code() as i32)
            .bind(&refs)
            .bind(job.now_ms)
            .bind(&tasks)
            .bind(refs.len() as i64)
            .bind(job.task_id)
            .bind(tasks.last().copied().unwrap_or(job.task_id))
            .fetch_all(&mut **tx)
            .await?;
        Ok(split_run_pts(&refs, written))
    }

    /// Retries a batch that lost a lock conflict, like a single chunk.
    async fn fan_out_batch_impl(&self, jobs: &[ChunkJob<'_>]) -> Result<Vec<ChunkOutcome>> {
        let mut attempt = 0;
        loop {
            match self.fan_out_batch_once(jobs).await {
                Err(StoreError::Db(e)) if is_lock_conflict(&e) && attempt < 3 => attempt += 1,
                other => return other,
            }
        }
    }

    /// The batched form of `fan_out_chunk_once` for new messages to small groups: tasks already
    /// gone (an earlier run, or another process) are skipped; each member's counter is bumped
    /// once, in user order as in a single chunk, by the number of the batch's messages they
    /// receive, and their rows take the bumped values in queue order.
    async fn fan_out_batch_once(&self, jobs: &[ChunkJob<'_>]) -> Result<Vec<ChunkOutcome>> {
        let mut tx = self.writer().begin().await?;
        let (live, bot_events) = Self::claim_batch_tx(&mut tx, jobs).await?;
        let applied: Vec<&ChunkJob<'_>> =
            jobs.iter().filter(|j| live.contains(&j.task_id)).collect();
        let rows = batch_rows_json(&applied);
        let batch = "WITH b AS (SELECT (r->>0)::bigint AS seq, (r->>1)::bigint AS conv, (r->>2)::bigint AS task, \
                     (r->>3)::int AS kind, (r->>4)::bigint AS ref FROM jsonb_array_elements($1::jsonb) r)";
        sqlx::query(
            "SELECT set_config('enable_hashjoin', 'off', true), \
                    set_config('enable_mergejoin', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "{batch}, r AS MATERIALIZED (SELECT m.user_id, COUNT(*) AS n FROM b \
               JOIN members m ON m.conversation_id = b.conv AND m.joined_task <= b.task \
               GROUP BY m.user_id ORDER BY m.user_id) \
             UPDATE user_pts p SET pts = p.pts + r.n FROM r WHERE p.user_id = r.user_id"
        ))
        .bind(&rows)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "SELECT set_config('enable_hashjoin', 'on', true), \
                    set_config('enable_mergejoin', 'on', true)",
        )
        .execute(&mut *tx)
        .await?;
        let written: Vec<(i64, i64, i64)> = sqlx::query_as(&format!(
            "{batch}, r AS (SELECT m.user_id, b.conv, b.kind, b.ref, \
               ROW_NUMBER() OVER (PARTITION BY m.user_id ORDER BY b.seq) AS k, \
               COUNT(*) OVER (PARTITION BY m.user_id) AS n \
               FROM b JOIN members m ON m.conversation_id = b.conv AND m.joined_task <= b.task) \
             INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             SELECT r.user_id, p.pts - r.n + r.k, r.kind, r.conv, r.ref, $2 \
             FROM r JOIN user_pts p ON p.user_id = r.user_id \
             RETURNING user_id, pts, ref_id"
        ))
        .bind(&rows)
        .bind(jobs.first().map_or(0, |j| j.now_ms))
        .fetch_all(&mut *tx)
        .await?;
        let notices: Vec<String> = applied.iter().map(|job| self.inbox_notice(job)).collect();
        sqlx::query("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n")
            .bind(INBOX_CHANNEL)
            .bind(&notices)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(batch_outcomes(jobs, &live, written, bot_events))
    }

    /// `origin:conversation[:user,user,…]`; delivered to listeners only if the chunk commits.
    fn inbox_notice(&self, job: &ChunkJob<'_>) -> String {
        let mut notice = format!("{}:{}", self.origin, job.conversation_id.0);
        if job.chunk == 0 && !job.also_notify.is_empty() {
            let users: Vec<String> = job
                .also_notify
                .iter()
                .take(MAX_NOTIFIED_USERS)
                .map(|u| u.0.to_string())
                .collect();
            notice.push(':');
            notice.push_str(&users.join(","));
        }
        notice
    }

    /// Listens for other processes' inbox notices. The listener reconnects by itself; a
    /// notice lost while it does costs a feed's poll interval, never an event.
    async fn watch_inbox_impl(&self) -> Result<Option<tokio::sync::mpsc::Receiver<InboxChange>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(INBOX_CHANNEL).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let origin = self.origin;
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notice) => {
                        if let Some(change) = parse_inbox_notice(notice.payload(), origin) {
                            if tx.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "inbox listener lost its connection; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }

    async fn notify_non_members(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        job: &ChunkJob<'_>,
    ) -> Result<Vec<UserId>> {
        let sql = format!(
            "WITH targets AS MATERIALIZED (SELECT id FROM ({}) AS ids WHERE id NOT IN \
               (SELECT user_id FROM members WHERE conversation_id = $1) ORDER BY id), \
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

/// The change another process announced, or `None` for this process's own notices.
fn parse_inbox_notice(payload: &str, own_origin: u64) -> Option<InboxChange> {
    let mut parts = payload.splitn(3, ':');
    let origin: u64 = parts.next()?.parse().ok()?;
    if origin == own_origin {
        return None;
    }
    let conversation = ConversationId(parts.next()?.parse().ok()?);
    let users = parts
        .next()
        .map(|list| {
            list.split(',')
                .filter_map(|u| u.parse().ok())
                .map(UserId)
                .collect()
        })
        .unwrap_or_default();
    Some(InboxChange {
        conversation,
        users,
    })
}

/// A deadlock or serialization failure: PostgreSQL rolled the transaction back, and running
/// it again is safe.
fn is_lock_conflict(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

shared_store_impl!(PgStore, sqlx::Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_notices_round_trip_and_skip_our_own() {
        assert_eq!(
            parse_inbox_notice("7:42:1,2", 9),
            Some(InboxChange {
                conversation: ConversationId(42),
                users: vec![UserId(1), UserId(2)],
            })
        );
        assert_eq!(parse_inbox_notice("7:42", 9).map(|c| c.users), Some(vec![]));
        assert_eq!(parse_inbox_notice("9:42", 9), None);
        assert_eq!(parse_inbox_notice("garbage", 9), None);
    }
}
