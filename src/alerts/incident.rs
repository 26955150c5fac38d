//! Incidents: what an alert robot's events do to the incident of their key. A fire opens one
//! (or re-opens a flapping one, or counts a repeat), a resolve closes it, a PagerDuty
//! acknowledge acknowledges it. Every change is one store transaction that also sets the
//! incident's pending timer; nothing here sleeps.

use serde::Serialize;
use utoipa::ToSchema;

use crate::adapt::Normalized;
use crate::error::ApiError;
use crate::ids::{ConversationId, IncidentId, OrgId, PolicyId, RobotId};
use crate::model::Content;
use crate::robot::Robot;
use crate::store::{Action, FireOutcome, Firing, IncidentRef, Transition};
use crate::{clock, AppState};

use super::policy::Policy;

/// An incident's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Triggered,
    Acknowledged,
    Resolved,
    Silenced,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Triggered => "triggered",
            State::Acknowledged => "acknowledged",
            State::Resolved => "resolved",
            State::Silenced => "silenced",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "triggered" => State::Triggered,
            "acknowledged" => State::Acknowledged,
            "resolved" => State::Resolved,
            "silenced" => State::Silenced,
            _ => return None,
        })
    }
}

/// An incident as stored.
#[derive(Debug, Clone)]
pub struct Incident {
    pub id: IncidentId,
    pub org_id: OrgId,
    pub robot_id: RobotId,
    pub conversation_id: ConversationId,
    pub key: String,
    pub state: State,
    pub title: String,
    pub severity: Option<String>,
    pub labels: Vec<String>,
    pub policy_id: Option<PolicyId>,
    /// The next step of the chain to fire, and the pass through it.
    pub step: u32,
    pub round: u32,
    pub fire_count: i64,
    /// The alert card as last rendered, before the incident's status was added.
    pub card: Option<Content>,
    pub silenced_until_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
}

/// One line of an incident's timeline: who did what, when, through which channel.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimelineEntry {
    pub action: String,
    pub actor: String,
    pub channel: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub at: String,
}

/// Who acts on an incident, and through which channel (`api`, `card`, `reply`, `ding`,
/// `sender`, `escalation`).
#[derive(Debug, Clone)]
pub struct Actor {
    pub who: String,
    pub channel: &'static str,
}

/// What a sender's event means for its incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Fire,
    Ack,
    Resolve,
}

impl Signal {
    /// The signal of a normalized event name, if it is one.
    pub fn of(event: &str) -> Option<Signal> {
        match event {
            "alert.firing" | "incident.trigger" => Some(Signal::Fire),
            "incident.acknowledge" => Some(Signal::Ack),
            "alert.resolved" | "incident.resolve" => Some(Signal::Resolve),
            _ => None,
        }
    }
}

/// A custom robot marked alerting names its alert with herald's extension fields beside the
/// DingTalk message: `incident_key` (required), `incident_status` (`firing`, default;
/// `resolved`; `acknowledged`) and `severity`. None when the body has no key.
pub fn custom_event(body: &[u8], content: &Content) -> Option<Normalized> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let key = v.get("incident_key")?.as_str()?.trim();
    if key.is_empty() || key.len() > 256 {
        return None;
    }
    let event = match v.get("incident_status").and_then(|s| s.as_str()) {
        Some("resolved") => "alert.resolved",
        Some("acknowledged") => "incident.acknowledge",
        _ => "alert.firing",
    };
    let title = content.plain_text();
    let title = title
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(key);
    Some(Normalized {
        event: event.into(),
        fields: serde_json::json!({ "summary": title }),
        incident_key: Some(key.to_string()),
        object_key: Some(key.to_string()),
        facts: crate::adapt::Facts {
            severity: v
                .get("severity")
                .and_then(|s| s.as_str())
                .map(str::to_string),
            ..crate::adapt::Facts::default()
        },
        ..Normalized::default()
    })
}

/// Applies an alert robot's event to the incident of its key and returns the incident, or
/// None when the event is not about one (not an alerting robot, no key, no signal).
pub async fn observe(
    app: &AppState,
    robot: &Robot,
    event: &Normalized,
    card: Option<&Content>,
) -> Result<Option<Incident>, ApiError> {
    let (Some(key), Some(signal)) = (&event.incident_key, Signal::of(&event.event)) else {
        return Ok(None);
    };
    if !robot.spec.alerting {
        return Ok(None);
    }
    let actor = Actor {
        who: format!("robot:{}", robot.id),
        channel: "sender",
    };
    let by_key = IncidentRef::Key {
        robot: robot.id,
        key: key.clone(),
    };
    // When the event renders, the grouping engine updates the card with it: no second update.
    let refresh = card.is_none();
    let incident = match signal {
        Signal::Fire => Some(fire(app, robot, event, key, card).await?),
        Signal::Ack => apply(app, robot.org_id, by_key, Action::Ack, &actor, refresh).await?,
        Signal::Resolve => {
            apply(app, robot.org_id, by_key, Action::Resolve, &actor, refresh).await?
        }
    };
    Ok(incident)
}

