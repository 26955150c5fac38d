//! Adapt: one file per sender, each turning a verified webhook into normalized events. An
//! adapter extracts fields; it does not write message text: that comes from the templates in
//! `bots/<source>/` (see `render`). Every adapter passes the shared contract test over its real
//! fixtures (ids set, dedupe key stable, nothing panics).

pub mod alertmanager;
#[cfg(test)]
pub mod contract;
#[cfg(test)]
mod fuzz;
pub mod github;
pub mod gitlab;
pub mod grafana;
pub mod pagerduty;
mod prune;
pub mod slack;

use serde::Serialize;

use crate::ingress::{RawWebhook, Verified};
use crate::model::{At, Content};
use crate::robot::RobotKind;

/// One event from a sender, in herald's terms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Normalized {
    /// The manifest's event name, e.g. `pull_request.opened`, `push`, `alert.firing`.
    pub event: String,
    /// What templates and filters see: the adapter's normalized fields, not the raw payload.
    pub fields: serde_json::Value,
    /// Identifies the delivery: a redelivery with the same key never posts twice.
    pub dedupe_key: Option<String>,
    /// The object this event is about (repo#PR, project!MR, pipeline, alert group): later events
    /// with the same key update its card.
    pub object_key: Option<String>,
    /// Normalized facts the filter engine matches on.
    pub facts: Facts,
    /// Forge logins and alert label values to map to members for @-mentions.
    pub mention_hints: Vec<String>,
    /// An alert's stable key (fingerprint, group key, dedup_key) for incidents.
    pub incident_key: Option<String>,
    /// A message already built by the sender (Slack-format senders): templates are skipped.
    #[serde(skip)]
    pub content: Option<Content>,
    #[serde(skip)]
    pub at: At,
}

/// What filters can match, the same names for every source.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Facts {
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub labels: Vec<String>,
    pub actor: Option<String>,
    pub actor_is_bot: bool,
    pub draft: Option<bool>,
    /// CI conclusion: success, failure, cancelled, …
    pub conclusion: Option<String>,
    pub severity: Option<String>,
    pub paths: Vec<String>,
    /// Which CI job this conclusion belongs to (repo + workflow, check or pipeline name), so
    /// "on status change" compares a run with the previous run of the same job and branch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci_key: Option<String>,
}

/// An answer the sender expects besides the default (PagerDuty's 202, GitHub's ping).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectReply {
    pub status: u16,
    pub body: serde_json::Value,
}

/// The adapter's result for one request.
#[derive(Debug, Clone, Default)]
pub struct Adapted {
    pub events: Vec<Normalized>,
    pub reply: Option<DirectReply>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdaptError {
    #[error("{0}")]
    BadPayload(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("robots of kind {0} have no built-in adapter")]
    NoAdapter(&'static str),
}

/// Routes a verified webhook to its sender's adapter.
pub fn adapt(raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    let mut adapted = route(raw)?;
    adapted.events.iter_mut().for_each(scrub);
    Ok(adapted)
}

/// Removes NUL characters from everything an event carries: JSON allows `\u0000`, but no
/// message needs one and PostgreSQL text cannot hold it.
fn scrub(n: &mut Normalized) {
    fn text(s: &mut String) {
        if s.contains('\0') {
            s.retain(|c| c != '\0');
        }
    }
    fn value(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => text(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(value),
            serde_json::Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    let entries = std::mem::take(map);
                    map.extend(entries.into_iter().map(|(k, v)| (k.replace('\0', ""), v)));
                }
                map.values_mut().for_each(value);
            }
            _ => {}
        }
    }
    text(&mut n.event);
    value(&mut n.fields);
    let f = &mut n.facts;
    let optional = [
        &mut n.dedupe_key,
        &mut n.object_key,
        &mut n.incident_key,
        &mut f.branch,
        &mut f.tag,
        &mut f.actor,
        &mut f.conclusion,
        &mut f.severity,
        &mut f.ci_key,
    ];
    optional.into_iter().flatten().for_each(text);
    let lists = [&mut f.labels, &mut f.paths, &mut n.mention_hints];
    lists.into_iter().flatten().for_each(text);
    if let Some(content) = &mut n.content {
        let mut body = content.body_json();
        value(&mut body);
        if let Ok(clean) = Content::from_parts(content.msgtype(), body) {
            *content = clean;
        }
    }
    let at = &mut n.at;
    at.at_user_ids
        .iter_mut()
        .chain(at.at_mobiles.iter_mut())
        .for_each(text);
}

