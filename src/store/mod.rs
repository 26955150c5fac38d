//! Storage: one `Store` trait, implemented for the embedded SQLite file and for PostgreSQL.
//! Each backend owns its SQL and migrations (`migrations/sqlite`, `migrations/postgres`);
//! the statements both can share live in `shared.rs`. The same story test runs on both.
//!
//! The store is the truth of herald: the durable task queue, the messages, and every
//! member's inbox with its pts counter. Nothing here talks HTTP or wakes connections.

mod alerts;
mod bots;
mod bursts;
mod dings;
mod oncall;
mod plugins;
mod postgres;
mod robot_state;
mod robots;
mod shared;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::ids::{ConversationId, MessageId, OrgId, UserId};
use crate::model::{
    At, Content, Conversation, ConversationKind, Event, EventKind, Message, NewUser, Org, Sender,
    User,
};

pub use alerts::*;
pub use bots::*;
pub use bursts::{BurstEvent, BurstStore, DueBurst};
pub use dings::*;
pub use oncall::*;
pub use plugins::{NewPlugin, PluginRecord, PluginStore};
pub use postgres::PgStore;
pub use robot_state::{RobotStateStore, StatDelta};
pub use robots::{MentionEntry, RobotStore};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a first start created (or found).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub signing_key: Vec<u8>,
    pub default_org: Org,
}

/// A conversation to create, already validated by the API layer.
#[derive(Debug, Clone)]
pub struct NewConversation {
    pub org_id: OrgId,
    pub kind: ConversationKind,
    pub title: String,
    pub owner_id: UserId,
    /// Every member, the owner included, without duplicates.
    pub members: Vec<UserId>,
    /// A 1:1 chat between the one member and this bot: the bot is installed in the same
    /// transaction, and the pair keys the chat so it exists once.
    pub bot: Option<crate::ids::BotId>,
}

impl NewConversation {
    /// What makes a 1:1 chat unique in its org: its two users, or its user and bot.
    pub fn single_key(&self) -> Option<String> {
        if self.kind != ConversationKind::Single {
            return None;
        }
        if let Some(bot) = self.bot {
            return Some(format!("bot{}:{}", bot.0, self.members.first()?.0));
        }
        let a = self.members.iter().map(|u| u.0).min()?;
        let b = self.members.iter().map(|u| u.0).max()?;
        Some(format!("{a}:{b}"))
    }
}

/// The answer to an enqueue: a new message, or the one that already carries the dedupe key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued: a lane worker fans it out.
    New(MessageId),
    /// New and already in every member's inbox: the commit that accepted it also wrote its
    /// fanout (SQLite, a small idle group; see `fanout.direct_max_members`). Each member with
    /// the pts it got, for waking live connections; nothing is queued.
    Delivered(MessageId, Vec<(UserId, i64)>),
    Duplicate(MessageId),
}

impl Enqueued {
    /// The message's id, when the enqueue wrote it (not a duplicate).
    pub fn new_id(&self) -> Option<MessageId> {
        match self {
            Enqueued::New(id) | Enqueued::Delivered(id, _) => Some(*id),
            Enqueued::Duplicate(_) => None,
        }
    }

    /// The message's id, or the id of the one already holding its dedupe key.
    pub fn id(&self) -> MessageId {
        match self {
            Enqueued::New(id) | Enqueued::Delivered(id, _) | Enqueued::Duplicate(id) => *id,
        }
    }
}

/// Work for the fanout workers. Serialized into the `tasks` table; every handler may run more
/// than once and must leave the same result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Task {
    /// Persist a new message and write `message.created` to every member.
    Post { message: Box<MessageRecord> },
    /// Write an event about something already stored (a message, a conversation event record)
    /// to every member, and to `also_notify` (e.g. the members who just left).
    Announce {
        conversation_id: ConversationId,
        kind: EventKind,
        ref_id: i64,
        #[serde(default)]
        also_notify: Vec<UserId>,
    },
}

impl Task {
    pub fn conversation_id(&self) -> ConversationId {
        match self {
            Task::Post { message } => message.conversation_id,
            Task::Announce {
                conversation_id, ..
            } => *conversation_id,
        }
    }
}

/// A task as claimed from the queue.
#[derive(Debug, Clone)]
pub struct QueuedTask {
    pub id: i64,
    pub task: Task,
    pub attempts: i64,
    pub run_at_ms: i64,
    /// The conversation's member count when claimed (decides whether it can be batched and
    /// how it is split into chunks).
    pub members: i64,
    /// Whether an earlier run split this task into chunks (it must keep that split).
    pub planned: bool,
}

