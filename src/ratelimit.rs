//! Per-group flow control on the receive path. The allowed rate shrinks as a group grows,
//! because each message to a large group costs one inbox row per member.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::config::LimitsConfig;
use crate::ids::{ConversationId, RobotId};

/// A GCRA limiter per conversation: smooth rate with a burst of ten seconds' worth.
pub struct GroupLimiter {
    config: LimitsConfig,
    tat: Mutex<HashMap<ConversationId, f64>>,
}

/// Over the limit: how long until the next message would pass.
#[derive(Debug, PartialEq)]
pub struct Throttled {
    pub retry_after_ms: u64,
    pub per_minute: u32,
}

impl GroupLimiter {
    pub fn new(config: LimitsConfig) -> Self {
        GroupLimiter {
            config,
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// Messages a minute allowed for a group of this size.
    pub fn per_minute(&self, members: i64) -> u32 {
        let c = &self.config;
        let members = members.max(1) as u64;
        let above = u64::from(c.tighten_above_members.max(1));
        let rate = if members <= above {
            u64::from(c.group_messages_per_minute)
        } else {
            u64::from(c.group_messages_per_minute) * above / members
        };
        (rate as u32).max(c.min_group_messages_per_minute)
    }

    /// Admits one message to the conversation at `now_ms`, or says when to retry.
    pub fn check(
        &self,
        conversation: ConversationId,
        members: i64,
        now_ms: i64,
    ) -> Result<(), Throttled> {
        let per_minute = self.per_minute(members);
        let interval = 60_000.0 / f64::from(per_minute);
        let burst = (f64::from(per_minute) / 6.0).max(1.0);
        let tolerance = interval * (burst - 1.0);
        let now = now_ms as f64;
        let mut map = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(&conversation).copied().unwrap_or(now).max(now);
        if tat - now > tolerance {
            return Err(Throttled {
                retry_after_ms: (tat - now - tolerance).ceil() as u64,
                per_minute,
            });
        }
        map.insert(conversation, tat + interval);
        Ok(())
    }
}

/// DingTalk's robot rule: at most N messages in any 60 seconds, then a throttle window during
/// which everything is refused.
#[derive(Default)]
pub struct RobotLimiter {
    robots: Mutex<HashMap<RobotId, RobotWindow>>,
}

#[derive(Default)]
struct RobotWindow {
    sent: VecDeque<i64>,
    throttled_until: i64,
}

impl RobotLimiter {
    /// Admits one message from the robot at `now_ms`.
    pub fn admit(
        &self,
        robot: RobotId,
        per_minute: u32,
        throttle_seconds: u32,
        now_ms: i64,
    ) -> bool {
        let mut map = self.robots.lock().unwrap_or_else(|e| e.into_inner());
        let window = map.entry(robot).or_default();
        if now_ms < window.throttled_until {
            return false;
        }
        while window.sent.front().is_some_and(|t| now_ms - t >= 60_000) {
            window.sent.pop_front();
        }
        if window.sent.len() >= per_minute as usize {
            window.throttled_until = now_ms + i64::from(throttle_seconds) * 1000;
            return false;
        }
        window.sent.push_back(now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> GroupLimiter {
        GroupLimiter::new(LimitsConfig {
            group_messages_per_minute: 60,
            tighten_above_members: 100,
            min_group_messages_per_minute: 6,
            max_group_members: 100_000,
        })
    }

    #[test]
    fn rate_tightens_with_member_count() {
        let l = limiter();
        assert_eq!(l.per_minute(10), 60);
        assert_eq!(l.per_minute(200), 30);
        assert_eq!(l.per_minute(100_000), 6);
    }

    #[test]
    fn burst_then_throttle_then_recover() {
        let l = limiter();
        let c = ConversationId(1);
        for _ in 0..10 {
            l.check(c, 10, 0).unwrap();
        }
        let t = l.check(c, 10, 0).unwrap_err();
        assert!(t.retry_after_ms > 0 && t.retry_after_ms <= 1000);
        l.check(c, 10, 1000).unwrap();
        l.check(ConversationId(2), 10, 0).unwrap();
    }

    #[test]
    fn robot_limit_then_throttle_window() {
        let l = RobotLimiter::default();
        let r = RobotId(1);
        for i in 0..20 {
            assert!(l.admit(r, 20, 600, i));
        }
        assert!(!l.admit(r, 20, 600, 100), "the 21st in a minute is refused");
        assert!(!l.admit(r, 20, 600, 61_000), "still throttled");
        assert!(
            l.admit(r, 20, 600, 100 + 600_000),
            "free after the throttle window"
        );
    }
}
