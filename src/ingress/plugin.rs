//! The plugin stage of `POST /hooks/plugin/{token}`: hands the verified request to the robot's
//! plugin and turns its messages into the same normalized events the built-in adapters make,
//! so filters, grouping, mentions, dedupe and size limits apply unchanged.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{RawWebhook, Verified};
use crate::adapt::Normalized;
use crate::error::ApiError;
use crate::ids::PluginId;
use crate::plugin::{PluginMessage, PluginReply, PluginRequest};
use crate::AppState;

/// Runs the robot's plugin: its events, and the answer it chose for the sender, if any.
pub async fn run(
    app: &AppState,
    raw: &RawWebhook<Verified>,
    path: &str,
) -> Result<(Vec<Normalized>, Option<Response>), ApiError> {
    let robot = &raw.robot;
    let plugin: PluginId = robot
        .spec
        .plugin_id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .ok_or(ApiError::NotFound("the robot's plugin"))?;
    let output = app
        .plugins
        .run(
            app.store.as_ref(),
            robot.org_id,
            plugin,
            robot.spec.config.clone(),
            request(raw, path),
        )
        .await
        .inspect_err(|e| tracing::info!(robot.id = %robot.id, plugin.id = %plugin, error = %e, "plugin call failed"))?;
    let events = output.messages.into_iter().map(normalized).collect();
    Ok((events, output.reply.map(reply)))
}

fn request(raw: &RawWebhook<Verified>, path: &str) -> PluginRequest {
    PluginRequest {
        method: "POST".into(),
        path: path.to_string(),
        query: raw
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        headers: raw
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect(),
        body: raw.body.clone(),
    }
}

fn normalized(m: PluginMessage) -> Normalized {
    Normalized {
        event: m.event,
        fields: serde_json::Value::Object(Default::default()),
        dedupe_key: m.dedupe_key,
        object_key: m.thread_key,
        facts: m.facts,
        mention_hints: m.mention_hints,
        incident_key: None,
        content: Some(m.content),
        at: m.at,
    }
}

/// Headers herald sets itself, which a plugin may not.
const RESERVED: &[&str] = &["content-length", "transfer-encoding", "connection"];

fn reply(r: PluginReply) -> Response {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, r.body).into_response();
    for (name, value) in r.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        if !RESERVED.contains(&name.as_str()) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
