//! Incidents: list and read them with their timelines, acknowledge, resolve or silence them
//! (any user of the org), and the signed card-button URLs (`/alerts/incidents/{id}/{action}`)
//! that act without a login.

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{paginate, PageParams};
use crate::alerts::card;
use crate::alerts::incident::{self, Actor, Incident, State as IncidentState, TimelineEntry};
use crate::auth::Caller;
use crate::error::{ApiError, Json, Path, Query};
use crate::ids::{ConversationId, IncidentId, PolicyId, RobotId};
use crate::store::{Action, IncidentFilter, IncidentRef};
use crate::{clock, AppState};

/// The longest silence: 30 days.
const MAX_SILENCE_SECONDS: u64 = 30 * 24 * 3600;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/incidents", get(list_incidents))
        .route("/incidents/{id}", get(get_incident))
        .route("/incidents/{id}/ack", post(ack))
        .route("/incidents/{id}/resolve", post(resolve))
        .route("/incidents/{id}/silence", post(silence))
}

/// Routes outside `/api/v1`: the card buttons.
pub fn card_router() -> Router<AppState> {
    Router::new().route(
        "/alerts/incidents/{id}/{action}",
        get(card_action).post(card_action),
    )
}

/// An incident as the API shows it.
#[derive(Serialize, ToSchema)]
pub(crate) struct IncidentView {
    id: IncidentId,
    state: IncidentState,
    key: String,
    title: String,
    severity: Option<String>,
    labels: Vec<String>,
    robot_id: RobotId,
    conversation_id: ConversationId,
    policy_id: Option<PolicyId>,
    /// The chain's next step (0-based) and pass.
    step: u32,
    round: u32,
    fire_count: i64,
    silenced_until: Option<String>,
    created_at: String,
    updated_at: String,
    resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<Vec<TimelineEntry>>,
}

impl From<Incident> for IncidentView {
    fn from(i: Incident) -> Self {
        IncidentView {
            id: i.id,
            state: i.state,
            key: i.key,
            title: i.title,
            severity: i.severity,
            labels: i.labels,
            robot_id: i.robot_id,
            conversation_id: i.conversation_id,
            policy_id: i.policy_id,
            step: i.step,
            round: i.round,
            fire_count: i.fire_count,
            silenced_until: i.silenced_until_ms.map(clock::rfc3339),
            created_at: clock::rfc3339(i.created_at_ms),
            updated_at: clock::rfc3339(i.updated_at_ms),
            resolved_at: i.resolved_at_ms.map(clock::rfc3339),
            timeline: None,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// triggered, acknowledged, resolved or silenced.
    state: Option<String>,
    robot_id: Option<RobotId>,
    /// `key=value`, one of the incident's labels.
    label: Option<String>,
    /// Items per page, 1–1000 (default 100).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct IncidentList {
    incidents: Vec<IncidentView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The org's incidents, newest first.
#[utoipa::path(get, path = "/api/v1/incidents", tag = "incidents", params(ListParams),
    responses((status = 200, body = IncidentList), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_incidents(
    State(app): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<IncidentList>, ApiError> {
    let state = match params.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(IncidentState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be triggered, acknowledged, resolved or silenced, got {s:?}"
            ))
        })?),
    };
    if params.label.as_deref().is_some_and(|l| !l.contains('=')) {
        return Err(ApiError::bad_request("label must be key=value"));
    }
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let limit = page.limit()?;
    let filter = IncidentFilter {
        state,
        robot: params.robot_id,
        label: params.label,
    };
    let rows = app
        .store
        .list_incidents(
            caller.org(),
            &filter,
            page.after::<IncidentId>()?,
            limit + 1,
        )
        .await?;
    let (rows, next_cursor) = paginate(rows, limit, |i| i.id.to_string());
    Ok(Json(IncidentList {
        incidents: rows.into_iter().map(IncidentView::from).collect(),
        next_cursor,
    }))
}

