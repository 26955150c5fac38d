//! DINGs: any user sends one to users of their org; each recipient confirms it; the sender
//! (and the recipients, and admins) see who has and has not. Confirming a DING about an
//! incident acknowledges the incident. Also the org's notification provider (org admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::alerts::incident::{self, Actor};
use crate::alerts::policy::Channel;
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, Json, Path};
use crate::ids::{DingId, IncidentId, UserId};
use crate::model::{Sender, SenderKind};
use crate::store::{Action, Ding, IncidentRef, NewDing, Notifier, ProviderRequest, Resend};
use crate::{clock, AppState};

const MAX_RECIPIENTS: usize = 1000;
const MAX_TEXT: usize = 4000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dings", post(create))
        .route("/dings/{id}", get(read))
        .route("/dings/{id}/confirm", post(confirm))
        .route("/dings/{id}/resend", post(resend))
        .route(
            "/notification-provider",
            get(get_provider).put(set_provider),
        )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDing {
    user_ids: Vec<UserId>,
    text: String,
    /// ding_app (default), ding_sms or ding_call.
    channel: Option<Channel>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Created {
    id: DingId,
    recipients: Vec<UserId>,
}

/// Sends a DING to users of the caller's org.
#[utoipa::path(post, path = "/api/v1/dings", tag = "dings", request_body = CreateDing,
    responses((status = 201, body = Created), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(app): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateDing>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let text = body.text.trim();
    if text.is_empty() || text.len() > MAX_TEXT {
        return Err(ApiError::bad_request(format!(
            "text must be 1 to {MAX_TEXT} bytes"
        )));
    }
    let mut users = body.user_ids;
    users.sort_unstable();
    users.dedup();
    if users.is_empty() || users.len() > MAX_RECIPIENTS {
        return Err(ApiError::bad_request(format!(
            "user_ids must name 1 to {MAX_RECIPIENTS} users"
        )));
    }
    let channel = body.channel.unwrap_or(Channel::DingApp);
    if channel == Channel::Group {
        return Err(ApiError::bad_request(
            "channel must be ding_app, ding_sms or ding_call",
        ));
    }
    let ding = NewDing {
        org: caller.org(),
        sender: Sender {
            id: caller.id().to_string(),
            kind: SenderKind::User,
            name: caller.user.name.clone(),
        },
        text: text.to_string(),
        channel,
        incident: None,
        recipients: users.clone(),
        now_ms: clock::now_ms(),
    };
    // Unknown ids are refused before anything is written.
    for user in &users {
        let found = app.store.get_user(caller.org(), *user).await;
        if !matches!(found, Ok(ref u) if u.active) {
            return Err(ApiError::bad_request(format!(
                "unknown or inactive user id {user}"
            )));
        }
    }
    let (id, recipients) = crate::alerts::ding::send(&app, &ding).await?;
    Ok((StatusCode::CREATED, Json(Created { id, recipients })))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Recipient {
    user_id: UserId,
    confirmed: bool,
    confirmed_at: Option<String>,
    /// How often the DING reached them (re-sends go only to those who had not confirmed).
    sends: i64,
    /// SMS/voice requests to the notification provider for them, oldest first.
    provider: Vec<DeliveryView>,
}

/// One SMS or call request and how its delivery stands.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryView {
    /// Which send of the DING (1: the first).
    send: i64,
    channel: Channel,
    /// `pending`, `retrying`, `sent` or `failed` (given up after the last attempt).
    status: &'static str,
    attempts: i64,
    last_error: Option<String>,
    /// Pending or retrying: when the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_at: Option<String>,
}

impl From<&ProviderRequest> for DeliveryView {
    fn from(p: &ProviderRequest) -> Self {
        let status = p.status();
        DeliveryView {
            send: p.send,
            channel: p.channel,
            status,
            attempts: p.attempts,
            last_error: p.last_error.clone(),
            next_attempt_at: p.sent_at_ms.is_none().then(|| clock::rfc3339(p.run_at_ms)),
            sent_at: p.sent_at_ms.filter(|at| *at > 0).map(clock::rfc3339),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DingView {
    id: DingId,
    text: String,
    channel: Channel,
    sender: Sender,
    incident_id: Option<IncidentId>,
    created_at: String,
    /// How often it went out: 1, plus one per re-send.
    sends: i64,
    last_sent_at: String,
    recipients: Vec<Recipient>,
    confirmed: Vec<UserId>,
    unconfirmed: Vec<UserId>,
}

impl From<Ding> for DingView {
    fn from(d: Ding) -> Self {
        let (done, open): (Vec<_>, Vec<_>) = d
            .recipients
            .iter()
            .partition(|r| r.confirmed_at_ms.is_some());
        let recipients = d
            .recipients
            .iter()
            .map(|r| Recipient {
                user_id: r.user,
                confirmed: r.confirmed_at_ms.is_some(),
                confirmed_at: r.confirmed_at_ms.map(clock::rfc3339),
                sends: r.sends,
                provider: d
                    .deliveries
                    .iter()
                    .filter(|p| p.user == r.user)
                    .map(DeliveryView::from)
                    .collect(),
            })
            .collect();
        DingView {
            id: d.id,
            text: d.text,
            channel: d.channel,
            sender: d.sender,
            incident_id: d.incident_id,
            created_at: clock::rfc3339(d.created_at_ms),
            sends: d.sends,
            last_sent_at: clock::rfc3339(d.last_sent_at_ms),
            confirmed: done.iter().map(|r| r.user).collect(),
            unconfirmed: open.iter().map(|r| r.user).collect(),
            recipients,
        }
    }
}

/// Whether the caller sent the DING.
fn sent_by(caller: &Caller, ding: &Ding) -> bool {
    ding.sender.kind == SenderKind::User && ding.sender.id == caller.id().to_string()
}

/// Whether the caller may see the DING: its sender, a recipient, or an admin.
fn may_see(caller: &Caller, ding: &Ding) -> bool {
    sent_by(caller, ding)
        || caller.is_admin()
        || ding.recipients.iter().any(|r| r.user == caller.id())
}

/// A DING with who has and has not confirmed it (its sender, a recipient or an admin).
#[utoipa::path(get, path = "/api/v1/dings/{id}", tag = "dings", params(("id" = String, Path)),
    responses((status = 200, body = DingView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn read(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<DingId>,
) -> Result<Json<DingView>, ApiError> {
    let ding = app.store.get_ding(caller.org(), id).await?;
    if !may_see(&caller, &ding) {
        return Err(ApiError::NotFound("ding"));
    }
    Ok(Json(ding.into()))
}

/// The recipient confirms; a DING about an incident acknowledges it.
#[utoipa::path(post, path = "/api/v1/dings/{id}/confirm", tag = "dings", params(("id" = String, Path)),
    responses((status = 200, body = DingView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn confirm(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<DingId>,
) -> Result<Json<DingView>, ApiError> {
    let ding = app
        .store
        .confirm_ding(caller.org(), id, caller.id())
        .await?;
    if let Some(incident) = ding.incident_id {
        let actor = Actor {
            who: format!("user:{}", caller.id()),
            channel: "ding",
        };
        incident::transition(
            &app,
            caller.org(),
            IncidentRef::Id(incident),
            Action::Ack,
            &actor,
        )
        .await?;
    }
    Ok(Json(ding.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResendBody {
    /// ding_app, ding_sms or ding_call; the DING's own channel when absent.
    channel: Option<Channel>,
}

/// Sends the DING again, same id, to its recipients who have not confirmed it (its sender or
/// an admin): a new `ding` event each, and a new provider request for SMS or a call.
#[utoipa::path(post, path = "/api/v1/dings/{id}/resend", tag = "dings", params(("id" = String, Path)),
    request_body = ResendBody,
    responses((status = 200, body = DingView), (status = 400, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn resend(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<DingId>,
    Json(body): Json<ResendBody>,
) -> Result<Json<DingView>, ApiError> {
    let ding = app.store.get_ding(caller.org(), id).await?;
    if !may_see(&caller, &ding) {
        return Err(ApiError::NotFound("ding"));
    }
    if !sent_by(&caller, &ding) && !caller.is_admin() {
        return Err(ApiError::Forbidden(
            "only the DING's sender or an admin may re-send it".into(),
        ));
    }
    let channel = body.channel.unwrap_or(ding.channel);
    if channel == Channel::Group {
        return Err(ApiError::bad_request(
            "channel must be ding_app, ding_sms or ding_call",
        ));
    }
    let open: Vec<UserId> = ding
        .recipients
        .iter()
        .filter(|r| r.confirmed_at_ms.is_none())
        .map(|r| r.user)
        .collect();
    let again = Resend {
        ding: id,
        users: open,
        channel,
        now_ms: clock::now_ms(),
    };
    if app.store.resend_ding(&again).await?.is_empty() {
        return Err(ApiError::Conflict(
            "every recipient has confirmed the DING: nothing to re-send".into(),
        ));
    }
    crate::alerts::ding::wake_lanes(&app);
    app.alerts.notify.notify_one();
    Ok(Json(app.store.get_ding(caller.org(), id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetProvider {
    url: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ProviderView {
    url: String,
    /// Shown when set: keys the Standard Webhooks signature of every request.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// Sets the org's SMS/voice gateway; a new signing secret each time.
#[utoipa::path(put, path = "/api/v1/notification-provider", tag = "dings", request_body = SetProvider,
    responses((status = 200, body = ProviderView), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn set_provider(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<SetProvider>,
) -> Result<Json<ProviderView>, ApiError> {
    let url = reqwest::Url::parse(body.url.trim())
        .map_err(|e| ApiError::bad_request(format!("invalid url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::bad_request("url must be http(s)://host/…"));
    }
    let notifier = Notifier {
        url: url.to_string(),
        secret: crate::outgoing::sign::generate_secret(),
    };
    app.store.set_notifier(caller.org(), &notifier).await?;
    Ok(Json(ProviderView {
        url: notifier.url,
        secret: Some(notifier.secret),
    }))
}

/// The org's SMS/voice gateway (without its secret).
#[utoipa::path(get, path = "/api/v1/notification-provider", tag = "dings",
    responses((status = 200, body = ProviderView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_provider(
    State(app): State<AppState>,
    Admin(caller): Admin,
) -> Result<Json<ProviderView>, ApiError> {
    let notifier = app
        .store
        .get_notifier(caller.org())
        .await?
        .ok_or(ApiError::NotFound("notification provider"))?;
    Ok(Json(ProviderView {
        url: notifier.url,
        secret: None,
    }))
}
