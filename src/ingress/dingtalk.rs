//! `POST /robot/send?access_token=T[&timestamp=&sign=]`: DingTalk's custom robot, unchanged for
//! its existing clients. Every answer is HTTP 200 with DingTalk's `errcode`/`errmsg` (its
//! clients read only the JSON).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::post::{post, update_card, Outgoing, PostError};
use super::{parse_query, RawWebhook};
use crate::ids::MessageId;
use crate::model::{At, Content, Message};
use crate::robot::{Grouping, RobotKind};
use crate::store::StoreError;
use crate::verify::{verify, VerifyError};
use crate::{clock, AppState};

/// DingTalk's answer body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DingReply {
    pub errcode: i64,
    pub errmsg: String,
}

/// DingTalk's error codes for custom robots (README, "DingTalk robot error codes").
pub mod codes {
    pub const OK: i64 = 0;
    pub const SYSTEM_BUSY: i64 = -1;
    pub const INVALID_PARAM: i64 = 40035;
    pub const BAD_CONTENT_TYPE: i64 = 43004;
    pub const TOKEN_NOT_EXIST: i64 = 300005;
    pub const SECURITY: i64 = 310000;
    pub const GROUP_GONE: i64 = 400013;
    pub const TOO_FAST: i64 = 410100;
    pub const TOO_LONG: i64 = 460101;
}

fn reply(errcode: i64, errmsg: impl Into<String>) -> Json<DingReply> {
    Json(DingReply {
        errcode,
        errmsg: errmsg.into(),
    })
}

/// DingTalk's body limit for one robot message.
const MAX_BODY: usize = 20_000;

/// The body a DingTalk client sends: `msgtype`, the object of that name, `at`, `msgUuid`.
#[derive(Deserialize)]
struct DingBody {
    msgtype: Option<String>,
    at: Option<At>,
    #[serde(rename = "msgUuid")]
    msg_uuid: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// DingTalk's custom robot: a DingTalk-format message (plus herald's `incident_key`,
/// `incident_status` and `severity` for a robot marked alerting). Always HTTP 200; `errcode`
/// says what happened, as DingTalk's does.
#[utoipa::path(post, path = "/robot/send", tag = "ingress",
    params(("access_token" = String, Query), ("timestamp" = Option<String>, Query, description = "ms, with sign"),
           ("sign" = Option<String>, Query, description = "base64 HMAC-SHA256 of timestamp + \"\\n\" + secret")),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = DingReply)))]
pub async fn send(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Json<DingReply> {
    let Ok(body) = body else {
        return reply(
            codes::TOO_LONG,
            format!("message too long, exceed {MAX_BODY} bytes"),
        );
    };
    let query = parse_query(uri.query());
    let Some(token) = query.get("access_token").filter(|t| !t.is_empty()).cloned() else {
        return reply(codes::TOKEN_NOT_EXIST, "token is not exist");
    };
    let robot = match app.known_robots.by_token(app.store.as_ref(), &token).await {
        Ok(Some(robot)) if robot.kind == RobotKind::Custom => robot,
        Ok(_) => return reply(codes::TOKEN_NOT_EXIST, "token is not exist"),
        Err(e) => {
            tracing::error!(error = %e, "robot lookup failed");
            return reply(codes::SYSTEM_BUSY, "system busy");
        }
    };
    let robot_id = robot.id;
    let raw = RawWebhook::new(robot, headers, query, body, peer.ip());
    let verified = match verify(raw, clock::now_ms()) {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(robot.id = %robot_id, error = %e, "robot request refused");
            let msg = match e {
                VerifyError::SignMissing | VerifyError::TimestampInvalid => {
                    "invalid timestamp".to_string()
                }
                other => other.to_string(),
            };
            return reply(codes::SECURITY, msg);
        }
    };
    if verified.body.len() > MAX_BODY {
        return reply(
            codes::TOO_LONG,
            format!("message too long, exceed {MAX_BODY} bytes"),
        );
    }
    if !verified.content_type().contains("json") {
        return reply(
            codes::BAD_CONTENT_TYPE,
            "invalid HTTP header Content-Type, expected application/json",
        );
    }
    let mut outgoing = match parse(&verified.body) {
        Ok(o) => o,
        Err(msg) => return reply(codes::INVALID_PARAM, msg),
    };
    let card_key = match alert(&app, &verified, &mut outgoing).await {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(robot.id = %robot_id, error = %e, "opening the incident failed");
            return reply(codes::SYSTEM_BUSY, "system busy");
        }
    };
    let posted = match card_key {
        Some(key) => post_card(&app, &verified.robot, outgoing, &key).await,
        None => post(&app, &verified.robot, outgoing).await.map(|_| ()),
    };
    match posted {
        Ok(()) => reply(codes::OK, "ok"),
        Err(e) => {
            tracing::info!(robot.id = %robot_id, error = %e, "robot message refused");
            post_error_reply(e)
        }
    }
}

