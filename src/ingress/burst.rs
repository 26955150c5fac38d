//! Burst coalescing, the grouping engine's damper: when events about one object (label
//! changes, review comments) arrive within the robot's `burst_seconds` after its card was last
//! touched, each is rendered and stored (`BurstStore`) and answered at once; when the window
//! closes, `flush_loop` applies the whole burst as one card update and one threaded follow-up.
//! Stored before the answer and flushed idempotently (the follow-up's dedupe key names the
//! burst's first row), so nothing acknowledged is lost to a crash or posted twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::post::{post, Outgoing, PostError};
use crate::adapt::Normalized;
use crate::model::{At, Content, Markdown};
use crate::robot::{Grouping, Robot};
use crate::store::{BurstEvent, DueBurst, StoreError};
use crate::{clock, AppState};

/// The longest the flusher sleeps without looking at the table (bursts queued by another node).
const POLL: Duration = Duration::from_secs(30);
/// A throttled follow-up is tried again this much later.
const THROTTLED_RETRY_MS: i64 = 60_000;

/// Holds the event back as part of a burst when the object's card was touched less than the
/// robot's window ago (or a burst is already waiting). True when the event was stored.
pub async fn absorbs(
    app: &AppState,
    robot: &Robot,
    key: &str,
    event: &Normalized,
    content: &Content,
) -> Result<bool, StoreError> {
    let window = i64::from(robot.spec.burst_seconds) * 1000;
    if window == 0 {
        return Ok(false);
    }
    let Some(touched) = app.store.card_touched_at(robot.id, key).await? else {
        return Ok(false);
    };
    let now = clock::now_ms();
    if now >= touched + window && app.store.burst_events(robot.id, key).await?.is_empty() {
        return Ok(false);
    }
    let waiting = BurstEvent {
        id: 0,
        robot: robot.id,
        org: robot.org_id,
        object_key: key.to_string(),
        due_at_ms: touched + window,
        msgtype: content.msgtype().to_string(),
        content: content.body_json(),
        at: event.at.clone(),
        dedupe_key: event.dedupe_key.clone(),
    };
    app.store.add_burst_event(&waiting).await?;
    app.burst_bell.notify_one();
    Ok(true)
}

/// Whether a sender's delivery is waiting in, or was flushed from, a burst of this robot.
pub async fn holds(app: &AppState, robot: &Robot, key: Option<&str>) -> Result<bool, StoreError> {
    match key {
        Some(key) if robot.spec.burst_seconds > 0 => {
            app.store.burst_has_delivery(robot.id, key).await
        }
        _ => Ok(false),
    }
}

/// Starts a new window after an update that was not held back.
pub async fn touch(app: &AppState, robot: &Robot, key: &str) -> Result<(), StoreError> {
    if robot.spec.burst_seconds == 0 {
        return Ok(());
    }
    app.store.touch_card(robot.id, key, clock::now_ms()).await
}

