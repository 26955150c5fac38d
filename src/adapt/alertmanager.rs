//! The Prometheus Alertmanager adapter (webhook v4). One notification is one group of alerts and
//! becomes one `alert.firing` / `alert.resolved` event keyed by the `groupKey`, so a group that
//! fires and later resolves updates one card. The helpers that read the Alertmanager shape are
//! shared with the Grafana adapter (Grafana's unified alerting posts the same shape). Message
//! text lives in `bots/alertmanager/`; nothing here writes prose.

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{json_body, text, AdaptError, Adapted, Facts, Normalized};
use crate::ingress::{RawWebhook, Verified};

/// Alerts listed per section; the rest are counted.
const LISTED: usize = 10;
/// Labels and annotations whose values name people or teams to @-mention.
const MENTION_KEYS: &[&str] = &["owner", "team", "oncall", "on_call", "assignee"];

/// Turns one Alertmanager notification into one event about its alert group.
pub fn adapt(raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    let body = json_body(raw)?;
    let alerts = alerts(&body, "an Alertmanager notification")?;
    let fields = group_fields(&body, &alerts);
    let event = normalize(&body, &alerts, Value::Object(fields));
    Ok(Adapted {
        events: vec![event],
        reply: None,
    })
}

/// The `alerts` array (its objects), or a clear error naming what was expected.
pub(super) fn alerts<'a>(body: &'a Value, what: &str) -> Result<Vec<&'a Value>, AdaptError> {
    let list = body
        .get("alerts")
        .and_then(Value::as_array)
        .ok_or_else(|| AdaptError::BadPayload(format!("{what} needs an \"alerts\" array")))?;
    Ok(list.iter().filter(|a| a.is_object()).collect())
}

/// "firing" while any alert fires (Alertmanager keeps a mixed group firing), else "resolved".
pub(super) fn group_status(body: &Value, alerts: &[&Value]) -> &'static str {
    match text(body, "/status") {
        "firing" => "firing",
        "resolved" => "resolved",
        _ if alerts.iter().any(|a| text(a, "/status") == "firing") => "firing",
        _ => "resolved",
    }
}

/// The shared event: `alert.<status>`, keyed by the group, facts from the common labels.
pub(super) fn normalize(body: &Value, alerts: &[&Value], fields: Value) -> Normalized {
    let group_key = Some(text(body, "/groupKey").to_string()).filter(|k| !k.is_empty());
    let common = pairs(body.get("commonLabels"));
    Normalized {
        event: format!("alert.{}", group_status(body, alerts)),
        fields,
        dedupe_key: None,
        object_key: group_key.clone(),
        incident_key: group_key,
        facts: Facts {
            severity: severity(&common, alerts),
            labels: common.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            ..Facts::default()
        },
        mention_hints: mention_hints(body, alerts),
        ..Normalized::default()
    }
}

/// The template fields of a group: counts, common labels and annotations, the listed alerts
/// per status, and the links that become buttons.
pub(super) fn group_fields(body: &Value, alerts: &[&Value]) -> Map<String, Value> {
    let common = pairs(body.get("commonLabels"));
    let external = web_url(text(body, "/externalURL"));
    let mut fields = Map::new();
    fields.insert("status".into(), group_status(body, alerts).into());
    fields.insert("receiver".into(), text(body, "/receiver").into());
    fields.insert("group_key".into(), text(body, "/groupKey").into());
    fields.insert("alertname".into(), alertname(body, alerts).into());
    fields.insert(
        "severity".into(),
        severity(&common, alerts).unwrap_or_default().into(),
    );
    let shown: Vec<_> = common
        .iter()
        .filter(|(k, _)| k != "alertname" && k != "severity")
        .cloned()
        .collect();
    fields.insert("labels".into(), joined(&shown).into());
    fields.insert(
        "summary".into(),
        text(body, "/commonAnnotations/summary").into(),
    );
    let description = text(body, "/commonAnnotations/description");
    fields.insert("description".into(), description.into());
    for status in ["firing", "resolved"] {
        let listed = section(alerts, status, &common);
        fields.insert(format!("{status}_count"), listed.len().into());
        fields.insert(
            format!("{status}_more"),
            listed.len().saturating_sub(LISTED).into(),
        );
        fields.insert(status.into(), listed.into_iter().take(LISTED).collect());
    }
    let truncated = body.get("truncatedAlerts").and_then(Value::as_u64);
    fields.insert("truncated".into(), truncated.unwrap_or(0).into());
    fields.insert("external_url".into(), external.clone().into());
    fields.insert(
        "generator_url".into(),
        first_link(alerts, "/generatorURL").into(),
    );
    fields.insert("runbook_url".into(), runbook(body, alerts).into());
    fields.insert("silence_url".into(), silence_url(&external, &common).into());
    fields
}

