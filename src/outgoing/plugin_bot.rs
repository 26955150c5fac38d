//! Deliveries to bots that run a `herald:bot` plugin instead of calling a URL. Same queue, same
//! order, same retry policy and same attempt log as HTTP callbacks; only the attempt differs:
//! the plugin's `on-event` runs on a blocking thread (deadline, memory cap) with the callback
//! body an HTTP bot would get, and its replies are posted as the bot through
//! `reply::post_content`, the path of HTTP replies.

use std::time::Instant;

use crate::ids::PluginId;
use crate::outgoing::deliver::{Attempted, Verdict};
use crate::outgoing::reply;
use crate::plugin::{BotReply, PluginError};
use crate::store::{Attempt, Bot, ClaimedDelivery};
use crate::{clock, AppState};

/// How much of the replies (as JSON) the attempt log keeps.
const EXCERPT_BYTES: usize = 512;

/// One attempt: runs the plugin on the delivery's event and posts what it answered.
pub async fn deliver(
    app: &AppState,
    bot: &Bot,
    plugin: PluginId,
    d: &ClaimedDelivery,
) -> Attempted {
    let started = Instant::now();
    let at_ms = clock::now_ms();
    let ran = app
        .plugins
        .run_bot(
            app.store.as_ref(),
            bot.org_id,
            plugin,
            bot.config.clone(),
            d.payload.clone(),
        )
        .await;
    let (verdict, response, error) = match ran {
        Ok(replies) => {
            let error = post_replies(app, bot, d, &replies).await;
            (Verdict::Delivered { reply: None }, excerpt(&replies), error)
        }
        Err(e) => {
            tracing::info!(bot.id = %bot.id, plugin.id = %plugin, delivery.id = %d.id, error = %e, "bot plugin failed");
            (verdict(&e), None, Some(e.to_string()))
        }
    };
    Attempted {
        attempt: Attempt {
            at_ms,
            status: None,
            latency_ms: started.elapsed().as_millis() as i64,
            response,
            error,
        },
        verdict,
    }
}

/// Posts the replies in order; the first that cannot be posted is reported, the rest still go.
async fn post_replies(
    app: &AppState,
    bot: &Bot,
    d: &ClaimedDelivery,
    replies: &[BotReply],
) -> Option<String> {
    let mut error = None;
    for r in replies {
        let (content, at, thread) = (r.content.clone(), r.at.clone(), r.thread_key.clone());
        let posted = reply::post_content(app, bot, d.conversation_id, content, at, thread).await;
        if let (Err(e), None) = (posted, &error) {
            error = Some(format!("reply not posted: {e}"));
        }
    }
    error
}

/// Failures of the sandbox (a trap, the deadline, the memory cap, no free slot) are retried
/// like a callback that timed out; output that breaks the rules, or a plugin that is gone,
/// would fail again the same way.
fn verdict(e: &PluginError) -> Verdict {
    match e {
        PluginError::BadOutput(_) | PluginError::Invalid(_) | PluginError::Rejected { .. } => {
            Verdict::Fail
        }
        PluginError::Deadline(_)
        | PluginError::Memory(_)
        | PluginError::Trap(_)
        | PluginError::Busy
        | PluginError::Internal(_) => Verdict::Retry { after_ms: None },
    }
}

/// The replies as the attempt log shows them: `{"messages":[…]}`, cut to `EXCERPT_BYTES`.
fn excerpt(replies: &[BotReply]) -> Option<String> {
    let json = serde_json::json!({ "messages": replies }).to_string();
    let mut end = json.len().min(EXCERPT_BYTES);
    while !json.is_char_boundary(end) {
        end -= 1;
    }
    Some(json[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_failures_retry_and_broken_output_fails() {
        for e in [
            PluginError::Deadline(100),
            PluginError::Memory(64),
            PluginError::Trap("unreachable".into()),
            PluginError::Busy,
        ] {
            assert_eq!(verdict(&e), Verdict::Retry { after_ms: None }, "{e}");
        }
        for e in [
            PluginError::BadOutput("message 0: empty".into()),
            PluginError::Invalid("gone".into()),
        ] {
            assert_eq!(verdict(&e), Verdict::Fail, "{e}");
        }
    }

    #[test]
    fn the_excerpt_is_cut_on_a_character_boundary() {
        let long = BotReply {
            content: crate::model::Content::Text(crate::model::Text {
                content: "é".repeat(600),
            }),
            at: Default::default(),
            thread_key: None,
        };
        let cut = excerpt(&[long]).expect("excerpt");
        assert!(cut.len() <= EXCERPT_BYTES && cut.starts_with(r#"{"messages":[{"#));
    }
}
