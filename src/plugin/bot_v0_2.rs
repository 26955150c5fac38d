//! The host side of `herald:bot@0.2.0` (plugins/wit/bot-0.2.0): the same host functions and
//! conversation event as 0.1.0 (`bot_glue`), and replies that name the thread they are posted
//! in. Frozen with the WIT: a new world version gets a new module beside this one.

use wasmtime::component::{HasSelf, Linker};

use super::bot;
use super::runtime::{wrong_world, Compiled, Guest, Runtime};
use super::{BotReply, HostState, PluginError};
use crate::model::{self, At, Content};

wasmtime::component::bindgen!({
    path: "plugins/wit/bot-0.2.0",
    world: "bot",
});

use self::herald::bot::types;

/// The world's name as `GET /api/v1/plugins` shows it.
pub const WORLD: &str = "herald:bot/bot@0.2.0";

/// Adds the host functions of this world version to a linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Bot::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

bot_world_host!();

bot_world_call!(Bot02);

event_from_callback!();

/// Checks every reply as the DingTalk-format endpoints would, keeping its thread key (blank:
/// none).
pub fn replies(messages: Vec<types::Message>) -> Result<Vec<BotReply>, PluginError> {
    bot::replies(messages, |m| {
        let at = At {
            at_user_ids: m.mentions.user_ids,
            at_mobiles: m.mentions.mobiles,
            is_at_all: m.mentions.all,
        };
        let thread = m.thread_key.filter(|k| !k.trim().is_empty());
        bot::reply(content(m.content), at, thread)
    })
}

content_from_wit!();

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str, thread_key: Option<&str>) -> types::Message {
        types::Message {
            content: types::Content::Text(s.into()),
            mentions: types::Mentions {
                user_ids: vec![],
                mobiles: vec![],
                all: false,
            },
            thread_key: thread_key.map(str::to_string),
        }
    }

    #[test]
    fn a_reply_keeps_its_thread() {
        let ok = replies(vec![
            text("in the thread", Some("deploy-42")),
            text("top level", None),
            text("blank is top level", Some(" ")),
        ])
        .expect("valid");
        let threads: Vec<_> = ok.iter().map(|r| r.thread_key.as_deref()).collect();
        assert_eq!(threads, [Some("deploy-42"), None, None]);
        let json = serde_json::to_value(&ok[0]).expect("json");
        assert_eq!(json["threadKey"], "deploy-42");
        assert!(serde_json::to_value(&ok[1])
            .expect("json")
            .get("threadKey")
            .is_none());
    }

    #[test]
    fn the_event_is_built_as_in_0_1() {
        let payload = r#"{"event": "message.mentioned", "msgId": "9", "msgtype": "text",
                          "text": {"content": "hi"}, "threadKey": "t-1"}"#;
        let event = event(payload).expect("event");
        assert_eq!(
            event.message.expect("message").thread_key.as_deref(),
            Some("t-1")
        );
    }
}
