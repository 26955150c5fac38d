//! Messages: a member posts DingTalk-format content; the sender or an admin recalls or edits it.
//! The receive path only checks and queues; fanout happens behind the queue.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::conversations::visible_conversation;
use crate::auth::Caller;
use crate::error::{ApiError, Json, Path};
use crate::ids::{ConversationId, MessageId};
use crate::model::{
    ActionCard, At, Content, FeedCard, Image, Link, Markdown, Message, Sender, SenderKind, Text,
};
use crate::store::Enqueued;
use crate::{clock, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/conversations/{id}/messages", post(post_message))
        .route("/messages/{id}", get(get_message).put(update_message))
        .route("/messages/{id}/recall", post(recall_message))
}

/// A DingTalk-format message: `msgtype` names which of the content objects is present.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostMessage {
    /// `text`, `markdown`, `link`, `actionCard` or `feedCard`.
    msgtype: String,
    text: Option<Text>,
    markdown: Option<Markdown>,
    link: Option<Link>,
    #[serde(rename = "actionCard")]
    action_card: Option<ActionCard>,
    #[serde(rename = "feedCard")]
    feed_card: Option<FeedCard>,
    image: Option<Image>,
    at: Option<At>,
    /// A repeat with the same key in the same conversation is answered with the first id.
    dedupe_key: Option<String>,
    thread_key: Option<String>,
}

