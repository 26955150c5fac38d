//! The host side of `herald:bot@0.1.0` (plugins/wit/bot-0.1.0): the generated bindings, the
//! host functions (the adapter world's four, shared), the conversation event built from the
//! callback body an HTTP bot would get, and the check of the replies. Frozen with the WIT: a
//! new world version gets a new module beside this one.

use serde_json::Value;
use wasmtime::component::{HasSelf, Linker};

use super::runtime::{wrong_world, Compiled, Guest, Runtime};
use super::v0_1::herald::adapter::host::{Host as AdapterHost, Level as AdapterLevel};
use super::{HostState, PluginError};
use crate::model::{self, At, Content};

wasmtime::component::bindgen!({
    path: "plugins/wit/bot-0.1.0",
    world: "bot",
});

pub use self::herald::bot::host::Level;
use self::herald::bot::types;

/// The world's name as `GET /api/v1/plugins` shows it.
pub const WORLD: &str = "herald:bot/bot@0.1.0";

/// Replies one event may post: a bot that answers with more is broken, not chatty.
const MAX_REPLIES: usize = 10;

/// One reply a bot plugin asks to post, already checked against DingTalk's rules.
#[derive(Debug, Clone)]
pub struct BotReply {
    pub content: Content,
    pub at: At,
}

/// A DingTalk-format message, as `herald plugin run` prints it.
impl serde::Serialize for BotReply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("msgtype", self.content.msgtype())?;
        map.serialize_entry(self.content.msgtype(), &self.content.body_json())?;
        map.serialize_entry("at", &self.at)?;
        map.end()
    }
}

/// Adds the host functions of this world version to a linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Bot::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

/// The same functions, with the same limits, as the adapter world lends.
impl herald::bot::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => AdapterLevel::Debug,
            Level::Info => AdapterLevel::Info,
            Level::Warn => AdapterLevel::Warn,
            Level::Error => AdapterLevel::Error,
        };
        AdapterHost::log(self, level, message);
    }

    fn config(&mut self, key: String) -> Option<String> {
        AdapterHost::config(self, key)
    }

    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        AdapterHost::hmac_sha256(self, key, data)
    }

    fn now_ms(&mut self) -> i64 {
        AdapterHost::now_ms(self)
    }
}

impl herald::bot::types::Host for HostState {}

/// Runs `on-event` in a fresh instance, within the deadline and the memory cap. `payload` is
/// the delivery's callback body, the JSON an HTTP bot would be sent.
pub fn call(
    runtime: &Runtime,
    compiled: &Compiled,
    state: HostState,
    payload: &str,
) -> Result<Vec<BotReply>, PluginError> {
    let Guest::Bot(pre) = &compiled.guest else {
        return Err(wrong_world(compiled, WORLD));
    };
    let event = event(payload).map_err(|e| PluginError::Internal(anyhow::anyhow!(e)))?;
    let mut store = runtime.store(state);
    let result = pre
        .instantiate(&mut store)
        .and_then(|bot| bot.call_on_event(&mut store, &event));
    match result {
        Ok(messages) => replies(messages),
        Err(e) => Err(runtime.classify(e, store.data())),
    }
}

/// The event record, from the callback body (`outgoing::payload::build`).
pub fn event(payload: &str) -> Result<types::ConversationEvent, String> {
    let body: Value =
        serde_json::from_str(payload).map_err(|e| format!("the event is not JSON: {e}"))?;
    if !body.is_object() {
        return Err("the event must be a JSON object".into());
    }
    let event = text(&body, "event");
    if event.is_empty() {
        return Err("the event has no \"event\" name".into());
    }
    Ok(types::ConversationEvent {
        message: body.get("msgId").map(|_| chat_message(&body)),
        event,
        id: text(&body, "id"),
        conversation_id: text(&body, "conversationId"),
        conversation_kind: match body["conversationType"].as_str() {
            Some("1") => types::ConversationKind::Single,
            _ => types::ConversationKind::Group,
        },
        conversation_title: text(&body, "conversationTitle"),
        chatbot_user_id: text(&body, "chatbotUserId"),
        created_at_ms: body["createAt"].as_i64().unwrap_or_default(),
        user_ids: strings(&body["userIds"]),
        payload_json: payload.to_string(),
    })
}

