//! The escalation timer: one sleeper task per process that sleeps until the earliest pending
//! timer (or a wake-up, or a poll for timers other processes set), leases the due ones in
//! batches and fires each batch in one transaction. Firing computes each step's effects
//! (DINGs or re-sent DINGs, a group message, the next timer; a step outside its active hours
//! is skipped) and hands them to the store, which writes them in the transaction that deletes
//! the timer: a timer fires once however many processes race for it, and again after a crash
//! only if its transaction never committed.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::incident::{Incident, State};
use super::policy::{Channel, Policy, Step};
use crate::ids::{MessageId, UserId};
use crate::model::{At, Content, Sender, SenderKind, Text};
use crate::store::{
    Effects, MessageRecord, NewDing, NewTimelineEntry, NextTimer, Resend, StoreError, Timer,
    TimerKind,
};
use crate::{clock, AppState};

/// How long a claimed timer stays hidden from other processes.
const LEASE_MS: i64 = 30_000;
/// Timers claimed per round and fired in one transaction; effects computed this many at once.
const CLAIM_BATCH: i64 = 256;
const PARALLEL: usize = 8;
/// With PostgreSQL, other processes may store timers this one hears nothing about: it looks
/// for them at least this often.
const PEER_POLL: Duration = Duration::from_millis(500);
/// The longest sleep otherwise: bounds how long a timer whose fire failed (and whose lease
/// then ran out) can wait for the next wake-up.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Fires due timers until shutdown. Between rounds it sleeps until the earliest pending
/// timer is due; storing an earlier one rings `alerts.timers` and cuts the sleep short.
pub async fn timer_loop(app: AppState, shutdown: CancellationToken) {
    let longest = if app.config.uses_postgres() {
        PEER_POLL
    } else {
        IDLE_POLL
    };
    while !shutdown.is_cancelled() {
        if let Err(e) = super::digest::post_due(&app).await {
            tracing::warn!(error = %e, "posting digests failed");
        }
        let claimed = match run_round(&app).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "escalation round failed");
                0
            }
        };
        if claimed > 0 {
            continue;
        }
        let wait = sleep_for(&app, longest).await;
        tokio::select! {
            _ = app.alerts.timers.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// How long to sleep: until the earliest unleased timer is due, at most `longest`.
async fn sleep_for(app: &AppState, longest: Duration) -> Duration {
    let now = clock::now_ms();
    match app.store.next_timer_due(now).await {
        Ok(Some(due)) => Duration::from_millis((due - now).max(0) as u64).min(longest),
        Ok(None) => longest,
        Err(e) => {
            tracing::warn!(error = %e, "reading the next due timer failed");
            longest
        }
    }
}

/// Claims a batch of due timers, computes each one's effects and fires the batch in one
/// transaction; the number claimed.
async fn run_round(app: &AppState) -> Result<usize, StoreError> {
    let timers = app
        .store
        .claim_timers(clock::now_ms(), LEASE_MS, CLAIM_BATCH)
        .await?;
    let claimed = timers.len();
    if claimed == 0 {
        return Ok(0);
    }
    let prepared: Vec<(Timer, Effects)> = stream::iter(timers)
        .map(|timer| async move {
            match prepare(app, &timer).await {
                Ok(effects) => Some((timer, effects)),
                Err(e) => {
                    tracing::warn!(incident.id = %timer.incident_id, error = %e, "escalation timer failed; retried after its lease");
                    None
                }
            }
        })
        .buffered(PARALLEL)
        .filter_map(|p| async move { p })
        .collect()
        .await;
    let fired = fire_batch(app, &prepared).await;
    if fired > 0 {
        super::ding::wake_lanes(app);
        app.alerts.notify.notify_one();
    }
    Ok(claimed)
}

/// Fires the batch in one transaction; if that fails, each timer on its own so one bad
/// timer does not hold the others back until their leases run out. The number fired.
async fn fire_batch(app: &AppState, batch: &[(Timer, Effects)]) -> usize {
    if batch.is_empty() {
        return 0;
    }
    match app.store.fire_timers(batch).await {
        Ok(fired) => {
            let now = clock::now_ms();
            for ((timer, _), _) in batch.iter().zip(&fired).filter(|(_, f)| **f) {
                tracing::debug!(incident.id = %timer.incident_id, step = timer.step, lateness_ms = now - timer.due_at_ms, "escalation step fired");
            }
            return fired.iter().filter(|f| **f).count();
        }
        Err(e) if batch.len() > 1 => {
            tracing::warn!(error = %e, timers = batch.len(), "firing a batch failed; firing one by one")
        }
        Err(e) => {
            tracing::warn!(error = %e, "escalation timer failed; retried after its lease");
            return 0;
        }
    }
    let mut fired = 0;
    for one in batch {
        match app.store.fire_timers(std::slice::from_ref(one)).await {
            Ok(f) => fired += f.iter().filter(|f| **f).count(),
            Err(e) => {
                tracing::warn!(incident.id = %one.0.incident_id, error = %e, "escalation timer failed; retried after its lease")
            }
        }
    }
    fired
}

/// What one due timer will write, read from its incident and policy as they are now.
async fn prepare(app: &AppState, timer: &Timer) -> Result<Effects, StoreError> {
    let incident = app.store.get_incident_any(timer.incident_id).await?;
    let policy = match incident.policy_id {
        Some(id) => match app.store.get_policy(incident.org_id, id).await {
            Ok(p) => Some(p),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    effects(app, &incident, policy.as_ref(), timer, clock::now_ms()).await
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
            match &step.active {
                Some(window) if !window.contains(now) => {
                    let reason = format!("outside active hours ({})", window.describe());
                    effects.timeline.push(skipped(step, timer, &reason));
                }
                _ => notify(app, incident, step, timer, now, &mut effects).await?,
            }
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

/// Adds the step's notification (a DING, a re-sent DING or a group message) to the effects.
async fn notify(
    app: &AppState,
    incident: &Incident,
    step: &Step,
    timer: &Timer,
    now: i64,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    if step.resend {
        if let Some(resend) = resend_of(app, incident, step, now).await? {
            let details = serde_json::json!({
                "step": timer.step, "round": timer.round, "ding_id": resend.ding.to_string(),
                "users": resend.users.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                "lateness_ms": now - timer.due_at_ms,
            });
            effects.timeline.push(NewTimelineEntry {
                channel: step.channel.as_str().into(),
                ..entry("resent", details)
            });
            effects.resends.push(resend);
            return Ok(());
        }
        if step.targets.is_empty() {
            effects
                .timeline
                .push(skipped(step, timer, "no unconfirmed DING to re-send"));
            return Ok(());
        }
    }
    let users = targets(app, incident, step, now).await?;
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

/// The incident's latest DING as a re-send to its recipients who have not confirmed it; None
/// when there is no DING or everyone confirmed.
async fn resend_of(
    app: &AppState,
    incident: &Incident,
    step: &Step,
    now: i64,
) -> Result<Option<Resend>, StoreError> {
    let Some(ding) = app.store.latest_ding(incident.id).await? else {
        return Ok(None);
    };
    let users: Vec<UserId> = ding
        .recipients
        .iter()
        .filter(|r| r.confirmed_at_ms.is_none())
        .map(|r| r.user)
        .collect();
    if users.is_empty() {
        return Ok(None);
    }
    Ok(Some(Resend {
        ding: ding.id,
        users,
        channel: step.channel,
        now_ms: now,
    }))
}

/// A timeline line for a step that did not notify anyone, and why.
fn skipped(step: &Step, timer: &Timer, reason: &str) -> NewTimelineEntry {
    let details = serde_json::json!({"step": timer.step, "round": timer.round, "reason": reason});
    NewTimelineEntry {
        channel: step.channel.as_str().into(),
        ..entry("skipped", details)
    }
}

/// Who the step notifies now: its named users, the conversation's owner and whoever is on
/// call in its rotations.
async fn targets(
    app: &AppState,
    incident: &Incident,
    step: &Step,
    now: i64,
) -> Result<Vec<UserId>, StoreError> {
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
    Ok(users)
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
