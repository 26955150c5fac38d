//! Accepting a message on SQLite: a group commit. Every enqueue waiting while the writer syncs
//! goes into the next transaction together, and each caller is answered after that commit, so a
//! burst of webhooks costs one fsync per group instead of one per message.
//!
//! The group is written by a thread of its own that owns a connection of its own and binds each
//! message's columns to statements prepared once. Through sqlx every statement is a hand-off to
//! sqlx's connection thread, so the group used to travel as one command carrying the whole group
//! as JSON, which SQLite then parsed back statement by statement; that parsing and the generic
//! SQL around it were most of the writer's time. The group commit still takes sqlx's writer
//! connection for the length of each group, as a lock: SQLite has one writer at a time, and
//! holding it keeps this connection from ever waiting on sqlx's (or the reverse).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, OpenFlags, OptionalExtension, TransactionBehavior};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqlitePool;
use sqlx::Sqlite;

use crate::clock;
use crate::config::Synchronous;
use crate::ids::{MessageId, UserId};
use crate::model::{EventKind, Message};
use crate::store::{Enqueued, MessageRecord, Result, StoreError, Task};

/// Enqueues waiting for a commit, in arrival order.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) queue: std::sync::Mutex<std::collections::VecDeque<PendingEnqueue>>,
    pub(super) arrived: tokio::sync::Notify,
}

