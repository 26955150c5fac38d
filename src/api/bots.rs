//! Outgoing bots: registration by org admins, the delivery log and redelivery, and the
//! sessionWebhook a bot replies through. Handlers validate and call one store or `outgoing`
//! function each; delivery itself happens in `outgoing::worker`. A bot either calls a URL or
//! runs a `herald:bot` plugin (`bot_target` checks which).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use std::collections::BTreeMap;

use super::bot_target;
use super::{paginate, PageParams};
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, Json, Path, Query};
use crate::ids::{BotId, ConversationId, DeliveryId, MessageId, PluginId};
use crate::model::{Conversation, ConversationKind};
use crate::outgoing::triggers::{BotEvent, Trigger};
use crate::outgoing::{reply, sign, worker};
use crate::store::{Bot, BotPatch, Delivery, DeliveryState, NewBot, NewConversation};
use crate::{clock, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/bots", post(create_bot).get(list_bots))
        .route(
            "/bots/{id}",
            get(get_bot).patch(update_bot).delete(delete_bot),
        )
        .route("/bots/{id}/rotate-secret", post(rotate_secret))
        .route("/bots/{id}/chats", post(open_chat))
        .route("/bots/{id}/deliveries", get(list_deliveries))
        .route(
            "/bots/{id}/deliveries/{delivery_id}/redeliver",
            post(redeliver_one),
        )
        .route("/bots/{id}/redeliver", post(redeliver_failed))
        .route("/bot-sessions/{token}", post(session_reply))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBot {
    /// Shown as the sender of its replies; members @-mention it by `chatbot_user_id`.
    name: String,
    /// Where the events are POSTed. A bot has this or `plugin_id`.
    #[serde(default)]
    callback_url: Option<String>,
    /// A `herald:bot` plugin (world 0.1.0 or 0.2.0) of the org (`GET /api/v1/plugins`) that answers the events
    /// inside herald, instead of a URL.
    #[serde(default)]
    plugin_id: Option<String>,
    /// Settings and secrets a plugin bot reads with its `config` import.
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    conversations: Vec<ConversationId>,
    triggers: Vec<Trigger>,
    #[serde(default)]
    keywords: Vec<String>,
    /// Opt-in: `message.recalled`, `message.updated`, `member.joined`, `member.left`.
    #[serde(default)]
    events: Vec<BotEvent>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBot {
    name: Option<String>,
    /// An HTTP bot's new URL.
    callback_url: Option<String>,
    /// A plugin bot's new plugin (e.g. a new version), applied to the next delivery.
    plugin_id: Option<String>,
    /// A plugin bot's new config (the whole map).
    config: Option<BTreeMap<String, String>>,
    /// The full new list; installing in a new conversation posts a notice there.
    conversations: Option<Vec<ConversationId>>,
    triggers: Option<Vec<Trigger>>,
    keywords: Option<Vec<String>>,
    events: Option<Vec<BotEvent>>,
    /// `true` re-enables a disabled bot and clears its failure run.
    enabled: Option<bool>,
}

/// A bot as served. `secret` only in the answers to create and rotate.
#[derive(Serialize, ToSchema)]
pub(crate) struct BotView {
    id: BotId,
    chatbot_user_id: String,
    name: String,
    /// An HTTP bot's URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<String>,
    /// A plugin bot's plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_id: Option<PluginId>,
    /// A plugin bot's config.
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<BTreeMap<String, String>>,
    conversations: Vec<ConversationId>,
    triggers: Vec<Trigger>,
    keywords: Vec<String>,
    events: Vec<BotEvent>,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failing_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_expires_at: Option<String>,
    created_at: String,
}

impl BotView {
    fn of(bot: &Bot) -> BotView {
        BotView {
            id: bot.id,
            chatbot_user_id: bot.chatbot_user_id(),
            name: bot.name.clone(),
            callback_url: bot.plugin_id.is_none().then(|| bot.callback_url.clone()),
            plugin_id: bot.plugin_id,
            config: bot.plugin_id.map(|_| bot.config.clone()),
            conversations: bot.conversations.clone(),
            triggers: bot.triggers.clone(),
            keywords: bot.keywords.clone(),
            events: bot.events.clone(),
            enabled: bot.enabled,
            disabled_reason: bot.disabled_reason.clone(),
            failing_since: bot.failing_since_ms.map(clock::rfc3339),
            secret: None,
            previous_secret_expires_at: None,
            created_at: clock::rfc3339(bot.created_at_ms),
        }
    }

    fn with_secret(bot: &Bot) -> BotView {
        let overlap = bot.previous_secret.is_some() && bot.previous_secret_until_ms > 0;
        BotView {
            secret: Some(bot.secret.clone()),
            previous_secret_expires_at: overlap
                .then(|| clock::rfc3339(bot.previous_secret_until_ms)),
            ..BotView::of(bot)
        }
    }
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::bad_request("name must be 1 to 64 characters"));
    }
    Ok(name.to_string())
}

