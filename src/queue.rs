//! The durable queue between the receive path and fanout. The receive path commits a task row
//! and answers; `worker_loop`s claim tasks lane by lane (a conversation always maps to one
//! lane, so its events keep one order) and hand each to `fanout::fan_out`. A failed task is
//! retried with backoff; its conversation waits behind it so order is never broken.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ids::ConversationId;
use crate::store::QueuedTask;
use crate::{clock, fanout, AppState};

/// After this many failed attempts a task is moved to `dead_tasks`.
pub const MAX_ATTEMPTS: i64 = 20;
/// Tasks claimed per round.
const CLAIM_BATCH: i64 = 64;
/// A batch of one task still takes the batch path (one command instead of a statement per
/// step, which is what a lone webhook to a small group costs most) unless its group is larger
/// than this: the batch statements' per-member counting and numbering (a sort) cost more than
/// the chunk path's plain `+1` once the rows outweigh the round trips; on SQLite a lone
/// message to 10,000 members took 2.9 times as long through the batch path (61.8 vs 21.5 ms).
const LONE_BATCH_MAX_MEMBERS: i64 = 100;
/// A lane re-checks the table at least this often, for tasks queued by another process.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Wakes the lane that owns a conversation when the receive path queued work for it.
pub struct Lanes {
    bells: Vec<Notify>,
}

impl Lanes {
    pub fn new(count: u32) -> Arc<Lanes> {
        Arc::new(Lanes {
            bells: (0..count).map(|_| Notify::new()).collect(),
        })
    }

    pub fn count(&self) -> u32 {
        self.bells.len() as u32
    }

    pub fn lane_of(&self, conversation: ConversationId) -> u32 {
        conversation.0.rem_euclid(self.count() as i64) as u32
    }

    pub fn poke(&self, conversation: ConversationId) {
        self.bells[self.lane_of(conversation) as usize].notify_one();
    }
}

/// Runs one lane until shutdown; finishes the task in hand before it stops.
pub async fn worker_loop(app: AppState, lane: u32, shutdown: CancellationToken) {
    let bell = &app.lanes.bells[lane as usize];
    while !shutdown.is_cancelled() {
        let progressed = match run_round(&app, lane).await {
            Ok(progressed) => progressed,
            Err(e) => {
                tracing::warn!(lane, error = %e, "claiming tasks failed");
                false
            }
        };
        if progressed {
            continue;
        }
        tokio::select! {
            _ = bell.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Claims tasks and processes them in order. Consecutive new messages to small groups are
/// fanned out together in one transaction; anything else flushes them first and runs alone,
/// so every conversation's events keep their queue order. True when any task was finished.
async fn run_round(app: &AppState, lane: u32) -> Result<bool, crate::store::StoreError> {
    let tasks = app
        .store
        .claim_tasks(lane, app.lanes.count(), CLAIM_BATCH)
        .await?;
    let now = clock::now_ms();
    let mut round = Round::default();
    for task in &tasks {
        let conversation = task.task.conversation_id();
        if round.blocked.contains(&conversation) || round.rode_along.contains(&task.id) {
            continue;
        }
        if task.run_at_ms > now {
            round.blocked.insert(conversation);
            continue;
        }
        if fanout::batchable(app, task) {
            if round.batch_members + task.members > i64::from(app.config.fanout.chunk_size) {
                round.flush(app).await?;
            }
            round.batch.push(task);
            round.batch_members += task.members;
            continue;
        }
        round.flush(app).await?;
        round.run_one(app, task).await?;
    }
    round.flush(app).await?;
    Ok(round.progressed)
}

/// One round's state: the batch being gathered and the conversations that must wait.
#[derive(Default)]
struct Round<'a> {
    batch: Vec<&'a QueuedTask>,
    batch_members: i64,
    blocked: HashSet<ConversationId>,
    /// Tasks already written as part of an earlier task's run (see `fanout::fan_out`).
    rode_along: HashSet<i64>,
    progressed: bool,
}

impl<'a> Round<'a> {
    /// Fans out the gathered batch; if its transaction fails, each task runs alone so only
    /// the failing one is retried.
    async fn flush(&mut self, app: &AppState) -> Result<(), crate::store::StoreError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_members = 0;
        if batch.is_empty() {
            return Ok(());
        }
        if let [only] = batch[..] {
            if only.members > LONE_BATCH_MAX_MEMBERS {
                return self.run_one(app, only).await;
            }
        }
        match fanout::fan_out_batch(app, &batch).await {
            Ok(()) => self.progressed = true,
            Err(e) => {
                tracing::debug!(tasks = batch.len(), error = %e, "batched fanout failed; running tasks one by one");
                for task in batch {
                    self.run_one(app, task).await?;
                }
            }
        }
        Ok(())
    }

    async fn run_one(
        &mut self,
        app: &AppState,
        task: &QueuedTask,
    ) -> Result<(), crate::store::StoreError> {
        let conversation = task.task.conversation_id();
        if self.blocked.contains(&conversation) {
            return Ok(());
        }
        match fanout::fan_out(app, task).await {
            Ok(followers) => {
                self.progressed = true;
                self.rode_along.extend(followers);
            }
            Err(e) => {
                tracing::warn!(task.id = task.id, attempts = task.attempts, error = %e, "fanout failed; will retry");
                self.blocked.insert(conversation);
                let run_at = clock::now_ms() + backoff_ms(task.attempts);
                app.store
                    .retry_task(task.id, run_at, &e.to_string())
                    .await?;
            }
        }
        Ok(())
    }
}

/// Exponential backoff with jitter: 100 ms doubling to a one-minute ceiling.
pub fn backoff_ms(attempts: i64) -> i64 {
    let base = 100i64
        .saturating_mul(1 << attempts.clamp(0, 10))
        .min(60_000);
    base + rand::random::<i64>().rem_euclid(base / 2 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert!((100..=150).contains(&backoff_ms(0)));
        assert!((800..=1200).contains(&backoff_ms(3)));
        assert!(backoff_ms(40) <= 90_000);
    }

    #[test]
    fn a_conversation_always_maps_to_one_lane() {
        let lanes = Lanes::new(4);
        assert_eq!(
            lanes.lane_of(ConversationId(9)),
            lanes.lane_of(ConversationId(9))
        );
        assert_eq!(lanes.lane_of(ConversationId(9)), 1);
    }
}
