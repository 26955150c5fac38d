//! Storage of incidents with their timelines and the durable escalation timers. Every state
//! change is one transaction that also sets the incident's single pending timer, so a timer that
//! fires (deleting its row in the transaction that writes its effects) fires exactly once, even
//! with several processes. Both backends run the same statements, expanded by
//! `alert_store_impl!`; only the timer claim's row locking differs (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, a lease on SQLite).

use async_trait::async_trait;
use sqlx::Row;

use super::{MessageRecord, NewDing, PgStore, Resend, Result, SqliteStore, StoreError, Task};
use crate::alerts::incident::{Incident, State, TimelineEntry};
use crate::alerts::policy::PolicySpec;
use crate::clock;
use crate::ids::{ConversationId, IncidentId, OrgId, PolicyId, RobotId};
use crate::model::Content;

/// An alert robot's fire, to apply to the incident of its key.
#[derive(Debug, Clone)]
pub struct Firing {
    pub org: OrgId,
    pub robot: RobotId,
    pub conversation: ConversationId,
    pub key: String,
    pub title: String,
    pub severity: Option<String>,
    pub labels: Vec<String>,
    pub policy: Option<(PolicyId, PolicySpec)>,
    pub card: Option<Content>,
    pub actor: String,
    pub now_ms: i64,
}

/// What a fire did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    /// A new incident, its chain started.
    Opened,
    /// A recently resolved incident fired again (flapping): re-opened where its chain stood.
    Reopened,
    /// The open incident fired again: counted, nothing restarted.
    Repeat,
}

/// Names an incident by id (API) or by its sender's key (the open incident of that key).
#[derive(Debug, Clone)]
pub enum IncidentRef {
    Id(IncidentId),
    Key { robot: RobotId, key: String },
}

/// A state change someone asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Ack,
    Resolve,
    Silence { until_ms: i64 },
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Ack => "acknowledged",
            Action::Resolve => "resolved",
            Action::Silence { .. } => "silenced",
        }
    }
}

/// A state change with who asked, through which channel, and the acknowledgement timeout.
#[derive(Debug, Clone)]
pub struct Transition {
    pub org: OrgId,
    pub incident: IncidentRef,
    pub action: Action,
    pub ack_timeout_ms: Option<i64>,
    pub actor: String,
    pub channel: String,
    pub now_ms: i64,
}

/// What an incident's pending timer does when due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// Fire escalation step `step` of pass `round`.
    Step,
    /// An acknowledgement expired: resume escalation if still unresolved.
    AckTimeout,
    /// A silence ended.
    Unsilence,
}

impl TimerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimerKind::Step => "step",
            TimerKind::AckTimeout => "ack_timeout",
            TimerKind::Unsilence => "unsilence",
        }
    }

    fn parse(s: &str) -> Option<TimerKind> {
        Some(match s {
            "step" => TimerKind::Step,
            "ack_timeout" => TimerKind::AckTimeout,
            "unsilence" => TimerKind::Unsilence,
            _ => return None,
        })
    }
}

/// A claimed timer. Its fields identify the row exactly: a changed timer is not this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub incident_id: IncidentId,
    pub kind: TimerKind,
    pub step: u32,
    pub round: u32,
    pub due_at_ms: i64,
}

/// The incident's next timer.
#[derive(Debug, Clone)]
pub struct NextTimer {
    pub kind: TimerKind,
    pub step: u32,
    pub round: u32,
    pub due_at_ms: i64,
}

/// One timeline line to write.
#[derive(Debug, Clone)]
pub struct NewTimelineEntry {
    pub action: String,
    pub actor: String,
    pub channel: String,
    pub details: serde_json::Value,
}

/// Everything a due timer writes, in the transaction that deletes it.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    pub state: Option<State>,
    pub step: u32,
    pub round: u32,
    pub next: Option<NextTimer>,
    pub dings: Vec<NewDing>,
    /// Earlier DINGs to send again to whoever has not confirmed them.
    pub resends: Vec<Resend>,
    pub messages: Vec<MessageRecord>,
    pub timeline: Vec<NewTimelineEntry>,
}

