//! The Grafana adapter. Unified alerting (Grafana 8+) posts Alertmanager's shape plus
//! `title`, `state`, `message` and per-alert `values`, `dashboardURL`, `panelURL`,
//! `silenceURL`; it is read with the Alertmanager helpers and keyed by the group. The legacy
//! format (`ruleName`, `state`, `evalMatches`, `ruleUrl`) is tolerated and keyed by the rule.
//! Message text lives in `bots/grafana/`.

use serde_json::{json, Map, Value};

use super::alertmanager::{self as am, pairs, scalar, web_url};
use super::{json_body, text, AdaptError, Adapted, Facts, Normalized};
use crate::ingress::{RawWebhook, Verified};

/// Legacy evaluation matches listed; the rest are counted.
const MATCHES: usize = 10;

/// Turns one Grafana notification into one event about its alert group (or legacy rule).
pub fn adapt(raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    let body = json_body(raw)?;
    let event = if body.get("alerts").is_some() {
        unified(&body)?
    } else if body.get("ruleName").is_some() || body.get("evalMatches").is_some() {
        legacy(&body)
    } else {
        return Err(AdaptError::BadPayload(
            "a Grafana notification needs an \"alerts\" array (unified alerting) \
             or ruleName and state (legacy alerting)"
                .into(),
        ));
    };
    Ok(Adapted {
        events: vec![event],
        reply: None,
    })
}

/// Unified alerting: the Alertmanager fields plus Grafana's links.
fn unified(body: &Value) -> Result<Normalized, AdaptError> {
    let alerts = am::alerts(body, "a Grafana notification")?;
    let mut fields = am::group_fields(body, &alerts);
    fields.insert("legacy".into(), false.into());
    fields.insert("title".into(), text(body, "/title").into());
    fields.insert("state".into(), text(body, "/state").into());
    for (name, pointer) in [
        ("dashboard_url", "/dashboardURL"),
        ("panel_url", "/panelURL"),
    ] {
        let first = alerts
            .iter()
            .map(|a| web_url(text(a, pointer)))
            .find(|u| !u.is_empty());
        fields.insert(name.into(), first.unwrap_or_default().into());
    }
    fields.insert("silence_url".into(), silence_url(body, &alerts).into());
    let mut event = am::normalize(body, &alerts, Value::Object(fields));
    if event.incident_key.is_none() {
        event.incident_key = alerts
            .iter()
            .map(|a| text(a, "/fingerprint"))
            .find(|f| !f.is_empty())
            .map(str::to_string);
    }
    Ok(event)
}

/// Grafana's silence page with matchers for the group's common labels; with none in common,
/// the first alert's own silence link.
fn silence_url(body: &Value, alerts: &[&Value]) -> String {
    let external = web_url(text(body, "/externalURL"));
    let common = pairs(body.get("commonLabels"));
    if external.is_empty() || common.is_empty() {
        let own = alerts.iter().map(|a| web_url(text(a, "/silenceURL")));
        return own.into_iter().find(|u| !u.is_empty()).unwrap_or_default();
    }
    let matchers: Vec<String> = common
        .iter()
        .map(|(k, v)| format!("matcher={}", am::percent_encode(&format!("{k}={v}"))))
        .collect();
    format!(
        "{}/alerting/silence/new?alertmanager=grafana&{}",
        external.trim_end_matches('/'),
        matchers.join("&")
    )
}

/// Legacy alerting: one rule's state, its evaluation matches and tags.
fn legacy(body: &Value) -> Normalized {
    let state = text(body, "/state");
    let tags = pairs(body.get("tags"));
    let rule = format!(
        "grafana-rule:{}:{}:{}",
        scalar(body.get("orgId").unwrap_or(&Value::Null)),
        scalar(body.get("ruleId").unwrap_or(&Value::Null)),
        text(body, "/ruleName")
    );
    Normalized {
        event: format!("alert.{}", legacy_status(state)),
        fields: legacy_fields(body, &tags),
        object_key: Some(rule.clone()),
        incident_key: Some(rule),
        facts: Facts {
            labels: tags.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            severity: Some(text(body, "/tags/severity").to_string()).filter(|s| !s.is_empty()),
            ..Facts::default()
        },
        mention_hints: am::mention_hints(&json!({ "commonLabels": body.get("tags") }), &[]),
        ..Normalized::default()
    }
}

