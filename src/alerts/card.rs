//! The alert card: the message the robot's template rendered, plus the incident's status line
//! and Acknowledge / Resolve buttons. A button's URL carries an HMAC of the incident and the
//! action (keyed from herald's signing key), so a click acts without a login; the timeline
//! records it as channel `card`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::incident::{Incident, State};
use crate::error::ApiError;
use crate::ids::IncidentId;
use crate::model::{ActionButton, ActionCard, Content, Text};
use crate::store::StoreError;
use crate::{clock, AppState};

/// The actions a card button can take.
pub const ACTIONS: &[&str] = &["ack", "resolve"];

/// The card for `incident`: its rendered content with the status and buttons added.
pub fn decorate(app: &AppState, content: &Content, incident: &Incident) -> Content {
    let status = status_line(incident);
    let buttons = buttons(app, incident);
    match content {
        Content::Markdown(m) => Content::ActionCard(ActionCard {
            title: m.title.clone(),
            text: format!("{}\n\n{status}", m.text),
            single_title: None,
            single_url: None,
            btns: buttons,
            btn_orientation: Some("1".into()),
        }),
        Content::ActionCard(card) => {
            let mut card = card.clone();
            card.text = format!("{}\n\n{status}", card.text);
            if let (Some(title), Some(url)) = (card.single_title.take(), card.single_url.take()) {
                card.btns.insert(
                    0,
                    ActionButton {
                        title,
                        action_url: url,
                    },
                );
            }
            card.btns.extend(buttons);
            Content::ActionCard(card)
        }
        Content::Text(t) => Content::Text(Text {
            content: format!("{}\n{status}", t.content),
        }),
        other => other.clone(),
    }
}

fn status_line(incident: &Incident) -> String {
    let state = match incident.state {
        State::Triggered => "🔴 triggered".to_string(),
        State::Acknowledged => "🟡 acknowledged".to_string(),
        State::Resolved => "✅ resolved".to_string(),
        State::Silenced => format!(
            "🔕 silenced until {}",
            clock::rfc3339(incident.silenced_until_ms.unwrap_or_default())
        ),
    };
    format!("**Incident #{}** · {state}", incident.id)
}

fn buttons(app: &AppState, incident: &Incident) -> Vec<ActionButton> {
    let shown: &[(&str, &str)] = match incident.state {
        State::Triggered | State::Silenced => &[("ack", "Acknowledge"), ("resolve", "Resolve")],
        State::Acknowledged => &[("resolve", "Resolve")],
        State::Resolved => &[],
    };
    shown
        .iter()
        .map(|(action, title)| ActionButton {
            title: (*title).to_string(),
            action_url: action_url(app, incident.id, action),
        })
        .collect()
}

/// The signed URL of a card button.
pub fn action_url(app: &AppState, id: IncidentId, action: &str) -> String {
    format!(
        "{}/alerts/incidents/{id}/{action}?sig={}",
        app.outgoing.base_url(),
        signature(app, id, action)
    )
}

fn signature(app: &AppState, id: IncidentId, action: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&app.alerts.action_key).unwrap_or_else(|_| unreachable!());
    mac.update(format!("{id}:{action}").as_bytes());
    crate::robot::hex(&mac.finalize().into_bytes())
}

/// Whether `sig` signs this incident and action (compared in constant time).
pub fn verify(app: &AppState, id: IncidentId, action: &str, sig: &str) -> bool {
    let expected = signature(app, id, action);
    expected.as_bytes().ct_eq(sig.as_bytes()).into()
}

/// Rewrites the incident's card in place after a state change.
pub async fn refresh(app: &AppState, incident: &Incident) -> Result<(), ApiError> {
    let Some(base) = &incident.card else {
        return Ok(());
    };
    let Some(card) = app
        .store
        .robot_card(incident.robot_id, &incident.key)
        .await?
    else {
        return Ok(());
    };
    let content = decorate(app, base, incident);
    match app
        .store
        .update_message(incident.org_id, card, &content)
        .await
    {
        Ok(()) => {
            app.lanes.poke(incident.conversation_id);
            Ok(())
        }
        Err(StoreError::NotFound(_)) => Ok(()), // recalled: nothing to update
        Err(e) => Err(e.into()),
    }
}