/// Flushes bursts as their windows close, until shutdown. Waiting bursts are rows, so a
/// restart picks them up.
pub async fn flush_loop(app: AppState, shutdown: CancellationToken) {
    loop {
        let now = clock::now_ms();
        if let Err(e) = flush_due(&app, now).await {
            tracing::warn!(error = %e, "flushing bursts failed; retrying");
        }
        let next = app.store.next_burst_due().await.ok().flatten();
        let wait = match next {
            Some(due) => Duration::from_millis((due - clock::now_ms()).clamp(50, 30_000) as u64),
            None => POLL,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.burst_bell.notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn flush_due(app: &AppState, now: i64) -> Result<(), StoreError> {
    for due in app.store.due_bursts(now).await? {
        flush(app, &due, now).await?;
    }
    Ok(())
}

/// One burst: the card shows the latest event, one follow-up lists them all.
async fn flush(app: &AppState, due: &DueBurst, now: i64) -> Result<(), StoreError> {
    let key = due.object_key.as_str();
    let events = app.store.burst_events(due.robot, key).await?;
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    let robot = match app.store.get_robot(due.org, due.robot).await {
        Ok(robot) => robot,
        Err(StoreError::NotFound(_)) => return Ok(()), // deleted with its rows
        Err(e) => return Err(e),
    };
    let latest = Content::from_parts(&last.msgtype, last.content.clone())
        .map_err(|e| anyhow::anyhow!("stored burst content: {e}"))?;
    if robot.spec.grouping != Grouping::Thread {
        update_card(app, &robot, key, &latest).await?;
    }
    if robot.spec.grouping != Grouping::Card {
        let outgoing = Outgoing {
            content: follow_up(&events, latest, app.config.http.max_message_bytes),
            at: mentions(&events),
            dedupe_key: Some(format!("burst:{key}:{}", first.id)),
            thread_key: Some(key.to_string()),
        };
        match post(app, &robot, outgoing).await {
            Ok(_) => {}
            Err(PostError::RateLimited(_)) => {
                let later = now + THROTTLED_RETRY_MS;
                return app.store.delay_burst(robot.id, key, later).await;
            }
            Err(PostError::Store(e)) => return Err(e),
            Err(e) => tracing::warn!(robot.id = %robot.id, error = %e, "burst follow-up dropped"),
        }
    }
    app.store.finish_burst(robot.id, key, last.id, now).await
}

async fn update_card(
    app: &AppState,
    robot: &Robot,
    key: &str,
    content: &Content,
) -> Result<(), StoreError> {
    let Some(card) = app.store.robot_card(robot.id, key).await? else {
        return Ok(());
    };
    super::post::update_card(app, robot, card, content).await?;
    Ok(())
}

/// Everyone any event of the burst mentioned.
fn mentions(events: &[BurstEvent]) -> At {
    let mut at = At::default();
    for e in events {
        for id in &e.at.at_user_ids {
            if !at.at_user_ids.contains(id) {
                at.at_user_ids.push(id.clone());
            }
        }
        for mobile in &e.at.at_mobiles {
            if !at.at_mobiles.contains(mobile) {
                at.at_mobiles.push(mobile.clone());
            }
        }
        at.is_at_all |= e.at.is_at_all;
    }
    at
}

/// The follow-up of a burst: one event as it was; several as a list of their headlines
/// followed by the latest event's text, within `max_bytes`.
fn follow_up(events: &[BurstEvent], latest: Content, max_bytes: usize) -> Content {
    if events.len() < 2 {
        return latest;
    }
    let headlines: Vec<String> = events
        .iter()
        .filter_map(|e| Content::from_parts(&e.msgtype, e.content.clone()).ok())
        .map(|c| headline(&c))
        .collect();
    let (title, text) = (headline(&latest), body(&latest));
    let budget = max_bytes.saturating_sub(title.len() + 512);
    let mut list = String::new();
    for (i, line) in headlines.iter().enumerate() {
        let line = format!("- {line}\n");
        if list.len() + line.len() + 64 > budget / 2 {
            list.push_str(&format!("- …and {} more\n", headlines.len() - i));
            break;
        }
        list.push_str(&line);
    }
    let mut text_out = format!("**{} updates**\n\n{list}", events.len());
    if text_out.len() + text.len() + 2 <= budget {
        text_out.push('\n');
        text_out.push_str(&text);
    }
    Content::Markdown(Markdown {
        title: format!("{} updates: {title}", events.len()),
        text: text_out,
    })
}

fn headline(content: &Content) -> String {
    match content {
        Content::Markdown(m) => m.title.clone(),
        Content::ActionCard(c) => c.title.clone(),
        Content::Link(l) => l.title.clone(),
        other => other
            .plain_text()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

fn body(content: &Content) -> String {
    match content {
        Content::Markdown(m) => m.text.clone(),
        Content::ActionCard(c) => c.text.clone(),
        Content::Link(l) => l.text.clone(),
        other => other.plain_text(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{OrgId, RobotId};

    fn event(id: i64, title: &str, who: &str) -> BurstEvent {
        BurstEvent {
            id,
            robot: RobotId(1),
            org: OrgId(1),
            object_key: "o/r#1".into(),
            due_at_ms: 0,
            msgtype: "markdown".into(),
            content: serde_json::json!({"title": title, "text": format!("text of {title}")}),
            at: At {
                at_user_ids: vec![who.into()],
                ..At::default()
            },
            dedupe_key: None,
        }
    }

    #[test]
    fn one_follow_up_lists_the_burst() {
        let events = [event(1, "labeled bug", "5"), event(2, "labeled p1", "5")];
        let latest = Content::from_parts("markdown", events[1].content.clone()).unwrap();
        let Content::Markdown(m) = follow_up(&events, latest.clone(), 20_000) else {
            panic!("markdown expected");
        };
        assert_eq!(m.title, "2 updates: labeled p1");
        assert!(m.text.contains("- labeled bug\n- labeled p1"), "{}", m.text);
        assert!(m.text.ends_with("text of labeled p1"));
        assert_eq!(follow_up(&events[..1], latest.clone(), 20_000), latest);
        assert_eq!(mentions(&events).at_user_ids, vec!["5".to_string()]);
    }

    #[test]
    fn a_long_burst_stays_within_the_limit() {
        let events: Vec<BurstEvent> = (0..2000)
            .map(|i| event(i, &format!("labeled label-{i}"), "5"))
            .collect();
        let latest = Content::from_parts("markdown", events[1999].content.clone()).unwrap();
        let content = follow_up(&events, latest, 20_000);
        assert!(content.body_json().to_string().len() <= 20_000);
        assert!(content.plain_text().contains("more"));
    }
}
