//! The one place that turns failures into HTTP: every error leaves herald as
//! `{"errcode": N, "errmsg": "…"}` with a status chosen here and nowhere else. The extractor
//! wrappers make axum's own rejections (bad JSON, bad path, too large) use the same format.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Every way an API call can fail. The errcode of each variant is part of the public contract
/// (README, "Error codes"); never renumber one.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    /// A PagerDuty Events API v2 sender's bad event: answered in PagerDuty's own 400 shape
    /// (`status`, `message`, `errors`) besides herald's errcode and errmsg.
    #[error("{0}")]
    InvalidEvent(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the caller is not a member of this conversation")]
    NotMember,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{what}; retry in {retry_after_secs} s")]
    RateLimited { what: String, retry_after_secs: u64 },
    /// A plugin declined the request or misbehaved (see `plugin::PluginError`).
    #[error(transparent)]
    Plugin(crate::plugin::PluginError),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The error body every endpoint uses.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub errcode: i64,
    pub errmsg: String,
}

impl ApiError {
    /// The HTTP status and herald errcode of this error.
    pub fn code(&self) -> (StatusCode, i64) {
        use ApiError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, 40000),
            InvalidJson(_) => (StatusCode::BAD_REQUEST, 40001),
            InvalidEvent(_) => (StatusCode::BAD_REQUEST, 40002),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, 40100),
            Forbidden(_) => (StatusCode::FORBIDDEN, 40300),
            NotMember => (StatusCode::FORBIDDEN, 40301),
            NotFound(_) => (StatusCode::NOT_FOUND, 40400),
            NoRoute => (StatusCode::NOT_FOUND, 40401),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 40500),
            Conflict(_) => (StatusCode::CONFLICT, 40900),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 41300),
            UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 41500),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, 42900),
            Plugin(e) => plugin_code(e),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50000),
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }
}

/// A plugin's own rejection keeps the 4xx it chose; a plugin that misbehaves is the robot's
/// configuration at fault, not the sender's request, but the sender must still learn why:
/// 422 with an errcode per kind of failure.
fn plugin_code(e: &crate::plugin::PluginError) -> (StatusCode, i64) {
    use crate::plugin::PluginError::*;
    match e {
        Rejected { status, .. } => (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
            42200,
        ),
        Deadline(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42210),
        Memory(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42211),
        Trap(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42212),
        BadOutput(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42213),
        Invalid(_) => (StatusCode::BAD_REQUEST, 40010),
        Busy => (StatusCode::TOO_MANY_REQUESTS, 42901),
        Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50000),
    }
}

impl From<crate::plugin::PluginError> for ApiError {
    fn from(e: crate::plugin::PluginError) -> Self {
        match e {
            crate::plugin::PluginError::Internal(cause) => ApiError::Internal(cause),
            other => ApiError::Plugin(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, errcode) = self.code();
        let errmsg = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut response = match &self {
            ApiError::InvalidEvent(why) => {
                let body = serde_json::json!({
                    "status": "invalid event", "message": "Event object is invalid",
                    "errors": [why], "errcode": errcode, "errmsg": errmsg,
                });
                (status, axum::Json(body)).into_response()
            }
            _ => (status, axum::Json(ErrorBody { errcode, errmsg })).into_response(),
        };
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body may be left unread on the wire: say so, or a keep-alive
            // client reuses a connection the server is about to close.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = &self
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
        }
        response
    }
}

impl From<crate::ratelimit::Throttled> for ApiError {
    fn from(t: crate::ratelimit::Throttled) -> Self {
        ApiError::RateLimited {
            what: format!(
                "this group takes at most {} messages a minute",
                t.per_minute
            ),
            retry_after_secs: t.retry_after_ms.div_ceil(1000),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Conflict(msg) => ApiError::Conflict(msg),
            StoreError::Invalid(msg) => ApiError::BadRequest(msg),
            StoreError::Db(e) => ApiError::Internal(e.into()),
            StoreError::Other(e) => ApiError::Internal(e),
        }
    }
}

/// `axum::Json` whose rejections are herald errors.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "expected a body with Content-Type: application/json".into(),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::InvalidJson(e.body_text()),
        JsonRejection::JsonDataError(e) => ApiError::InvalidJson(e.body_text()),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(
                "request body exceeds the configured limit (http.max_body_bytes)".into(),
            )
        }
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// The raw request body (signatures cover bytes), with herald's error for an oversized one.
pub struct RawBody(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        bytes::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(
                    "request body exceeds the configured limit (http.max_body_bytes)".into(),
                ),
                _ => ApiError::BadRequest(format!(
                    "could not read the request body: {}",
                    e.body_text()
                )),
            })
    }
}

/// `axum::extract::Path` whose rejections are herald errors: an id that cannot exist is a 404.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::NotFound("id")),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// `axum::extract::Query` whose rejections are herald errors.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::BadRequest(
                format!("invalid query string: {}", e.body_text()),
            )),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}
