//! Per-robot counters of what its sender sent: events posted and events answered 2xx but not
//! posted (not rendered, filtered out), by event name. Kept in memory per process; the API shows
//! them with the robot so an admin can see what a sender delivers and what herald drops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::RobotId;

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

#[derive(Default)]
pub struct Counters {
    robots: Mutex<HashMap<RobotId, RobotStats>>,
}

impl Counters {
    /// Counts one event of the robot as posted or skipped.
    pub fn count(&self, robot: RobotId, event: &str, posted: bool) {
        let mut map = self.robots.lock().unwrap_or_else(|e| e.into_inner());
        let stats = map.entry(robot).or_default();
        let per_event = stats.events.entry(event.to_string()).or_default();
        if posted {
            stats.posted += 1;
            per_event.posted += 1;
        } else {
            stats.skipped += 1;
            per_event.skipped += 1;
        }
    }

    pub fn of(&self, robot: RobotId) -> RobotStats {
        let map = self.robots.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&robot).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_event() {
        let c = Counters::default();
        c.count(RobotId(1), "push", true);
        c.count(RobotId(1), "star.created", false);
        c.count(RobotId(1), "star.created", false);
        let s = c.of(RobotId(1));
        assert_eq!((s.posted, s.skipped), (1, 2));
        assert_eq!(
            s.events["star.created"],
            EventCount {
                posted: 0,
                skipped: 2
            }
        );
        assert_eq!(c.of(RobotId(2)), RobotStats::default());
    }
}
