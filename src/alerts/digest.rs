//! Digest mode (noise control): a robot's alert events of low severities are collected and
//! posted as one message per interval instead of one card each. Lines are rows; the robot's
//! next digest is a timer row that the escalation timer task fires, so a batch survives a
//! restart and is posted once.

use crate::adapt::Normalized;
use crate::ids::MessageId;
use crate::model::{At, Content, Markdown, Sender, SenderKind};
use crate::robot::Robot;
use crate::store::{DigestLine, DueDigest, MessageRecord, StoreError};
use crate::{clock, AppState};

/// Lines listed in one digest message; the rest are counted.
const LISTED: usize = 50;
const LEASE_MS: i64 = 30_000;

/// Whether the robot batches this event instead of posting it.
pub fn applies(robot: &Robot, event: &Normalized) -> bool {
    let digest = robot.spec.digest.as_ref();
    digest.is_some_and(|d| d.covers(event.facts.severity.as_deref()))
        && super::incident::Signal::of(&event.event).is_some()
}

/// Adds the event's line to the robot's digest.
pub async fn add(app: &AppState, robot: &Robot, event: &Normalized) -> Result<(), StoreError> {
    let Some(digest) = &robot.spec.digest else {
        return Ok(());
    };
    let title = event
        .fields
        .get("summary")
        .or_else(|| event.fields.get("alertname"))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .or(event.incident_key.as_deref())
        .unwrap_or("alert");
    let mark = match super::incident::Signal::of(&event.event) {
        Some(super::incident::Signal::Resolve) => "✅ resolved",
        Some(super::incident::Signal::Ack) => "🟡 acknowledged",
        _ => "🔥 firing",
    };
    let severity = event.facts.severity.as_deref().unwrap_or("-");
    let now = clock::now_ms();
    let line = DigestLine {
        org: robot.org_id,
        robot: robot.id,
        robot_name: robot.name.clone(),
        conversation: robot.conversation_id,
        line: format!("{mark} · {title} ({severity}) · {}", clock::rfc3339(now)),
        due_at_ms: now + digest.interval_seconds as i64 * 1000,
        now_ms: now,
    };
    app.store.add_digest_line(&line).await?;
    app.alerts.timers.notify_one();
    Ok(())
}

/// Posts every due digest; the number posted.
pub async fn post_due(app: &AppState) -> Result<usize, StoreError> {
    let due = app
        .store
        .claim_digests(clock::now_ms(), LEASE_MS, 64)
        .await?;
    let mut posted = 0;
    for d in due {
        let build = |lines: &[String]| message(app, &d, lines);
        if app.store.post_digest(&d, &build).await? {
            app.lanes.poke(d.conversation);
            posted += 1;
        }
    }
    Ok(posted)
}

fn message(app: &AppState, d: &DueDigest, lines: &[String]) -> MessageRecord {
    let mut text = format!("**{} alert events**\n\n", lines.len());
    for line in lines.iter().take(LISTED) {
        text.push_str(&format!("- {line}\n"));
    }
    if lines.len() > LISTED {
        text.push_str(&format!("- … and {} more\n", lines.len() - LISTED));
    }
    let content = Content::Markdown(Markdown {
        title: format!("{}: digest of {} alert events", d.robot_name, lines.len()),
        text,
    });
    MessageRecord {
        id: MessageId(app.ids.next()),
        org_id: d.org,
        conversation_id: d.conversation,
        sender: Sender {
            id: d.robot.to_string(),
            kind: SenderKind::Robot,
            name: d.robot_name.clone(),
        },
        msgtype: content.msgtype().to_string(),
        content: content.body_json(),
        at: At::default(),
        thread_key: None,
        dedupe_key: None,
        created_at_ms: clock::now_ms(),
    }
}
