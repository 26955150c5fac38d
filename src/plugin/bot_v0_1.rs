//! The host side of `herald:bot@0.1.0` (plugins/wit/bot-0.1.0): the generated bindings, the
//! host functions (the adapter world's four, shared), the conversation event built from the
//! callback body an HTTP bot would get, and the check of the replies (which cannot name a
//! thread in this version). Frozen with the WIT: `bot_v0_2` serves the next version beside it.

use wasmtime::component::{HasSelf, Linker};

use super::bot;
use super::runtime::{wrong_world, Compiled, Guest, Runtime};
use super::{BotReply, HostState, PluginError};
use crate::model::{self, At, Content};

wasmtime::component::bindgen!({
    path: "plugins/wit/bot-0.1.0",
    world: "bot",
});

pub use self::herald::bot::host::Level;
use self::herald::bot::types;

/// The world's name as `GET /api/v1/plugins` shows it.
pub const WORLD: &str = "herald:bot/bot@0.1.0";

/// Adds the host functions of this world version to a linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Bot::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

bot_world_host!();

bot_world_call!(Bot01);

event_from_callback!();

/// Checks every reply as the DingTalk-format endpoints would; none names a thread.
pub fn replies(messages: Vec<types::Message>) -> Result<Vec<BotReply>, PluginError> {
    bot::replies(messages, |m| {
        let at = At {
            at_user_ids: m.mentions.user_ids,
            at_mobiles: m.mentions.mobiles,
            is_at_all: m.mentions.all,
        };
        bot::reply(content(m.content), at, None)
    })
}

content_from_wit!();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bot::MAX_REPLIES;
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