fn route(raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    match raw.robot.kind {
        RobotKind::Github => github::adapt(raw),
        RobotKind::Gitlab => gitlab::adapt(raw),
        RobotKind::Alertmanager => alertmanager::adapt(raw),
        RobotKind::Grafana => grafana::adapt(raw),
        RobotKind::Pagerduty => pagerduty::adapt(raw),
        RobotKind::Slack => slack::adapt(raw),
        other @ (RobotKind::Custom | RobotKind::Plugin) => {
            Err(AdaptError::NoAdapter(other.as_str()))
        }
    }
}

/// Parses a JSON body, or a form body whose `payload` field holds the JSON (GitHub, Slack).
pub fn json_body(raw: &RawWebhook<Verified>) -> Result<serde_json::Value, AdaptError> {
    json_body_with(raw, |body| serde_json::from_slice(body))
}

/// `json_body` without the object members `dropped` names (see `prune`).
pub fn json_body_without(
    raw: &RawWebhook<Verified>,
    dropped: fn(&str) -> bool,
) -> Result<serde_json::Value, AdaptError> {
    json_body_with(raw, |body| prune::from_slice_without(body, dropped))
}

fn json_body_with(
    raw: &RawWebhook<Verified>,
    parse: impl Fn(&[u8]) -> serde_json::Result<serde_json::Value>,
) -> Result<serde_json::Value, AdaptError> {
    let ctype = raw.content_type();
    if ctype == "application/x-www-form-urlencoded" {
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&raw.body)
            .map_err(|e| AdaptError::BadPayload(format!("invalid form body: {e}")))?;
        let payload = form
            .into_iter()
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v)
            .ok_or_else(|| AdaptError::BadPayload("form body without a payload field".into()))?;
        return parse(payload.as_bytes())
            .map_err(|e| AdaptError::BadPayload(format!("invalid JSON in payload: {e}")));
    }
    if !(ctype.is_empty() || ctype.contains("json")) {
        return Err(AdaptError::UnsupportedMediaType(format!(
            "expected application/json (or a form with payload=), got {ctype}"
        )));
    }
    let value =
        parse(&raw.body).map_err(|e| AdaptError::BadPayload(format!("invalid JSON body: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(AdaptError::BadPayload(
            "the JSON body must be an object".into(),
        ))
    }
}

/// A header the sender always sends (the event name), trimmed; its absence is a bad payload.
pub fn required_header<'a>(
    raw: &'a RawWebhook<Verified>,
    name: &str,
) -> Result<&'a str, AdaptError> {
    raw.header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| AdaptError::BadPayload(format!("missing {name} header")))
}

static NULL: serde_json::Value = serde_json::Value::Null;

/// The value at a JSON pointer, or null: adapters never index, so no payload can panic them.
pub fn at<'a>(v: &'a serde_json::Value, pointer: &str) -> &'a serde_json::Value {
    v.pointer(pointer).unwrap_or(&NULL)
}

/// A number or a string id as text ("" when neither).
pub fn id(v: &serde_json::Value, pointer: &str) -> String {
    match at(v, pointer) {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// The `key` (a string or number) of every object in the array at `pointer`.
pub fn names(v: &serde_json::Value, pointer: &str, key: &str) -> Vec<String> {
    at(v, pointer)
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| id(x, key))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Adds an object's fields to the event's template fields.
pub fn merge(n: &mut Normalized, extra: serde_json::Value) {
    if let (serde_json::Value::Object(fields), serde_json::Value::Object(extra)) =
        (&mut n.fields, extra)
    {
        fields.extend(extra);
    }
}

/// A string field at a JSON pointer, or "".
pub fn text<'a>(v: &'a serde_json::Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(|x| x.as_str())
        .unwrap_or_default()
}
