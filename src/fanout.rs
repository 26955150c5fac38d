//! Write fanout: one inbox row per recipient, each with the recipient's next pts, allocated in
//! the same transaction as the insert. Large groups are split into chunks by user id so each
//! transaction stays short; chunks touch disjoint users, so each user's order is kept. After
//! each commit the hub wakes whoever is connected.

use futures::stream::{self, StreamExt, TryStreamExt};

use std::sync::Arc;

use crate::config::Config;
use crate::model::{Content, Event, EventKind, Message};
use crate::store::{
    ChunkJob, ChunkOutcome, ChunkPlan, Enqueued, Follower, MessageRecord, QueuedTask, StoreError,
    Task,
};
use crate::{clock, AppState};

/// The most new messages to one large group written together with the one at the queue's head
/// (see `ChunkPlan`): enough to amortize the pts counter updates over a burst, few enough that
/// one chunk's transaction stays bounded (`chunk_size` members × 16 rows).
const MAX_RUN_FOLLOWERS: i64 = 15;

/// Processes one queued task (with the run of messages riding with it, if it has one). Safe
/// to run again after a crash at any point. Returns the ids of the tasks that rode with it,
/// finished with it.
pub async fn fan_out(app: &AppState, queued: &QueuedTask) -> Result<Vec<i64>, StoreError> {
    let plan = Plan::of(&queued.task);
    let chunk_plan = chunk_plan(app, queued, plan.conversation_id()).await?;
    let followers = followers_of(&chunk_plan)?;
    let follower_plans: Vec<Plan> = chunk_plan
        .followers
        .iter()
        .map(|f| Plan::of(&f.task))
        .collect();
    let bounds = &chunk_plan.bounds;
    let chunks = bounds.len() as u32 + 1;
    let waker = Waker::new(app);
    let job = |chunk: u32| {
        let first = chunk
            .checked_sub(1)
            .map_or(i64::MIN, |i| bounds[i as usize]);
        let end = bounds.get(chunk as usize).copied().unwrap_or(i64::MAX);
        let mut job = plan.job(queued.id, (chunk, chunks), (first, end), waker.listening);
        job.followers = &followers;
        job
    };
    // Chunk 0 may have queued bot deliveries (see `outgoing`).
    if chunks == 1 {
        let job = job(0);
        let outcome = app.store.fan_out_chunk(&job).await?;
        waker.wake(&plan, &job, &outcome);
        wake_outgoing_if(app, outcome.bot_events);
        return Ok(Vec::new());
    }
    let parallel = app.config.fanout.parallel_chunks as usize;
    stream::iter(0..chunks)
        .map(|chunk| {
            let job = job(chunk);
            let (plan, waker, follower_plans) = (&plan, &waker, &follower_plans);
            async move {
                let outcome = app.store.fan_out_chunk(&job).await?;
                waker.wake(plan, &job, &outcome);
                waker.wake_followers(follower_plans, &job, &outcome);
                Ok::<_, StoreError>(outcome.bot_events)
            }
        })
        .buffer_unordered(parallel)
        .try_fold(false, |any, queued| async move { Ok(any || queued) })
        .await
        .map(|queued| wake_outgoing_if(app, queued))?;
    if !followers.is_empty() {
        tracing::debug!(
            task = queued.id,
            followers = followers.len(),
            "fanned out a run"
        );
    }
    app.store.complete_task(&job(0).run_task_ids()).await?;
    Ok(followers.iter().map(|f| f.task_id).collect())
}

/// The run's messages, as the chunk jobs carry them.
fn followers_of(plan: &ChunkPlan) -> Result<Vec<Follower<'_>>, StoreError> {
    plan.followers
        .iter()
        .map(|queued| match &queued.task {
            Task::Post { message } => Ok(Follower {
                task_id: queued.id,
                message,
            }),
            Task::Announce { .. } => Err(StoreError::Other(anyhow::anyhow!(
                "task {} rides in a run but is not a new message",
                queued.id
            ))),
        })
        .collect()
}

/// Whether a task can share a transaction with others: a new message to a group small enough
/// to be written in one chunk. Everything else keeps its own transaction(s).
pub fn batchable(app: &AppState, queued: &QueuedTask) -> bool {
    matches!(queued.task, Task::Post { .. })
        && !queued.planned
        && chunk_count(&app.config, queued.members) == 1
}

