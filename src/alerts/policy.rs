//! Escalation policies: ordered steps, each a wait, targets and a channel, repeated up to N
//! times; chosen for an incident by its robot or by label matchers. This module validates and
//! matches policies; it stores nothing and sends nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::window::ActiveWindow;
use crate::ids::{OrgId, PolicyId, RotationId, UserId};

/// At most this many steps per policy, and passes through them.
const MAX_STEPS: usize = 20;
const MAX_REPEAT: u32 = 20;
/// One week: the longest wait a step may have.
const MAX_WAIT_SECONDS: u64 = 7 * 24 * 3600;
/// A fire within this long of a resolve re-opens the same incident (flapping).
pub const DEFAULT_FLAP_WINDOW_SECONDS: u64 = 300;

/// How a step reaches its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A message in the incident's conversation that @-mentions the targets.
    Group,
    /// A DING in the targets' sync streams.
    DingApp,
    /// A DING in the app plus an SMS through the org's notification provider.
    DingSms,
    /// A DING in the app plus a voice call through the org's notification provider.
    DingCall,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Group => "group",
            Channel::DingApp => "ding_app",
            Channel::DingSms => "ding_sms",
            Channel::DingCall => "ding_call",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Some(match s {
            "group" => Channel::Group,
            "ding_app" => Channel::DingApp,
            "ding_sms" => Channel::DingSms,
            "ding_call" => Channel::DingCall,
            _ => return None,
        })
    }

    /// Whether the provider is asked to send an SMS or place a call.
    pub fn needs_provider(self) -> bool {
        matches!(self, Channel::DingSms | Channel::DingCall)
    }
}

/// Who a step notifies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Named users of the org.
    #[serde(default)]
    pub users: Vec<UserId>,
    /// The owner of the incident's conversation.
    #[serde(default)]
    pub conversation_owner: bool,
    /// Whoever is on call in these rotations when the step fires.
    #[serde(default)]
    pub rotations: Vec<RotationId>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && !self.conversation_owner && self.rotations.is_empty()
    }
}

/// One step of a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Seconds after the previous step fired (the first step: after the incident opened).
    pub wait_seconds: u64,
    /// May be empty on a `resend` step.
    #[serde(default)]
    pub targets: Targets,
    pub channel: Channel,
    /// The step fires only within these hours; outside them it is skipped and the chain goes
    /// on to the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveWindow>,
    /// Re-send the incident's latest DING (same id) to its recipients who have not confirmed
    /// it, through this step's channel, instead of a new DING; the targets, if any, get a new
    /// DING only when there is nothing to re-send.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend: bool,
}

impl Step {
    /// Checks the step's targets, resend option and window; the error starts with the field.
    fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() && !self.resend {
            return Err("targets names nobody".into());
        }
        if self.resend && self.channel == Channel::Group {
            return Err(
                "resend re-sends a DING: channel must be ding_app, ding_sms or ding_call".into(),
            );
        }
        if let Some(window) = &self.active {
            window.validate().map_err(|e| format!("active: {e}"))?;
        }
        Ok(())
    }
}

/// Everything about a policy an admin sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub steps: Vec<Step>,
    /// How many more times the chain runs after its last step (0: once).
    #[serde(default)]
    pub repeat: u32,
    /// Label matchers (`{"team": "payments", "severity": "critical"}`): an incident whose
    /// robot names no policy gets the first policy all of whose matchers hold.
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    /// After an acknowledgement, escalation resumes this many seconds later if the alert
    /// still fires and nobody resolved it. Absent: an acknowledgement holds.
    #[serde(default)]
    pub ack_timeout_seconds: Option<u64>,
    /// A fire this soon after a resolve re-opens the same incident where its chain stood.
    #[serde(default = "default_flap")]
    pub flap_window_seconds: u64,
}

fn default_flap() -> u64 {
    DEFAULT_FLAP_WINDOW_SECONDS
}

/// A policy as stored.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: PolicyId,
    pub org_id: OrgId,
    pub name: String,
    pub spec: PolicySpec,
    pub created_at_ms: i64,
}