/// The alerts of one status, as template objects.
fn section(alerts: &[&Value], status: &str, common: &[(String, String)]) -> Vec<Value> {
    alerts
        .iter()
        .filter(|a| text(a, "/status") == status)
        .map(|a| alert_fields(a, common))
        .collect()
}

/// One alert: its own labels (those not common to the group), annotations, times, links.
fn alert_fields(alert: &Value, common: &[(String, String)]) -> Value {
    let own: Vec<(String, String)> = pairs(alert.get("labels"))
        .into_iter()
        .filter(|kv| !common.contains(kv))
        .collect();
    json!({
        "status": text(alert, "/status"),
        "name": text(alert, "/labels/alertname"),
        "labels": joined(&own),
        "summary": text(alert, "/annotations/summary"),
        "description": text(alert, "/annotations/description"),
        "starts_at": display_time(text(alert, "/startsAt")),
        "ends_at": display_time(text(alert, "/endsAt")),
        "fingerprint": text(alert, "/fingerprint"),
        "generator_url": web_url(text(alert, "/generatorURL")),
        "runbook_url": web_url(text(alert, "/annotations/runbook_url")),
        "value": value_text(alert),
        "dashboard_url": web_url(text(alert, "/dashboardURL")),
        "panel_url": web_url(text(alert, "/panelURL")),
        "silence_url": web_url(text(alert, "/silenceURL")),
    })
}

/// Grafana's evaluated values: `values` as `B=17, C=1`, else its `valueString`.
fn value_text(alert: &Value) -> String {
    match alert.get("values").and_then(Value::as_object) {
        Some(values) if !values.is_empty() => values
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => compact_value_string(text(alert, "/valueString")),
    }
}

/// `[ var='B' labels={…} value=17 ], [ var='C' … value=1 ]` as `B=17, C=1`; other text as is.
fn compact_value_string(s: &str) -> String {
    let parts: Option<Vec<String>> = s
        .split("], [")
        .map(|part| {
            let var = part.split("var='").nth(1)?.split('\'').next()?;
            let value = part
                .rsplit("value=")
                .next()?
                .trim()
                .trim_end_matches(']')
                .trim();
            Some(format!("{var}={value}"))
        })
        .collect();
    match parts {
        Some(parts) if s.contains("var='") => parts.join(", "),
        _ => s.to_string(),
    }
}

