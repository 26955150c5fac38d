//! The OpenAPI 3 document at `/api/v1/openapi.json`, generated from the handlers' annotations.

use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI 3 document", body = Object)))]
pub(crate) async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// A message as served (docs only; built by `model::Message::to_json`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MessageDoc {
    id: String,
    conversation_id: String,
    sender: crate::model::Sender,
    /// `text`, `markdown`, `link`, `actionCard` or `feedCard`; the object of that name holds the content.
    msgtype: String,
    text: Option<crate::model::Text>,
    markdown: Option<crate::model::Markdown>,
    link: Option<crate::model::Link>,
    #[schema(rename = "actionCard")]
    action_card: Option<crate::model::ActionCard>,
    #[schema(rename = "feedCard")]
    feed_card: Option<crate::model::FeedCard>,
    at: Option<crate::model::At>,
    thread_key: Option<String>,
    /// Present and true once recalled; the content is then withheld.
    recalled: Option<bool>,
    created_at: String,
}

/// One event of a member's stream (docs only; built by `model::Event::to_json`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventDoc {
    pts: i64,
    /// message.created, message.updated, message.recalled, member.joined, member.left,
    /// conversation.created
    #[schema(rename = "type")]
    kind: String,
    conversation_id: String,
    message_id: Option<String>,
    message: Option<MessageDoc>,
    /// member.joined / member.left: who.
    user_ids: Option<Vec<String>>,
    /// member.left: `left`, `removed` or `deactivated`.
    reason: Option<String>,
    created_at: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "herald", description = "Chatbot integration gateway API"),
    paths(
        super::users::create_user, super::users::create_users, super::users::list_users,
        super::users::get_user, super::users::mint_token, super::users::deactivate_user,
        super::conversations::create_conversation, super::conversations::list_conversations,
        super::conversations::get_conversation, super::conversations::list_members,
        super::conversations::add_members, super::conversations::remove_member,
        super::messages::post_message, super::messages::get_message,
        super::messages::recall_message, super::messages::update_message,
        super::live::sync_events, super::live::stream, super::live::websocket,
        super::bots::create_bot, super::bots::list_bots, super::bots::get_bot,
        super::bots::update_bot, super::bots::delete_bot, super::bots::rotate_secret,
        super::bots::open_chat,
        super::bots::list_deliveries, super::bots::redeliver_one, super::bots::redeliver_failed,
        super::bots::session_reply,
        super::robots::create_robot, super::robots::list_robots, super::robots::get_robot,
        super::robots::update_robot, super::robots::delete_robot, super::robots::rotate_robot,
        super::robots::list_mentions, super::robots::set_mentions,
        super::plugins::upload_plugin, super::plugins::list_plugins, super::plugins::get_plugin,
        super::plugins::delete_plugin,
        super::incidents::list_incidents, super::incidents::get_incident, super::incidents::ack,
        super::incidents::resolve, super::incidents::silence, super::incidents::card_action,
        super::escalation::create, super::escalation::list, super::escalation::read,
        super::escalation::update, super::escalation::delete,
        super::dings::create, super::dings::read, super::dings::confirm, super::dings::resend,
        super::dings::set_provider, super::dings::get_provider,
        super::rotations::create, super::rotations::list, super::rotations::read,
        super::rotations::replace, super::rotations::delete, super::rotations::oncall,
        crate::ingress::dingtalk::send, crate::ingress::hooks::receive,
        super::healthz, openapi_json,
    ),
    components(schemas(crate::error::ErrorBody, MessageDoc, EventDoc)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