fn check_rules(
    triggers: &[Trigger],
    keywords: &[String],
    events: &[BotEvent],
) -> Result<(), ApiError> {
    if triggers.is_empty() {
        return Err(ApiError::bad_request(
            "triggers needs at least one of mention, keyword, all, direct",
        ));
    }
    if triggers.contains(&Trigger::Keyword) && keywords.iter().all(|k| k.trim().is_empty()) {
        return Err(ApiError::bad_request("the keyword trigger needs keywords"));
    }
    if keywords.len() > 100 || keywords.iter().any(|k| k.len() > 256) {
        return Err(ApiError::bad_request(
            "at most 100 keywords of up to 256 bytes",
        ));
    }
    if let Some(e) = events.iter().find(|e| !e.is_opt_in()) {
        return Err(ApiError::bad_request(format!(
            "events lists opt-in events only (message.recalled, message.updated, member.joined, member.left), not {}",
            e.name()
        )));
    }
    Ok(())
}

/// Posts the install notice in each new conversation; a failure is logged, not fatal.
async fn announce(app: &AppState, bot: &Bot, conversations: &[ConversationId]) {
    for conversation in conversations {
        if let Err(e) = reply::announce_install(app, bot, *conversation).await {
            tracing::warn!(bot.id = %bot.id, error = %e, "install notice failed");
        }
    }
}

/// Register an outgoing bot (org admin). The answer carries its signing secret.
#[utoipa::path(post, path = "/api/v1/bots", tag = "bots", request_body = CreateBot,
    responses((status = 201, body = BotView), (status = 400, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_bot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<CreateBot>,
) -> Result<(StatusCode, Json<BotView>), ApiError> {
    check_rules(&body.triggers, &body.keywords, &body.events)?;
    bot_target::check_config(&body.config, body.plugin_id.is_some())?;
    let target = bot_target::check(
        &app,
        caller.org(),
        body.callback_url.as_deref(),
        body.plugin_id.as_deref(),
    )
    .await?;
    let (callback_url, plugin_id) = target.into_parts();
    let new = NewBot {
        org_id: caller.org(),
        name: check_name(&body.name)?,
        callback_url,
        plugin_id,
        config: body.config,
        secret: sign::generate_secret(),
        triggers: body.triggers,
        keywords: body.keywords,
        events: body.events,
        conversations: dedup(body.conversations),
    };
    let bot = app.store.create_bot(&new).await?;
    announce(&app, &bot, &bot.conversations).await;
    Ok((StatusCode::CREATED, Json(BotView::with_secret(&bot))))
}

fn dedup(mut ids: Vec<ConversationId>) -> Vec<ConversationId> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BotList {
    bots: Vec<BotView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The org's bots.
#[utoipa::path(get, path = "/api/v1/bots", tag = "bots", params(PageParams),
    responses((status = 200, body = BotList)), security(("bearer" = [])))]
pub(crate) async fn list_bots(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Query(page): Query<PageParams>,
) -> Result<Json<BotList>, ApiError> {
    let limit = page.limit()?;
    let bots = app
        .store
        .list_bots(caller.org(), page.after()?, limit + 1)
        .await?;
    let (bots, next_cursor) = paginate(bots, limit, |b| b.id.to_string());
    Ok(Json(BotList {
        bots: bots.iter().map(BotView::of).collect(),
        next_cursor,
    }))
}

