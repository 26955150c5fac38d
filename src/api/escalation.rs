//! Escalation policies (org admin): create, list, read, change and delete. A robot names its
//! policy with `PATCH /robots/{id} {"escalation_policy_id"}`; otherwise label matchers pick.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{paginate, PageParams};
use crate::alerts::policy::{Policy, PolicySpec, Step};
use crate::auth::Admin;
use crate::error::{ApiError, Json, Path, Query};
use crate::ids::{OrgId, PolicyId};
use crate::{clock, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/escalation-policies", post(create).get(list))
        .route(
            "/escalation-policies/{id}",
            get(read).patch(update).delete(delete),
        )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatePolicy {
    name: String,
    steps: Vec<Step>,
    /// How many more times the chain runs after its last step (0: once).
    #[serde(default)]
    repeat: u32,
    /// Label matchers: `{"team": "payments"}`.
    #[serde(default, rename = "match")]
    matchers: BTreeMap<String, String>,
    ack_timeout_seconds: Option<u64>,
    flap_window_seconds: Option<u64>,
}

impl CreatePolicy {
    fn spec(self) -> (String, PolicySpec) {
        let spec = PolicySpec {
            steps: self.steps,
            repeat: self.repeat,
            matchers: self.matchers,
            ack_timeout_seconds: self.ack_timeout_seconds,
            flap_window_seconds: self
                .flap_window_seconds
                .unwrap_or(crate::alerts::policy::DEFAULT_FLAP_WINDOW_SECONDS),
        };
        (self.name.trim().to_string(), spec)
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PolicyView {
    id: PolicyId,
    name: String,
    #[serde(flatten)]
    spec: PolicySpec,
    created_at: String,
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> Self {
        PolicyView {
            id: p.id,
            name: p.name,
            spec: p.spec,
            created_at: clock::rfc3339(p.created_at_ms),
        }
    }
}

/// Checks the name, the limits, and that every named user is in the org.
async fn check(app: &AppState, org: OrgId, name: &str, spec: &PolicySpec) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request("name must be 1 to 200 characters"));
    }
    spec.validate().map_err(ApiError::BadRequest)?;
    for user in spec.named_users() {
        match app.store.get_user(org, user).await {
            Ok(_) => {}
            Err(crate::store::StoreError::NotFound(_)) => {
                return Err(ApiError::bad_request(format!("unknown user id {user}")))
            }
            Err(e) => return Err(e.into()),
        }
    }
    for step in &spec.steps {
        for rotation in &step.targets.rotations {
            match app.store.get_rotation(org, *rotation).await {
                Ok(_) => {}
                Err(crate::store::StoreError::NotFound(_)) => {
                    return Err(ApiError::bad_request(format!(
                        "unknown rotation id {rotation}"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Creates a policy; every named user and rotation must be in the org.
#[utoipa::path(post, path = "/api/v1/escalation-policies", tag = "escalation", request_body = CreatePolicy,
    responses((status = 201, body = PolicyView), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<CreatePolicy>,
) -> Result<(StatusCode, Json<PolicyView>), ApiError> {
    let (name, spec) = body.spec();
    check(&app, caller.org(), &name, &spec).await?;
    let policy = app.store.create_policy(caller.org(), &name, &spec).await?;
    Ok((StatusCode::CREATED, Json(policy.into())))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PolicyList {
    escalation_policies: Vec<PolicyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The org's policies, oldest first.
#[utoipa::path(get, path = "/api/v1/escalation-policies", tag = "escalation", params(PageParams),
    responses((status = 200, body = PolicyList), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Query(page): Query<PageParams>,
) -> Result<Json<PolicyList>, ApiError> {
    let limit = page.limit()?;
    let rows = app
        .store
        .list_policies(caller.org(), page.after::<PolicyId>()?, limit + 1)
        .await?;
    let (rows, next_cursor) = paginate(rows, limit, |p| p.id.to_string());
    Ok(Json(PolicyList {
        escalation_policies: rows.into_iter().map(PolicyView::from).collect(),
        next_cursor,
    }))
}

/// One policy of the org.
#[utoipa::path(get, path = "/api/v1/escalation-policies/{id}", tag = "escalation", params(("id" = String, Path)),
    responses((status = 200, body = PolicyView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn read(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<PolicyId>,
) -> Result<Json<PolicyView>, ApiError> {
    Ok(Json(app.store.get_policy(caller.org(), id).await?.into()))
}

/// Changes to a policy; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchPolicy {
    name: Option<String>,
    steps: Option<Vec<Step>>,
    repeat: Option<u32>,
    #[serde(rename = "match")]
    matchers: Option<BTreeMap<String, String>>,
    ack_timeout_seconds: Option<u64>,
    flap_window_seconds: Option<u64>,
}

/// Changes a policy; incidents already escalating use the new steps from their next step on.
#[utoipa::path(patch, path = "/api/v1/escalation-policies/{id}", tag = "escalation", params(("id" = String, Path)),
    request_body = PatchPolicy,
    responses((status = 200, body = PolicyView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<PolicyId>,
    Json(patch): Json<PatchPolicy>,
) -> Result<Json<PolicyView>, ApiError> {
    let mut policy = app.store.get_policy(caller.org(), id).await?;
    if let Some(name) = patch.name {
        policy.name = name.trim().to_string();
    }
    let spec = &mut policy.spec;
    if let Some(steps) = patch.steps {
        spec.steps = steps;
    }
    if let Some(repeat) = patch.repeat {
        spec.repeat = repeat;
    }
    if let Some(m) = patch.matchers {
        spec.matchers = m;
    }
    if let Some(t) = patch.ack_timeout_seconds {
        spec.ack_timeout_seconds = Some(t);
    }
    if let Some(f) = patch.flap_window_seconds {
        spec.flap_window_seconds = f;
    }
    check(&app, caller.org(), &policy.name, &policy.spec).await?;
    app.store.save_policy(&policy).await?;
    Ok(Json(policy.into()))
}

/// Deletes a policy; incidents that used it stop escalating.
#[utoipa::path(delete, path = "/api/v1/escalation-policies/{id}", tag = "escalation", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<PolicyId>,
) -> Result<StatusCode, ApiError> {
    app.store.delete_policy(caller.org(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}