/// `GET /incidents` filters.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub state: Option<State>,
    pub robot: Option<RobotId>,
    /// `key=value`, matched against the incident's labels.
    pub label: Option<String>,
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Opens, re-opens or counts the incident of the fire's key; starts the chain when opened.
    async fn fire_incident(&self, firing: &Firing) -> Result<(Incident, FireOutcome)>;
    /// Applies an ack/resolve/silence and replaces the pending timer. None: no such (open)
    /// incident; the bool says whether anything changed.
    async fn transition_incident(&self, t: &Transition) -> Result<Option<(Incident, bool)>>;
    async fn get_incident(&self, org: OrgId, id: IncidentId) -> Result<Incident>;
    /// The incident in whatever org (for the timer, which acts for its org).
    async fn get_incident_any(&self, id: IncidentId) -> Result<Incident>;
    async fn open_incident(&self, robot: RobotId, key: &str) -> Result<Option<Incident>>;
    /// Newest first; `after` is the last id of the previous page.
    async fn list_incidents(
        &self,
        org: OrgId,
        filter: &IncidentFilter,
        after: Option<IncidentId>,
        limit: i64,
    ) -> Result<Vec<Incident>>;
    async fn timeline(&self, incident: IncidentId) -> Result<Vec<TimelineEntry>>;
    async fn add_timeline(&self, incident: IncidentId, entry: &NewTimelineEntry) -> Result<()>;

    /// Leases up to `limit` due timers for `lease_ms`.
    async fn claim_timers(&self, now_ms: i64, lease_ms: i64, limit: i64) -> Result<Vec<Timer>>;
    /// When the earliest unleased timer is due: an escalation timer or a robot's digest.
    async fn next_timer_due(&self, now_ms: i64) -> Result<Option<i64>>;
    /// Deletes each timer and writes its effects, all in one transaction (one commit for a
    /// whole batch of due steps); for each, false if it was already fired or replaced (by
    /// another process, an ack, a resolve) and so wrote nothing.
    async fn fire_timers(&self, batch: &[(Timer, Effects)]) -> Result<Vec<bool>>;
    async fn pending_timers(&self) -> Result<i64>;
}

const INCIDENT_COLUMNS: &str =
    "id, org_id, robot_id, conversation_id, incident_key, state, title, \
     severity, labels, policy_id, step, round, fire_count, card, silenced_until, created_at, \
     updated_at, resolved_at";

fn card_json(card: &Option<Content>) -> Option<String> {
    card.as_ref()
        .map(|c| serde_json::json!({"msgtype": c.msgtype(), "body": c.body_json()}).to_string())
}

fn card_from_json(text: Option<&str>) -> Option<Content> {
    let v: serde_json::Value = serde_json::from_str(text?).ok()?;
    Content::from_parts(v.get("msgtype")?.as_str()?, v.get("body")?.clone()).ok()
}

