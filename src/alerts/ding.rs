//! DING: an urgent reminder to specific users that each must confirm. In the app it is a
//! `ding` event in the recipients' sync streams (the core fanout writes it, the hub wakes
//! their live connections); for SMS and voice the org's notification provider receives a
//! signed JSON request per recipient from `notify_loop`, retried with backoff.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::incident::Incident;
use super::policy::Channel;
use crate::ids::{ConversationId, DingId, UserId};
use crate::model::{Sender, SenderKind};
use crate::outgoing::sign;
use crate::store::{NewDing, OutboxItem, StoreError};
use crate::{clock, AppState};

/// Provider requests claimed per round, and the lease on each.
const BATCH: i64 = 32;
const LEASE_MS: i64 = 60_000;
/// Attempts before a request is given up (kept with its error).
const MAX_ATTEMPTS: i64 = 8;
const POLL: Duration = Duration::from_secs(1);

/// Writes a DING and wakes the fanout and the provider sender.
pub async fn send(app: &AppState, ding: &NewDing) -> Result<(DingId, Vec<UserId>), StoreError> {
    let created = app.store.create_ding(ding).await?;
    wake_lanes(app);
    if ding.channel.needs_provider() {
        app.alerts.notify.notify_one();
    }
    Ok(created)
}

/// Wakes every fanout lane: DING tasks are queued per recipient.
pub fn wake_lanes(app: &AppState) {
    for lane in 0..app.lanes.count() {
        app.lanes.poke(ConversationId(lane as i64));
    }
}

/// A resolved incident tells everyone a DING about it reached.
pub async fn tell_resolved(app: &AppState, incident: &Incident) -> Result<(), StoreError> {
    let users = app.store.dinged_users(incident.id).await?;
    if users.is_empty() {
        return Ok(());
    }
    let ding = NewDing {
        org: incident.org_id,
        sender: Sender {
            id: incident.robot_id.to_string(),
            kind: SenderKind::Robot,
            name: "herald alerts".into(),
        },
        text: format!(
            "✅ Resolved: {} (incident #{})",
            incident.title, incident.id
        ),
        channel: Channel::DingApp,
        incident: Some(incident.id),
        recipients: users,
        now_ms: clock::now_ms(),
    };
    send(app, &ding).await.map(|_| ())
}

/// Sends queued SMS/voice requests to the notification providers until shutdown.
pub async fn notify_loop(app: AppState, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let claimed = app
            .store
            .claim_notifications(clock::now_ms(), LEASE_MS, BATCH)
            .await;
        match claimed {
            Ok(items) if !items.is_empty() => {
                for item in items {
                    deliver(&app, &item).await;
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "claiming provider requests failed"),
        }
        tokio::select! {
            _ = app.alerts.notify.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// One attempt, recorded: sent, retried later, or given up.
async fn deliver(app: &AppState, item: &OutboxItem) {
    let error = attempt(app, item).await.err();
    let retry_at = error.as_ref().and_then(|_| {
        (item.attempts + 1 < MAX_ATTEMPTS).then(|| clock::now_ms() + backoff_ms(item.attempts))
    });
    if let Some(e) = &error {
        tracing::info!(ding.id = %item.ding_id, user.id = %item.user_id, error = %e, "provider request failed");
    }
    if let Err(e) = app
        .store
        .finish_notification(item.id, error.as_deref(), retry_at)
        .await
    {
        tracing::warn!(error = %e, "recording a provider request failed");
    }
}

/// 1 s doubling to 5 minutes.
fn backoff_ms(attempts: i64) -> i64 {
    (1000i64 << attempts.clamp(0, 9)).min(300_000)
}

/// The JSON the provider receives (README, "Notification provider").
pub fn request_body(item: &OutboxItem) -> serde_json::Value {
    let kind = match item.channel {
        Channel::DingCall => "ding.call",
        _ => "ding.sms",
    };
    json!({
        "type": kind,
        "ding_id": item.ding_id.to_string(),
        "incident_id": item.incident_id.map(|i| i.to_string()),
        "org_id": item.org_id.to_string(),
        "user_id": item.user_id.to_string(),
        "mobile": item.mobile,
        "text": item.text,
        "send": item.send_no,
    })
}

/// The request's `webhook-id`, the same on every attempt so a provider can drop duplicates;
/// a re-send of the DING is a new request (`_2`, `_3`, … appended).
fn webhook_id(item: &OutboxItem) -> String {
    let first = format!(
        "ding_{}_{}_{}",
        item.ding_id,
        item.user_id,
        item.channel.as_str()
    );
    match item.send_no {
        1 => first,
        n => format!("{first}_{n}"),
    }
}

async fn attempt(app: &AppState, item: &OutboxItem) -> Result<(), String> {
    let notifier = item
        .notifier
        .as_ref()
        .ok_or("the org has no notification provider")?;
    if item.mobile.as_deref().unwrap_or_default().is_empty() {
        return Err("the recipient has no mobile number".into());
    }
    crate::outgoing::deliver::check_literal_ip(&app.outgoing, &notifier.url)?;
    let body = request_body(item).to_string();
    let id = webhook_id(item);
    let h = sign::sign(&[&notifier.secret], &id, clock::now_ms(), body.as_bytes());
    let response = app
        .outgoing
        .client
        .post(&notifier.url)
        .header("content-type", "application/json")
        .header("webhook-id", h.webhook_id)
        .header("webhook-timestamp", h.webhook_timestamp)
        .header("webhook-signature", h.webhook_signature)
        .header("timestamp", h.timestamp_ms)
        .header("sign", h.sign)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the provider answered {}", response.status()))
    }
}
