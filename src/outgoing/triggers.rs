//! Which conversation events a bot hears. Pure functions over the event and the bot's rules;
//! called by the store inside the fanout transaction, so the decision and the queued delivery
//! commit together. Must not do I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{ConversationKind, EventKind, SenderKind};
use crate::store::MessageRecord;

/// What makes a bot hear a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// An @mention of the bot in a conversation it is installed in.
    Mention,
    /// A message containing one of the bot's keywords.
    Keyword,
    /// Every message of the conversations it is installed in.
    All,
    /// Messages of the 1:1 chats it is installed in.
    Direct,
}

/// The event types a bot receives (the body's `event` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum BotEvent {
    #[serde(rename = "message.mentioned")]
    MessageMentioned,
    #[serde(rename = "message.created")]
    MessageCreated,
    #[serde(rename = "message.direct")]
    MessageDirect,
    #[serde(rename = "message.recalled")]
    MessageRecalled,
    /// A message edited in place (a card showing a pull request's or an alert's latest state).
    #[serde(rename = "message.updated")]
    MessageUpdated,
    #[serde(rename = "member.joined")]
    MemberJoined,
    #[serde(rename = "member.left")]
    MemberLeft,
}

impl BotEvent {
    pub fn name(self) -> &'static str {
        match self {
            BotEvent::MessageMentioned => "message.mentioned",
            BotEvent::MessageCreated => "message.created",
            BotEvent::MessageDirect => "message.direct",
            BotEvent::MessageRecalled => "message.recalled",
            BotEvent::MessageUpdated => "message.updated",
            BotEvent::MemberJoined => "member.joined",
            BotEvent::MemberLeft => "member.left",
        }
    }

    /// The events a bot must opt into with `events` (messages come through `triggers`).
    pub fn is_opt_in(self) -> bool {
        matches!(
            self,
            BotEvent::MessageRecalled
                | BotEvent::MessageUpdated
                | BotEvent::MemberJoined
                | BotEvent::MemberLeft
        )
    }
}

/// A bot's rules, as the fanout hook sees them.
#[derive(Debug, Clone)]
pub struct Rules {
    pub chatbot_user_id: String,
    pub name: String,
    pub triggers: Vec<Trigger>,
    pub keywords: Vec<String>,
    /// Opted-in non-message events.
    pub events: Vec<BotEvent>,
}

/// The bot event a core event becomes for this bot, if the bot hears it at all.
pub fn event_for(
    rules: &Rules,
    kind: EventKind,
    conversation: ConversationKind,
    message: Option<&MessageRecord>,
) -> Option<BotEvent> {
    let opted = |e: BotEvent| rules.events.contains(&e).then_some(e);
    match kind {
        EventKind::MessageCreated => message.and_then(|m| message_event(rules, conversation, m)),
        EventKind::MessageRecalled => opted(BotEvent::MessageRecalled),
        EventKind::MessageUpdated => opted(BotEvent::MessageUpdated),
        EventKind::MemberJoined => opted(BotEvent::MemberJoined),
        EventKind::MemberLeft => opted(BotEvent::MemberLeft),
        _ => None,
    }
}

/// Bots never hear bots: a reply must not start a loop between two bots.
fn message_event(
    rules: &Rules,
    conversation: ConversationKind,
    m: &MessageRecord,
) -> Option<BotEvent> {
    if m.sender.kind == SenderKind::Bot {
        return None;
    }
    let has = |t: Trigger| rules.triggers.contains(&t);
    if conversation == ConversationKind::Single {
        return has(Trigger::Direct).then_some(BotEvent::MessageDirect);
    }
    if has(Trigger::Mention) && m.at.at_user_ids.contains(&rules.chatbot_user_id) {
        return Some(BotEvent::MessageMentioned);
    }
    if has(Trigger::All) {
        return Some(BotEvent::MessageCreated);
    }
    let text = plain_text(m);
    let keyword_hit = rules.keywords.iter().any(|k| text.contains(k.as_str()));
    (has(Trigger::Keyword) && keyword_hit).then_some(BotEvent::MessageCreated)
}

/// The readable words of a stored message, for keyword matching.
pub fn plain_text(m: &MessageRecord) -> String {
    crate::model::Content::from_parts(&m.msgtype, m.content.clone())
        .map(|c| c.plain_text())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ConversationId, MessageId, OrgId};
    use crate::model::{At, Sender};

    fn rules(triggers: &[Trigger]) -> Rules {
        Rules {
            chatbot_user_id: "bot_1".into(),
            name: "helper".into(),
            triggers: triggers.to_vec(),
            keywords: vec!["deploy".into()],
            events: vec![BotEvent::MemberJoined, BotEvent::MessageUpdated],
        }
    }

    fn message(text: &str, at: &[&str], kind: SenderKind) -> MessageRecord {
        MessageRecord {
            id: MessageId(1),
            org_id: OrgId(1),
            conversation_id: ConversationId(1),
            sender: Sender {
                id: "2".into(),
                kind,
                name: "alice".into(),
            },
            msgtype: "text".into(),
            content: serde_json::json!({ "content": text }),
            at: At {
                at_user_ids: at.iter().map(|s| s.to_string()).collect(),
                ..At::default()
            },
            thread_key: None,
            dedupe_key: None,
            created_at_ms: 0,
        }
    }

    #[test]
    fn mention_keyword_all_direct() {
        let group = ConversationKind::Group;
        let created = EventKind::MessageCreated;
        let m = message("hi @helper", &["bot_1"], SenderKind::User);
        let r = rules(&[Trigger::Mention]);
        assert_eq!(
            event_for(&r, created, group, Some(&m)),
            Some(BotEvent::MessageMentioned)
        );
        let plain = message("hi", &[], SenderKind::User);
        assert_eq!(event_for(&r, created, group, Some(&plain)), None);
        let kw = message("deploy now", &[], SenderKind::User);
        let r = rules(&[Trigger::Keyword]);
        assert_eq!(
            event_for(&r, created, group, Some(&kw)),
            Some(BotEvent::MessageCreated)
        );
        let r = rules(&[Trigger::All]);
        assert_eq!(
            event_for(&r, created, group, Some(&plain)),
            Some(BotEvent::MessageCreated)
        );
        let r = rules(&[Trigger::Direct]);
        assert_eq!(
            event_for(&r, created, ConversationKind::Single, Some(&plain)),
            Some(BotEvent::MessageDirect)
        );
    }

    #[test]
    fn bots_never_hear_bots_and_member_events_are_opt_in() {
        let r = rules(&[Trigger::All]);
        let from_bot = message("hi", &[], SenderKind::Bot);
        let group = ConversationKind::Group;
        assert_eq!(
            event_for(&r, EventKind::MessageCreated, group, Some(&from_bot)),
            None
        );
        assert_eq!(
            event_for(&r, EventKind::MemberJoined, group, None),
            Some(BotEvent::MemberJoined)
        );
        assert_eq!(event_for(&r, EventKind::MemberLeft, group, None), None);
        assert_eq!(
            event_for(&r, EventKind::MessageUpdated, group, None),
            Some(BotEvent::MessageUpdated)
        );
        assert_eq!(
            event_for(&rules(&[]), EventKind::MessageRecalled, group, None),
            None
        );
    }
}