async fn fire(
    app: &AppState,
    robot: &Robot,
    event: &Normalized,
    key: &str,
    card: Option<&Content>,
) -> Result<Incident, ApiError> {
    let policy = choose_policy(app, robot, event).await?;
    let firing = Firing {
        org: robot.org_id,
        robot: robot.id,
        conversation: robot.conversation_id,
        key: key.to_string(),
        title: title_of(event),
        severity: event.facts.severity.clone(),
        labels: event.facts.labels.clone(),
        policy: policy.as_ref().map(|p| (p.id, p.spec.clone())),
        card: card.cloned(),
        actor: format!("robot:{}", robot.id),
        now_ms: clock::now_ms(),
    };
    let (incident, outcome) = app.store.fire_incident(&firing).await?;
    if outcome != FireOutcome::Repeat {
        tracing::info!(incident.id = %incident.id, ?outcome, "incident fired");
        app.alerts.timers.notify_one();
    }
    Ok(incident)
}

/// The robot's policy, else the first of the org's policies whose label matchers hold.
async fn choose_policy(
    app: &AppState,
    robot: &Robot,
    event: &Normalized,
) -> Result<Option<Policy>, ApiError> {
    if let Some(id) = robot.spec.escalation_policy_id.as_deref() {
        if let Ok(id) = id.parse::<PolicyId>() {
            match app.store.get_policy(robot.org_id, id).await {
                Ok(p) => return Ok(Some(p)),
                Err(crate::store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let severity = event.facts.severity.as_deref();
    let policies = app.store.list_policies(robot.org_id, None, 1000).await?;
    Ok(policies
        .into_iter()
        .find(|p| p.spec.matches(&event.facts.labels, severity)))
}

/// The incident's title: the summary, else the alert name, else the event's key.
fn title_of(event: &Normalized) -> String {
    let field = |name: &str| {
        event
            .fields
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let title = field("summary")
        .or_else(|| field("alertname"))
        .or_else(|| field("title"))
        .or_else(|| event.incident_key.clone())
        .unwrap_or_default();
    title.chars().take(300).collect()
}

/// Acknowledges, resolves or silences an incident; updates its card and, on a resolve,
/// tells whoever was DINGed. Returns the incident (unchanged if the action did nothing).
pub async fn transition(
    app: &AppState,
    org: OrgId,
    incident: IncidentRef,
    action: Action,
    actor: &Actor,
) -> Result<Option<Incident>, ApiError> {
    apply(app, org, incident, action, actor, true).await
}

async fn apply(
    app: &AppState,
    org: OrgId,
    incident: IncidentRef,
    action: Action,
    actor: &Actor,
    refresh_card: bool,
) -> Result<Option<Incident>, ApiError> {
    let ack_timeout_ms = match (&action, &incident) {
        (Action::Ack, _) => ack_timeout_ms(app, org, &incident).await?,
        _ => None,
    };
    let t = Transition {
        org,
        incident,
        action,
        ack_timeout_ms,
        actor: actor.who.clone(),
        channel: actor.channel.to_string(),
        now_ms: clock::now_ms(),
    };
    let Some((incident, changed)) = app.store.transition_incident(&t).await? else {
        return Ok(None);
    };
    if changed {
        app.alerts.timers.notify_one();
        if refresh_card {
            super::card::refresh(app, &incident).await?;
        }
        if incident.state == State::Resolved {
            super::ding::tell_resolved(app, &incident).await?;
        }
    }
    Ok(Some(incident))
}

/// The acknowledgement timeout of the incident's policy, in milliseconds.
async fn ack_timeout_ms(
    app: &AppState,
    org: OrgId,
    incident: &IncidentRef,
) -> Result<Option<i64>, ApiError> {
    let found = match incident {
        IncidentRef::Id(id) => app.store.get_incident(org, *id).await.map(Some),
        IncidentRef::Key { robot, key } => app.store.open_incident(*robot, key).await,
    };
    let policy_id = match found {
        Ok(Some(i)) => i.policy_id,
        Ok(None) | Err(crate::store::StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(policy_id) = policy_id else {
        return Ok(None);
    };
    match app.store.get_policy(org, policy_id).await {
        Ok(p) => Ok(p.spec.ack_timeout_seconds.map(|s| s as i64 * 1000)),
        Err(crate::store::StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