/// A message in the task payload: the serializable form of `Message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: MessageId,
    pub org_id: OrgId,
    pub conversation_id: ConversationId,
    pub sender: Sender,
    pub msgtype: String,
    pub content: serde_json::Value,
    pub at: At,
    pub thread_key: Option<String>,
    pub dedupe_key: Option<String>,
    pub created_at_ms: i64,
}

impl From<&Message> for MessageRecord {
    fn from(m: &Message) -> Self {
        MessageRecord {
            id: m.id,
            org_id: m.org_id,
            conversation_id: m.conversation_id,
            sender: m.sender.clone(),
            msgtype: m.content.msgtype().to_string(),
            content: m.content.body_json(),
            at: m.at.clone(),
            thread_key: m.thread_key.clone(),
            dedupe_key: m.dedupe_key.clone(),
            created_at_ms: m.created_at_ms,
        }
    }
}

/// One transaction's worth of fanout: the members whose user id is in `[first_user, end_user)`.
#[derive(Debug, Clone)]
pub struct ChunkJob<'a> {
    pub task_id: i64,
    pub kind: EventKind,
    pub conversation_id: ConversationId,
    pub ref_id: i64,
    /// For `Post`: the message, inserted in the same transaction if it is not stored yet.
    pub new_message: Option<&'a MessageRecord>,
    pub chunk: u32,
    pub chunks: u32,
    pub first_user: i64,
    pub end_user: i64,
    /// Non-members who get the event too (written with chunk 0).
    pub also_notify: &'a [UserId],
    /// Whether to return who received the event (only worth it when someone is listening).
    pub want_recipients: bool,
    pub now_ms: i64,
    /// New messages queued right behind this one to the same group, written in the same
    /// statements (a run: see `ChunkPlan`). Only multi-chunk `Post` jobs have followers.
    pub followers: &'a [Follower<'a>],
}

/// A message that rides in its head task's fanout.
#[derive(Debug, Clone)]
pub struct Follower<'a> {
    pub task_id: i64,
    pub message: &'a MessageRecord,
}

impl ChunkJob<'_> {
    /// A single-chunk job also removes its task in the same transaction.
    pub fn finishes_task(&self) -> bool {
        self.chunks == 1
    }

    /// The same chunk seen as the job of follower `i`: what the per-message hooks (outgoing
    /// bots) need, written in the head's transaction.
    pub fn as_follower(&self, i: usize) -> ChunkJob<'_> {
        let follower = &self.followers[i];
        ChunkJob {
            task_id: follower.task_id,
            ref_id: follower.message.id.0,
            new_message: Some(follower.message),
            also_notify: &[],
            followers: &[],
            ..self.clone()
        }
    }

    /// The messages to store with this job if an older version queued them without their row:
    /// the head's, then the followers'.
    pub fn run_messages(&self) -> impl Iterator<Item = &MessageRecord> {
        self.new_message
            .into_iter()
            .chain(self.followers.iter().map(|f| f.message))
    }

    /// The message ids of a run, head first.
    pub fn run_refs(&self) -> Vec<i64> {
        std::iter::once(self.ref_id)
            .chain(self.followers.iter().map(|f| f.message.id.0))
            .collect()
    }

    /// The task ids of a run, head first.
    pub fn run_task_ids(&self) -> Vec<i64> {
        std::iter::once(self.task_id)
            .chain(self.followers.iter().map(|f| f.task_id))
            .collect()
    }
}

/// How a multi-chunk task is written, fixed by its first run and kept for every later one: the
/// first user id of each chunk after the first, and the run of new messages to the same group
/// queued right behind it, written with it chunk by chunk. A run bumps each member's pts
/// counter once for all its messages instead of once per message: for a large group the
/// counter update costs about as much as the inbox rows themselves.
#[derive(Debug, Clone, Default)]
pub struct ChunkPlan {
    pub bounds: Vec<i64>,
    /// In queue order; each also has its own plan row (the same bounds, no followers) and its
    /// own progress marks, so if the head is ever set aside, a follower that becomes a head
    /// skips the chunks already written for it.
    pub followers: Vec<QueuedTask>,
}

/// The members an event was written to, with the pts each got.
pub type MemberPts = Vec<(UserId, i64)>;

