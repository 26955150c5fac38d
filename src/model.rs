//! The domain's shapes: people, conversations, DingTalk-format message content and the events
//! of a member's sync stream. Only plain data here; no I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{ConversationId, MessageId, OrgId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Role {
        if s == "admin" {
            Role::Admin
        } else {
            Role::Member
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub org_id: OrgId,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staff_id: Option<String>,
    pub role: Role,
    pub active: bool,
    pub created_at: String,
}

/// What an admin gives to create a user.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub mobile: Option<String>,
    pub email: Option<String>,
    pub staff_id: Option<String>,
    /// `member` unless said otherwise.
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    /// A group with a title, an owner and members.
    Group,
    /// A 1:1 chat between two users.
    Single,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Group => "group",
            ConversationKind::Single => "single",
        }
    }
    pub fn parse(s: &str) -> ConversationKind {
        if s == "single" {
            ConversationKind::Single
        } else {
            ConversationKind::Group
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Conversation {
    pub id: ConversationId,
    pub org_id: OrgId,
    pub kind: ConversationKind,
    pub title: String,
    pub owner_id: UserId,
    pub member_count: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Text {
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Markdown {
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub title: String,
    pub text: String,
    pub message_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pic_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ActionButton {
    pub title: String,
    #[serde(rename = "actionURL")]
    pub action_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActionCard {
    pub title: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_title: Option<String>,
    #[serde(default, rename = "singleURL", skip_serializing_if = "Option::is_none")]
    pub single_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub btns: Vec<ActionButton>,
    /// "0": buttons stacked vertically, "1": side by side (DingTalk's values; clients send
    /// either a string or a number).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_number"
    )]
    pub btn_orientation: Option<String>,
}

/// Accepts `"1"` and `1` alike.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "btnOrientation must be \"0\" or \"1\", got {other}"
            )))
        }
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct FeedLink {
    pub title: String,
    #[serde(rename = "messageURL")]
    pub message_url: String,
    #[serde(default, rename = "picURL", skip_serializing_if = "Option::is_none")]
    pub pic_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct FeedCard {
    pub links: Vec<FeedLink>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Image {
    #[serde(rename = "picURL")]
    pub pic_url: String,
}

/// A message's typed content, one DingTalk robot message kind each.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(Text),
    Markdown(Markdown),
    Link(Link),
    ActionCard(ActionCard),
    FeedCard(FeedCard),
    Image(Image),
}

impl Content {
    /// DingTalk's `msgtype` value, which is also the key of the content object.
    pub fn msgtype(&self) -> &'static str {
        match self {
            Content::Text(_) => "text",
            Content::Markdown(_) => "markdown",
            Content::Link(_) => "link",
            Content::ActionCard(_) => "actionCard",
            Content::FeedCard(_) => "feedCard",
            Content::Image(_) => "image",
        }
    }

    /// The content object alone, as stored and as served under the `msgtype` key.
    pub fn body_json(&self) -> serde_json::Value {
        let v = match self {
            Content::Text(c) => serde_json::to_value(c),
            Content::Markdown(c) => serde_json::to_value(c),
            Content::Link(c) => serde_json::to_value(c),
            Content::ActionCard(c) => serde_json::to_value(c),
            Content::FeedCard(c) => serde_json::to_value(c),
            Content::Image(c) => serde_json::to_value(c),
        };
        v.unwrap_or(serde_json::Value::Null)
    }

    /// The content object alone as JSON text: what `body_json` holds, printed straight from
    /// the struct (fields in declaration order) without building the tree first.
    pub fn body_string(&self) -> String {
        let s = match self {
            Content::Text(c) => serde_json::to_string(c),
            Content::Markdown(c) => serde_json::to_string(c),
            Content::Link(c) => serde_json::to_string(c),
            Content::ActionCard(c) => serde_json::to_string(c),
            Content::FeedCard(c) => serde_json::to_string(c),
            Content::Image(c) => serde_json::to_string(c),
        };
        s.unwrap_or_else(|_| "null".to_string())
    }

    /// Rebuilds content from its stored `msgtype` and object.
    pub fn from_parts(msgtype: &str, body: serde_json::Value) -> Result<Content, String> {
        fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| e.to_string())
        }
        Ok(match msgtype {
            "text" => Content::Text(de(body)?),
            "markdown" => Content::Markdown(de(body)?),
            "link" => Content::Link(de(body)?),
            "actionCard" => Content::ActionCard(de(body)?),
            "feedCard" => Content::FeedCard(de(body)?),
            "image" => Content::Image(de(body)?),
            other => return Err(format!("unknown msgtype {other:?}")),
        })
    }

    /// Checks DingTalk's required fields per kind.
    pub fn validate(&self) -> Result<(), String> {
        let content = self;
        let blank = |s: &str| s.trim().is_empty();
        let fail = |msg: &str| Err(msg.to_string());
        match content {
            Content::Text(t) if blank(&t.content) => fail("text.content must not be empty"),
            Content::Markdown(m) if blank(&m.title) || blank(&m.text) => {
                fail("markdown needs a title and a text")
            }
            Content::Link(l) if blank(&l.title) || blank(&l.text) || blank(&l.message_url) => {
                fail("link needs title, text and messageUrl")
            }
            Content::ActionCard(a) if blank(&a.title) || blank(&a.text) => {
                fail("actionCard needs a title and a text")
            }
            Content::ActionCard(a) => {
                let single = a.single_title.is_some() || a.single_url.is_some();
                match (single, a.btns.is_empty()) {
                    (true, false) => {
                        fail("actionCard takes singleTitle/singleURL or btns, not both")
                    }
                    (true, true) if a.single_title.is_none() || a.single_url.is_none() => {
                        fail("actionCard needs both singleTitle and singleURL")
                    }
                    (false, true) => fail("actionCard needs singleTitle and singleURL, or btns"),
                    _ if a.btns.len() > 10 => fail("actionCard has at most 10 btns"),
                    _ => Ok(()),
                }
            }
            Content::FeedCard(f) if f.links.is_empty() || f.links.len() > 10 => {
                fail("feedCard needs 1 to 10 links")
            }
            Content::Image(i) if blank(&i.pic_url) => fail("image needs a picURL"),
            _ => Ok(()),
        }
    }

    /// The words a person reads, for mention parsing and keyword filters.
    pub fn plain_text(&self) -> String {
        match self {
            Content::Text(t) => t.content.clone(),
            Content::Markdown(m) => format!("{}\n{}", m.title, m.text),
            Content::Link(l) => format!("{}\n{}", l.title, l.text),
            Content::ActionCard(a) => format!("{}\n{}", a.title, a.text),
            Content::FeedCard(f) => f
                .links
                .iter()
                .map(|l| l.title.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            Content::Image(_) => String::new(),
        }
    }
}

