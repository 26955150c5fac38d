//! Group replies that act on an incident: a member writes "ack" (or "acknowledge") or
//! "resolve" and either @-mentions the alert robot (`robot_<id>` in `atUserIds`), quotes the
//! incident (`#<id>` in the text), or answers in the alert's thread (the thread key the card's
//! follow-ups carry). herald parses the text itself; the message is posted as usual.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::ids::{IncidentId, RobotId};
use crate::model::{At, Content, Message};
use crate::store::{Action, IncidentFilter, IncidentRef};
use crate::AppState;

use super::incident::{self, Actor, State};

/// The action a reply asks for, from its first word after any @-mentions.
pub fn command(text: &str) -> Option<Action> {
    let word = text
        .split_whitespace()
        .find(|w| !w.starts_with('@'))?
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_ascii_lowercase();
    match word.as_str() {
        "ack" | "acknowledge" | "acked" => Some(Action::Ack),
        "resolve" | "resolved" => Some(Action::Resolve),
        _ => None,
    }
}

/// The incident a `#<id>` in the text quotes.
fn quoted(text: &str) -> Option<IncidentId> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix('#'))
        .find_map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
}

/// The robots an `atUserIds` list names (`robot_<id>`).
fn mentioned_robots(at: &At) -> Vec<RobotId> {
    at.at_user_ids
        .iter()
        .filter_map(|s| s.strip_prefix("robot_")?.parse().ok())
        .collect()
}

/// Acts on the incident a member's reply names, if it names one. `raw_at` is the mention block
/// as sent (robots are not members, so resolution drops them from the stored one).
pub async fn observe(
    app: &AppState,
    caller: &Caller,
    message: &Message,
    raw_at: &At,
) -> Result<(), ApiError> {
    let Content::Text(text) = &message.content else {
        return Ok(());
    };
    let Some(action) = command(&text.content) else {
        return Ok(());
    };
    let Some(id) = target(app, caller, message, &text.content, raw_at).await? else {
        return Ok(());
    };
    let actor = Actor {
        who: format!("user:{}", caller.id()),
        channel: "reply",
    };
    incident::transition(app, caller.org(), IncidentRef::Id(id), action, &actor).await?;
    Ok(())
}

/// The open incident of this conversation the reply is about.
async fn target(
    app: &AppState,
    caller: &Caller,
    message: &Message,
    text: &str,
    raw_at: &At,
) -> Result<Option<IncidentId>, ApiError> {
    let org = caller.org();
    let in_conversation = |i: &incident::Incident| i.conversation_id == message.conversation_id;
    if let Some(id) = quoted(text) {
        return match app.store.get_incident(org, id).await {
            Ok(i) if in_conversation(&i) => Ok(Some(id)),
            Ok(_) | Err(crate::store::StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        };
    }
    let mut robots = mentioned_robots(raw_at);
    if robots.is_empty() && message.thread_key.is_none() {
        return Ok(None);
    }
    if robots.is_empty() {
        robots = conversation_robots(app, caller, message).await?;
    }
    for robot in robots {
        let filter = IncidentFilter {
            robot: Some(robot),
            ..IncidentFilter::default()
        };
        let recent = app.store.list_incidents(org, &filter, None, 50).await?;
        let found = recent.into_iter().find(|i| {
            in_conversation(i)
                && i.state != State::Resolved
                && message.thread_key.as_ref().is_none_or(|k| *k == i.key)
        });
        if let Some(found) = found {
            return Ok(Some(found.id));
        }
    }
    Ok(None)
}

/// The alerting robots bound to the message's conversation.
async fn conversation_robots(
    app: &AppState,
    caller: &Caller,
    message: &Message,
) -> Result<Vec<RobotId>, ApiError> {
    let robots = app.store.list_robots(caller.org(), None, 1000).await?;
    Ok(robots
        .into_iter()
        .filter(|r| r.conversation_id == message.conversation_id && r.spec.alerting)
        .map(|r| r.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_first_word_after_mentions() {
        assert_eq!(command("ack"), Some(Action::Ack));
        assert_eq!(command("@alerts Ack, on it"), Some(Action::Ack));
        assert_eq!(command("resolve #12"), Some(Action::Resolve));
        assert_eq!(command("please ack"), None);
        assert_eq!(command(""), None);
    }

    #[test]
    fn quotes_name_an_incident() {
        assert_eq!(quoted("ack #42."), Some(IncidentId(42)));
        assert_eq!(quoted("ack #x"), None);
        assert_eq!(quoted("ack"), None);
    }
}