/// The result of one chunk: whether it wrote anything (false when an earlier run already did)
/// and, if asked, who received the event.
#[derive(Debug, Default)]
pub struct ChunkOutcome {
    pub applied: bool,
    pub recipients: Vec<UserId>,
    /// The members written to and the pts each got (when recipients were asked for), so
    /// live connections can be handed the event without reading it back.
    pub member_pts: Vec<(UserId, i64)>,
    /// The same for each of the job's followers, in order.
    pub follower_pts: Vec<MemberPts>,
    /// Outgoing-bot deliveries were queued with this write: the outgoing worker must look.
    pub bot_events: bool,
}

/// A page of a list.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// herald's storage: one narrow trait per area, each implemented by both backends.
/// Add an area by adding its trait to this list.
pub trait Store:
    CoreStore
    + BotStore
    + DeliveryStore
    + RobotStore
    + RobotStateStore
    + BurstStore
    + AlertStore
    + DingStore
    + OnCallStore
    + PluginStore
{
}

impl<T> Store for T where
    T: CoreStore
        + BotStore
        + DeliveryStore
        + RobotStore
        + RobotStateStore
        + BurstStore
        + AlertStore
        + DingStore
        + OnCallStore
        + PluginStore
{
}

/// The core: tenancy, people, conversations, messages, the task queue and the inboxes.
/// Every method that takes an `OrgId` only ever sees that org's rows.
#[async_trait]
pub trait CoreStore: Send + Sync + 'static {
    /// Creates org `default`, user `admin` and the signing key on an empty store.
    async fn bootstrap(&self) -> Result<Bootstrap>;
    async fn create_org(&self, name: &str) -> Result<(Org, User)>;
    async fn find_org(&self, name_or_id: &str) -> Result<Org>;

    async fn create_users(&self, org: OrgId, users: &[NewUser]) -> Result<Vec<User>>;
    async fn get_user(&self, org: OrgId, id: UserId) -> Result<User>;
    /// The user with this id or (unique) name.
    async fn find_user(&self, org: OrgId, name_or_id: &str) -> Result<User>;
    /// The user behind a token, in any org: the auth layer compares the org itself.
    async fn user_for_auth(&self, id: UserId) -> Result<Option<User>>;
    async fn list_users(&self, org: OrgId, after: Option<UserId>, limit: i64) -> Result<Vec<User>>;
    /// Deactivates the user and removes them from every group of their org (announcing
    /// `member.left`). Returns the conversations they left.
    async fn deactivate_user(&self, org: OrgId, id: UserId) -> Result<Vec<ConversationId>>;

    /// Creates the conversation with its members and queues `conversation.created`.
    async fn create_conversation(&self, new: &NewConversation) -> Result<Conversation>;
    /// The 1:1 chat with this `NewConversation::single_key`, if it exists.
    async fn find_single(&self, org: OrgId, key: &str) -> Result<Option<Conversation>>;
    async fn get_conversation(&self, org: OrgId, id: ConversationId) -> Result<Conversation>;
    /// The org's conversations, or only those `member` belongs to.
    async fn list_conversations(
        &self,
        org: OrgId,
        member: Option<UserId>,
        after: Option<ConversationId>,
        limit: i64,
    ) -> Result<Vec<Conversation>>;
    async fn list_members(
        &self,
        conversation: ConversationId,
        after: Option<UserId>,
        limit: i64,
    ) -> Result<Vec<UserId>>;
    async fn is_member(&self, conversation: ConversationId, user: UserId) -> Result<bool>;
    /// Adds active users of the org; returns those newly added (already-members are skipped).
    async fn add_members(
        &self,
        org: OrgId,
        conversation: ConversationId,
        users: &[UserId],
    ) -> Result<Vec<UserId>>;
    /// Removes a member; false when they were not one.
    async fn remove_member(
        &self,
        org: OrgId,
        conversation: ConversationId,
        user: UserId,
        reason: &str,
    ) -> Result<bool>;
    /// Members of the conversation among the given ids / with the given mobiles.
    async fn members_among(
        &self,
        conversation: ConversationId,
        ids: &[UserId],
        mobiles: &[String],
    ) -> Result<Vec<UserId>>;

    /// Records the message in the durable queue (honouring its dedupe key) and returns its id.
    /// A store may write a message to a small idle group's inboxes in the same commit instead
    /// (`Enqueued::Delivered`); the caller then wakes live connections, not a lane.
    async fn enqueue_message(&self, message: &Message) -> Result<Enqueued>;
    async fn get_message(&self, org: OrgId, id: MessageId) -> Result<Message>;
    /// The message that already claimed this dedupe key in the conversation, if any.
    async fn dedupe_lookup(
        &self,
        conversation: ConversationId,
        key: &str,
    ) -> Result<Option<MessageId>>;
    /// Marks the message recalled and queues `message.recalled`; false if it already was.
    async fn recall_message(&self, org: OrgId, id: MessageId) -> Result<bool>;
    /// Replaces the content and queues `message.updated`.
    async fn update_message(&self, org: OrgId, id: MessageId, content: &Content) -> Result<()>;

    /// Up to `limit` queued tasks of lane `lane` (of `lanes`), oldest first.
    async fn claim_tasks(&self, lane: u32, lanes: u32, limit: i64) -> Result<Vec<QueuedTask>>;
    /// Writes one chunk of a fanout in one transaction: pts allocation and inbox rows together.
    async fn fan_out_chunk(&self, job: &ChunkJob<'_>) -> Result<ChunkOutcome>;
    /// Writes several single-chunk `message.created` jobs (in queue order) in one transaction,
    /// each as `fan_out_chunk` would; the outcomes line up with `jobs`.
    async fn fan_out_batch(&self, jobs: &[ChunkJob<'_>]) -> Result<Vec<ChunkOutcome>>;
    /// How a multi-chunk task splits its members (the first user id of each chunk after the
    /// first: every `per_chunk`-th member in user-id order) and which of the `Post` tasks queued
    /// right behind it (at most `max_followers`) ride with it, as decided by its first run and
    /// kept for every later run. No bounds when the group fits one chunk.
    async fn chunk_plan(
        &self,
        task_id: i64,
        conversation: ConversationId,
        per_chunk: i64,
        max_followers: i64,
    ) -> Result<ChunkPlan>;
    /// Removes a finished multi-chunk task (and its followers) with their plans and progress
    /// marks.
    async fn complete_task(&self, task_ids: &[i64]) -> Result<()>;
    /// Puts a failed task back for a later attempt, or aside after too many.
    async fn retry_task(&self, task_id: i64, run_at_ms: i64, error: &str) -> Result<()>;
    async fn pending_tasks(&self) -> Result<i64>;
    /// The member count kept on the conversation row.
    async fn member_count(&self, conversation: ConversationId) -> Result<i64>;

    /// The caller's events with pts > since, in pts order.
    async fn read_events(&self, user: UserId, since: i64, limit: i64) -> Result<Vec<Event>>;
    /// The user's current pts (the highest written).
    async fn head_pts(&self, user: UserId) -> Result<i64>;
    /// Inbox writes committed by other herald processes sharing this database, so this
    /// process can wake its own live connections. `None` when no other process can write
    /// (the embedded SQLite store is owned by one process).
    async fn watch_inbox(&self) -> Result<Option<tokio::sync::mpsc::Receiver<InboxChange>>>;
}

/// Another process committed inbox rows for a conversation's members (and for `users`, who
/// heard the event without being members, such as someone who just left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxChange {
    pub conversation: ConversationId,
    pub users: Vec<UserId>,
}

/// Opens the store named by the config: PostgreSQL for a `postgres://` URL, else the SQLite
/// file in the data directory. Runs the backend's migrations.
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if config.uses_postgres() {
        Ok(Arc::new(PgStore::open(config).await?))
    } else {
        Ok(Arc::new(SqliteStore::open(config).await?))
    }
}

