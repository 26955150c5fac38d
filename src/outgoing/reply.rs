//! Messages from bots: synchronous replies (a 2xx body), sessionWebhook replies, and the
//! notices herald posts as a bot (installed, disabled). All go through
//! `store.enqueue_message` and the lane workers, under the same checks and group rate limit
//! as a member's message.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::ids::{BotId, ConversationId, MessageId};
use crate::model::{At, Content, ConversationKind, Message, Role, Sender, SenderKind};
use crate::outgoing::Outgoing;
use crate::store::{Bot, DisabledBot, NewConversation};
use crate::{clock, AppState};

/// A verified sessionWebhook token: which bot may reply where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub bot: BotId,
    pub conversation: ConversationId,
}

fn session_mac(out: &Outgoing, claims: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&out.session_key).unwrap_or_else(|_| unreachable!());
    mac.update(claims.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// `bot.conversation.expires_ms.mac`: self-contained, so no table and no cleanup.
pub fn session_token(
    out: &Outgoing,
    bot: BotId,
    conversation: ConversationId,
    expires_ms: i64,
) -> String {
    let claims = format!("{bot}.{conversation}.{expires_ms}");
    let mac = session_mac(out, &claims);
    format!("{claims}.{mac}")
}

pub fn session_url(
    out: &Outgoing,
    bot: BotId,
    conversation: ConversationId,
    expires_ms: i64,
) -> String {
    let token = session_token(out, bot, conversation, expires_ms);
    format!("{}/api/v1/bot-sessions/{token}", out.base_url())
}

/// Checks a token's MAC and expiry.
pub fn verify_session(out: &Outgoing, token: &str, now_ms: i64) -> Result<Session, ApiError> {
    let invalid = || ApiError::Unauthorized("invalid sessionWebhook".into());
    let (claims, mac) = token.rsplit_once('.').ok_or_else(invalid)?;
    let expected = session_mac(out, claims);
    if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
        return Err(invalid());
    }
    let mut parts = claims.split('.');
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(invalid)
    };
    let (bot, conversation, expires) = (next()?, next()?, next()?);
    if now_ms > expires {
        return Err(ApiError::Unauthorized(
            "this sessionWebhook has expired".into(),
        ));
    }
    Ok(Session {
        bot: BotId(bot),
        conversation: ConversationId(conversation),
    })
}

/// A DingTalk-format message from a bot as typed content and mentions.
fn parse_message(body: &serde_json::Value) -> Result<(Content, At), ApiError> {
    let msgtype = body
        .get("msgtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::bad_request("a reply needs a msgtype"))?;
    let object = body.get(msgtype).cloned().ok_or_else(|| {
        ApiError::bad_request(format!(
            "msgtype is {msgtype:?} but the {msgtype:?} object is missing"
        ))
    })?;
    let content = Content::from_parts(msgtype, object).map_err(ApiError::BadRequest)?;
    if content.plain_text().trim().is_empty() {
        return Err(ApiError::bad_request("a reply must not be empty"));
    }
    let at = match body.get("at") {
        Some(at) => serde_json::from_value(at.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid at: {e}")))?,
        None => At::default(),
    };
    Ok((content, at))
}

/// Posts a bot's reply into a conversation it is installed in, under the group's rate limit.
pub async fn post_reply(
    app: &AppState,
    bot: &Bot,
    conversation: ConversationId,
    body: &serde_json::Value,
) -> Result<MessageId, ApiError> {
    check_installed(bot, conversation)?;
    let (content, at) = parse_message(body)?;
    post_content(app, bot, conversation, content, at, None).await
}

fn check_installed(bot: &Bot, conversation: ConversationId) -> Result<(), ApiError> {
    if !bot.enabled || !bot.conversations.contains(&conversation) {
        return Err(ApiError::Forbidden(
            "the bot is disabled or not installed in this conversation".into(),
        ));
    }
    Ok(())
}

/// Posts a bot's message (an HTTP reply once parsed, or a bot plugin's reply) into a
/// conversation it is installed in, under the size limit and the group's rate limit; in the
/// thread `thread_key` names, if any (bot plugins of `herald:bot@0.2.0` may name one).
pub async fn post_content(
    app: &AppState,
    bot: &Bot,
    conversation: ConversationId,
    content: Content,
    at: At,
    thread_key: Option<String>,
) -> Result<MessageId, ApiError> {
    check_installed(bot, conversation)?;
    let (size, max_bytes) = (
        content.body_string().len(),
        app.config.http.max_message_bytes,
    );
    if size > max_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "message content is {size} bytes; the limit is {max_bytes}"
        )));
    }
    let members = app.store.member_count(conversation).await?;
    let now = clock::now_ms();
    app.limiter.check(conversation, members, now)?;
    let at = crate::ingress::post::resolve_mentions(app, conversation, at).await?;
    let sender = bot.sender();
    post_as(
        app,
        sender,
        bot.org_id,
        conversation,
        content,
        at,
        thread_key,
    )
    .await
}

