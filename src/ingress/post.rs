//! Posting as a robot: resolve mentions against the robot's conversation, apply its keyword and
//! rate rules, and queue the message through the same pipeline members use.

use crate::ids::{ConversationId, MessageId, UserId};
use crate::model::{At, Content, Message, Sender, SenderKind};
use crate::robot::Robot;
use crate::store::{Enqueued, StoreError};
use crate::{clock, AppState};

/// A message a robot is about to post.
#[derive(Debug)]
pub struct Outgoing {
    pub content: Content,
    pub at: At,
    pub dedupe_key: Option<String>,
    pub thread_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("keywords not in content")]
    KeywordMissing,
    #[error("send too fast, exceed {0} times per minute")]
    RateLimited(u32),
    #[error("the robot's conversation no longer exists")]
    ConversationGone,
    #[error("message too long, exceed {0} bytes")]
    TooLong(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks the robot's rules and queues the message. Returns its id (or the first one's, for a
/// repeated dedupe key).
pub async fn post(
    app: &AppState,
    robot: &Robot,
    outgoing: Outgoing,
) -> Result<Enqueued, PostError> {
    check_keywords(robot, &outgoing.content)?;
    let size = outgoing.content.body_string().len();
    if size > app.config.http.max_message_bytes {
        return Err(PostError::TooLong(app.config.http.max_message_bytes));
    }
    conversation_exists(app, robot).await?;
    let now = clock::now_ms();
    if !app.robot_limiter.admit(
        robot.id,
        robot.spec.rate_per_minute,
        robot.spec.throttle_seconds,
        now,
    ) {
        return Err(PostError::RateLimited(robot.spec.rate_per_minute));
    }
    let at = resolve_mentions(app, robot.conversation_id, outgoing.at).await?;
    let message = Message {
        id: MessageId(app.ids.next()),
        org_id: robot.org_id,
        conversation_id: robot.conversation_id,
        sender: Sender {
            id: robot.id.to_string(),
            kind: SenderKind::Robot,
            name: robot.name.clone(),
        },
        content: outgoing.content,
        at,
        thread_key: outgoing.thread_key,
        dedupe_key: outgoing
            .dedupe_key
            .map(|k| format!("robot:{}:{k}", robot.id)),
        recalled: false,
        created_at_ms: now,
    };
    Ok(crate::fanout::enqueue_and_wake(app, message).await?)
}

/// Updates a robot's card in place; false when it is gone (recalled or deleted). The card's
/// row is written when its post is queued, so a card still waiting for its fanout is found too.
pub async fn update_card(
    app: &AppState,
    robot: &Robot,
    card: MessageId,
    content: &Content,
) -> Result<bool, StoreError> {
    match app.store.update_message(robot.org_id, card, content).await {
        Ok(()) => {
            app.lanes.poke(robot.conversation_id);
            Ok(true)
        }
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A sender's delivery id, scoped to the robot (two robots may see the same id).
pub fn dedupe_key(robot: &Robot, key: &str) -> String {
    format!("robot:{}:{key}", robot.id)
}

/// Whether this delivery was already posted (a sender's redelivery).
pub async fn already_posted(
    app: &AppState,
    robot: &Robot,
    key: Option<&str>,
) -> Result<bool, StoreError> {
    let Some(key) = key else { return Ok(false) };
    let found = app
        .store
        .dedupe_lookup(robot.conversation_id, &dedupe_key(robot, key))
        .await?;
    Ok(found.is_some())
}

/// The robot's keyword rule: the content must contain one of its keywords, if it has any.
pub(crate) fn check_keywords(robot: &Robot, content: &Content) -> Result<(), PostError> {
    let keywords = &robot.spec.security.keywords;
    if keywords.is_empty() {
        return Ok(());
    }
    let text = content.plain_text();
    if keywords
        .iter()
        .any(|k| !k.is_empty() && text.contains(k.as_str()))
    {
        Ok(())
    } else {
        Err(PostError::KeywordMissing)
    }
}

async fn conversation_exists(app: &AppState, robot: &Robot) -> Result<(), PostError> {
    let known = &app.known_conversations;
    if known
        .exists(app.store.as_ref(), robot.org_id, robot.conversation_id)
        .await?
    {
        Ok(())
    } else {
        Err(PostError::ConversationGone)
    }
}

/// Mentions by id or mobile become mentions of the conversation's members; bots installed in
/// the conversation keep their chatbot ids. Every sender (members, robots, bots) goes through
/// here, so a stored `atUserIds` always names real members or bots.
pub async fn resolve_mentions(
    app: &AppState,
    conversation: ConversationId,
    at: At,
) -> Result<At, StoreError> {
    if at.at_user_ids.is_empty() && at.at_mobiles.is_empty() {
        return Ok(at);
    }
    let ids: Vec<UserId> = at
        .at_user_ids
        .iter()
        .filter_map(|s| s.parse().ok())
        .take(1000)
        .collect();
    let mobiles: Vec<String> = at.at_mobiles.iter().take(1000).cloned().collect();
    let found = app
        .store
        .members_among(conversation, &ids, &mobiles)
        .await?;
    let mut at_user_ids: Vec<String> = found.iter().map(|u| u.to_string()).collect();
    at_user_ids.extend(
        crate::outgoing::mentioned_bots(app.store.as_ref(), conversation, &at.at_user_ids).await?,
    );
    Ok(At {
        at_user_ids,
        at_mobiles: at.at_mobiles,
        is_at_all: at.is_at_all,
    })
}