/// Expands `AlertStore` for a backend: its type, its database, the claim's lock clause and
/// its "labels contain $5" condition.
macro_rules! alert_store_impl {
    ($store:ty, $db:ty, $lock:literal, $contains:literal) => {
        impl $store {
            fn incident_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Incident> {
                let state: &str = row.try_get("state")?;
                let labels: &str = row.try_get("labels")?;
                Ok(Incident {
                    id: IncidentId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    robot_id: RobotId(row.try_get("robot_id")?),
                    conversation_id: ConversationId(row.try_get("conversation_id")?),
                    key: row.try_get("incident_key")?,
                    state: State::parse(state)
                        .ok_or_else(|| anyhow::anyhow!("stored incident state {state:?}"))?,
                    title: row.try_get("title")?,
                    severity: row.try_get("severity")?,
                    labels: serde_json::from_str(labels).unwrap_or_default(),
                    policy_id: row.try_get::<Option<i64>, _>("policy_id")?.map(PolicyId),
                    step: row.try_get::<i64, _>("step")? as u32,
                    round: row.try_get::<i64, _>("round")? as u32,
                    fire_count: row.try_get("fire_count")?,
                    card: card_from_json(row.try_get::<Option<&str>, _>("card")?),
                    silenced_until_ms: row.try_get("silenced_until")?,
                    created_at_ms: row.try_get("created_at")?,
                    updated_at_ms: row.try_get("updated_at")?,
                    resolved_at_ms: row.try_get("resolved_at")?,
                })
            }

            async fn incident_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                id: i64,
            ) -> Result<Incident> {
                let row = sqlx::query(&format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"))
                    .bind(id)
                    .fetch_one(&mut **tx)
                    .await?;
                Self::incident_from_row(&row)
            }

            async fn timeline_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                incident: i64,
                e: &NewTimelineEntry,
                now: i64,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO incident_timeline (incident_id, action, actor, channel, details, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(incident)
                .bind(&e.action)
                .bind(&e.actor)
                .bind(&e.channel)
                .bind(e.details.to_string())
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Replaces the incident's pending timer (none when `next` is None).
            async fn set_timer_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                incident: i64,
                next: Option<&NextTimer>,
                now: i64,
            ) -> Result<()> {
                sqlx::query("DELETE FROM escalation_timers WHERE incident_id = $1")
                    .bind(incident)
                    .execute(&mut **tx)
                    .await?;
                if let Some(n) = next {
                    sqlx::query(
                        "INSERT INTO escalation_timers (incident_id, kind, step, round, due_at, locked_until, created_at) \
                         VALUES ($1, $2, $3, $4, $5, 0, $6)",
                    )
                    .bind(incident)
                    .bind(n.kind.as_str())
                    .bind(n.step as i64)
                    .bind(n.round as i64)
                    .bind(n.due_at_ms)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }

            /// Opens a new incident or re-opens a flapping one; None if another transaction
            /// opened one for the key first.
            async fn open_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                f: &Firing,
            ) -> Result<Option<(i64, FireOutcome)>> {
                let flap_ms = f.policy.as_ref().map_or(
                    crate::alerts::policy::DEFAULT_FLAP_WINDOW_SECONDS as i64 * 1000,
                    |(_, p)| p.flap_window_seconds as i64 * 1000,
                );
                let recent: Option<(i64, i64, i64)> = sqlx::query_as(
                    "SELECT id, step, round FROM incidents WHERE robot_id = $1 AND incident_key = $2 \
                     AND state = 'resolved' AND resolved_at >= $3 ORDER BY id DESC LIMIT 1",
                )
                .bind(f.robot.0)
                .bind(&f.key)
                .bind(f.now_ms - flap_ms)
                .fetch_optional(&mut **tx)
                .await?;
                let labels = serde_json::to_string(&f.labels).map_err(anyhow::Error::from)?;
                if let Some((id, step, round)) = recent {
                    let reopened = sqlx::query(
                        "UPDATE incidents SET state = 'triggered', open_key = $1, resolved_at = NULL, \
                         fire_count = fire_count + 1, title = $2, card = COALESCE($3, card), updated_at = $4 \
                         WHERE id = $5 AND state = 'resolved' \
                         AND NOT EXISTS (SELECT 1 FROM incidents o WHERE o.robot_id = $6 AND o.open_key = $1)",
                    )
                    .bind(&f.key)
                    .bind(&f.title)
                    .bind(card_json(&f.card))
                    .bind(f.now_ms)
                    .bind(id)
                    .bind(f.robot.0)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    if reopened == 1 {
                        let next = f.policy.as_ref().map(|(_, p)| NextTimer {
                            kind: TimerKind::Step,
                            step: step as u32,
                            round: round as u32,
                            due_at_ms: f.now_ms + p.wait_ms(step as u32),
                        });
                        Self::set_timer_tx(tx, id, next.as_ref(), f.now_ms).await?;
                        return Ok(Some((id, FireOutcome::Reopened)));
                    }
                }
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO incidents (org_id, robot_id, conversation_id, incident_key, open_key, state, title, \
                     severity, labels, policy_id, step, round, fire_count, card, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $4, 'triggered', $5, $6, $7, $8, 0, 0, 1, $9, $10, $10) \
                     ON CONFLICT (robot_id, open_key) DO NOTHING RETURNING id",
                )
                .bind(f.org.0)
                .bind(f.robot.0)
                .bind(f.conversation.0)
                .bind(&f.key)
                .bind(&f.title)
                .bind(&f.severity)
                .bind(labels)
                .bind(f.policy.as_ref().map(|(id, _)| id.0))
                .bind(card_json(&f.card))
                .bind(f.now_ms)
                .fetch_optional(&mut **tx)
                .await?;
                let Some(id) = id else { return Ok(None) };
                let next = f.policy.as_ref().map(|(_, p)| NextTimer {
                    kind: TimerKind::Step,
                    step: 0,
                    round: 0,
                    due_at_ms: f.now_ms + p.wait_ms(0),
                });
                Self::set_timer_tx(tx, id, next.as_ref(), f.now_ms).await?;
                Ok(Some((id, FireOutcome::Opened)))
            }

            /// Deletes one timer and writes its effects; false (nothing written) if the timer
            /// was already fired or replaced.
            async fn fire_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                timer: &Timer,
                effects: &Effects,
                now: i64,
            ) -> Result<bool> {
                let deleted = sqlx::query(
                    "DELETE FROM escalation_timers WHERE incident_id = $1 AND kind = $2 AND step = $3 \
                     AND round = $4 AND due_at = $5",
                )
                .bind(timer.incident_id.0)
                .bind(timer.kind.as_str())
                .bind(timer.step as i64)
                .bind(timer.round as i64)
                .bind(timer.due_at_ms)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if deleted != 1 {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE incidents SET state = COALESCE($1, state), silenced_until = CASE WHEN $1 IS NULL \
                     THEN silenced_until ELSE NULL END, step = $2, round = $3, updated_at = $4 WHERE id = $5",
                )
                .bind(effects.state.map(|s| s.as_str()))
                .bind(effects.step as i64)
                .bind(effects.round as i64)
                .bind(now)
                .bind(timer.incident_id.0)
                .execute(&mut **tx)
                .await?;
                Self::set_timer_tx(tx, timer.incident_id.0, effects.next.as_ref(), now).await?;
                for ding in &effects.dings {
                    Self::insert_ding_tx(tx, ding).await?;
                }
                for resend in &effects.resends {
                    Self::resend_ding_tx(tx, resend).await?;
                }
                for message in &effects.messages {
                    // The message row goes with its task, as for every post (the batched
                    // fanout writes only inbox rows).
                    Self::insert_message_tx(tx, message, now).await?;
                    let task = Task::Post { message: Box::new(message.clone()) };
                    Self::enqueue_tx(tx, &task, now).await?;
                }
                for entry in &effects.timeline {
                    Self::timeline_tx(tx, timer.incident_id.0, entry, now).await?;
                }
                Ok(true)
            }
        }

        #[async_trait]
        impl AlertStore for $store {
            async fn fire_incident(&self, f: &Firing) -> Result<(Incident, FireOutcome)> {
                let mut tx = self.writer().begin().await?;
                for _ in 0..3 {
                    let open: Option<i64> = sqlx::query_scalar(
                        "UPDATE incidents SET fire_count = fire_count + 1, title = $1, card = COALESCE($2, card), \
                         updated_at = $3 WHERE robot_id = $4 AND open_key = $5 RETURNING id",
                    )
                    .bind(&f.title)
                    .bind(card_json(&f.card))
                    .bind(f.now_ms)
                    .bind(f.robot.0)
                    .bind(&f.key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let (id, outcome) = match open {
                        Some(id) => (id, FireOutcome::Repeat),
                        None => match Self::open_tx(&mut tx, f).await? {
                            Some(opened) => opened,
                            None => continue, // opened concurrently: count it as a repeat
                        },
                    };
                    if outcome != FireOutcome::Repeat {
                        let action = if outcome == FireOutcome::Opened { "opened" } else { "reopened" };
                        let entry = NewTimelineEntry {
                            action: action.into(),
                            actor: f.actor.clone(),
                            channel: "sender".into(),
                            details: serde_json::json!({"title": f.title}),
                        };
                        Self::timeline_tx(&mut tx, id, &entry, f.now_ms).await?;
                    }
                    let incident = Self::incident_tx(&mut tx, id).await?;
                    tx.commit().await?;
                    return Ok((incident, outcome));
                }
                Err(StoreError::Conflict("the incident changed concurrently; retry".into()))
            }

            async fn transition_incident(&self, t: &Transition) -> Result<Option<(Incident, bool)>> {
                let mut tx = self.writer().begin().await?;
                let id: Option<i64> = match &t.incident {
                    IncidentRef::Id(id) => sqlx::query_scalar("SELECT id FROM incidents WHERE id = $1 AND org_id = $2")
                        .bind(id.0)
                        .bind(t.org.0)
                        .fetch_optional(&mut *tx)
                        .await?,
                    IncidentRef::Key { robot, key } => sqlx::query_scalar(
                        "SELECT id FROM incidents WHERE robot_id = $1 AND open_key = $2",
                    )
                    .bind(robot.0)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?,
                };
                let Some(id) = id else { return Ok(None) };
                let changed = match t.action {
                    Action::Ack => sqlx::query(
                        "UPDATE incidents SET state = 'acknowledged', silenced_until = NULL, updated_at = $1 \
                         WHERE id = $2 AND state IN ('triggered', 'silenced')",
                    )
                    .bind(t.now_ms)
                    .bind(id),
                    Action::Resolve => sqlx::query(
                        "UPDATE incidents SET state = 'resolved', open_key = NULL, silenced_until = NULL, \
                         resolved_at = $1, updated_at = $1 WHERE id = $2 AND state <> 'resolved'",
                    )
                    .bind(t.now_ms)
                    .bind(id),
                    Action::Silence { until_ms } => sqlx::query(
                        "UPDATE incidents SET state = 'silenced', silenced_until = $3, updated_at = $1 \
                         WHERE id = $2 AND state IN ('triggered', 'acknowledged', 'silenced')",
                    )
                    .bind(t.now_ms)
                    .bind(id)
                    .bind(until_ms),
                }
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if changed {
                    let incident = Self::incident_tx(&mut tx, id).await?;
                    let next = match t.action {
                        Action::Ack => t.ack_timeout_ms.map(|ms| NextTimer {
                            kind: TimerKind::AckTimeout,
                            step: incident.step,
                            round: incident.round,
                            due_at_ms: t.now_ms + ms,
                        }),
                        Action::Resolve => None,
                        Action::Silence { until_ms } => Some(NextTimer {
                            kind: TimerKind::Unsilence,
                            step: incident.step,
                            round: incident.round,
                            due_at_ms: until_ms,
                        }),
                    };
                    Self::set_timer_tx(&mut tx, id, next.as_ref(), t.now_ms).await?;
                    let entry = NewTimelineEntry {
                        action: t.action.name().into(),
                        actor: t.actor.clone(),
                        channel: t.channel.clone(),
                        details: match t.action {
                            Action::Silence { until_ms } => serde_json::json!({"until": clock::rfc3339(until_ms)}),
                            _ => serde_json::json!({}),
                        },
                    };
                    Self::timeline_tx(&mut tx, id, &entry, t.now_ms).await?;
                }
                let incident = Self::incident_tx(&mut tx, id).await?;
                tx.commit().await?;
                Ok(Some((incident, changed)))
            }

            async fn get_incident(&self, org: OrgId, id: IncidentId) -> Result<Incident> {
                let row = sqlx::query(&format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1 AND org_id = $2"
                ))
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound("incident"))?;
                Self::incident_from_row(&row)
            }

            async fn get_incident_any(&self, id: IncidentId) -> Result<Incident> {
                let row = sqlx::query(&format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or(StoreError::NotFound("incident"))?;
                Self::incident_from_row(&row)
            }

            async fn open_incident(&self, robot: RobotId, key: &str) -> Result<Option<Incident>> {
                let row = sqlx::query(&format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE robot_id = $1 AND open_key = $2"
                ))
                .bind(robot.0)
                .bind(key)
                .fetch_optional(self.reader())
                .await?;
                row.as_ref().map(Self::incident_from_row).transpose()
            }

            async fn list_incidents(
                &self,
                org: OrgId,
                filter: &IncidentFilter,
                after: Option<IncidentId>,
                limit: i64,
            ) -> Result<Vec<Incident>> {
                let label = filter.label.as_ref().map(|l| {
                    serde_json::Value::String(l.clone()).to_string()
                });
                let rows = sqlx::query(&format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE org_id = $1 AND id < $2 \
                     AND ($3 = '' OR state = $3) AND ($4 = 0 OR robot_id = $4) \
                     AND ($5 = '' OR {}) ORDER BY id DESC LIMIT $6",
                    $contains
                ))
                .bind(org.0)
                .bind(after.map_or(i64::MAX, |i| i.0))
                .bind(filter.state.map_or("", |s| s.as_str()))
                .bind(filter.robot.map_or(0, |r| r.0))
                .bind(label.unwrap_or_default())
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::incident_from_row).collect()
            }

            async fn timeline(&self, incident: IncidentId) -> Result<Vec<TimelineEntry>> {
                let rows = sqlx::query(
                    "SELECT action, actor, channel, details, created_at FROM incident_timeline \
                     WHERE incident_id = $1 ORDER BY id",
                )
                .bind(incident.0)
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|r| {
                        let details: &str = r.try_get("details")?;
                        Ok(TimelineEntry {
                            action: r.try_get("action")?,
                            actor: r.try_get("actor")?,
                            channel: r.try_get("channel")?,
                            details: serde_json::from_str(details).unwrap_or_default(),
                            at: clock::rfc3339(r.try_get("created_at")?),
                        })
                    })
                    .collect()
            }

            async fn add_timeline(&self, incident: IncidentId, entry: &NewTimelineEntry) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                Self::timeline_tx(&mut tx, incident.0, entry, clock::now_ms()).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn claim_timers(&self, now_ms: i64, lease_ms: i64, limit: i64) -> Result<Vec<Timer>> {
                let rows = sqlx::query(concat!(
                    "UPDATE escalation_timers SET locked_until = $2 WHERE incident_id IN ( \
                       SELECT incident_id FROM escalation_timers WHERE due_at <= $1 AND locked_until <= $1 \
                       ORDER BY due_at LIMIT $3 ", $lock, ") \
                     RETURNING incident_id, kind, step, round, due_at"
                ))
                .bind(now_ms)
                .bind(now_ms + lease_ms)
                .bind(limit)
                .fetch_all(self.writer())
                .await?;
                let mut timers = rows
                    .iter()
                    .map(|r| {
                        let kind: &str = r.try_get("kind")?;
                        Ok(Timer {
                            incident_id: IncidentId(r.try_get("incident_id")?),
                            kind: TimerKind::parse(kind)
                                .ok_or_else(|| anyhow::anyhow!("stored timer kind {kind:?}"))?,
                            step: r.try_get::<i64, _>("step")? as u32,
                            round: r.try_get::<i64, _>("round")? as u32,
                            due_at_ms: r.try_get("due_at")?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                timers.sort_by_key(|t| t.due_at_ms);
                Ok(timers)
            }

            async fn next_timer_due(&self, now_ms: i64) -> Result<Option<i64>> {
                // Each side reads one row off its due-time order (a MIN with the lease filter
                // would scan every pending timer).
                let (step, digest): (Option<i64>, Option<i64>) = sqlx::query_as(
                    "SELECT (SELECT due_at FROM escalation_timers WHERE locked_until <= $1 \
                     ORDER BY due_at LIMIT 1), (SELECT due_at FROM digest_timers \
                     WHERE locked_until <= $1 ORDER BY due_at LIMIT 1)",
                )
                .bind(now_ms)
                .fetch_one(self.reader())
                .await?;
                Ok(step.into_iter().chain(digest).min())
            }

            async fn fire_timers(&self, batch: &[(Timer, Effects)]) -> Result<Vec<bool>> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let mut fired = Vec::with_capacity(batch.len());
                for (timer, effects) in batch {
                    fired.push(Self::fire_tx(&mut tx, timer, effects, now).await?);
                }
                tx.commit().await?;
                Ok(fired)
            }

            async fn pending_timers(&self) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM escalation_timers")
                    .fetch_one(self.reader())
                    .await?)
            }

        }
    };
}

alert_store_impl!(SqliteStore, sqlx::Sqlite, "", "instr(labels, $5) > 0");
alert_store_impl!(
    PgStore,
    sqlx::Postgres,
    "FOR UPDATE SKIP LOCKED",
    "strpos(labels, $5) > 0"
);