fn chat_message(body: &Value) -> types::ChatMessage {
    let msgtype = text(body, "msgtype");
    let object = &body[msgtype.as_str()];
    let readable = object["content"]
        .as_str()
        .or(object["text"].as_str())
        .unwrap_or_default();
    let staff_id = text(body, "senderStaffId");
    types::ChatMessage {
        id: text(body, "msgId"),
        text: readable.to_string(),
        sender: types::Sender {
            id: text(body, "senderId"),
            name: text(body, "senderNick"),
            staff_id: (!staff_id.is_empty()).then_some(staff_id),
            is_admin: body["isAdmin"].as_bool().unwrap_or_default(),
        },
        at_user_ids: body["atUsers"]
            .as_array()
            .map(|users| {
                users
                    .iter()
                    .filter_map(|u| u["dingtalkId"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        thread_key: body["threadKey"].as_str().map(str::to_string),
        msgtype,
    }
}

fn text(body: &Value, key: &str) -> String {
    body[key].as_str().unwrap_or_default().to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks every reply as the DingTalk-format endpoints would.
pub fn replies(messages: Vec<types::Message>) -> Result<Vec<BotReply>, PluginError> {
    if messages.len() > MAX_REPLIES {
        return Err(PluginError::BadOutput(format!(
            "{} replies to one event; at most {MAX_REPLIES}",
            messages.len()
        )));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| reply(m).map_err(|e| PluginError::BadOutput(format!("message {i}: {e}"))))
        .collect()
}

fn reply(m: types::Message) -> Result<BotReply, String> {
    let content = content(m.content);
    content.validate()?;
    if content.plain_text().trim().is_empty() {
        return Err("a reply must not be empty".into());
    }
    Ok(BotReply {
        content,
        at: At {
            at_user_ids: m.mentions.user_ids,
            at_mobiles: m.mentions.mobiles,
            is_at_all: m.mentions.all,
        },
    })
}

content_from_wit!();

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_event_carries_the_callback_fields() {
        let payload = json!({
            "event": "message.mentioned", "id": "evt_1_9", "conversationId": "3",
            "conversationType": "2", "conversationTitle": "ops", "chatbotUserId": "bot_7",
            "createAt": 1234, "msgId": "9", "msgtype": "text",
            "text": {"content": "deploy status"}, "senderId": "2", "senderNick": "alice",
            "senderStaffId": "", "isAdmin": true, "atUsers": [{"dingtalkId": "bot_7"}],
            "isInAtList": true
        })
        .to_string();
        let event = event(&payload).expect("event");
        assert_eq!(event.event, "message.mentioned");
        assert_eq!(event.conversation_kind, types::ConversationKind::Group);
        assert_eq!(event.created_at_ms, 1234);
        let message = event.message.expect("message");
        assert_eq!(message.text, "deploy status");
        assert_eq!(message.sender.name, "alice");
        assert_eq!(message.sender.staff_id, None);
        assert!(message.sender.is_admin);
        assert_eq!(message.at_user_ids, ["bot_7"]);
        assert_eq!(event.payload_json, payload);
    }

    #[test]
    fn member_events_carry_user_ids_and_no_message() {
        let payload = json!({"event": "member.joined", "conversationType": "1",
                             "userIds": ["4", "5"]});
        let event = event(&payload.to_string()).expect("event");
        assert!(event.message.is_none());
        assert_eq!(event.user_ids, ["4", "5"]);
        assert_eq!(event.conversation_kind, types::ConversationKind::Single);
        assert!(super::event("[]").is_err());
        assert!(super::event("{}").is_err());
    }

    #[test]
    fn replies_are_checked_like_messages() {
        let text = |s: &str| types::Message {
            content: types::Content::Text(s.into()),
            mentions: types::Mentions {
                user_ids: vec!["2".into()],
                mobiles: vec![],
                all: false,
            },
        };
        let ok = replies(vec![text("pong")]).expect("valid");
        assert_eq!(ok[0].at.at_user_ids, ["2"]);
        assert_eq!(
            serde_json::to_value(&ok[0]).expect("json")["text"]["content"],
            "pong"
        );
        assert!(matches!(
            replies(vec![text("  ")]),
            Err(PluginError::BadOutput(_))
        ));
        assert!(matches!(
            replies(vec![text("x"); MAX_REPLIES + 1]),
            Err(PluginError::BadOutput(_))
        ));
    }
}
