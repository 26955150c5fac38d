//! `POST /hooks/{kind}/{token}`: webhooks from GitHub, GitLab, Alertmanager, Grafana,
//! PagerDuty and Slack-format senders, and plugins. ingress → verify → adapt (or plugin) →
//! render → group → post.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::post::{post, update_card, Outgoing, PostError};
use super::{parse_query, RawWebhook, Verified};
use crate::adapt::{self, AdaptError, Normalized};
use crate::error::{ApiError, Path, RawBody};
use crate::model::Content;
use crate::robot::{Grouping, Robot, RobotKind};
use crate::store::{Enqueued, StoreError};
use crate::verify::{verify, VerifyError};
use crate::{clock, render, AppState};

/// A sender's webhook (GitHub, GitLab, Alertmanager, Grafana, PagerDuty, Slack or a plugin
/// robot), verified by the robot's kind and posted as the robot.
#[utoipa::path(post, path = "/hooks/{kind}/{token}", tag = "ingress",
    params(("kind" = String, Path, description = "github, gitlab, alertmanager, grafana, pagerduty, slack or plugin"),
           ("token" = String, Path, description = "the robot's access token")),
    request_body(content = Vec<u8>, description = "the sender's raw body, as signed"),
    responses((status = 200, description = "`{\"errcode\":0,\"errmsg\":\"ok\",\"posted\",\"skipped\"}`, or the sender's own reply shape"),
              (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn receive(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((kind, token)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let robot = find_robot(&app, &kind, &token).await?;
    let robot_id = robot.id;
    let raw = RawWebhook::new(robot, headers, parse_query(uri.query()), body, peer.ip());
    let verified = verify(raw, clock::now_ms()).map_err(|e| {
        tracing::info!(robot.id = %robot_id, error = %e, "webhook refused");
        match e {
            VerifyError::IpNotAllowed(_) => ApiError::Forbidden(e.to_string()),
            other => ApiError::Unauthorized(other.to_string()),
        }
    })?;
    let (events, reply) = match verified.robot.kind {
        RobotKind::Plugin => super::plugin::run(&app, &verified, uri.path()).await?,
        _ => builtin(&verified)?,
    };
    let mut posted = 0;
    let mut skipped = Vec::new();
    for event in events {
        let name = event.event.clone();
        let was_posted = deliver(&app, &verified, event).await?;
        app.robot_stats.count(robot_id, &name, was_posted);
        match was_posted {
            true => posted += 1,
            false => skipped.push(name),
        }
    }
    if !skipped.is_empty() {
        tracing::debug!(robot.id = %robot_id, events = ?skipped, "events not rendered");
    }
    Ok(match reply {
        Some(reply) => reply,
        None => {
            axum::Json(json!({"errcode": 0, "errmsg": "ok", "posted": posted, "skipped": skipped}))
                .into_response()
        }
    })
}

/// The built-in adapter of the robot's kind: its events and its direct reply, if any.
fn builtin(
    verified: &RawWebhook<Verified>,
) -> Result<(Vec<Normalized>, Option<Response>), ApiError> {
    let adapted = adapt::adapt(verified).map_err(|e| {
        tracing::info!(robot.id = %verified.robot.id, error = %e, "webhook not understood");
        match e {
            AdaptError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
            AdaptError::BadPayload(m) if verified.robot.kind == RobotKind::Pagerduty => {
                ApiError::InvalidEvent(m)
            }
            other => ApiError::BadRequest(other.to_string()),
        }
    })?;
    let reply = adapted.reply.map(|reply| {
        let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
        (status, axum::Json(reply.body)).into_response()
    });
    Ok((adapted.events, reply))
}

async fn find_robot(app: &AppState, kind: &str, token: &str) -> Result<Robot, ApiError> {
    let kind = RobotKind::parse(kind).filter(|k| *k != RobotKind::Custom);
    let robot = app.known_robots.by_token(app.store.as_ref(), token).await?;
    match (kind, robot) {
        (Some(kind), Some(robot)) if robot.kind == kind => Ok(robot),
        _ => Err(ApiError::NotFound("robot")),
    }
}

/// Filters, renders and posts one event; false when it is filtered out or not rendered
/// (counted, not an error). A CI conclusion is remembered after the event is handled, so a
/// failed post is retried by the sender against the same previous conclusion.
async fn deliver(
    app: &AppState,
    raw: &RawWebhook<Verified>,
    event: Normalized,
) -> Result<bool, ApiError> {
    let robot = &raw.robot;
    let filters =
        crate::filter::Filters::parse(&robot.spec.filters).map_err(ApiError::BadRequest)?;
    let ci = filters
        .on_conclusion_change
        .then(|| crate::filter::ci_state(&event))
        .flatten();
    let previous = match &ci {
        Some((job, _)) => app.store.ci_conclusion(robot.id, job).await?,
        None => None,
    };
    let posted = filters.admits_after(&event, previous.as_deref())
        && render_and_post(app, robot, event).await?;
    if let Some((job, conclusion)) = ci {
        app.store
            .set_ci_conclusion(robot.id, &job, &conclusion)
            .await?;
    }
    Ok(posted)
}

/// Renders and posts an event that passed the filters; false when the source does not render
/// it or it was posted before (a redelivery).
async fn render_and_post(
    app: &AppState,
    robot: &Robot,
    mut event: Normalized,
) -> Result<bool, ApiError> {
    let kept = keep_from_card(app, robot, &mut event).await?;
    let content = match &event.content {
        Some(content) => Some(content.clone()),
        None => render::render(
            robot.kind.as_str(),
            &event,
            &robot.spec.templates,
            app.config.http.max_message_bytes,
        )
        .map_err(|e| ApiError::Internal(e.into()))?,
    };
    // A redelivery is answered 2xx, counted, and posted once only. An event that updates a
    // card is checked first (a card update is not idempotent); a plain post is deduplicated by
    // the enqueue itself, which saves a read per webhook.
    let delivery = event.dedupe_key.as_deref();
    let grouped = event.object_key.is_some() && robot.spec.grouping != Grouping::Off;
    if grouped
        && (super::post::already_posted(app, robot, delivery).await?
            || super::burst::holds(app, robot, delivery).await?)
    {
        return Ok(false);
    }
    let incident = crate::alerts::incident::observe(app, robot, &event, content.as_ref()).await?;
    if crate::alerts::digest::applies(robot, &event) {
        crate::alerts::digest::add(app, robot, &event).await?;
        return Ok(true); // batched: the robot's next digest lists it
    }
    let content = match (content, &incident) {
        (Some(c), Some(incident)) => Some(crate::alerts::card::decorate(app, &c, incident)),
        (content, _) => content,
    };
    let Some(content) = content else {
        return Ok(false);
    };
    map_mentions(app, robot, &mut event).await?;
    if !group_and_post(app, robot, &event, content).await? {
        return Ok(false);
    }
    if let (Some(key), Some(fields)) = (&event.object_key, kept) {
        app.store.set_card_fields(robot.id, key, &fields).await?;
    }
    Ok(true)
}

/// Fills the fields the source's cards keep (`keep_on_update`) from the card's earlier events
/// when this event lacks them; returns what the card keeps from now on.
async fn keep_from_card(
    app: &AppState,
    robot: &Robot,
    event: &mut Normalized,
) -> Result<Option<serde_json::Value>, ApiError> {
    let names = render::kept_fields(robot.kind.as_str());
    let key = event.object_key.as_deref();
    let Some(key) = key.filter(|_| !names.is_empty() && robot.spec.grouping != Grouping::Off)
    else {
        return Ok(None);
    };
    let saved = app.store.card_fields(robot.id, key).await?;
    let mut kept = serde_json::Map::new();
    for name in names {
        let now = event.fields.get(name).filter(|v| !is_blank(v)).cloned();
        let before = saved.as_ref().and_then(|s| s.get(name)).cloned();
        if let Some(value) = now.or(before) {
            if let Some(fields) = event.fields.as_object_mut() {
                fields.insert(name.clone(), value.clone());
            }
            kept.insert(name.clone(), value);
        }
    }
    Ok(Some(serde_json::Value::Object(kept)))
}

fn is_blank(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Turns the adapter's mention hints (forge logins, alert owners) into mentions of the members
/// the org's mention map names.
async fn map_mentions(
    app: &AppState,
    robot: &Robot,
    event: &mut Normalized,
) -> Result<(), ApiError> {
    if event.mention_hints.is_empty() {
        return Ok(());
    }
    let source = if robot.kind.is_alerting() {
        "alert"
    } else {
        robot.kind.as_str()
    };
    let users = app
        .store
        .map_mentions(robot.org_id, source, &event.mention_hints)
        .await?;
    for user in users {
        let id = user.to_string();
        if !event.at.at_user_ids.contains(&id) {
            event.at.at_user_ids.push(id);
        }
    }
    Ok(())
}

/// The grouping engine: the first event about an object posts its card; later ones update the
/// card in place and/or add a threaded follow-up, as the robot's `grouping` says. False when
/// a plain post turned out to be a redelivery.
async fn group_and_post(
    app: &AppState,
    robot: &Robot,
    event: &Normalized,
    content: Content,
) -> Result<bool, ApiError> {
    let key = event
        .object_key
        .as_deref()
        .filter(|_| robot.spec.grouping != Grouping::Off);
    let Some(key) = key else {
        let enqueued = post_one(app, robot, event, content, None).await?;
        return Ok(enqueued.new_id().is_some());
    };
    let card = app.store.robot_card(robot.id, key).await?;
    if let Some(card) = card {
        if card_shows(app, robot, card, &content).await? {
            // A repeat (Alertmanager re-sends every repeat_interval): nothing new to say.
            return Ok(true);
        }
        if super::burst::absorbs(app, robot, key, event, &content).await? {
            return Ok(true); // part of a burst: applied when its window closes
        }
        super::burst::touch(app, robot, key).await?;
    }
    let updated = match card {
        Some(card) if robot.spec.grouping != Grouping::Thread => {
            update_card(app, robot, card, &content).await?
        }
        _ => false,
    };
    if card.is_none() || !updated || robot.spec.grouping != Grouping::Card {
        let id = post_one(app, robot, event, content, Some(key.to_string())).await?;
        if card.is_none() || !updated {
            if let Some(id) = id.new_id() {
                app.store.set_robot_card(robot.id, key, id).await?;
            }
        }
    }
    Ok(true)
}

/// Whether the card already shows exactly this content.
async fn card_shows(
    app: &AppState,
    robot: &Robot,
    card: crate::ids::MessageId,
    content: &Content,
) -> Result<bool, ApiError> {
    match app.store.get_message(robot.org_id, card).await {
        Ok(message) => Ok(!message.recalled && &message.content == content),
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn post_one(
    app: &AppState,
    robot: &Robot,
    event: &Normalized,
    content: Content,
    thread_key: Option<String>,
) -> Result<Enqueued, ApiError> {
    let outgoing = Outgoing {
        content,
        at: event.at.clone(),
        dedupe_key: event.dedupe_key.clone(),
        thread_key,
    };
    post(app, robot, outgoing).await.map_err(post_error)
}

fn post_error(e: PostError) -> ApiError {
    match e {
        PostError::KeywordMissing => ApiError::BadRequest(e.to_string()),
        PostError::RateLimited(per_minute) => ApiError::RateLimited {
            what: format!("this robot posts at most {per_minute} messages a minute"),
            retry_after_secs: 60,
        },
        PostError::ConversationGone => ApiError::NotFound("the robot's conversation"),
        PostError::TooLong(max) => {
            ApiError::PayloadTooLarge(format!("message exceeds {max} bytes"))
        }
        PostError::Store(e) => e.into(),
    }
}
