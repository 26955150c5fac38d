//! The plugin registry: an org admin uploads a WebAssembly component under a name and version;
//! herald validates it against a world it supports, compiles it once and keeps it
//! content-addressed. Robots of kind `plugin` name one by id. Entries are immutable: a new
//! build is a new version, and a robot switches by `PATCH /robots/{id}` without a restart.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{paginate, PageParams};
use crate::auth::Admin;
use crate::error::{ApiError, Json, Path, Query, RawBody};
use crate::ids::PluginId;
use crate::plugin::PluginStats;
use crate::store::{NewPlugin, PluginRecord};
use crate::AppState;

pub fn router(app: &AppState) -> Router<AppState> {
    let upload_limit = DefaultBodyLimit::max(app.config.plugins.max_upload_bytes);
    Router::new()
        .route(
            "/plugins",
            post(upload_plugin).layer(upload_limit).get(list_plugins),
        )
        .route("/plugins/{id}", get(get_plugin))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadParams {
    /// 1–64 characters: letters, digits, `.`, `_`, `-`.
    name: String,
    /// 1–64 characters: letters, digits, `.`, `_`, `-`, `+`.
    version: String,
}

/// A registered plugin with its counters since this process started.
#[derive(Serialize, ToSchema)]
pub(crate) struct PluginView {
    id: PluginId,
    name: String,
    version: String,
    sha256: String,
    /// The WIT world it implements, e.g. `herald:adapter/adapter@0.1.0`.
    world: String,
    size: i64,
    created_at: String,
    stats: PluginStats,
}

impl PluginView {
    fn of(app: &AppState, p: PluginRecord) -> PluginView {
        PluginView {
            stats: app.plugins.stats(p.id),
            id: p.id,
            name: p.name,
            version: p.version,
            sha256: p.sha256,
            world: p.world,
            size: p.size,
            created_at: crate::clock::rfc3339(p.created_at_ms),
        }
    }
}

fn check_label(what: &str, value: &str, extra: &[char]) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&value.len())
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || extra.contains(&c)
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be 1 to 64 letters, digits, '.', '_' or '-'{}, got {value:?}",
            if extra.is_empty() { "" } else { " or '+'" }
        )))
    }
}

fn check_media_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ctype = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = ctype.split(';').next().unwrap_or_default().trim();
    match media {
        "application/wasm" | "application/octet-stream" => Ok(()),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "upload the component as the raw body with Content-Type: application/wasm, got {other:?}"
        ))),
    }
}

/// Upload a plugin component (the raw body) under a name and version.
#[utoipa::path(post, path = "/api/v1/plugins", tag = "plugins", params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = PluginView), (status = 400, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody),
              (status = 415, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn upload_plugin(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<(StatusCode, Json<PluginView>), ApiError> {
    check_label("name", &params.name, &[])?;
    check_label("version", &params.version, &['+'])?;
    check_media_type(&headers)?;
    let RawBody(wasm) = body.map_err(|e| match e {
        ApiError::PayloadTooLarge(_) => ApiError::PayloadTooLarge(format!(
            "the component exceeds plugins.max_upload_bytes ({} bytes)",
            app.config.plugins.max_upload_bytes
        )),
        other => other,
    })?;
    if wasm.is_empty() {
        return Err(ApiError::bad_request(
            "the body must be the component's bytes",
        ));
    }
    let compiled = app.plugins.check(wasm.clone()).await?;
    let record = app
        .store
        .create_plugin(&NewPlugin {
            org_id: caller.org(),
            name: &params.name,
            version: &params.version,
            sha256: &compiled.sha256,
            world: compiled.world,
            wasm: &wasm,
        })
        .await?;
    app.plugins.remember(record.id, compiled);
    tracing::info!(plugin.id = %record.id, name = %record.name, version = %record.version, "plugin registered");
    Ok((StatusCode::CREATED, Json(PluginView::of(&app, record))))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PluginList {
    plugins: Vec<PluginView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The org's plugins, oldest first.
#[utoipa::path(get, path = "/api/v1/plugins", tag = "plugins", params(PageParams),
    responses((status = 200, body = PluginList)), security(("bearer" = [])))]
pub(crate) async fn list_plugins(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Query(page): Query<PageParams>,
) -> Result<Json<PluginList>, ApiError> {
    let limit = page.limit()?;
    let rows = app
        .store
        .list_plugins(caller.org(), page.after::<PluginId>()?, limit + 1)
        .await?;
    let (rows, next_cursor) = paginate(rows, limit, |p| p.id.to_string());
    let plugins = rows.into_iter().map(|p| PluginView::of(&app, p)).collect();
    Ok(Json(PluginList {
        plugins,
        next_cursor,
    }))
}

/// One plugin of the org.
#[utoipa::path(get, path = "/api/v1/plugins/{id}", tag = "plugins", params(("id" = String, Path)),
    responses((status = 200, body = PluginView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_plugin(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<PluginId>,
) -> Result<Json<PluginView>, ApiError> {
    let record = app.store.get_plugin(caller.org(), id).await?;
    Ok(Json(PluginView::of(&app, record)))
}