/// The object's scalar entries as (name, value) strings, in key order.
pub(super) fn pairs(object: Option<&Value>) -> Vec<(String, String)> {
    object
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array() && !v.is_null())
                .map(|(k, v)| (k.clone(), scalar(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// A JSON value as display text: strings without quotes, the rest as compact JSON.
pub(super) fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn joined(pairs: &[(String, String)]) -> String {
    let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(", ")
}

/// The group's alert name: common, grouped, or the distinct names of its alerts.
fn alertname(body: &Value, alerts: &[&Value]) -> String {
    for pointer in ["/commonLabels/alertname", "/groupLabels/alertname"] {
        if !text(body, pointer).is_empty() {
            return text(body, pointer).to_string();
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for name in alerts.iter().map(|a| text(a, "/labels/alertname")) {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    match names.len() {
        0 => "alerts".to_string(),
        1..=3 => names.join(", "),
        n => format!("{} and {} more", names[..2].join(", "), n - 2),
    }
}

/// The common `severity` label, else the highest severity among the alerts.
pub(super) fn severity(common: &[(String, String)], alerts: &[&Value]) -> Option<String> {
    if let Some((_, s)) = common.iter().find(|(k, _)| k == "severity") {
        return Some(s.clone());
    }
    alerts
        .iter()
        .map(|a| text(a, "/labels/severity"))
        .filter(|s| !s.is_empty())
        .fold(None, |best: Option<&str>, s| match best {
            Some(b) if rank(b) >= rank(s) => Some(b),
            _ => Some(s),
        })
        .map(str::to_string)
}

/// Orders the usual severity words; unknown words rank lowest.
pub(super) fn rank(severity: &str) -> u8 {
    match severity.to_ascii_lowercase().as_str() {
        "critical" | "fatal" | "emergency" | "page" | "p1" | "disaster" => 5,
        "error" | "high" | "major" | "p2" => 4,
        "warning" | "warn" | "medium" | "minor" | "average" | "p3" => 3,
        "low" | "p4" => 2,
        "info" | "informational" | "notice" | "p5" => 1,
        _ => 0,
    }
}

/// Values of owner/team/oncall labels and annotations, each once, in order of appearance.
pub(super) fn mention_hints(body: &Value, alerts: &[&Value]) -> Vec<String> {
    let mut sources = vec![body.get("commonLabels"), body.get("commonAnnotations")];
    for alert in alerts {
        sources.push(alert.get("labels"));
        sources.push(alert.get("annotations"));
    }
    let mut hints = Vec::new();
    for (key, value) in sources.into_iter().flat_map(pairs) {
        let wanted = MENTION_KEYS.contains(&key.to_ascii_lowercase().as_str());
        if wanted && !value.trim().is_empty() && !hints.contains(&value) {
            hints.push(value);
        }
    }
    hints
}

fn first_link(alerts: &[&Value], pointer: &str) -> String {
    alerts
        .iter()
        .map(|a| web_url(text(a, pointer)))
        .find(|u| !u.is_empty())
        .unwrap_or_default()
}

fn runbook(body: &Value, alerts: &[&Value]) -> String {
    let common = web_url(text(body, "/commonAnnotations/runbook_url"));
    if common.is_empty() {
        first_link(alerts, "/annotations/runbook_url")
    } else {
        common
    }
}

/// Alertmanager's "new silence" page, pre-filled with matchers for the common labels.
fn silence_url(external: &str, common: &[(String, String)]) -> String {
    if external.is_empty() || common.is_empty() {
        return String::new();
    }
    let matchers: Vec<String> = common
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let filter = format!("{{{}}}", matchers.join(","));
    format!(
        "{}/#/silences/new?filter={}",
        external.trim_end_matches('/'),
        percent_encode(&filter)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(super) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL if it is an http(s) link, else "" (a payload must not smuggle other schemes into
/// buttons).
pub(super) fn web_url(url: &str) -> String {
    let url = url.trim();
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        url.to_string()
    } else {
        String::new()
    }
}

/// A time as `2026-11-25 13:56:24 UTC`.
pub(super) fn utc_text(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// An RFC 3339 time as `2026-11-25 13:56:24 UTC`; Alertmanager's zero time (still firing) as "".
/// ISO 8601 offsets without a colon (`+0000`, PagerDuty's examples) are accepted too.
pub(super) fn display_time(value: &str) -> String {
    let parsed = OffsetDateTime::parse(value, &Rfc3339).or_else(|e| {
        let split = value.len().saturating_sub(2);
        match (value.get(..split), value.get(split..)) {
            (Some(head), Some(tail)) => OffsetDateTime::parse(&format!("{head}:{tail}"), &Rfc3339),
            _ => Err(e),
        }
    });
    match parsed {
        Ok(t) if t.year() <= 1 => String::new(),
        Ok(t) => utc_text(t),
        Err(_) => value.chars().take(40).collect(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::adapt::contract;
    use crate::robot::RobotKind;

    /// Fixture files of a source, without the index and recorded responses.
    pub fn fixtures(source: &str) -> Vec<(String, Vec<u8>)> {
        let dir = contract::fixtures_dir(source);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                !name.contains("index") && !name.starts_with("response.")
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let stem = p.file_stem().unwrap().to_string_lossy().to_string();
                (stem, std::fs::read(&p).unwrap())
            })
            .collect()
    }

    /// Mutations of a real payload: truncations, and each value replaced by null, a number
    /// and a string, for the no-panic fuzz.
    pub fn mutations(body: &[u8]) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = (1..=20)
            .map(|i| body[..body.len() * i / 21].to_vec())
            .collect();
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return out;
        };
        let mut pointers = Vec::new();
        collect_pointers(&value, String::new(), &mut pointers);
        for pointer in pointers {
            for replacement in [Value::Null, json!(42), json!("x"), json!([]), json!({})] {
                let mut mutated = value.clone();
                if let Some(slot) = mutated.pointer_mut(&pointer) {
                    *slot = replacement;
                }
                out.push(serde_json::to_vec(&mutated).unwrap());
            }
        }
        out
    }

    fn collect_pointers(value: &Value, at: String, out: &mut Vec<String>) {
        let children: Vec<(String, &Value)> = match value {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
                .collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => return,
        };
        for (key, child) in children {
            let pointer = format!("{at}/{key}");
            out.push(pointer.clone());
            collect_pointers(child, pointer, out);
        }
    }

    /// Runs the adapter and the renderer over every mutation of every fixture: no panics.
    pub fn fuzz(kind: RobotKind, source: &str) {
        for (_, body) in fixtures(source) {
            for mutated in mutations(&body) {
                let raw =
                    contract::verified(kind, &[("content-type", "application/json")], mutated);
                if let Ok(adapted) = crate::adapt::adapt(&raw) {
                    for event in &adapted.events {
                        let _ = crate::render::render(source, event, &Default::default(), 20_000);
                    }
                }
            }
        }
    }

    fn headers_of(case: &str) -> Vec<(String, String)> {
        let index: Value = serde_json::from_slice(
            &std::fs::read(contract::fixtures_dir("alertmanager").join("captured-index.json"))
                .unwrap(),
        )
        .unwrap();
        let requests = index["requests"].as_array().unwrap();
        let found = requests
            .iter()
            .find(|r| r["file"] == format!("{case}.json"));
        match found.and_then(|r| r["headers"].as_object()) {
            Some(h) => h.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
            None => vec![("Content-Type".into(), "application/json".into())],
        }
    }

    #[test]
    fn every_fixture_passes_the_contract() {
        for (case, body) in fixtures("alertmanager") {
            let headers = headers_of(&case);
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let raw = contract::verified(RobotKind::Alertmanager, &headers, body);
            let adapted = contract::check(&case, &raw);
            assert_eq!(adapted.events.len(), 1, "{case}");
            assert!(adapted.events[0].object_key.is_some(), "{case}");
        }
    }

    #[test]
    fn fire_then_resolve_share_one_card() {
        let key = |case: &str| {
            let body = std::fs::read(contract::fixtures_dir("alertmanager").join(case)).unwrap();
            let raw = contract::verified(RobotKind::Alertmanager, &[], body);
            let event = adapt(&raw).unwrap().events.remove(0);
            (event.event, event.object_key)
        };
        let (fired, first) = key("captured-1-firing-2alerts.json");
        let (resolved, last) = key("captured-4-resolved.json");
        assert_eq!(
            (fired.as_str(), resolved.as_str()),
            ("alert.firing", "alert.resolved")
        );
        assert_eq!(first, last);
    }

    #[test]
    fn mixed_bodies_list_two_sections_and_link_a_silence() {
        let body = json!({
            "status": "firing", "groupKey": "g", "externalURL": "http://am:9093/",
            "commonLabels": {"alertname": "Up", "team": "db \"core\""},
            "alerts": [
                {"status": "firing", "labels": {"alertname": "Up", "severity": "warning"}},
                {"status": "resolved", "labels": {"alertname": "Up", "severity": "critical", "owner": "ann"}},
            ]
        });
        let raw = contract::verified(RobotKind::Alertmanager, &[], body.to_string().into_bytes());
        let event = adapt(&raw).unwrap().events.remove(0);
        assert_eq!(event.fields["firing_count"], 1);
        assert_eq!(event.fields["resolved_count"], 1);
        assert_eq!(event.facts.severity.as_deref(), Some("critical"));
        assert_eq!(event.mention_hints, ["db \"core\"", "ann"]);
        assert_eq!(
            event.fields["silence_url"],
            "http://am:9093/#/silences/new?filter=%7Balertname%3D%22Up%22%2Cteam%3D%22db%20%5C%22core%5C%22%22%7D"
        );
    }

    #[test]
    fn wrong_shapes_are_bad_payloads() {
        for body in [r#"{"status":"firing"}"#, r#"{"alerts":{}}"#, "[]", "nope"] {
            let raw = contract::verified(RobotKind::Alertmanager, &[], body.into());
            assert!(
                matches!(adapt(&raw), Err(AdaptError::BadPayload(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn mutated_fixtures_never_panic() {
        fuzz(RobotKind::Alertmanager, "alertmanager");
    }
}