impl PostMessage {
    /// The typed content, checked against DingTalk's rules and herald's size limit.
    fn content(&self, max_bytes: usize) -> Result<Content, ApiError> {
        let missing = |key: &str| {
            ApiError::bad_request(format!(
                "msgtype is {key:?} but the {key:?} object is missing"
            ))
        };
        let content = match self.msgtype.as_str() {
            "text" => Content::Text(self.text.clone().ok_or_else(|| missing("text"))?),
            "markdown" => {
                Content::Markdown(self.markdown.clone().ok_or_else(|| missing("markdown"))?)
            }
            "link" => Content::Link(self.link.clone().ok_or_else(|| missing("link"))?),
            "actionCard" => Content::ActionCard(
                self.action_card
                    .clone()
                    .ok_or_else(|| missing("actionCard"))?,
            ),
            "feedCard" => {
                Content::FeedCard(self.feed_card.clone().ok_or_else(|| missing("feedCard"))?)
            }
            "image" => Content::Image(self.image.clone().ok_or_else(|| missing("image"))?),
            other => {
                return Err(ApiError::bad_request(format!(
                "unknown msgtype {other:?}; expected text, markdown, link, actionCard, feedCard or image"
            )))
            }
        };
        content.validate().map_err(ApiError::BadRequest)?;
        let size = content.body_string().len();
        if size > max_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "message content is {size} bytes; the limit is {max_bytes}"
            )));
        }
        Ok(content)
    }

    fn keys(&self) -> Result<(), ApiError> {
        for (name, key) in [
            ("dedupe_key", &self.dedupe_key),
            ("thread_key", &self.thread_key),
        ] {
            if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 256) {
                return Err(ApiError::bad_request(format!(
                    "{name} must be 1 to 256 bytes"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Posted {
    id: MessageId,
    conversation_id: ConversationId,
    /// True when the dedupe key was seen before and nothing new was queued.
    duplicate: bool,
}

/// Post a message to a conversation the caller belongs to. Answered once the message is
/// durably queued; it reaches members' inboxes and live streams right after.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "messages",
    params(("id" = String, Path)), request_body = PostMessage,
    responses((status = 201, body = Posted), (status = 200, description = "a repeated dedupe_key", body = Posted),
              (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody),
              (status = 429, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_message(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Json(body): Json<PostMessage>,
) -> Result<(StatusCode, Json<Posted>), ApiError> {
    let content = body.content(app.config.http.max_message_bytes)?;
    body.keys()?;
    let conversation = app.store.get_conversation(caller.org(), id).await?;
    if !app.store.is_member(id, caller.id()).await? {
        return Err(ApiError::NotMember);
    }
    let now = clock::now_ms();
    app.limiter.check(id, conversation.member_count, now)?;
    let raw_at = body.at.unwrap_or_default();
    let at = resolve_mentions(&app, id, raw_at.clone()).await?;
    let message = Message {
        id: MessageId(app.ids.next()),
        org_id: caller.org(),
        conversation_id: id,
        sender: Sender {
            id: caller.id().to_string(),
            kind: SenderKind::User,
            name: caller.user.name.clone(),
        },
        content,
        at,
        thread_key: body.thread_key,
        dedupe_key: body.dedupe_key,
        recalled: false,
        created_at_ms: now,
    };
    let enqueued = crate::fanout::enqueue_and_wake(&app, message.clone()).await?;
    let (status, id, duplicate) = match enqueued {
        Enqueued::New(id) | Enqueued::Delivered(id, _) => {
            // "ack" / "resolve" replies to an alert; the message is posted either way.
            if let Err(e) = crate::alerts::reply::observe(&app, &caller, &message, &raw_at).await {
                tracing::warn!(message.id = %id, error = %e, "acting on an alert reply failed");
            }
            (StatusCode::CREATED, id, false)
        }
        Enqueued::Duplicate(id) => (StatusCode::OK, id, true),
    };
    Ok((
        status,
        Json(Posted {
            id,
            conversation_id: message.conversation_id,
            duplicate,
        }),
    ))
}

/// The API's own limit on mentions, then the shared resolution.
async fn resolve_mentions(
    app: &AppState,
    conversation: ConversationId,
    at: At,
) -> Result<At, ApiError> {
    if at.at_user_ids.len() + at.at_mobiles.len() > 1000 {
        return Err(ApiError::bad_request("at most 1000 mentions per message"));
    }
    Ok(crate::ingress::post::resolve_mentions(app, conversation, at).await?)
}

/// Loads a message the caller may act on: from a conversation they see.
async fn visible_message(
    app: &AppState,
    caller: &Caller,
    id: MessageId,
) -> Result<Message, ApiError> {
    let message = app.store.get_message(caller.org(), id).await?;
    visible_conversation(app, caller, message.conversation_id).await?;
    Ok(message)
}

fn require_sender_or_admin(caller: &Caller, message: &Message) -> Result<(), ApiError> {
    let is_sender =
        message.sender.kind == SenderKind::User && message.sender.id == caller.id().to_string();
    if is_sender || caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the sender or an org admin may do this".into(),
        ))
    }
}

/// One message (content withheld once recalled).
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", params(("id" = String, Path)),
    responses((status = 200, body = crate::api::docs::MessageDoc), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_message(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<MessageId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(visible_message(&app, &caller, id).await?.to_json()))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Recalled {
    id: MessageId,
    recalled: bool,
}

/// Recall a message (its sender or an org admin): members get `message.recalled` and the
/// content is no longer served.
#[utoipa::path(post, path = "/api/v1/messages/{id}/recall", tag = "messages", params(("id" = String, Path)),
    responses((status = 200, body = Recalled), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn recall_message(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<MessageId>,
) -> Result<Json<Recalled>, ApiError> {
    let message = visible_message(&app, &caller, id).await?;
    require_sender_or_admin(&caller, &message)?;
    if app.store.recall_message(caller.org(), id).await? {
        app.lanes.poke(message.conversation_id);
    }
    Ok(Json(Recalled { id, recalled: true }))
}

/// Replace a message's content (its sender or an org admin): members get `message.updated`.
#[utoipa::path(put, path = "/api/v1/messages/{id}", tag = "messages", params(("id" = String, Path)),
    request_body = PostMessage,
    responses((status = 200, body = crate::api::docs::MessageDoc), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update_message(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<MessageId>,
    Json(body): Json<PostMessage>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let content = body.content(app.config.http.max_message_bytes)?;
    let message = visible_message(&app, &caller, id).await?;
    require_sender_or_admin(&caller, &message)?;
    if message.recalled {
        return Err(ApiError::Conflict(
            "a recalled message cannot be edited".into(),
        ));
    }
    app.store.update_message(caller.org(), id, &content).await?;
    app.lanes.poke(message.conversation_id);
    let updated = Message { content, ..message };
    Ok(Json(updated.to_json()))
}
