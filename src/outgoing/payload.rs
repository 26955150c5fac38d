//! The callback body: DingTalk's outgoing-robot fields plus herald's `event` and `id`. Built
//! once, when the event is queued, so every attempt sends the same facts; only the
//! sessionWebhook (`with_session`) is stamped per attempt, since it expires.

use serde_json::{json, Map, Value};

use crate::ids::ConversationId;
use crate::model::ConversationKind;
use crate::outgoing::triggers::{BotEvent, Rules};
use crate::store::MessageRecord;

/// What the store knows about an event when it queues it for bots.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// Stable per core event; each bot's delivery has its own `webhook-id` besides.
    pub event_id: String,
    pub conversation_id: ConversationId,
    pub conversation_kind: ConversationKind,
    pub conversation_title: String,
    pub message: Option<MessageRecord>,
    pub sender_staff_id: Option<String>,
    pub sender_is_admin: bool,
    /// member.joined / member.left: the stored details (`user_ids`, `reason`).
    pub details: Option<Value>,
    pub created_at_ms: i64,
}

/// The JSON body for one bot.
pub fn build(rules: &Rules, event: BotEvent, ctx: &EventContext) -> Value {
    let mut body = Map::new();
    body.insert("event".into(), event.name().into());
    body.insert("id".into(), ctx.event_id.clone().into());
    body.insert(
        "conversationId".into(),
        ctx.conversation_id.to_string().into(),
    );
    let kind = match ctx.conversation_kind {
        ConversationKind::Single => "1",
        ConversationKind::Group => "2",
    };
    body.insert("conversationType".into(), kind.into());
    body.insert(
        "conversationTitle".into(),
        ctx.conversation_title.clone().into(),
    );
    body.insert("chatbotUserId".into(), rules.chatbot_user_id.clone().into());
    body.insert("createAt".into(), ctx.created_at_ms.into());
    if let Some(m) = &ctx.message {
        message_fields(&mut body, rules, event, ctx, m);
    }
    if let Some(Value::Object(details)) = &ctx.details {
        if let Some(ids) = details.get("user_ids") {
            body.insert("userIds".into(), ids.clone());
        }
        if let Some(reason) = details.get("reason") {
            body.insert("reason".into(), reason.clone());
        }
    }
    Value::Object(body)
}

fn message_fields(
    body: &mut Map<String, Value>,
    rules: &Rules,
    event: BotEvent,
    ctx: &EventContext,
    m: &MessageRecord,
) {
    body.insert("msgId".into(), m.id.to_string().into());
    body.insert("msgtype".into(), m.msgtype.clone().into());
    if event != BotEvent::MessageRecalled {
        body.insert(m.msgtype.clone(), content_for_bot(rules, m));
    }
    body.insert("senderId".into(), m.sender.id.clone().into());
    body.insert("senderNick".into(), m.sender.name.clone().into());
    body.insert(
        "senderStaffId".into(),
        ctx.sender_staff_id.clone().unwrap_or_default().into(),
    );
    body.insert("isAdmin".into(), ctx.sender_is_admin.into());
    let at_users: Vec<Value> =
        m.at.at_user_ids
            .iter()
            .map(|id| json!({ "dingtalkId": id }))
            .collect();
    body.insert("atUsers".into(), at_users.into());
    let in_list = m.at.at_user_ids.contains(&rules.chatbot_user_id);
    body.insert("isInAtList".into(), in_list.into());
    if let Some(thread) = &m.thread_key {
        body.insert("threadKey".into(), thread.clone().into());
    }
}

/// The content object, with the bot's own `@name` taken out of a text message (DingTalk does
/// the same, so bots can read the command directly).
fn content_for_bot(rules: &Rules, m: &MessageRecord) -> Value {
    let mut content = m.content.clone();
    if m.msgtype == "text" {
        if let Some(Value::String(text)) = content.get_mut("content") {
            let mention = format!("@{}", rules.name);
            *text = text.replace(&mention, "").trim().to_string();
        }
    }
    content
}

/// Adds `sessionWebhook` and `sessionWebhookExpiredTime` (ms) to a stored body.
pub fn with_session(payload: &str, url: &str, expires_ms: i64) -> Option<String> {
    let mut body: Value = serde_json::from_str(payload).ok()?;
    let obj = body.as_object_mut()?;
    obj.insert("sessionWebhook".into(), url.into());
    obj.insert("sessionWebhookExpiredTime".into(), expires_ms.into());
    serde_json::to_string(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, OrgId};
    use crate::model::{At, Sender, SenderKind};

    #[test]
    fn dingtalk_fields_and_mention_stripped() {
        let rules = Rules {
            chatbot_user_id: "bot_7".into(),
            name: "helper".into(),
            triggers: vec![],
            keywords: vec![],
            events: vec![],
        };
        let message = MessageRecord {
            id: MessageId(9),
            org_id: OrgId(1),
            conversation_id: ConversationId(3),
            sender: Sender {
                id: "2".into(),
                kind: SenderKind::User,
                name: "alice".into(),
            },
            msgtype: "text".into(),
            content: json!({"content": "@helper status please"}),
            at: At {
                at_user_ids: vec!["bot_7".into()],
                ..At::default()
            },
            thread_key: None,
            dedupe_key: None,
            created_at_ms: 1234,
        };
        let ctx = EventContext {
            event_id: "evt_1_9".into(),
            conversation_id: ConversationId(3),
            conversation_kind: ConversationKind::Group,
            conversation_title: "ops".into(),
            message: Some(message),
            sender_staff_id: Some("s-1".into()),
            sender_is_admin: true,
            details: None,
            created_at_ms: 1234,
        };
        let body = build(&rules, BotEvent::MessageMentioned, &ctx);
        assert_eq!(body["text"]["content"], "status please");
        assert_eq!(body["conversationType"], "2");
        assert_eq!(body["chatbotUserId"], "bot_7");
        assert_eq!(body["atUsers"][0]["dingtalkId"], "bot_7");
        assert_eq!(body["isAdmin"], true);
        assert_eq!(body["event"], "message.mentioned");
        let stamped = with_session(&body.to_string(), "http://h/s", 99).unwrap();
        let stamped: Value = serde_json::from_str(&stamped).unwrap();
        assert_eq!(stamped["sessionWebhookExpiredTime"], 99);
    }
}
