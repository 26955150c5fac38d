//! Write fanout: one inbox row per recipient, each with the recipient's next pts, allocated in
//! the same transaction as the insert. Large groups are split into chunks by user id so each
//! transaction stays short; chunks touch disjoint users, so each user's order is kept. After
//! each commit the hub wakes whoever is connected.

use futures::stream::{self, StreamExt, TryStreamExt};

use std::sync::Arc;

use crate::model::{Content, Event, EventKind, Message};
use crate::store::{ChunkJob, ChunkOutcome, MessageRecord, QueuedTask, StoreError, Task};
use crate::{clock, AppState};

/// Processes one queued task. Safe to run again after a crash at any point.
pub async fn fan_out(app: &AppState, queued: &QueuedTask) -> Result<(), StoreError> {
    let plan = Plan::of(&queued.task);
    let members = app.store.member_count(plan.conversation_id()).await?;
    let chunks = chunk_count(members, app.config.fanout.chunk_size);
    let generation = app.hub.generation();
    let listening = app.hub.has_listeners();
    let job = |chunk: u32| ChunkJob {
        task_id: queued.id,
        kind: plan.kind,
        conversation_id: plan.conversation_id(),
        ref_id: plan.ref_id,
        new_message: plan.message,
        chunk,
        chunks,
        also_notify: plan.also_notify,
        want_recipients: listening,
        now_ms: clock::now_ms(),
    };
    let wake = |job: &ChunkJob<'_>, outcome: &ChunkOutcome| {
        if let Some(event) = plan.event(job.now_ms) {
            app.hub.remember(&Arc::new(event), &outcome.member_pts);
        }
        app.hub.wake(&outcome.recipients);
        if !listening {
            app.hub.wake_if_subscribed_since(generation);
        }
    };
    // Chunk 0 may have queued bot deliveries (see `outgoing`).
    if chunks == 1 {
        let job = job(0);
        let outcome = app.store.fan_out_chunk(&job).await?;
        wake(&job, &outcome);
        app.outgoing.wake.notify_one();
        return Ok(());
    }
    let parallel = app.config.fanout.parallel_chunks as usize;
    stream::iter(0..chunks)
        .map(|chunk| {
            let job = job(chunk);
            async move {
                let outcome = app.store.fan_out_chunk(&job).await?;
                wake(&job, &outcome);
                Ok::<_, StoreError>(())
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await?;
    app.outgoing.wake.notify_one();
    app.store.complete_task(queued.id).await
}

/// How many chunks a group of `members` is written in.
pub fn chunk_count(members: i64, chunk_size: u32) -> u32 {
    let size = i64::from(chunk_size.max(1));
    ((members + size - 1) / size).clamp(1, 4096) as u32
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
    use super::chunk_count;

    #[test]
    fn chunks_cover_every_member() {
        assert_eq!(chunk_count(0, 5000), 1);
        assert_eq!(chunk_count(5000, 5000), 1);
        assert_eq!(chunk_count(5001, 5000), 2);
        assert_eq!(chunk_count(10_000, 2000), 5);
    }
}