/// `alerting` → firing, `ok` → resolved; `no_data`, `paused`, `pending` keep their names.
fn legacy_status(state: &str) -> String {
    match state {
        "alerting" => "firing".into(),
        "ok" => "resolved".into(),
        "" => "unknown".into(),
        other => other
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(32)
            .collect::<String>()
            .to_ascii_lowercase(),
    }
}

fn legacy_fields(body: &Value, tags: &[(String, String)]) -> Value {
    let matches: Vec<Value> = body
        .get("evalMatches")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|m| m.is_object())
                .map(eval_match)
                .collect()
        })
        .unwrap_or_default();
    let labels: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut fields = Map::new();
    fields.insert("legacy".into(), true.into());
    fields.insert("status".into(), legacy_status(text(body, "/state")).into());
    fields.insert("state".into(), text(body, "/state").into());
    fields.insert("title".into(), text(body, "/title").into());
    fields.insert("alertname".into(), text(body, "/ruleName").into());
    fields.insert("message".into(), text(body, "/message").into());
    fields.insert("labels".into(), labels.join(", ").into());
    fields.insert("rule_url".into(), web_url(text(body, "/ruleUrl")).into());
    fields.insert("image_url".into(), web_url(text(body, "/imageUrl")).into());
    fields.insert("matches_count".into(), matches.len().into());
    fields.insert(
        "matches_more".into(),
        matches.len().saturating_sub(MATCHES).into(),
    );
    fields.insert(
        "matches".into(),
        matches.into_iter().take(MATCHES).collect(),
    );
    Value::Object(fields)
}

fn eval_match(m: &Value) -> Value {
    let tags: Vec<String> = pairs(m.get("tags"))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    json!({
        "metric": text(m, "/metric"),
        "value": scalar(m.get("value").unwrap_or(&Value::Null)),
        "tags": tags.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::alertmanager::tests::{fixtures, fuzz};
    use crate::adapt::contract;
    use crate::robot::RobotKind;

    const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

    #[test]
    fn every_fixture_passes_the_contract() {
        for (case, body) in fixtures("grafana") {
            let raw = contract::verified(RobotKind::Grafana, JSON, body);
            let adapted = contract::check(&case, &raw);
            assert_eq!(adapted.events.len(), 1, "{case}");
            assert!(adapted.events[0].object_key.is_some(), "{case}");
        }
    }

    #[test]
    fn unified_firing_and_resolved_share_the_group_key() {
        let event = |case: &str| {
            let body = std::fs::read(contract::fixtures_dir("grafana").join(case)).unwrap();
            let raw = contract::verified(RobotKind::Grafana, JSON, body);
            adapt(&raw).unwrap().events.remove(0)
        };
        let fired = event("unified-firing-3alerts.json");
        let resolved = event("unified-resolved.json");
        assert_eq!(fired.event, "alert.firing");
        assert_eq!(resolved.event, "alert.resolved");
        assert_eq!(fired.object_key, resolved.object_key);
        assert_eq!(
            fired.fields["silence_url"],
            "https://grafana.example.com/alerting/silence/new?alertmanager=grafana&matcher=test%3Dtrue"
        );
    }

    #[test]
    fn legacy_states_map_to_alert_events() {
        for (state, event) in [
            ("alerting", "alert.firing"),
            ("ok", "alert.resolved"),
            ("no_data", "alert.no_data"),
        ] {
            let body = json!({"ruleName": "r", "state": state, "ruleId": 3});
            let raw = contract::verified(RobotKind::Grafana, JSON, body.to_string().into_bytes());
            assert_eq!(adapt(&raw).unwrap().events[0].event, event);
        }
    }

    #[test]
    fn wrong_shapes_are_bad_payloads() {
        for body in [r#"{"title":"x"}"#, r#"{"alerts":"x"}"#, "[1]"] {
            let raw = contract::verified(RobotKind::Grafana, JSON, body.into());
            assert!(
                matches!(adapt(&raw), Err(AdaptError::BadPayload(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn mutated_fixtures_never_panic() {
        fuzz(RobotKind::Grafana, "grafana");
    }
}