async fn post_as(
    app: &AppState,
    sender: Sender,
    org: crate::ids::OrgId,
    conversation: ConversationId,
    content: Content,
    at: At,
    thread_key: Option<String>,
) -> Result<MessageId, ApiError> {
    let message = Message {
        id: MessageId(app.ids.next()),
        org_id: org,
        conversation_id: conversation,
        sender,
        content,
        at,
        thread_key,
        dedupe_key: None,
        recalled: false,
        created_at_ms: clock::now_ms(),
    };
    let enqueued = crate::fanout::enqueue_and_wake(app, message).await?;
    Ok(enqueued.id())
}

fn text(content: String) -> Content {
    Content::Text(crate::model::Text { content })
}

/// Tells a conversation that a bot was installed there.
pub async fn announce_install(
    app: &AppState,
    bot: &Bot,
    conversation: ConversationId,
) -> Result<(), ApiError> {
    let words = format!(
        "{} was added to this conversation. Mention @{} to talk to it.",
        bot.name, bot.name
    );
    post_as(
        app,
        bot.sender(),
        bot.org_id,
        conversation,
        text(words),
        At::default(),
        None,
    )
    .await?;
    Ok(())
}

/// Tells the org's admins, in their notice group, that a bot was disabled.
pub async fn announce_disabled(app: &AppState, bot: &DisabledBot) -> Result<(), ApiError> {
    let group = notice_group(app, bot.org_id).await?;
    let words = format!(
        "Bot {} ({}) was disabled: every callback failed since {}. Fix its endpoint (or plugin), re-enable it with \
         PATCH /api/v1/bots/{} {{\"enabled\": true}}, then redeliver its failed events.",
        bot.name,
        bot.id,
        clock::rfc3339(bot.failing_since_ms),
        bot.id
    );
    let sender = Sender {
        id: "herald".into(),
        kind: SenderKind::Bot,
        name: "herald".into(),
    };
    post_as(
        app,
        sender,
        bot.org_id,
        group,
        text(words),
        At::default(),
        None,
    )
    .await?;
    Ok(())
}

/// The org's group of admins for bot notices, made on first use.
async fn notice_group(app: &AppState, org: crate::ids::OrgId) -> Result<ConversationId, ApiError> {
    if let Some(group) = app.store.notice_group(org).await? {
        return Ok(group);
    }
    let mut admins = Vec::new();
    let mut after = None;
    loop {
        let page = app.store.list_users(org, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        admins.extend(
            page.iter()
                .filter(|u| u.active && u.role == Role::Admin)
                .map(|u| u.id),
        );
    }
    let owner = *admins
        .first()
        .ok_or_else(|| ApiError::Conflict("the org has no active admin to tell".into()))?;
    let new = NewConversation {
        org_id: org,
        kind: ConversationKind::Group,
        title: "herald: bot notices".into(),
        owner_id: owner,
        members: admins,
        bot: None,
    };
    let created = app.store.create_conversation(&new).await?;
    app.lanes.poke(created.id);
    Ok(app.store.set_notice_group(org, created.id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_are_scoped_and_expire() {
        let out = Outgoing::new(&crate::config::Config::defaults().outgoing, b"k").unwrap();
        let token = session_token(&out, BotId(1), ConversationId(2), 10_000);
        let session = verify_session(&out, &token, 5_000).unwrap();
        assert_eq!(session.conversation, ConversationId(2));
        assert!(verify_session(&out, &token, 10_001).is_err());
        let forged = token.replacen("1.2.", "1.3.", 1);
        assert!(verify_session(&out, &forged, 5_000).is_err());
    }
}
