//! The PagerDuty Events API v2 adapter: `trigger`, `acknowledge` and `resolve` become
//! `incident.*` events keyed by the `dedup_key`, so an incident's life updates one card. The
//! sender gets PagerDuty's own answer: 202 with the `dedup_key` (a trigger without one gets a
//! stable key derived from the body). Invalid events are refused with PagerDuty's reasons.
//! Message text lives in `bots/pagerduty/`.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::alertmanager::{display_time, scalar, web_url};
use super::{json_body, text, AdaptError, Adapted, DirectReply, Facts, Normalized};
use crate::ingress::{RawWebhook, Verified};

/// PagerDuty's severities, the only ones a trigger may carry.
const SEVERITIES: &[&str] = &["critical", "error", "warning", "info"];
/// custom_details entries listed; the rest are counted.
const DETAILS: usize = 15;
/// Links and images listed.
const LINKS: usize = 5;
const IMAGES: usize = 3;

/// Turns one Events API v2 event into one incident event, answered like PagerDuty.
pub fn adapt(raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    let body = json_body(raw)?;
    let action = validate(&body)?;
    let dedup_key = match text(&body, "/dedup_key") {
        "" => hex_sha256(&raw.body),
        key => key.to_string(),
    };
    let event = Normalized {
        event: format!("incident.{action}"),
        fields: fields(&body, action, &dedup_key),
        object_key: Some(dedup_key.clone()),
        incident_key: Some(dedup_key.clone()),
        facts: Facts {
            severity: Some(text(&body, "/payload/severity").to_string()).filter(|s| !s.is_empty()),
            ..Facts::default()
        },
        ..Normalized::default()
    };
    let reply = DirectReply {
        status: 202,
        body: json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
    };
    Ok(Adapted {
        events: vec![event],
        reply: Some(reply),
    })
}

/// The event's action, or PagerDuty's reason for refusing it.
fn validate(body: &Value) -> Result<&str, AdaptError> {
    let invalid = |why: &str| {
        AdaptError::BadPayload(format!("invalid event (PagerDuty Events API v2): {why}"))
    };
    if text(body, "/routing_key").is_empty() {
        return Err(invalid("'routing_key' is missing"));
    }
    let action = text(body, "/event_action");
    match action {
        "trigger" => {}
        "acknowledge" | "resolve" if text(body, "/dedup_key").is_empty() => {
            return Err(invalid("'dedup_key' is required to acknowledge or resolve"))
        }
        "acknowledge" | "resolve" => return Ok(action),
        "" => return Err(invalid("'event_action' is missing")),
        _ => {
            return Err(invalid(
                "'event_action' must be trigger, acknowledge or resolve",
            ))
        }
    }
    for field in ["summary", "source", "severity"] {
        if text(body, &format!("/payload/{field}")).trim().is_empty() {
            return Err(invalid(&format!("'payload.{field}' is missing")));
        }
    }
    if !SEVERITIES.contains(&text(body, "/payload/severity")) {
        return Err(invalid(
            "'payload.severity' must be critical, error, warning or info",
        ));
    }
    Ok(action)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The template fields: the payload, its details as (name, value) rows, links and images.
fn fields(body: &Value, action: &str, dedup_key: &str) -> Value {
    let details = details(body.get("payload").and_then(|p| p.get("custom_details")));
    json!({
        "action": action,
        "dedup_key": dedup_key,
        "summary": text(body, "/payload/summary"),
        "source": text(body, "/payload/source"),
        "severity": text(body, "/payload/severity"),
        "component": text(body, "/payload/component"),
        "group": text(body, "/payload/group"),
        "class": text(body, "/payload/class"),
        "timestamp": display_time(text(body, "/payload/timestamp")),
        "client": text(body, "/client"),
        "client_url": web_url(text(body, "/client_url")),
        "details_count": details.len(),
        "details_more": details.len().saturating_sub(DETAILS),
        "details": details.into_iter().take(DETAILS).collect::<Vec<_>>(),
        "links": links(body.get("links"), "href", "text", LINKS),
        "images": links(body.get("images"), "src", "alt", IMAGES),
    })
}

/// `custom_details` as rows: an object's entries, or one row for any other value.
fn details(value: Option<&Value>) -> Vec<Value> {
    let row = |name: &str, v: &Value| {
        let shown: String = scalar(v).chars().take(200).collect();
        json!({"name": name, "value": shown})
    };
    match value {
        None | Some(Value::Null) => vec![],
        Some(Value::Object(map)) => map.iter().map(|(k, v)| row(k, v)).collect(),
        Some(other) => vec![row("details", other)],
    }
}

/// The http(s) entries of a links/images list as `{url, text}`.
fn links(list: Option<&Value>, url: &str, label: &str, max: usize) -> Vec<Value> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let href = web_url(item.get(url).and_then(Value::as_str).unwrap_or_default());
            let label = item.get(label).and_then(Value::as_str).unwrap_or_default();
            (!href.is_empty()).then(|| json!({"url": href, "text": label}))
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::alertmanager::tests::{fixtures, fuzz};
    use crate::adapt::contract;
    use crate::robot::RobotKind;

    const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

    fn run(body: &str) -> Result<Adapted, AdaptError> {
        adapt(&contract::verified(RobotKind::Pagerduty, JSON, body.into()))
    }

    #[test]
    fn every_fixture_passes_the_contract() {
        for (case, body) in fixtures("pagerduty") {
            let raw = contract::verified(RobotKind::Pagerduty, JSON, body);
            let adapted = contract::check(&case, &raw);
            assert_eq!(adapted.reply.map(|r| r.status), Some(202), "{case}");
        }
    }

    #[test]
    fn the_reply_matches_pagerdutys() {
        let dir = contract::fixtures_dir("pagerduty");
        let expected: Value =
            serde_json::from_slice(&std::fs::read(dir.join("response.202.json")).unwrap()).unwrap();
        let body = std::fs::read(dir.join("event.trigger.json")).unwrap();
        let adapted = adapt(&contract::verified(RobotKind::Pagerduty, JSON, body)).unwrap();
        assert_eq!(adapted.reply.unwrap().body, expected);
    }

    #[test]
    fn a_trigger_without_dedup_key_gets_a_stable_one() {
        let body = r#"{"routing_key":"r","event_action":"trigger","payload":{"summary":"s","source":"h","severity":"error"}}"#;
        let first = run(body).unwrap().events.remove(0);
        let again = run(body).unwrap().events.remove(0);
        assert_eq!(first.object_key, again.object_key);
        assert_eq!(first.object_key.as_deref().map(str::len), Some(64));
        assert_eq!(first.facts.severity.as_deref(), Some("error"));
    }

    #[test]
    fn invalid_events_say_why() {
        for (body, why) in [
            (r#"{"event_action":"trigger"}"#, "routing_key"),
            (r#"{"routing_key":"r"}"#, "event_action"),
            (
                r#"{"routing_key":"r","event_action":"snooze"}"#,
                "event_action",
            ),
            (
                r#"{"routing_key":"r","event_action":"resolve"}"#,
                "dedup_key",
            ),
            (
                r#"{"routing_key":"r","event_action":"trigger","payload":{"summary":"s","source":"h"}}"#,
                "payload.severity",
            ),
            (
                r#"{"routing_key":"r","event_action":"trigger","payload":{"summary":"s","source":"h","severity":"dire"}}"#,
                "payload.severity",
            ),
        ] {
            match run(body) {
                Err(AdaptError::BadPayload(m)) => assert!(m.contains(why), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn mutated_fixtures_never_panic() {
        fuzz(RobotKind::Pagerduty, "pagerduty");
    }
}
