//! DINGs: any user sends one to users of their org; each recipient confirms it; the sender
//! (and the recipients, and admins) see who has and has not. Confirming a DING about an
//! incident acknowledges the incident. Also the org's notification provider (org admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

use crate::alerts::incident::{self, Actor};
use crate::alerts::policy::Channel;
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, Json, Path};
use crate::ids::{DingId, IncidentId, UserId};
use crate::model::{Sender, SenderKind};
use crate::store::{Action, Ding, IncidentRef, NewDing, Notifier};
use crate::{clock, AppState};

const MAX_RECIPIENTS: usize = 1000;
const MAX_TEXT: usize = 4000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dings", post(create))
        .route("/dings/{id}", get(read))
        .route("/dings/{id}/confirm", post(confirm))
        .route(
            "/notification-provider",
            get(get_provider).put(set_provider),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDing {
    user_ids: Vec<UserId>,
    text: String,
    /// ding_app (default), ding_sms or ding_call.
    channel: Option<Channel>,
}

#[derive(Serialize)]
pub(crate) struct Created {
    id: DingId,
    recipients: Vec<UserId>,
}

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

#[derive(Serialize)]
pub(crate) struct Recipient {
    user_id: UserId,
    confirmed: bool,
    confirmed_at: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct DingView {
    id: DingId,
    text: String,
    channel: Channel,
    sender: Sender,
    incident_id: Option<IncidentId>,
    created_at: String,
    recipients: Vec<Recipient>,
    confirmed: Vec<UserId>,
    unconfirmed: Vec<UserId>,
}

impl From<Ding> for DingView {
    fn from(d: Ding) -> Self {
        let (done, open): (Vec<_>, Vec<_>) = d.recipients.iter().partition(|(_, at)| at.is_some());
        DingView {
            id: d.id,
            text: d.text,
            channel: d.channel,
            sender: d.sender,
            incident_id: d.incident_id,
            created_at: clock::rfc3339(d.created_at_ms),
            confirmed: done.iter().map(|(u, _)| *u).collect(),
            unconfirmed: open.iter().map(|(u, _)| *u).collect(),
            recipients: d
                .recipients
                .iter()
                .map(|(u, at)| Recipient {
                    user_id: *u,
                    confirmed: at.is_some(),
                    confirmed_at: at.map(clock::rfc3339),
                })
                .collect(),
        }
    }
}

/// Whether the caller may see the DING: its sender, a recipient, or an admin.
fn may_see(caller: &Caller, ding: &Ding) -> bool {
    let sent = ding.sender.kind == SenderKind::User && ding.sender.id == caller.id().to_string();
    sent || caller.is_admin() || ding.recipients.iter().any(|(u, _)| *u == caller.id())
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetProvider {
    url: String,
}

#[derive(Serialize)]
pub(crate) struct ProviderView {
    url: String,
    /// Shown when set: keys the Standard Webhooks signature of every request.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// Sets the org's SMS/voice gateway; a new signing secret each time.
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
