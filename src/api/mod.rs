//! Ingress: the HTTP API. Each area exports `router()`; handlers are thin (authorize through
//! an extractor, call one stage function, answer). Errors go through `error::ApiError`.

mod bot_target;
mod bots;
mod conversations;
mod dings;
mod docs;
mod escalation;
mod incidents;
mod live;
mod messages;
mod plugins;
mod robots;
mod rotations;
mod users;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::AppState;

/// The whole application router.
pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .merge(users::router())
        .merge(conversations::router())
        .merge(messages::router())
        .merge(bots::router())
        .merge(live::router())
        .merge(robots::router())
        .merge(incidents::router())
        .merge(escalation::router())
        .merge(dings::router())
        .merge(rotations::router())
        .merge(plugins::router(&app))
        .merge(docs::router());
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", api)
        .merge(crate::ingress::router())
        .merge(incidents::card_router())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(app.config.http.max_body_bytes))
        .with_state(app)
}

/// 200 once the server is ready.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `?limit=&cursor=` of every list endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1–1000 (default 100).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The page size to ask the store for: one more than shown, to know if there is more.
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=1000).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::bad_request(format!(
                "limit must be between 1 and 1000, got {n}"
            ))),
        }
    }

    /// The cursor as an id of type `T`.
    pub fn after<T: std::str::FromStr>(&self) -> Result<Option<T>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid cursor {c:?}")))
            })
            .transpose()
    }
}

/// Splits a fetched `limit + 1` rows into a page and its `next_cursor`.
pub fn paginate<T>(
    mut items: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = if more {
        items.last().map(cursor_of)
    } else {
        None
    };
    (items, next)
}