/// DingTalk's mention block. In a stored message `atUserIds` holds every mentioned member,
/// including those resolved from `atMobiles`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct At {
    #[serde(default)]
    pub at_user_ids: Vec<String>,
    #[serde(default)]
    pub at_mobiles: Vec<String>,
    #[serde(default)]
    pub is_at_all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SenderKind {
    User,
    Robot,
    Bot,
}

impl SenderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SenderKind::User => "user",
            SenderKind::Robot => "robot",
            SenderKind::Bot => "bot",
        }
    }
    pub fn parse(s: &str) -> SenderKind {
        match s {
            "robot" => SenderKind::Robot,
            "bot" => SenderKind::Bot,
            _ => SenderKind::User,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Sender {
    pub id: String,
    pub kind: SenderKind,
    pub name: String,
}

/// A message as herald keeps it and as the fanout task carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: MessageId,
    pub org_id: OrgId,
    pub conversation_id: ConversationId,
    pub sender: Sender,
    pub content: Content,
    pub at: At,
    pub thread_key: Option<String>,
    pub dedupe_key: Option<String>,
    pub recalled: bool,
    pub created_at_ms: i64,
}

impl Message {
    /// The contract's Message JSON. A recalled message keeps its envelope but not its content.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("id".into(), self.id.to_string().into());
        obj.insert(
            "conversation_id".into(),
            self.conversation_id.to_string().into(),
        );
        obj.insert(
            "sender".into(),
            serde_json::to_value(&self.sender).unwrap_or_default(),
        );
        obj.insert("msgtype".into(), self.content.msgtype().into());
        if self.recalled {
            obj.insert("recalled".into(), true.into());
        } else {
            obj.insert(self.content.msgtype().into(), self.content.body_json());
            obj.insert(
                "at".into(),
                serde_json::to_value(&self.at).unwrap_or_default(),
            );
        }
        if let Some(key) = &self.thread_key {
            obj.insert("thread_key".into(), key.clone().into());
        }
        obj.insert(
            "created_at".into(),
            crate::clock::rfc3339(self.created_at_ms).into(),
        );
        serde_json::Value::Object(obj)
    }
}