impl Pending {
    pub(super) fn push(&self, enqueue: PendingEnqueue) {
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

    pub(super) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<PendingEnqueue>> {
        // A panic while holding the lock leaves a consistent queue: keep using it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A message waiting for the next group commit, and where its answer goes.
pub(super) struct PendingEnqueue {
    pub(super) message: Message,
    pub(super) answer: tokio::sync::oneshot::Sender<Result<Enqueued>>,
}

/// The most messages one group commit takes.
const GROUP_COMMIT_MAX: usize = 256;
/// The longest the group commit keeps sqlx's writer connection while groups keep coming.
const WRITER_HOLD: Duration = Duration::from_millis(2);
/// How many times a group commit lets other tasks run to gather more of the group (`gather`).
const GATHER_YIELDS: usize = 2;

/// A group for the writer thread, and the signal that it was committed (or failed) and every
/// caller in it answered.
type Job = (Vec<PendingEnqueue>, tokio::sync::oneshot::Sender<()>);

/// The thread that writes the groups.
pub(super) struct WriterThread {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl WriterThread {
    /// Opens the thread's connection to the (already migrated) database and starts it. Groups
    /// of new messages to conversations of at most `direct_max_members` are fanned out by their
    /// own commit (see `Route`).
    pub(super) fn start(
        path: &Path,
        synchronous: Synchronous,
        direct_max_members: i64,
    ) -> anyhow::Result<WriterThread> {
        let conn = open(path, synchronous)?;
        let (jobs, received) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || {
                let mut writer = GroupWriter {
                    conn,
                    direct_max_members,
                };
                for (group, done) in received {
                    writer.commit_and_answer(group);
                    let _ = done.send(());
                }
            })?;
        Ok(WriterThread { jobs })
    }

    /// Commits the group on the thread and returns once every caller in it has its answer.
    async fn commit(&self, group: Vec<PendingEnqueue>) {
        let (done, finished) = tokio::sync::oneshot::channel();
        match self.jobs.send((group, done)) {
            Ok(()) => {
                let _ = finished.await;
            }
            Err(std::sync::mpsc::SendError((group, _))) => answer(
                group,
                Err(StoreError::Other(anyhow::anyhow!(
                    "the SQLite writer thread has stopped"
                ))),
            ),
        }
    }
}

/// The writer thread's connection, with the pragmas sqlx's connections get.
fn open(path: &Path, synchronous: Synchronous) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let synchronous = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
         PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536;"
    ))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Commits waiting enqueues in groups: takes what has queued up (at most `GROUP_COMMIT_MAX`),
/// has the writer thread write all of it in one transaction and answer each caller after the
/// commit. A failed commit fails the whole group; nothing in it was acknowledged.
///
/// sqlx's writer connection is held while the thread writes, so no sqlx write runs at the same
/// time. It is kept from one group to the next for up to `WRITER_HOLD` while groups keep coming:
/// sqlx pings a connection's thread each time one goes back to its pool, a hand-off per group
/// otherwise. Its pool is fair, so a write waiting for it goes first once it is released.
pub(super) async fn group_commit_loop(
    writer: SqlitePool,
    pending: Arc<Pending>,
    thread: WriterThread,
) {
    loop {
        pending.arrived.notified().await;
        let mut held: Option<(PoolConnection<Sqlite>, Instant)> = None;
        loop {
            if held
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() >= WRITER_HOLD)
            {
                held = None;
            }
            if held.is_none() {
                match writer.acquire().await {
                    Ok(conn) => held = Some((conn, Instant::now())),
                    Err(e) => {
                        tracing::warn!(error = %e, "group commit: no writer connection; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let mut group = Vec::new();
            gather(&pending, &mut group).await;
            if group.is_empty() {
                break;
            }
            thread.commit(group).await;
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

/// The writer thread's side.
struct GroupWriter {
    conn: rusqlite::Connection,
    direct_max_members: i64,
}

impl GroupWriter {
    fn commit_and_answer(&mut self, group: Vec<PendingEnqueue>) {
        let messages: Vec<&Message> = group.iter().map(|p| &p.message).collect();
        // A panic must not take the thread (and every later enqueue) with it; the
        // transaction is rolled back as it unwinds.
        let written =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write_group(&messages)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the group commit panicked")));
        answer(group, written.map_err(StoreError::Other));
    }

    /// The group in one transaction, in arrival order. A message is new unless its dedupe key
    /// is already held (earlier, or by an earlier message of the group); only new messages
    /// are written.
    fn write_group(&mut self, messages: &[&Message]) -> anyhow::Result<Vec<Enqueued>> {
        let direct_max_members = self.direct_max_members;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = clock::now_ms();
        let mut group = Group {
            tx: &tx,
            now,
            direct_max_members,
            routes: HashMap::new(),
            counters: Counters::default(),
        };
        let outcomes = messages
            .iter()
            .map(|m| group.write(m))
            .collect::<anyhow::Result<Vec<_>>>()?;
        group.counters.store(&tx)?;
        tx.commit()?;
        Ok(outcomes)
    }
}

/// How a conversation's new messages in one group are written, decided at its first message
/// in the group, so all of them go the same way.
enum Route {
    /// Into each of these members' inboxes, by this commit: a group small enough, with no bot
    /// to hear it (bot deliveries are queued by the lanes) and nothing of its own queued (a
    /// message never overtakes its group's queue).
    Direct(Vec<i64>),
    /// As a task, for a lane to fan out.
    Queued,
}

/// One group's transaction and what it has worked out so far.
struct Group<'t> {
    tx: &'t rusqlite::Connection,
    now: i64,
    direct_max_members: i64,
    routes: HashMap<i64, Route>,
    counters: Counters,
}

/// Members' pts counters as this group has bumped them (`None`: the user has none), read at a
/// member's first row in the group and stored once at its end rather than once per message.
#[derive(Default)]
struct Counters(HashMap<i64, Option<i64>>);

impl Group<'_> {
    fn write(&mut self, m: &Message) -> anyhow::Result<Enqueued> {
        if let Some(holder) = self.claim_dedupe_key(m)? {
            return Ok(Enqueued::Duplicate(MessageId(holder)));
        }
        self.insert_message(m)?;
        let conversation = m.conversation_id.0;
        if !self.routes.contains_key(&conversation) {
            let route = self.route_of(conversation)?;
            self.routes.insert(conversation, route);
        }
        match &self.routes[&conversation] {
            Route::Direct(members) => {
                let delivered = write_to_inboxes(self.tx, &mut self.counters, m, members)?;
                Ok(Enqueued::Delivered(m.id, delivered))
            }
            Route::Queued => {
                self.insert_task(m)?;
                Ok(Enqueued::New(m.id))
            }
        }
    }

    /// Claims the message's dedupe key; the holder's id when another message holds it.
    fn claim_dedupe_key(&self, m: &Message) -> rusqlite::Result<Option<i64>> {
        let Some(key) = m.dedupe_key.as_deref() else {
            return Ok(None);
        };
        let conversation = m.conversation_id.0;
        let claimed = self
            .tx
            .prepare_cached(
                "INSERT INTO dedupe (conversation_id, dedupe_key, message_id, created_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (conversation_id, dedupe_key) DO NOTHING",
            )?
            .execute(params![conversation, key, m.id.0, self.now])?;
        if claimed == 1 {
            return Ok(None);
        }
        let holder: i64 = self
            .tx
            .prepare_cached(
                "SELECT message_id FROM dedupe WHERE conversation_id = ?1 AND dedupe_key = ?2",
            )?
            .query_row(params![conversation, key], |row| row.get(0))?;
        Ok((holder != m.id.0).then_some(holder))
    }

    fn insert_message(&self, m: &Message) -> anyhow::Result<()> {
        let at = serde_json::to_string(&m.at)?;
        self.tx
            .prepare_cached(
                "INSERT INTO messages (id, org_id, conversation_id, sender_id, sender_kind, \
                 sender_name, msgtype, content, at, thread_key, dedupe_key, recalled, created_at, \
                 updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, ?12, ?13)",
            )?
            .execute(params![
                m.id.0,
                m.org_id.0,
                m.conversation_id.0,
                m.sender.id,
                m.sender.kind.as_str(),
                m.sender.name,
                m.content.msgtype(),
                m.content.body_string(),
                at,
                m.thread_key,
                m.dedupe_key,
                m.created_at_ms,
                self.now,
            ])?;
        Ok(())
    }

    fn route_of(&self, conversation: i64) -> rusqlite::Result<Route> {
        if self.direct_max_members <= 0 {
            return Ok(Route::Queued);
        }
        let direct = self
            .tx
            .prepare_cached(
                "SELECT c.member_count <= ?2 \
                   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.conversation_id = c.id) \
                   AND NOT EXISTS (SELECT 1 FROM bot_installs b WHERE b.conversation_id = c.id) \
                 FROM conversations c WHERE c.id = ?1",
            )?
            .query_row(params![conversation, self.direct_max_members], |row| {
                row.get::<_, bool>(0)
            })
            .optional()?
            .unwrap_or(false);
        if !direct {
            return Ok(Route::Queued);
        }
        let members = self
            .tx
            .prepare_cached(
                "SELECT user_id FROM members WHERE conversation_id = ?1 ORDER BY user_id",
            )?
            .query_map(params![conversation], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        Ok(Route::Direct(members))
    }

    /// The message's task: a lane fans it out.
    fn insert_task(&self, m: &Message) -> anyhow::Result<()> {
        let task = Task::Post {
            message: Box::new(MessageRecord::from(m)),
        };
        self.tx
            .prepare_cached(
                "INSERT INTO tasks (conversation_id, payload, attempts, run_at, locked_until, \
                 created_at) VALUES (?1, ?2, 0, ?3, 0, ?3)",
            )?
            .execute(params![
                m.conversation_id.0,
                serde_json::to_string(&task)?,
                self.now
            ])?;
        Ok(())
    }
}

/// One inbox row per member, each at the member's next pts. Members without a counter (no
/// `user_pts` row) get none, as in every other fanout.
fn write_to_inboxes(
    tx: &rusqlite::Connection,
    counters: &mut Counters,
    m: &Message,
    members: &[i64],
) -> rusqlite::Result<Vec<(UserId, i64)>> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let kind = EventKind::MessageCreated.code();
    let mut delivered = Vec::with_capacity(members.len());
    for &user in members {
        let Some(pts) = counters.next(tx, user)? else {
            continue;
        };
        insert.execute(params![
            user,
            pts,
            kind,
            m.conversation_id.0,
            m.id.0,
            m.created_at_ms
        ])?;
        delivered.push((UserId(user), pts));
    }
    Ok(delivered)
}

impl Counters {
    fn next(&mut self, tx: &rusqlite::Connection, user: i64) -> rusqlite::Result<Option<i64>> {
        let pts = match self.0.entry(user) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(
                tx.prepare_cached("SELECT pts FROM user_pts WHERE user_id = ?1")?
                    .query_row(params![user], |row| row.get::<_, i64>(0))
                    .optional()?,
            ),
        };
        Ok(pts.as_mut().map(|pts| {
            *pts += 1;
            *pts
        }))
    }

    fn store(&self, tx: &rusqlite::Connection) -> rusqlite::Result<()> {
        let mut update = tx.prepare_cached("UPDATE user_pts SET pts = ?2 WHERE user_id = ?1")?;
        for (user, pts) in &self.0 {
            if let Some(pts) = pts {
                update.execute(params![user, pts])?;
            }
        }
        Ok(())
    }
}