impl PolicySpec {
    /// Checks the limits; the API layer checks that the named users exist.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(format!("steps must hold 1 to {MAX_STEPS} steps"));
        }
        if self.repeat > MAX_REPEAT {
            return Err(format!("repeat must be at most {MAX_REPEAT}"));
        }
        for (i, step) in self.steps.iter().enumerate() {
            if step.wait_seconds > MAX_WAIT_SECONDS {
                return Err(format!(
                    "steps[{i}].wait_seconds must be at most {MAX_WAIT_SECONDS}"
                ));
            }
            step.validate().map_err(|e| format!("steps[{i}].{e}"))?;
        }
        if self
            .ack_timeout_seconds
            .is_some_and(|s| s == 0 || s > MAX_WAIT_SECONDS)
        {
            return Err(format!(
                "ack_timeout_seconds must be between 1 and {MAX_WAIT_SECONDS}"
            ));
        }
        Ok(())
    }

    /// Every user a step names, for the existence check.
    pub fn named_users(&self) -> Vec<UserId> {
        let mut users: Vec<UserId> = self
            .steps
            .iter()
            .flat_map(|s| s.targets.users.iter().copied())
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Whether every matcher holds for an incident's `key=value` labels and severity.
    pub fn matches(&self, labels: &[String], severity: Option<&str>) -> bool {
        !self.matchers.is_empty()
            && self.matchers.iter().all(|(k, v)| {
                (k == "severity" && severity == Some(v.as_str()))
                    || labels.iter().any(|l| l == &format!("{k}={v}"))
            })
    }

    /// The wait before step `step`, in milliseconds.
    pub fn wait_ms(&self, step: u32) -> i64 {
        self.steps
            .get(step as usize)
            .map_or(0, |s| (s.wait_seconds as i64).saturating_mul(1000))
    }

    /// The position after `step` of pass `round` fired: the next step, a new pass, or the end.
    pub fn after(&self, step: u32, round: u32) -> Option<(u32, u32)> {
        if (step as usize) + 1 < self.steps.len() {
            Some((step + 1, round))
        } else if round < self.repeat {
            Some((0, round + 1))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(steps: usize, repeat: u32) -> PolicySpec {
        let step = Step {
            wait_seconds: 5,
            targets: Targets {
                users: vec![UserId(1)],
                conversation_owner: false,
                rotations: vec![],
            },
            channel: Channel::DingApp,
            active: None,
            resend: false,
        };
        PolicySpec {
            steps: vec![step; steps],
            repeat,
            matchers: BTreeMap::new(),
            ack_timeout_seconds: None,
            flap_window_seconds: 300,
        }
    }

    #[test]
    fn the_chain_walks_its_steps_then_repeats_then_ends() {
        let p = spec(2, 1);
        assert_eq!(p.after(0, 0), Some((1, 0)));
        assert_eq!(p.after(1, 0), Some((0, 1)));
        assert_eq!(p.after(1, 1), None);
        assert_eq!(p.wait_ms(1), 5000);
    }

    #[test]
    fn limits_are_checked() {
        assert!(spec(1, 0).validate().is_ok());
        assert!(spec(0, 0).validate().is_err());
        assert!(spec(1, 99).validate().is_err());
        let mut nobody = spec(1, 0);
        nobody.steps[0].targets.users.clear();
        assert!(nobody.validate().unwrap_err().contains("names nobody"));
        nobody.steps[0].resend = true;
        assert!(nobody.validate().is_ok(), "a resend step may name nobody");
        nobody.steps[0].channel = Channel::Group;
        assert!(nobody.validate().unwrap_err().contains("steps[0].resend"));
        let mut windowed = spec(1, 0);
        windowed.steps[0].active = Some(ActiveWindow {
            days: vec![],
            from: "25:00".into(),
            to: "06:00".into(),
            time_zone: "UTC".into(),
        });
        assert!(windowed
            .validate()
            .unwrap_err()
            .starts_with("steps[0].active: from"));
    }

    #[test]
    fn matchers_need_every_label() {
        let mut p = spec(1, 0);
        assert!(
            !p.matches(&["team=payments".into()], None),
            "no matchers: never"
        );
        p.matchers.insert("team".into(), "payments".into());
        p.matchers.insert("severity".into(), "critical".into());
        assert!(p.matches(&["team=payments".into()], Some("critical")));
        assert!(!p.matches(&["team=payments".into()], Some("warning")));
        assert!(!p.matches(&["team=web".into()], Some("critical")));
    }
}
