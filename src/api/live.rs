//! Sync: `/sync` pages, the SSE `/stream` and the WebSocket `/ws`. All three read the caller's
//! inbox after a cursor, so reconnecting with the last pts seen loses and repeats nothing.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, Json, Query};
use crate::sync::{self, Feed, FeedItem};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sync", get(sync_events))
        .route("/stream", get(stream))
        .route("/ws", get(websocket))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SyncParams {
    /// Return events with pts greater than this (default 0: from the start).
    since: Option<i64>,
    /// At most this many events, 1–1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SyncResponse {
    #[schema(value_type = Vec<crate::api::docs::EventDoc>)]
    events: Vec<serde_json::Value>,
    has_more: bool,
    /// The pts to pass as `since` next time.
    next_since: i64,
}

/// The caller's events after `since`, in pts order.
#[utoipa::path(get, path = "/api/v1/sync", tag = "sync", params(SyncParams),
    responses((status = 200, body = SyncResponse), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn sync_events(
    State(app): State<AppState>,
    caller: Caller,
    Query(params): Query<SyncParams>,
) -> Result<Json<SyncResponse>, ApiError> {
    let since = params.since.unwrap_or(0);
    if since < 0 {
        return Err(ApiError::bad_request("since must be 0 or more"));
    }
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    let page = sync::read_page(&app, caller.id(), since, limit).await?;
    let next_since = page.events.last().map_or(since, |e| e.pts);
    Ok(Json(SyncResponse {
        events: page.events.iter().map(|e| e.to_json()).collect(),
        has_more: page.has_more,
        next_since,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamParams {
    /// Start after this pts; `Last-Event-ID` wins when both are given. Without either, the
    /// stream starts with the next new event.
    since: Option<i64>,
    /// The bearer token, for clients that cannot set headers.
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// Where a live connection starts: `Last-Event-ID`, else `since`, else the current head.
async fn start_cursor(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    since: Option<i64>,
) -> Result<i64, ApiError> {
    if let Some(value) = headers.get("last-event-id") {
        let text = value.to_str().unwrap_or_default().trim();
        return text.parse::<i64>().ok().filter(|p| *p >= 0).ok_or_else(|| {
            ApiError::bad_request(format!("Last-Event-ID must be a pts, got {text:?}"))
        });
    }
    match since {
        Some(s) if s < 0 => Err(ApiError::bad_request("since must be 0 or more")),
        Some(s) => Ok(s),
        None => Ok(app.store.head_pts(caller.id()).await?),
    }
}

/// Server-Sent Events: `id: <pts>`, `event: <type>`, `data: <Event JSON>`; a `resync` event
/// (no id) when the client fell too far behind.
#[utoipa::path(get, path = "/api/v1/stream", tag = "sync", params(StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this pts")),
    responses((status = 200, description = "text/event-stream of Event", content_type = "text/event-stream"),
              (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn stream(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(params): Query<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let since = start_cursor(&app, &caller, &headers, params.since).await?;
    let keepalive = Duration::from_secs(app.config.stream.keepalive_seconds.max(1));
    let feed = Feed::new(app, caller.id(), since);
    let events = futures::stream::unfold(feed, |mut feed| async move {
        let item = feed.next().await?;
        Some((Ok(sse_event(item)), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive)))
}

fn sse_event(item: FeedItem) -> SseEvent {
    match item {
        FeedItem::Event(e) => SseEvent::default()
            .id(e.pts.to_string())
            .event(e.kind.name())
            .data(e.to_json().to_string()),
        FeedItem::Resync { since, reason } => SseEvent::default().event("resync").data(
            serde_json::json!({"type": "resync", "since": since, "reason": reason}).to_string(),
        ),
    }
}

/// The same events as WebSocket text frames (`Last-Event-ID` or `?since=` to resume).
#[utoipa::path(get, path = "/api/v1/ws", tag = "sync", params(StreamParams),
    responses((status = 101, description = "WebSocket of Event JSON text frames"),
              (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn websocket(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(params): Query<StreamParams>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let since = start_cursor(&app, &caller, &headers, params.since).await?;
    let ping_every = Duration::from_secs(app.config.stream.keepalive_seconds.max(1));
    let feed = Feed::new(app, caller.id(), since);
    Ok(upgrade
        .on_upgrade(move |socket| pump_websocket(socket, feed, ping_every))
        .into_response())
}

/// Sends feed items until the feed or the client ends; answers the client's close.
async fn pump_websocket(socket: WebSocket, mut feed: Feed, ping_every: Duration) {
    let (mut tx, mut rx) = socket.split();
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        tokio::select! {
            item = feed.next() => {
                let (frame, last) = match item {
                    Some(FeedItem::Event(e)) => (WsMessage::Text(e.to_json().to_string().into()), false),
                    Some(FeedItem::Resync { since, reason }) => (WsMessage::Text(
                        serde_json::json!({"type": "resync", "since": since, "reason": reason}).to_string().into()), true),
                    None => (WsMessage::Close(Some(CloseFrame { code: 1001, reason: "stream ended".into() })), true),
                };
                if tx.send(frame).await.is_err() || last {
                    break;
                }
            }
            incoming = rx.next() => match incoming {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if tx.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.close().await;
}
