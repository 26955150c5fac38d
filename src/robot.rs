//! Incoming robots: a robot is bound to one conversation and turns one sender's webhooks into
//! its messages. This module holds what a robot is (kind, credentials, security, filters,
//! template overrides); `ingress` receives, `verify` checks, `adapt` normalizes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{ConversationId, OrgId, RobotId};

/// Where a robot's webhooks come from. Each kind has its own endpoint, verification and adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RobotKind {
    /// DingTalk's custom robot: `POST /robot/send?access_token=…`.
    Custom,
    Github,
    Gitlab,
    Alertmanager,
    Grafana,
    Pagerduty,
    Slack,
    Plugin,
}

impl RobotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RobotKind::Custom => "custom",
            RobotKind::Github => "github",
            RobotKind::Gitlab => "gitlab",
            RobotKind::Alertmanager => "alertmanager",
            RobotKind::Grafana => "grafana",
            RobotKind::Pagerduty => "pagerduty",
            RobotKind::Slack => "slack",
            RobotKind::Plugin => "plugin",
        }
    }

    pub fn parse(s: &str) -> Option<RobotKind> {
        Some(match s {
            "custom" => RobotKind::Custom,
            "github" => RobotKind::Github,
            "gitlab" => RobotKind::Gitlab,
            "alertmanager" => RobotKind::Alertmanager,
            "grafana" => RobotKind::Grafana,
            "pagerduty" => RobotKind::Pagerduty,
            "slack" => RobotKind::Slack,
            "plugin" => RobotKind::Plugin,
            _ => return None,
        })
    }

    /// Alert senders open incidents (the escalation issue builds on this).
    pub fn is_alerting(self) -> bool {
        matches!(
            self,
            RobotKind::Alertmanager | RobotKind::Grafana | RobotKind::Pagerduty
        )
    }
}

/// DingTalk's three security settings, usable on every kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Require DingTalk's `timestamp` + `sign` query parameters (custom robots).
    #[serde(default)]
    pub sign: bool,
    /// The message must contain one of these (at most 10).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Senders must come from one of these CIDR ranges.
    #[serde(default)]
    pub ip_ranges: Vec<String>,
}

/// How repeated events about one object (a pull request, an alert group) show up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// Update the object's card in place and add a threaded follow-up.
    #[default]
    Both,
    /// Only update the card.
    Card,
    /// Only post threaded follow-ups.
    Thread,
    /// Every event is a new message.
    Off,
}

/// Everything about a robot that an admin can change, stored as one JSON document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RobotSpec {
    #[serde(default)]
    pub security: Security,
    /// Filter rules over normalized fields (see README, "Filters").
    #[serde(default)]
    #[schema(value_type = Object)]
    pub filters: serde_json::Value,
    /// Template overrides: event name → MiniJinja template of the message text.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// Messages a minute before throttling (DingTalk: 20).
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
    /// How long a robot stays throttled after exceeding its rate (DingTalk: 10 minutes).
    #[serde(default = "default_throttle")]
    pub throttle_seconds: u32,
    #[serde(default)]
    pub grouping: Grouping,
    /// Events about one object arriving within this many seconds of its card's last update
    /// are coalesced into one card update and one follow-up (0: every event at once).
    #[serde(default)]
    pub burst_seconds: u32,
    /// A custom robot whose messages are alerts (the escalation issue).
    #[serde(default)]
    pub alerting: bool,
    #[serde(default)]
    pub escalation_policy_id: Option<String>,
    /// Batch alert events of these severities into one message per interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub plugin_id: Option<String>,
    /// Per-robot settings handed to a plugin.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_rate() -> u32 {
    20
}

fn default_throttle() -> u32 {
    600
}

impl Default for RobotSpec {
    fn default() -> Self {
        RobotSpec {
            security: Security::default(),
            filters: serde_json::Value::Null,
            templates: BTreeMap::new(),
            rate_per_minute: default_rate(),
            throttle_seconds: default_throttle(),
            grouping: Grouping::default(),
            burst_seconds: 0,
            alerting: false,
            escalation_policy_id: None,
            digest: None,
            plugin_id: None,
            config: BTreeMap::new(),
        }
    }
}

/// Digest mode: alert events of the listed severities are collected and posted as one message
/// every `interval_seconds` instead of one card each (noise control for low severities).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub severities: Vec<String>,
    pub interval_seconds: u64,
}

impl Digest {
    /// Whether an event of this severity goes into the digest.
    pub fn covers(&self, severity: Option<&str>) -> bool {
        severity.is_some_and(|s| self.severities.iter().any(|d| d.eq_ignore_ascii_case(s)))
    }
}

/// A robot as stored.
#[derive(Debug, Clone)]
pub struct Robot {
    pub id: RobotId,
    pub org_id: OrgId,
    pub kind: RobotKind,
    pub conversation_id: ConversationId,
    pub name: String,
    pub access_token: String,
    pub secret: Option<String>,
    pub spec: RobotSpec,
    pub created_at_ms: i64,
}

/// A robot to create.
#[derive(Debug, Clone)]
pub struct NewRobot {
    pub org_id: OrgId,
    pub kind: RobotKind,
    pub conversation_id: ConversationId,
    pub name: String,
    pub access_token: String,
    pub secret: Option<String>,
    pub spec: RobotSpec,
}

/// A random access token: 160 bits, hex.
pub fn new_access_token() -> String {
    hex(&rand::random::<[u8; 20]>())
}

/// DingTalk's secret format: `SEC` and 64 hex digits.
pub fn new_dingtalk_secret() -> String {
    format!("SEC{}", hex(&rand::random::<[u8; 32]>()))
}

/// A generic shared secret (GitHub, GitLab): 256 bits, hex.
pub fn new_shared_secret() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// Lowercase hex, as GitHub's signatures and herald's secrets spell it (on every signed
/// webhook, so without a `format!` per byte).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}
