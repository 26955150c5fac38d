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
use crate::{clock, fanout, AppState};

/// After this many failed attempts a task is moved to `dead_tasks`.
pub const MAX_ATTEMPTS: i64 = 20;
/// Tasks claimed per round.
const CLAIM_BATCH: i64 = 64;
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

/// Claims a batch and processes it in order. True when any task was finished.
async fn run_round(app: &AppState, lane: u32) -> Result<bool, crate::store::StoreError> {
    let tasks = app
        .store
        .claim_tasks(lane, app.lanes.count(), CLAIM_BATCH)
        .await?;
    let now = clock::now_ms();
    let mut blocked: HashSet<ConversationId> = HashSet::new();
    let mut progressed = false;
    for task in tasks {
        let conversation = task.task.conversation_id();
        if blocked.contains(&conversation) {
            continue;
        }
        if task.run_at_ms > now {
            blocked.insert(conversation);
            continue;
        }
        match fanout::fan_out(app, &task).await {
            Ok(()) => progressed = true,
            Err(e) => {
                tracing::warn!(task.id = task.id, attempts = task.attempts, error = %e, "fanout failed; will retry");
                blocked.insert(conversation);
                let run_at = clock::now_ms() + backoff_ms(task.attempts);
                app.store
                    .retry_task(task.id, run_at, &e.to_string())
                    .await?;
            }
        }
    }
    Ok(progressed)
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