/// The kinds of event in a member's sync stream, stored as a small integer in each inbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "message.created")]
    MessageCreated,
    #[serde(rename = "message.updated")]
    MessageUpdated,
    #[serde(rename = "message.recalled")]
    MessageRecalled,
    #[serde(rename = "member.joined")]
    MemberJoined,
    #[serde(rename = "member.left")]
    MemberLeft,
    #[serde(rename = "conversation.created")]
    ConversationCreated,
    /// An urgent reminder to specific users (see `alerts::ding`); not about a conversation.
    #[serde(rename = "ding")]
    Ding,
}

impl EventKind {
    pub fn code(self) -> i64 {
        match self {
            EventKind::MessageCreated => 1,
            EventKind::MessageUpdated => 2,
            EventKind::MessageRecalled => 3,
            EventKind::MemberJoined => 4,
            EventKind::MemberLeft => 5,
            EventKind::ConversationCreated => 6,
            EventKind::Ding => 7,
        }
    }
    pub fn from_code(code: i64) -> Option<EventKind> {
        Some(match code {
            1 => EventKind::MessageCreated,
            2 => EventKind::MessageUpdated,
            3 => EventKind::MessageRecalled,
            4 => EventKind::MemberJoined,
            5 => EventKind::MemberLeft,
            6 => EventKind::ConversationCreated,
            7 => EventKind::Ding,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            EventKind::MessageCreated => "message.created",
            EventKind::MessageUpdated => "message.updated",
            EventKind::MessageRecalled => "message.recalled",
            EventKind::MemberJoined => "member.joined",
            EventKind::MemberLeft => "member.left",
            EventKind::ConversationCreated => "conversation.created",
            EventKind::Ding => "ding",
        }
    }
    /// Whether the event points at a message (else at a conversation event record).
    pub fn refers_to_message(self) -> bool {
        matches!(
            self,
            EventKind::MessageCreated | EventKind::MessageUpdated | EventKind::MessageRecalled
        )
    }
}

/// One entry of a member's sync stream, joined with what it refers to.
#[derive(Debug, Clone)]
pub struct Event {
    pub pts: i64,
    pub kind: EventKind,
    pub conversation_id: ConversationId,
    pub created_at_ms: i64,
    pub message: Option<Message>,
    /// For member and conversation events: the stored details (user ids, title, …).
    pub details: Option<serde_json::Value>,
}

impl Event {
    /// The contract's Event JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("pts".into(), self.pts.into());
        obj.insert("type".into(), self.kind.name().into());
        // A DING is about people, not a conversation (its queue key is not one).
        let conversation = match self.kind {
            EventKind::Ding => ConversationId(0),
            _ => self.conversation_id,
        };
        obj.insert("conversation_id".into(), conversation.to_string().into());
        if let Some(m) = &self.message {
            obj.insert("message_id".into(), m.id.to_string().into());
            obj.insert("message".into(), m.to_json());
        }
        if let Some(serde_json::Value::Object(details)) = &self.details {
            for (k, v) in details {
                obj.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        obj.insert(
            "created_at".into(),
            crate::clock::rfc3339(self.created_at_ms).into(),
        );
        serde_json::Value::Object(obj)
    }
}
