//! The plugin registry: an org admin uploads a WebAssembly component under a name and version
//! (the raw body with `?name=&version=`, or a `multipart/form-data` form with fields `name`,
//! `version` and `file`); herald validates it against a world it supports, compiles it once
//! and keeps it content-addressed. Robots of kind `plugin` name one by id. Entries are
//! immutable: a new build is a new version, and a robot switches by `PATCH /robots/{id}`
//! without a restart. An entry no robot uses can be deleted.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
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
        .route("/plugins/{id}", get(get_plugin).delete(delete_plugin))
}

/// Name and version in the query: required with a raw body; a multipart form may carry them
/// as fields instead.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadParams {
    /// 1–64 characters: letters, digits, `.`, `_`, `-`.
    name: Option<String>,
    /// 1–64 characters: letters, digits, `.`, `_`, `-`, `+`.
    version: Option<String>,
}

/// The multipart form of an upload (docs only: parsed by `read_form`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    name: String,
    version: String,
    /// The component's bytes.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// What an upload carried, whichever way it came.
#[derive(Default)]
struct Upload {
    name: Option<String>,
    version: Option<String>,
    wasm: Bytes,
}

/// A registered plugin with its call counters (kept across restarts).
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
    /// The stored counters plus those not flushed yet.
    fn of(app: &AppState, p: PluginRecord) -> PluginView {
        let mut stats = p.stats;
        stats.add(&app.plugins.stats(p.id));
        PluginView {
            stats,
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

/// The upload's media type: the raw component, or a multipart form (with its boundary).
enum Body {
    Raw,
    Form(String),
}

fn body_kind(headers: &HeaderMap) -> Result<Body, ApiError> {
    let ctype = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = ctype.split(';').next().unwrap_or_default().trim();
    match media {
        "application/wasm" | "application/octet-stream" => Ok(Body::Raw),
        "multipart/form-data" => multer::parse_boundary(ctype).map(Body::Form).map_err(|e| {
            ApiError::bad_request(format!(
                "multipart/form-data without a usable boundary: {e}"
            ))
        }),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "upload the component as the raw body with Content-Type: application/wasm, or as \
             the field `file` of a multipart/form-data form, got {other:?}"
        ))),
    }
}

fn bad_form(e: multer::Error) -> ApiError {
    ApiError::bad_request(format!("malformed multipart/form-data: {e}"))
}

/// Reads the fields `name`, `version` and `file` of a form; any other field, or one given
/// twice, is refused so a typo does not silently upload something else.
async fn read_form(boundary: String, body: Bytes) -> Result<Upload, ApiError> {
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut upload = Upload::default();
    let mut file = None;
    while let Some(field) = form.next_field().await.map_err(bad_form)? {
        let name = field.name().unwrap_or_default().to_string();
        let twice = match name.as_str() {
            "name" => upload
                .name
                .replace(field.text().await.map_err(bad_form)?)
                .is_some(),
            "version" => upload
                .version
                .replace(field.text().await.map_err(bad_form)?)
                .is_some(),
            "file" => file
                .replace(field.bytes().await.map_err(bad_form)?)
                .is_some(),
            other => {
                return Err(ApiError::bad_request(format!(
                "unexpected form field {other:?}: the form has the fields name, version and file"
            )))
            }
        };
        if twice {
            return Err(ApiError::bad_request(format!(
                "the form field {name:?} is given twice"
            )));
        }
    }
    upload.wasm = file.ok_or_else(|| {
        ApiError::bad_request("the form has no field `file` with the component's bytes")
    })?;
    Ok(upload)
}

/// One of name/version from the query or the form (not both, unless equal).
fn pick(what: &str, query: Option<String>, form: Option<String>) -> Result<String, ApiError> {
    match (query, form) {
        (Some(q), Some(f)) if q != f => Err(ApiError::bad_request(format!(
            "{what} is given twice, as {q:?} in the query and {f:?} in the form"
        ))),
        (q, f) => f.or(q).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{what} is missing: give ?{what}= in the query or a form field {what}"
            ))
        }),
    }
}

/// Upload a plugin component under a name and version: the raw body (`application/wasm`,
/// name and version in the query) or a multipart form with fields `name`, `version`, `file`.
#[utoipa::path(post, path = "/api/v1/plugins", tag = "plugins", params(UploadParams),
    request_body(content(
        (Vec<u8> = "application/wasm"),
        (UploadForm = "multipart/form-data"),
    )),
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
    let kind = body_kind(&headers)?;
    let RawBody(bytes) = body.map_err(|e| match e {
        ApiError::PayloadTooLarge(_) => ApiError::PayloadTooLarge(format!(
            "the component exceeds plugins.max_upload_bytes ({} bytes)",
            app.config.plugins.max_upload_bytes
        )),
        other => other,
    })?;
    let form = match kind {
        Body::Raw => Upload {
            wasm: bytes,
            ..Upload::default()
        },
        Body::Form(boundary) => read_form(boundary, bytes).await?,
    };
    let name = pick("name", params.name, form.name)?;
    let version = pick("version", params.version, form.version)?;
    check_label("name", &name, &[])?;
    check_label("version", &version, &['+'])?;
    register(&app, caller.org(), &name, &version, form.wasm).await
}

/// Validates, compiles and stores an upload; keeps it compiled for its first call.
async fn register(
    app: &AppState,
    org: crate::ids::OrgId,
    name: &str,
    version: &str,
    wasm: Bytes,
) -> Result<(StatusCode, Json<PluginView>), ApiError> {
    if wasm.is_empty() {
        return Err(ApiError::bad_request(
            "the body must be the component's bytes",
        ));
    }
    let compiled = app.plugins.check(wasm.clone()).await?;
    let record = app
        .store
        .create_plugin(&NewPlugin {
            org_id: org,
            name,
            version,
            sha256: &compiled.sha256,
            world: compiled.world,
            wasm: &wasm,
        })
        .await?;
    app.plugins.remember(record.id, compiled);
    tracing::info!(plugin.id = %record.id, name = %record.name, version = %record.version, "plugin registered");
    Ok((StatusCode::CREATED, Json(PluginView::of(app, record))))
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
    let _steady = app.plugins.counts_steady().await;
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
    let _steady = app.plugins.counts_steady().await;
    let record = app.store.get_plugin(caller.org(), id).await?;
    Ok(Json(PluginView::of(&app, record)))
}

/// Delete a plugin: refused with 409 while a robot of the org uses it (switch those robots
/// to another plugin, or delete them, first).
#[utoipa::path(delete, path = "/api/v1/plugins/{id}", tag = "plugins", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delete_plugin(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<PluginId>,
) -> Result<StatusCode, ApiError> {
    app.store.delete_plugin(caller.org(), id).await?;
    app.plugins.forget(id);
    tracing::info!(plugin.id = %id, "plugin deleted");
    Ok(StatusCode::NO_CONTENT)
}