/// Builds a message from stored columns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn message_from_parts(
    id: i64,
    org_id: i64,
    conversation_id: i64,
    sender: Sender,
    msgtype: &str,
    content: &str,
    at: &str,
    thread_key: Option<String>,
    dedupe_key: Option<String>,
    recalled: bool,
    created_at_ms: i64,
) -> Result<Message> {
    let body: serde_json::Value =
        serde_json::from_str(content).map_err(|e| anyhow::anyhow!("stored content: {e}"))?;
    let content = Content::from_parts(msgtype, body).map_err(|e| anyhow::anyhow!(e))?;
    let at: At = serde_json::from_str(at).unwrap_or_default();
    Ok(Message {
        id: MessageId(id),
        org_id: OrgId(org_id),
        conversation_id: ConversationId(conversation_id),
        sender,
        content,
        at,
        thread_key,
        dedupe_key,
        recalled,
        created_at_ms,
    })
}

/// JSON array of strings for `strings_from`. Values holding a NUL are left out: no stored text
/// can contain one, and PostgreSQL refuses `\u0000` in jsonb, so one would turn a lookup into
/// an error.
pub(crate) fn strings_json(values: &[String]) -> String {
    let kept: Vec<&String> = values.iter().filter(|v| !v.contains('\0')).collect();
    serde_json::to_string(&kept).unwrap_or_else(|_| "[]".into())
}

