//! Per-robot counters of what its sender sent: events posted and events answered 2xx but not
//! posted (not rendered, filtered out), by event name. The receive path only bumps an
//! in-memory delta; `flush_loop` adds the deltas to the store every second and once more at
//! shutdown, so counting never costs the receive path a write. A kill -9 loses at most the
//! last second's counts, never a message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::ids::RobotId;
use crate::store::{Result, StatDelta};
use crate::AppState;

/// How often counts reach the store.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, Serialize, ToSchema, PartialEq)]
pub struct RobotStats {
    pub posted: u64,
    pub skipped: u64,
    /// Event name → (posted, skipped).
    pub events: BTreeMap<String, EventCount>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema, PartialEq)]
pub struct EventCount {
    pub posted: u64,
    pub skipped: u64,
}

impl RobotStats {
    fn add(&mut self, event: &str, count: &EventCount) {
        self.posted += count.posted;
        self.skipped += count.skipped;
        let per_event = self.events.entry(event.to_string()).or_default();
        per_event.posted += count.posted;
        per_event.skipped += count.skipped;
    }
}

/// Counts not yet in the store.
#[derive(Default)]
pub struct Counters {
    pending: Mutex<HashMap<(RobotId, String), EventCount>>,
    /// Held for writing while a flush moves counts to the store, and for reading while `of`
    /// adds stored and pending up, so no answer sees a count in neither place (or both).
    flushing: tokio::sync::RwLock<()>,
}

impl Counters {
    /// Counts one event of the robot as posted or skipped.
    pub fn count(&self, robot: RobotId, event: &str, posted: bool) {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry((robot, event.to_string())).or_default();
        match posted {
            true => count.posted += 1,
            false => count.skipped += 1,
        }
    }

    fn take(&self) -> Vec<StatDelta> {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.drain()
            .map(|((robot, event), c)| StatDelta {
                robot,
                event,
                posted: c.posted as i64,
                skipped: c.skipped as i64,
            })
            .collect()
    }

    /// Puts deltas back after a failed write, to go with the next flush.
    fn restore(&self, deltas: Vec<StatDelta>) {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for d in deltas {
            let count = map.entry((d.robot, d.event)).or_default();
            count.posted += d.posted as u64;
            count.skipped += d.skipped as u64;
        }
    }

    fn pending_of(&self, robot: RobotId) -> Vec<(String, EventCount)> {
        let map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|((r, _), _)| *r == robot)
            .map(|((_, e), c)| (e.clone(), c.clone()))
            .collect()
    }
}

/// A robot's counts: what the store holds plus what is not flushed yet.
pub async fn of(app: &AppState, robot: RobotId) -> Result<RobotStats> {
    let _steady = app.robot_stats.flushing.read().await;
    let mut stats = RobotStats::default();
    for (event, posted, skipped) in app.store.robot_stats(robot).await? {
        let count = EventCount {
            posted: posted.max(0) as u64,
            skipped: skipped.max(0) as u64,
        };
        stats.add(&event, &count);
    }
    for (event, count) in app.robot_stats.pending_of(robot) {
        stats.add(&event, &count);
    }
    Ok(stats)
}

/// Writes the pending counts to the store.
pub async fn flush(app: &AppState) {
    let _moving = app.robot_stats.flushing.write().await;
    let deltas = app.robot_stats.take();
    if deltas.is_empty() {
        return;
    }
    if let Err(e) = app.store.add_robot_stats(&deltas).await {
        tracing::warn!(error = %e, "saving robot stats failed; retrying");
        app.robot_stats.restore(deltas);
    }
}

/// Flushes robot and plugin counts every second until shutdown, then once more.
pub async fn flush_loop(app: AppState, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => flush_all(&app).await,
            _ = shutdown.cancelled() => break,
        }
    }
    flush_all(&app).await;
}

async fn flush_all(app: &AppState) {
    flush(app).await;
    crate::plugin::stats::flush(app).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_event_until_taken() {
        let c = Counters::default();
        c.count(RobotId(1), "push", true);
        c.count(RobotId(1), "star.created", false);
        c.count(RobotId(1), "star.created", false);
        c.count(RobotId(2), "push", true);
        let mut mine = c.pending_of(RobotId(1));
        mine.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            mine,
            vec![
                (
                    "push".to_string(),
                    EventCount {
                        posted: 1,
                        skipped: 0
                    }
                ),
                (
                    "star.created".to_string(),
                    EventCount {
                        posted: 0,
                        skipped: 2
                    }
                ),
            ]
        );
        let taken = c.take();
        assert_eq!(taken.len(), 3);
        assert!(c.pending_of(RobotId(1)).is_empty());
        c.restore(taken);
        assert_eq!(c.pending_of(RobotId(1)).len(), 2);
    }
}