/// Fans out several batchable tasks (in queue order) in one transaction: one commit, and one
/// set of statements, for a burst of webhooks instead of one each. All or nothing; on error
/// the caller runs them one by one.
pub async fn fan_out_batch(app: &AppState, batch: &[&QueuedTask]) -> Result<(), StoreError> {
    let waker = Waker::new(app);
    let plans: Vec<Plan> = batch.iter().map(|queued| Plan::of(&queued.task)).collect();
    let jobs: Vec<ChunkJob> = batch
        .iter()
        .zip(&plans)
        .map(|(queued, plan)| plan.job(queued.id, (0, 1), (i64::MIN, i64::MAX), waker.listening))
        .collect();
    let outcomes = app.store.fan_out_batch(&jobs).await?;
    tracing::debug!(tasks = jobs.len(), "fanned out a batch");
    for ((plan, job), outcome) in plans.iter().zip(&jobs).zip(&outcomes) {
        waker.wake(plan, job, outcome);
    }
    wake_outgoing_if(app, outcomes.iter().any(|o| o.bot_events));
    Ok(())
}

/// The outgoing worker looks for deliveries only when a write queued some (it also polls, for
/// other processes' writes), so a burst of webhooks to groups without bots costs it nothing.
fn wake_outgoing_if(app: &AppState, queued: bool) {
    if queued {
        app.outgoing.wake.notify_one();
    }
}

/// Queues the message (`store.enqueue_message`) and wakes whoever must hear of it: its lane,
/// or, when the commit already wrote it to every member, their live connections. Runs as a
/// task of its own, so the wake-up still happens when the request that posted the message is
/// dropped (its client hung up) after the commit: a message in the inboxes with nobody woken
/// would reach live feeds only at their next poll. Takes the message by value: the task needs
/// its own, and most callers have no further use for theirs.
pub async fn enqueue_and_wake(app: &AppState, message: Message) -> Result<Enqueued, StoreError> {
    let app = app.clone();
    tokio::spawn(async move {
        let waker = Waker::new(&app);
        let enqueued = app.store.enqueue_message(&message).await?;
        waker.after_enqueue(&message, &enqueued);
        Ok(enqueued)
    })
    .await
    .map_err(|e| StoreError::Other(anyhow::anyhow!("enqueueing a message: {e}")))?
}

/// Wakes live connections after a commit. Taken before the write, so a connection that
/// subscribes while the write runs is woken too.
struct Waker<'a> {
    app: &'a AppState,
    generation: u64,
    listening: bool,
}