/// JSON array of ids, the form both backends expand into rows (`json_each` / `jsonb`).
pub(crate) fn ids_json(ids: &[UserId]) -> String {
    let raw: Vec<i64> = ids.iter().map(|u| u.0).collect();
    serde_json::to_string(&raw).unwrap_or_else(|_| "[]".into())
}

/// A batch of fanout jobs as the JSON rows both backends' batch statements read:
/// `[queue order, conversation, task, event kind, ref id]`.
pub(crate) fn batch_rows_json(jobs: &[&ChunkJob<'_>]) -> String {
    let rows: Vec<[i64; 5]> = jobs
        .iter()
        .enumerate()
        .map(|(seq, j)| {
            [
                seq as i64,
                j.conversation_id.0,
                j.task_id,
                j.kind.code(),
                j.ref_id,
            ]
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

/// Splits a batch's written `(user, pts, ref id)` rows back into one outcome per job (a batch
/// holds new messages only, so the ref id, the message id, names the job).
pub(crate) fn batch_outcomes(
    jobs: &[ChunkJob<'_>],
    live: &std::collections::HashSet<i64>,
    written: Vec<(i64, i64, i64)>,
    bot_events: bool,
) -> Vec<ChunkOutcome> {
    let mut by_ref: std::collections::HashMap<i64, Vec<(UserId, i64)>> = Default::default();
    for (user, pts, ref_id) in written {
        by_ref.entry(ref_id).or_default().push((UserId(user), pts));
    }
    jobs.iter()
        .map(|job| {
            if !live.contains(&job.task_id) {
                return ChunkOutcome::default();
            }
            let member_pts = by_ref.remove(&job.ref_id).unwrap_or_default();
            ChunkOutcome {
                applied: true,
                recipients: member_pts.iter().map(|(user, _)| *user).collect(),
                member_pts,
                follower_pts: Vec::new(),
                bot_events,
            }
        })
        .collect()
}

/// A task row's payload.
pub(crate) fn task_from_payload(payload: &str) -> Result<Task> {
    Ok(serde_json::from_str(payload).map_err(|e| anyhow::anyhow!("task payload: {e}"))?)
}

/// A `ChunkPlan` as `fanout_plans.bounds` holds it: `{"bounds":[…],"followers":[…]}`, or the
/// bare bounds array that plans stored before runs existed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredPlan {
    pub bounds: Vec<i64>,
    #[serde(default)]
    pub followers: Vec<i64>,
}

impl StoredPlan {
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "[]".into())
    }

    pub(crate) fn parse(text: &str) -> Result<StoredPlan> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Plan(StoredPlan),
            Bounds(Vec<i64>),
        }
        match serde_json::from_str(text).map_err(|e| anyhow::anyhow!("fanout plan: {e}"))? {
            Either::Plan(plan) => Ok(plan),
            Either::Bounds(bounds) => Ok(StoredPlan {
                bounds,
                followers: Vec::new(),
            }),
        }
    }
}

/// Everyone a chunk wrote to, once each.
pub(crate) fn written_to(member_pts: &MemberPts, follower_pts: &[MemberPts]) -> Vec<UserId> {
    if follower_pts.is_empty() {
        return member_pts.iter().map(|(user, _)| *user).collect();
    }
    let users: std::collections::BTreeSet<UserId> = member_pts
        .iter()
        .chain(follower_pts.iter().flatten())
        .map(|(user, _)| *user)
        .collect();
    users.into_iter().collect()
}

/// A run's written `(user, pts, message)` rows as the pts per message: the head's, then each
/// follower's (`refs` is the run's message ids, head first).
pub(crate) fn split_run_pts(
    refs: &[i64],
    written: Vec<(i64, i64, i64)>,
) -> (MemberPts, Vec<MemberPts>) {
    let mut per_message: Vec<MemberPts> = vec![Vec::new(); refs.len()];
    for (user, pts, message) in written {
        if let Some(k) = refs.iter().position(|r| *r == message) {
            per_message[k].push((UserId(user), pts));
        }
    }
    let followers = per_message.split_off(1.min(per_message.len()));
    let head = per_message.pop().unwrap_or_default();
    (head, followers)
}
