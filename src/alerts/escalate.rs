//! The escalation timer: one sleeper task per process that sleeps until the earliest pending
//! timer (or a wake-up, or a poll for timers other processes set), leases the due ones and
//! fires each. Firing computes the step's effects (DINGs, a group message, the next timer)
//! and hands them to the store, which writes them in the transaction that deletes the timer:
//! a timer fires once however many processes race for it, and again after a crash only if its
//! transaction never committed.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::incident::{Incident, State};
use super::policy::{Channel, Policy, Step};
use crate::ids::{MessageId, UserId};
use crate::model::{At, Content, Sender, SenderKind, Text};
use crate::store::{
    Effects, MessageRecord, NewDing, NewTimelineEntry, NextTimer, StoreError, Timer, TimerKind,
};
use crate::{clock, AppState};

/// How long a claimed timer stays hidden from other processes.
const LEASE_MS: i64 = 30_000;
/// Timers claimed per round, and fired at once.
const CLAIM_BATCH: i64 = 256;
const PARALLEL: usize = 8;
/// A process looks for timers set by others at least this often.
const POLL: Duration = Duration::from_millis(500);

/// Fires due timers until shutdown.
pub async fn timer_loop(app: AppState, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(e) = super::digest::post_due(&app).await {
            tracing::warn!(error = %e, "posting digests failed");
        }
        let fired = match run_round(&app).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "escalation round failed");
                0
            }
        };
        if fired > 0 {
            continue;
        }
        let now = clock::now_ms();
        let wait = match app.store.next_timer_due(now).await {
            Ok(Some(due)) => Duration::from_millis((due - now).clamp(0, 500) as u64),
            _ => POLL,
        };
        tokio::select! {
            _ = app.alerts.timers.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Claims the due timers and fires them; the number claimed.
async fn run_round(app: &AppState) -> Result<usize, StoreError> {
    let timers = app
        .store
        .claim_timers(clock::now_ms(), LEASE_MS, CLAIM_BATCH)
        .await?;
    let claimed = timers.len();
    let fired: Vec<bool> = stream::iter(timers)
        .map(|timer| async move {
            match fire(app, &timer).await {
                Ok(fired) => fired,
                Err(e) => {
                    tracing::warn!(incident.id = %timer.incident_id, error = %e, "escalation timer failed; retried after its lease");
                    false
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    if fired.iter().any(|f| *f) {
        super::ding::wake_lanes(app);
        app.alerts.notify.notify_one();
    }
    Ok(claimed)
}

/// Fires one timer: false if another process (or an ack, a resolve) got there first.
async fn fire(app: &AppState, timer: &Timer) -> Result<bool, StoreError> {
    let incident = app.store.get_incident_any(timer.incident_id).await?;
    let policy = match incident.policy_id {
        Some(id) => match app.store.get_policy(incident.org_id, id).await {
            Ok(p) => Some(p),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let effects = effects(app, &incident, policy.as_ref(), timer, clock::now_ms()).await?;
    let fired = app.store.fire_timer(timer, &effects).await?;
    if fired {
        let lateness = clock::now_ms() - timer.due_at_ms;
        tracing::debug!(incident.id = %incident.id, step = timer.step, lateness_ms = lateness, "escalation step fired");
    }
    Ok(fired)
}

/// What a due timer writes.
async fn effects(
    app: &AppState,
    incident: &Incident,
    policy: Option<&Policy>,
    timer: &Timer,
    now: i64,
) -> Result<Effects, StoreError> {
    let mut effects = Effects {
        step: timer.step,
        round: timer.round,
        ..Effects::default()
    };
    let Some(policy) = policy else {
        return Ok(effects); // the policy was deleted: the chain ends
    };
    match timer.kind {
        TimerKind::AckTimeout | TimerKind::Unsilence => {
            // Escalation resumes at once where the chain stood.
            effects.state = Some(State::Triggered);
            effects.next = Some(NextTimer {
                kind: TimerKind::Step,
                step: timer.step,
                round: timer.round,
                due_at_ms: now,
            });
            let action = match timer.kind {
                TimerKind::AckTimeout => "acknowledgement expired",
                _ => "silence ended",
            };
            effects.timeline.push(entry(action, serde_json::json!({})));
        }
        TimerKind::Step => {
            if incident.state != State::Triggered {
                return Ok(effects); // acked or silenced meanwhile: that timer replaced this one
            }
            let Some(step) = policy.spec.steps.get(timer.step as usize) else {
                return Ok(effects);
            };
            notify(app, incident, step, timer, now, &mut effects).await?;
            if let Some((next, round)) = policy.spec.after(timer.step, timer.round) {
                effects.step = next;
                effects.round = round;
                effects.next = Some(NextTimer {
                    kind: TimerKind::Step,
                    step: next,
                    round,
                    due_at_ms: now + policy.spec.wait_ms(next),
                });
            } else {
                effects.step = timer.step + 1;
            }
        }
    }
    Ok(effects)
}

/// Adds the step's notification (a DING or a group message) to the effects.
async fn notify(
    app: &AppState,
    incident: &Incident,
    step: &Step,
    timer: &Timer,
    now: i64,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let mut users: Vec<UserId> = step.targets.users.clone();
    if step.targets.conversation_owner {
        let org = incident.org_id;
        match app
            .store
            .get_conversation(org, incident.conversation_id)
            .await
        {
            Ok(c) => users.push(c.owner_id),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    for id in &step.targets.rotations {
        match app.store.get_rotation(incident.org_id, *id).await {
            Ok(r) => match r.spec.oncall(now) {
                Ok(on) => users.push(on.user),
                Err(e) => tracing::warn!(rotation.id = %id, error = %e, "rotation unusable"),
            },
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    users.sort_unstable();
    users.dedup();
    let text = format!(
        "🚨 {} (incident #{}, {} firing{})",
        incident.title,
        incident.id,
        incident.fire_count,
        if incident.fire_count == 1 { "" } else { "s" }
    );
    let sender = Sender {
        id: incident.robot_id.to_string(),
        kind: SenderKind::Robot,
        name: "herald alerts".into(),
    };
    let details = serde_json::json!({
        "step": timer.step, "round": timer.round,
        "users": users.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        "lateness_ms": now - timer.due_at_ms,
    });
    effects.timeline.push(NewTimelineEntry {
        channel: step.channel.as_str().into(),
        ..entry("escalated", details)
    });
    match step.channel {
        Channel::Group => effects
            .messages
            .push(group_message(app, incident, sender, &users, &text, now)),
        channel => effects.dings.push(NewDing {
            org: incident.org_id,
            sender,
            text,
            channel,
            incident: Some(incident.id),
            recipients: users,
            now_ms: now,
        }),
    }
    Ok(())
}

/// A message in the incident's conversation that @-mentions the step's targets.
fn group_message(
    app: &AppState,
    incident: &Incident,
    sender: Sender,
    users: &[UserId],
    text: &str,
    now: i64,
) -> MessageRecord {
    let content = Content::Text(Text {
        content: format!("{text} — please acknowledge"),
    });
    MessageRecord {
        id: MessageId(app.ids.next()),
        org_id: incident.org_id,
        conversation_id: incident.conversation_id,
        sender,
        msgtype: content.msgtype().to_string(),
        content: content.body_json(),
        at: At {
            at_user_ids: users.iter().map(|u| u.to_string()).collect(),
            ..At::default()
        },
        thread_key: None,
        dedupe_key: None,
        created_at_ms: now,
    }
}

fn entry(action: &str, details: serde_json::Value) -> NewTimelineEntry {
    NewTimelineEntry {
        action: action.into(),
        actor: "herald".into(),
        channel: "escalation".into(),
        details,
    }
}