impl<'a> Waker<'a> {
    fn new(app: &'a AppState) -> Waker<'a> {
        Waker {
            app,
            generation: app.hub.generation(),
            listening: app.hub.has_listeners(),
        }
    }

    fn wake(&self, plan: &Plan<'_>, job: &ChunkJob<'_>, outcome: &ChunkOutcome) {
        let hub = &self.app.hub;
        if let Some(event) = plan.event(job.now_ms) {
            hub.remember(&Arc::new(event), &outcome.member_pts);
        }
        hub.wake(&outcome.recipients);
        if !self.listening {
            hub.wake_if_subscribed_since(self.generation);
        }
    }

    /// What follows a message's enqueue (the waker taken before it): a queued message wakes
    /// its lane; one that its enqueue's commit already wrote to every member wakes their live
    /// connections, as the lane's fanout would have.
    fn after_enqueue(&self, message: &Message, enqueued: &Enqueued) {
        match enqueued {
            Enqueued::New(_) => self.app.lanes.poke(message.conversation_id),
            Enqueued::Delivered(_, delivered) => {
                let hub = &self.app.hub;
                if hub.has_listeners() {
                    let event = Event {
                        pts: 0,
                        kind: EventKind::MessageCreated,
                        conversation_id: message.conversation_id,
                        created_at_ms: message.created_at_ms,
                        message: Some(message.clone()),
                        details: None,
                    };
                    hub.remember(&Arc::new(event), delivered);
                    let users: Vec<_> = delivered.iter().map(|(user, _)| *user).collect();
                    hub.wake(&users);
                }
                if !self.listening {
                    hub.wake_if_subscribed_since(self.generation);
                }
            }
            Enqueued::Duplicate(_) => {}
        }
    }

    /// Hands live connections the followers' events too (`wake` already woke everyone the
    /// chunk wrote to).
    fn wake_followers(&self, plans: &[Plan<'_>], job: &ChunkJob<'_>, outcome: &ChunkOutcome) {
        for (plan, member_pts) in plans.iter().zip(&outcome.follower_pts) {
            if let Some(event) = plan.event(job.now_ms) {
                self.app.hub.remember(&Arc::new(event), member_pts);
            }
        }
    }
}

/// Where a task's chunks start (none for a group that fits one chunk) and the messages that
/// ride with it: the plan its first run stored (a task keeps its split even if the group
/// shrinks or grows meanwhile).
async fn chunk_plan(
    app: &AppState,
    queued: &QueuedTask,
    conversation: crate::ids::ConversationId,
) -> Result<ChunkPlan, StoreError> {
    let chunks = chunk_count(&app.config, queued.members);
    if !queued.planned && chunks == 1 {
        return Ok(ChunkPlan::default());
    }
    let per_chunk = div_ceil(queued.members.max(1), chunks);
    let max_followers = match queued.task {
        Task::Post { .. } => MAX_RUN_FOLLOWERS,
        Task::Announce { .. } => 0,
    };
    app.store
        .chunk_plan(queued.id, conversation, per_chunk, max_followers)
        .await
}

/// How many chunks a group of `members` is written in: enough that none exceeds
/// `chunk_size`, and where the store writes chunks at the same time, up to
/// `parallel_chunks` of at least `min_parallel_chunk` members each, so a large group that
/// fits one chunk still uses every parallel writer.
fn chunk_count(config: &Config, members: i64) -> i64 {
    let fanout = &config.fanout;
    let members = members.max(1);
    let needed = div_ceil(members, i64::from(fanout.chunk_size));
    if !config.parallel_writes() {
        return needed;
    }
    let parallel = (members / i64::from(fanout.min_parallel_chunk))
        .clamp(1, i64::from(fanout.parallel_chunks));
    needed.max(parallel)
}

/// `a / b` rounded up, for positive operands (`i64::div_ceil` is not stable yet).
fn div_ceil(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// What a task writes: the event kind, what it refers to, and who besides members hears it.
struct Plan<'a> {
    kind: EventKind,
    ref_id: i64,
    conversation: crate::ids::ConversationId,
    message: Option<&'a MessageRecord>,
    also_notify: &'a [crate::ids::UserId],
}

impl<'a> Plan<'a> {
    fn of(task: &'a Task) -> Plan<'a> {
        match task {
            Task::Post { message } => Plan {
                kind: EventKind::MessageCreated,
                ref_id: message.id.0,
                conversation: message.conversation_id,
                message: Some(message),
                also_notify: &[],
            },
            Task::Announce {
                conversation_id,
                kind,
                ref_id,
                also_notify,
            } => Plan {
                kind: *kind,
                ref_id: *ref_id,
                conversation: *conversation_id,
                message: None,
                also_notify,
            },
        }
    }

    fn conversation_id(&self) -> crate::ids::ConversationId {
        self.conversation
    }

    /// The job for chunk `chunk` of `chunks`, covering user ids in `[first, end)`.
    fn job(
        &self,
        task_id: i64,
        (chunk, chunks): (u32, u32),
        (first_user, end_user): (i64, i64),
        want_recipients: bool,
    ) -> ChunkJob<'a> {
        ChunkJob {
            task_id,
            kind: self.kind,
            conversation_id: self.conversation,
            ref_id: self.ref_id,
            new_message: self.message,
            chunk,
            chunks,
            first_user,
            end_user,
            also_notify: self.also_notify,
            want_recipients,
            now_ms: clock::now_ms(),
            followers: &[],
        }
    }

    /// The event as a member's stream shows it, for a new message (other events carry stored
    /// details the task does not hold, and are read back instead).
    fn event(&self, now_ms: i64) -> Option<Event> {
        let record = self
            .message
            .filter(|_| self.kind == EventKind::MessageCreated)?;
        let content = Content::from_parts(&record.msgtype, record.content.clone()).ok()?;
        Some(Event {
            pts: 0,
            kind: self.kind,
            conversation_id: record.conversation_id,
            created_at_ms: now_ms,
            message: Some(Message {
                id: record.id,
                org_id: record.org_id,
                conversation_id: record.conversation_id,
                sender: record.sender.clone(),
                content,
                at: record.at.clone(),
                thread_key: record.thread_key.clone(),
                dedupe_key: record.dedupe_key.clone(),
                recalled: false,
                created_at_ms: record.created_at_ms,
            }),
            details: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(database_url: &str) -> Config {
        let mut config = Config::defaults();
        config.database_url = database_url.to_string();
        config
    }

    #[test]
    fn sqlite_splits_only_past_chunk_size() {
        let sqlite = config("");
        assert_eq!(chunk_count(&sqlite, 10_000), 1);
        assert_eq!(chunk_count(&sqlite, 10_001), 2);
        assert_eq!(chunk_count(&sqlite, 95_000), 10);
    }

    #[test]
    fn postgres_splits_a_large_group_over_its_parallel_writers() {
        let pg = config("postgres://localhost/herald");
        assert_eq!(chunk_count(&pg, 0), 1);
        assert_eq!(chunk_count(&pg, 4_999), 1, "under twice min_parallel_chunk");
        assert_eq!(chunk_count(&pg, 5_000), 2);
        assert_eq!(chunk_count(&pg, 10_000), 2);
        assert_eq!(
            chunk_count(&pg, 95_000),
            10,
            "chunk_size still bounds each chunk"
        );
    }
}
