//! On-call rotations (org admin to change, any user of the org to ask who is on call):
//! `GET /rotations/{id}/oncall?at=<RFC 3339>` answers for any instant, now by default.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{paginate, PageParams};
use crate::alerts::rotation::{Rotation, RotationSpec};
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, Json, Path, Query};
use crate::ids::{OrgId, RotationId, UserId};
use crate::{clock, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rotations", get(list).post(create))
        .route("/rotations/{id}", get(read).put(replace).delete(delete))
        .route("/rotations/{id}/oncall", get(oncall))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotationBody {
    name: String,
    members: Vec<UserId>,
    time_zone: String,
    handoff: crate::alerts::rotation::Handoff,
    handoff_time: String,
    start: String,
    #[serde(default)]
    overrides: Vec<crate::alerts::rotation::Override>,
}

impl RotationBody {
    fn split(self) -> (String, RotationSpec) {
        let spec = RotationSpec {
            members: self.members,
            time_zone: self.time_zone,
            handoff: self.handoff,
            handoff_time: self.handoff_time,
            start: self.start,
            overrides: self.overrides,
        };
        (self.name.trim().to_string(), spec)
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RotationView {
    id: RotationId,
    name: String,
    #[serde(flatten)]
    spec: RotationSpec,
    created_at: String,
}

impl From<Rotation> for RotationView {
    fn from(r: Rotation) -> Self {
        RotationView {
            id: r.id,
            name: r.name,
            spec: r.spec,
            created_at: clock::rfc3339(r.created_at_ms),
        }
    }
}

/// Checks the name, the spec, and that every member and override user is in the org.
async fn check(
    app: &AppState,
    org: OrgId,
    name: &str,
    spec: &RotationSpec,
) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request("name must be 1 to 200 characters"));
    }
    spec.validate().map_err(ApiError::BadRequest)?;
    let users = spec
        .members
        .iter()
        .chain(spec.overrides.iter().map(|o| &o.user_id));
    for user in users {
        match app.store.get_user(org, *user).await {
            Ok(_) => {}
            Err(crate::store::StoreError::NotFound(_)) => {
                return Err(ApiError::bad_request(format!("unknown user id {user}")))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates a rotation; every member and override user must be in the org.
#[utoipa::path(post, path = "/api/v1/rotations", tag = "rotations", request_body = RotationBody,
    responses((status = 201, body = RotationView), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<RotationBody>,
) -> Result<(StatusCode, Json<RotationView>), ApiError> {
    let (name, spec) = body.split();
    check(&app, caller.org(), &name, &spec).await?;
    let rotation = app
        .store
        .create_rotation(caller.org(), &name, &spec)
        .await?;
    Ok((StatusCode::CREATED, Json(rotation.into())))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RotationList {
    rotations: Vec<RotationView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The org's rotations, oldest first.
#[utoipa::path(get, path = "/api/v1/rotations", tag = "rotations", params(PageParams),
    responses((status = 200, body = RotationList), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Query(page): Query<PageParams>,
) -> Result<Json<RotationList>, ApiError> {
    let limit = page.limit()?;
    let rows = app
        .store
        .list_rotations(caller.org(), page.after::<RotationId>()?, limit + 1)
        .await?;
    let (rows, next_cursor) = paginate(rows, limit, |r| r.id.to_string());
    Ok(Json(RotationList {
        rotations: rows.into_iter().map(RotationView::from).collect(),
        next_cursor,
    }))
}

/// One rotation of the org.
#[utoipa::path(get, path = "/api/v1/rotations/{id}", tag = "rotations", params(("id" = String, Path)),
    responses((status = 200, body = RotationView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn read(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<RotationId>,
) -> Result<Json<RotationView>, ApiError> {
    Ok(Json(app.store.get_rotation(caller.org(), id).await?.into()))
}

/// Replaces the whole rotation (members, hand-off, overrides).
#[utoipa::path(put, path = "/api/v1/rotations/{id}", tag = "rotations", params(("id" = String, Path)),
    request_body = RotationBody,
    responses((status = 200, body = RotationView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn replace(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<RotationId>,
    Json(body): Json<RotationBody>,
) -> Result<Json<RotationView>, ApiError> {
    let mut rotation = app.store.get_rotation(caller.org(), id).await?;
    let (name, spec) = body.split();
    check(&app, caller.org(), &name, &spec).await?;
    rotation.name = name;
    rotation.spec = spec;
    app.store.save_rotation(&rotation).await?;
    Ok(Json(rotation.into()))
}

/// Deletes a rotation; steps naming it notify nobody through it from then on.
#[utoipa::path(delete, path = "/api/v1/rotations/{id}", tag = "rotations", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<RotationId>,
) -> Result<StatusCode, ApiError> {
    app.store.delete_rotation(caller.org(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnCallParams {
    /// RFC 3339; now when absent.
    at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct OnCallView {
    rotation_id: RotationId,
    at: String,
    user_id: UserId,
    /// `rotation` or `override`.
    source: &'static str,
}

/// Who is on call in the rotation at `at` (now by default).
#[utoipa::path(get, path = "/api/v1/rotations/{id}/oncall", tag = "rotations",
    params(("id" = String, Path), OnCallParams),
    responses((status = 200, body = OnCallView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn oncall(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<RotationId>,
    Query(params): Query<OnCallParams>,
) -> Result<Json<OnCallView>, ApiError> {
    let at_ms = match params.at.as_deref() {
        None => clock::now_ms(),
        Some(s) => s
            .parse::<jiff::Timestamp>()
            .map_err(|_| ApiError::bad_request(format!("at must be an RFC 3339 time, got {s:?}")))?
            .as_millisecond(),
    };
    let rotation = app.store.get_rotation(caller.org(), id).await?;
    let on = rotation.spec.oncall(at_ms).map_err(ApiError::BadRequest)?;
    Ok(Json(OnCallView {
        rotation_id: id,
        at: clock::rfc3339(at_ms),
        user_id: on.user,
        source: if on.by_override {
            "override"
        } else {
            "rotation"
        },
    }))
}