/// A custom robot marked alerting: the body's `incident_key` opens or updates an incident, and
/// the message becomes its card (status line and buttons). Returns the card's key when the
/// message is about an incident.
async fn alert(
    app: &AppState,
    raw: &RawWebhook<super::Verified>,
    outgoing: &mut Outgoing,
) -> Result<Option<String>, crate::error::ApiError> {
    if !raw.robot.spec.alerting {
        return Ok(None);
    }
    let Some(event) = crate::alerts::incident::custom_event(&raw.body, &outgoing.content) else {
        return Ok(None);
    };
    let incident =
        crate::alerts::incident::observe(app, &raw.robot, &event, Some(&outgoing.content)).await?;
    let Some(incident) = incident else {
        return Ok(None);
    };
    outgoing.content = crate::alerts::card::decorate(app, &outgoing.content, &incident);
    outgoing.thread_key = event.object_key;
    Ok(outgoing.thread_key.clone())
}

/// The grouping engine for a custom robot's alert card, as for the alert senders' cards: the
/// first message about the incident's key posts the card and remembers it (so an ack or
/// resolve from anywhere rewrites it in place); later ones update it in place and, as the
/// robot's `grouping` says, add a threaded follow-up. A repeat that changes nothing is dropped.
async fn post_card(
    app: &AppState,
    robot: &crate::robot::Robot,
    outgoing: Outgoing,
    key: &str,
) -> Result<(), PostError> {
    if robot.spec.grouping == Grouping::Off {
        return post(app, robot, outgoing).await.map(|_| ());
    }
    super::post::check_keywords(robot, &outgoing.content)?;
    let card = match app.store.robot_card(robot.id, key).await? {
        Some(id) => live_card(app, robot, id).await?,
        None => None,
    };
    if card.as_ref().is_some_and(|m| m.content == outgoing.content) {
        return Ok(()); // a repeat: the card already says this
    }
    let updated = match &card {
        Some(m) if robot.spec.grouping != Grouping::Thread => {
            update_card(app, robot, m.id, &outgoing.content).await?
        }
        _ => false,
    };
    if updated && robot.spec.grouping == Grouping::Card {
        return Ok(());
    }
    if let Some(id) = post(app, robot, outgoing).await?.new_id() {
        if !updated {
            app.store.set_robot_card(robot.id, key, id).await?;
        }
    }
    Ok(())
}

/// The card message, unless it was recalled or is gone.
async fn live_card(
    app: &AppState,
    robot: &crate::robot::Robot,
    card: MessageId,
) -> Result<Option<Message>, PostError> {
    match app.store.get_message(robot.org_id, card).await {
        Ok(message) => Ok((!message.recalled).then_some(message)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Maps a refused post to DingTalk's code for it.
fn post_error_reply(e: PostError) -> Json<DingReply> {
    match e {
        PostError::KeywordMissing => reply(codes::SECURITY, e.to_string()),
        PostError::RateLimited(_) => reply(codes::TOO_FAST, e.to_string()),
        PostError::ConversationGone => reply(codes::GROUP_GONE, e.to_string()),
        PostError::TooLong(_) => reply(codes::TOO_LONG, e.to_string()),
        PostError::Store(e) => {
            tracing::error!(error = %e, "queueing a robot message failed");
            reply(codes::SYSTEM_BUSY, "system busy")
        }
    }
}

/// A DingTalk body into herald's message; errors read like DingTalk's.
fn parse(body: &[u8]) -> Result<Outgoing, String> {
    let mut parsed: DingBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let msgtype = parsed.msgtype.take().ok_or("missing parameter msgtype")?;
    let object = parsed
        .rest
        .remove(&msgtype)
        .ok_or_else(|| format!("missing parameter {msgtype}"))?;
    let content =
        Content::from_parts(&msgtype, object).map_err(|e| format!("invalid {msgtype}: {e}"))?;
    content.validate()?;
    Ok(Outgoing {
        content,
        at: parsed.at.unwrap_or_default(),
        dedupe_key: parsed.msg_uuid.filter(|u| !u.is_empty()),
        thread_key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_captured_client_body() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/dingtalk");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut parsed = 0;
        for entry in entries.flatten() {
            let fixture: serde_json::Value =
                serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
            let Some(raw) = fixture["request"]["body_raw"].as_str() else {
                continue;
            };
            let outgoing =
                parse(raw.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
            let printed: serde_json::Value =
                serde_json::from_str(&outgoing.content.body_string()).unwrap();
            assert_eq!(
                printed,
                outgoing.content.body_json(),
                "{}: the stored text and the object agree",
                entry.path().display()
            );
            parsed += 1;
        }
        assert!(parsed >= 10, "only {parsed} captured bodies found");
    }

    #[test]
    fn unknown_msgtype_and_missing_object_are_clear() {
        assert!(parse(br#"{"msgtype":"video"}"#)
            .unwrap_err()
            .contains("video"));
        assert!(parse(br#"{"text":{"content":"x"}}"#)
            .unwrap_err()
            .contains("msgtype"));
        assert!(parse(b"{").unwrap_err().contains("JSON"));
    }
}