/// One incident with its timeline.
#[utoipa::path(get, path = "/api/v1/incidents/{id}", tag = "incidents", params(("id" = String, Path)),
    responses((status = 200, body = IncidentView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_incident(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<IncidentId>,
) -> Result<Json<IncidentView>, ApiError> {
    let incident = app.store.get_incident(caller.org(), id).await?;
    let timeline = app.store.timeline(id).await?;
    let mut view = IncidentView::from(incident);
    view.timeline = Some(timeline);
    Ok(Json(view))
}

fn api_actor(caller: &Caller) -> Actor {
    Actor {
        who: format!("user:{}", caller.id()),
        channel: "api",
    }
}

async fn act(
    app: &AppState,
    caller: &Caller,
    id: IncidentId,
    action: Action,
) -> Result<Json<IncidentView>, ApiError> {
    let incident = incident::transition(
        app,
        caller.org(),
        IncidentRef::Id(id),
        action,
        &api_actor(caller),
    )
    .await?
    .ok_or(ApiError::NotFound("incident"))?;
    Ok(Json(incident.into()))
}

/// Acknowledge: stops the escalation (until the policy's acknowledgement timeout).
#[utoipa::path(post, path = "/api/v1/incidents/{id}/ack", tag = "incidents", params(("id" = String, Path)),
    responses((status = 200, body = IncidentView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn ack(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<IncidentId>,
) -> Result<Json<IncidentView>, ApiError> {
    act(&app, &caller, id, Action::Ack).await
}

/// Resolve: closes the incident and ends its escalation.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/resolve", tag = "incidents", params(("id" = String, Path)),
    responses((status = 200, body = IncidentView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn resolve(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<IncidentId>,
) -> Result<Json<IncidentView>, ApiError> {
    act(&app, &caller, id, Action::Resolve).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SilenceBody {
    /// 1 to 2,592,000 (30 days).
    seconds: u64,
}

/// Silence: no escalation until the time; then it resumes where it stood.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/silence", tag = "incidents", params(("id" = String, Path)),
    request_body = SilenceBody,
    responses((status = 200, body = IncidentView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn silence(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<IncidentId>,
    Json(body): Json<SilenceBody>,
) -> Result<Json<IncidentView>, ApiError> {
    if body.seconds == 0 || body.seconds > MAX_SILENCE_SECONDS {
        return Err(ApiError::bad_request(format!(
            "seconds must be between 1 and {MAX_SILENCE_SECONDS}"
        )));
    }
    let until_ms = clock::now_ms() + body.seconds as i64 * 1000;
    act(&app, &caller, id, Action::Silence { until_ms }).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CardParams {
    /// The HMAC of the incident and the action that the card's button URL carries.
    sig: Option<String>,
}

/// A card button: the signature names the incident and the action. GET and POST both act
/// (a chat client opens a button's URL with GET).
#[utoipa::path(method(get, post), path = "/alerts/incidents/{id}/{action}", tag = "incidents",
    params(("id" = String, Path), ("action" = String, Path, description = "ack or resolve"), CardParams),
    responses((status = 200, body = IncidentView), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn card_action(
    State(app): State<AppState>,
    Path((id, action)): Path<(IncidentId, String)>,
    Query(params): Query<CardParams>,
) -> Result<Json<IncidentView>, ApiError> {
    if !card::ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::NotFound("card action"));
    }
    let sig = params.sig.unwrap_or_default();
    if !card::verify(&app, id, &action, &sig) {
        return Err(ApiError::Forbidden("invalid card-button signature".into()));
    }
    let incident = app.store.get_incident_any(id).await?;
    let action = if action == "ack" {
        Action::Ack
    } else {
        Action::Resolve
    };
    let actor = Actor {
        who: "card".into(),
        channel: "card",
    };
    let incident = incident::transition(&app, incident.org_id, IncidentRef::Id(id), action, &actor)
        .await?
        .ok_or(ApiError::NotFound("incident"))?;
    Ok(Json(incident.into()))
}
