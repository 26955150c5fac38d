//! The embedded default: one SQLite file in the data directory, in WAL mode. One writer
//! connection (SQLite has a single writer anyway; one connection avoids busy retries) and a
//! small pool of readers that never block it. One herald process per file: `serve` holds a
//! lock on the data directory.
//!
//! Accepting a message is a group commit (`group_commit`), written by a thread with a
//! connection of its own while it holds the writer connection, so writes still take turns.

mod group_commit;

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
use group_commit::{group_commit_loop, Pending, PendingEnqueue, WriterThread};

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    pending: Arc<Pending>,
}

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
        let thread = WriterThread::start(
            &path,
            config.sqlite.synchronous,
            i64::from(config.fanout.direct_max_members),
        )?;
        tokio::spawn(group_commit_loop(writer.clone(), pending.clone(), thread));
        Ok(SqliteStore {
            writer,
            reader,
            pending,
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
        tx.commit().await?;
        Ok(batch_outcomes(jobs, &live, written, bot_events))
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
        let conversation = admin_group(&store, org, admin, "g").await;
        (dir, store, org, admin, conversation)
    }

    /// A new group of `admin` alone. No lane runs here: every queued task (the group's
    /// announcements among them) is dropped, as if done.
    async fn admin_group(
        store: &SqliteStore,
        org: OrgId,
        admin: UserId,
        title: &str,
    ) -> ConversationId {
        let conversation = store
            .create_conversation(&NewConversation {
                org_id: org,
                kind: ConversationKind::Group,
                title: title.into(),
                owner_id: admin,
                members: vec![admin],
                bot: None,
            })
            .await
            .unwrap()
            .id;
        sqlx::query("DELETE FROM tasks")
            .execute(store.writer())
            .await
            .unwrap();
        conversation
    }

    /// A task waiting in the conversation (a retry), which its new messages must queue behind.
    async fn queue_waiting_task(store: &SqliteStore, conversation: ConversationId) {
        sqlx::query(
            "INSERT INTO tasks (conversation_id, payload, attempts, run_at, locked_until, created_at) \
             VALUES ($1, '{}', 3, 0, 0, 0)",
        )
        .bind(conversation.0)
        .execute(store.writer())
        .await
        .unwrap();
    }

    /// A group commit whose statement fails leaves nothing behind (its dedupe claim is rolled
    /// back with it) and the writer thread keeps working.
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
        queue_waiting_task(&store, conversation).await;
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

    /// One group mixing a direct conversation, a queued one (a task waits in it) and a key
    /// repeated inside the group: each message gets its own outcome, the route is decided per
    /// conversation, and a member of both gets consecutive pts for the direct messages only.
    #[tokio::test]
    async fn one_group_mixes_direct_queued_and_repeated_messages() {
        let (_dir, store, org, admin, direct) = store_with_group(100).await;
        let queued = admin_group(&store, org, admin, "q").await;
        queue_waiting_task(&store, queued).await;
        let before = store.head_pts(admin).await.unwrap();
        let sent = [
            message(70, org, direct, "a"),
            message(71, org, queued, "a"),
            message(72, org, direct, "a"),
            message(73, org, direct, "b"),
        ];
        let answers: Vec<_> = sent
            .into_iter()
            .map(|message| {
                let (answer, answered) = tokio::sync::oneshot::channel();
                store
                    .pending
                    .lock()
                    .push_back(PendingEnqueue { message, answer });
                answered
            })
            .collect();
        store.pending.arrived.notify_one();
        let mut outcomes = Vec::new();
        for answered in answers {
            outcomes.push(answered.await.unwrap().unwrap());
        }
        assert_eq!(
            outcomes,
            vec![
                Enqueued::Delivered(MessageId(70), vec![(admin, before + 1)]),
                Enqueued::New(MessageId(71)),
                Enqueued::Duplicate(MessageId(70)),
                Enqueued::Delivered(MessageId(73), vec![(admin, before + 2)]),
            ]
        );
        assert_eq!(store.head_pts(admin).await.unwrap(), before + 2);
        assert_eq!(queued_tasks(&store, queued).await, 2);
        assert_eq!(queued_tasks(&store, direct).await, 0);
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