/// One bot.
#[utoipa::path(get, path = "/api/v1/bots/{id}", tag = "bots", params(("id" = String, Path)),
    responses((status = 200, body = BotView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_bot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<BotId>,
) -> Result<Json<BotView>, ApiError> {
    Ok(Json(BotView::of(
        &app.store.get_bot(caller.org(), id).await?,
    )))
}

/// Open the caller's 1:1 chat with a bot (any member of the bot's org). Messages posted there
/// reach the bot as `message.direct`; its replies land in the chat. Answers the existing chat
/// with 200 when there is one.
#[utoipa::path(post, path = "/api/v1/bots/{id}/chats", tag = "bots", params(("id" = String, Path)),
    responses((status = 201, body = Conversation), (status = 200, body = Conversation),
              (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn open_chat(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<BotId>,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let bot = app.store.get_bot(caller.org(), id).await?;
    if !bot.triggers.contains(&Trigger::Direct) {
        return Err(ApiError::bad_request(format!(
            "bot {} does not take 1:1 messages (its triggers lack \"direct\")",
            bot.id
        )));
    }
    let new = NewConversation {
        org_id: caller.org(),
        kind: ConversationKind::Single,
        title: bot.name.clone(),
        owner_id: caller.id(),
        members: vec![caller.id()],
        bot: Some(bot.id),
    };
    super::conversations::open_conversation(&app, &new).await
}

/// Change a bot: name, URL, rules, conversations, or re-enable it.
#[utoipa::path(patch, path = "/api/v1/bots/{id}", tag = "bots", params(("id" = String, Path)),
    request_body = UpdateBot,
    responses((status = 200, body = BotView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update_bot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<BotId>,
    Json(body): Json<UpdateBot>,
) -> Result<Json<BotView>, ApiError> {
    let old = app.store.get_bot(caller.org(), id).await?;
    check_rules(
        body.triggers.as_ref().unwrap_or(&old.triggers),
        body.keywords.as_ref().unwrap_or(&old.keywords),
        body.events.as_ref().unwrap_or(&old.events),
    )?;
    let (callback_url, plugin_id) = bot_target::check_change(
        &app,
        &old,
        body.callback_url.as_deref(),
        body.plugin_id.as_deref(),
        body.config.as_ref(),
    )
    .await?;
    let patch = BotPatch {
        name: body.name.as_deref().map(check_name).transpose()?,
        callback_url,
        plugin_id,
        config: body.config,
        triggers: body.triggers,
        keywords: body.keywords,
        events: body.events,
        conversations: body.conversations.map(dedup),
        enabled: body.enabled,
    };
    let (bot, added) = app.store.update_bot(caller.org(), id, &patch).await?;
    app.outgoing.forget(id);
    announce(&app, &bot, &added).await;
    worker::wake(&app);
    Ok(Json(BotView::of(&bot)))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Deleted {
    id: BotId,
    deleted: bool,
}

/// Delete a bot, its installs and its delivery log.
#[utoipa::path(delete, path = "/api/v1/bots/{id}", tag = "bots", params(("id" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delete_bot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<BotId>,
) -> Result<Json<Deleted>, ApiError> {
    app.store.delete_bot(caller.org(), id).await?;
    app.outgoing.forget(id);
    Ok(Json(Deleted { id, deleted: true }))
}

/// A new signing secret; the old one keeps signing beside it for
/// `outgoing.secret_rotation_overlap_seconds`.
#[utoipa::path(post, path = "/api/v1/bots/{id}/rotate-secret", tag = "bots", params(("id" = String, Path)),
    responses((status = 200, body = BotView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn rotate_secret(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<BotId>,
) -> Result<Json<BotView>, ApiError> {
    let overlap_ms = app.config.outgoing.secret_rotation_overlap_seconds as i64 * 1000;
    let until = clock::now_ms() + overlap_ms;
    let bot = app
        .store
        .rotate_bot_secret(caller.org(), id, &sign::generate_secret(), until)
        .await?;
    app.outgoing.forget(id);
    Ok(Json(BotView::with_secret(&bot)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveryParams {
    /// `pending`, `delivered` or `failed`.
    state: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AttemptView {
    at: String,
    /// The HTTP status, absent when no answer came (timeout, refused connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<i32>,
    latency_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryView {
    id: DeliveryId,
    /// The `webhook-id` header of its callbacks.
    webhook_id: String,
    event_id: String,
    event: String,
    conversation_id: ConversationId,
    /// `pending`, `delivered` or `failed`.
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    created_at: String,
    attempts: Vec<AttemptView>,
}

impl DeliveryView {
    fn of(d: Delivery) -> DeliveryView {
        DeliveryView {
            id: d.id,
            webhook_id: format!("msg_{}", d.id),
            event_id: d.event_id,
            event: d.event,
            conversation_id: d.conversation_id,
            state: d.state.name().to_string(),
            next_attempt_at: d.next_attempt_at_ms.map(clock::rfc3339),
            created_at: clock::rfc3339(d.created_at_ms),
            attempts: d
                .attempts
                .into_iter()
                .map(|a| AttemptView {
                    at: clock::rfc3339(a.at_ms),
                    status: a.status,
                    latency_ms: a.latency_ms,
                    response: a.response,
                    error: a.error,
                })
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    deliveries: Vec<DeliveryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The bot's deliveries, newest first, each with every attempt.
#[utoipa::path(get, path = "/api/v1/bots/{id}/deliveries", tag = "bots",
    params(("id" = String, Path), DeliveryParams),
    responses((status = 200, body = DeliveryList), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_deliveries(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<BotId>,
    Query(params): Query<DeliveryParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    app.store.get_bot(caller.org(), id).await?;
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let limit = page.limit()?;
    let state = match params.state.as_deref() {
        None => None,
        Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be pending, delivered or failed, not {s:?}"
            ))
        })?),
    };
    let found = app
        .store
        .list_deliveries(id, state, page.after()?, limit + 1)
        .await?;
    let (found, next_cursor) = paginate(found, limit, |d| d.id.to_string());
    Ok(Json(DeliveryList {
        deliveries: found.into_iter().map(DeliveryView::of).collect(),
        next_cursor,
    }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Redelivered {
    redelivered: u64,
}

/// Queue one delivery again, whatever its state.
#[utoipa::path(post, path = "/api/v1/bots/{id}/deliveries/{delivery_id}/redeliver", tag = "bots",
    params(("id" = String, Path), ("delivery_id" = String, Path)),
    responses((status = 200, body = Redelivered), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn redeliver_one(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path((id, delivery)): Path<(BotId, DeliveryId)>,
) -> Result<Json<Redelivered>, ApiError> {
    app.store.get_bot(caller.org(), id).await?;
    let n = app
        .store
        .redeliver(id, Some(delivery), None, clock::now_ms())
        .await?;
    worker::wake(&app);
    Ok(Json(Redelivered { redelivered: n }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedeliverFailed {
    /// RFC 3339; every failed delivery created since then is queued again.
    since: String,
}

/// Queue every failed delivery since a time again.
#[utoipa::path(post, path = "/api/v1/bots/{id}/redeliver", tag = "bots", params(("id" = String, Path)),
    request_body = RedeliverFailed,
    responses((status = 200, body = Redelivered), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn redeliver_failed(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<BotId>,
    Json(body): Json<RedeliverFailed>,
) -> Result<Json<Redelivered>, ApiError> {
    app.store.get_bot(caller.org(), id).await?;
    let format = time::format_description::well_known::Rfc3339;
    let since = time::OffsetDateTime::parse(&body.since, &format)
        .map_err(|e| ApiError::bad_request(format!("since must be RFC 3339: {e}")))?;
    let since_ms = (since.unix_timestamp_nanos() / 1_000_000) as i64;
    let n = app
        .store
        .redeliver(id, None, Some(since_ms), clock::now_ms())
        .await?;
    worker::wake(&app);
    Ok(Json(Redelivered { redelivered: n }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SessionReplied {
    /// 0, as DingTalk answers.
    errcode: i64,
    errmsg: String,
    id: MessageId,
}

/// A bot's asynchronous reply through an event's `sessionWebhook` (the URL is the credential:
/// it names one bot and one conversation and expires). Body: a DingTalk-format message.
#[utoipa::path(post, path = "/api/v1/bot-sessions/{token}", tag = "bots", params(("token" = String, Path)),
    responses((status = 201, body = SessionReplied), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
pub(crate) async fn session_reply(
    State(app): State<AppState>,
    Path(token): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Result<(StatusCode, Json<SessionReplied>), ApiError> {
    let session = reply::verify_session(&app.outgoing, &token, clock::now_ms())?;
    let bot = app
        .store
        .bot_by_id(session.bot)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the bot no longer exists".into()))?;
    let id = reply::post_reply(&app, &bot, session.conversation, &body).await?;
    Ok((
        StatusCode::CREATED,
        Json(SessionReplied {
            errcode: 0,
            errmsg: "ok".into(),
            id,
        }),
    ))
}
