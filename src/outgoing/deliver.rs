//! One callback attempt: stamp the sessionWebhook, sign the exact bytes, POST through the
//! guarded client (no redirects), and classify the answer. Never retries by itself; the
//! worker decides what happens next from the returned `Verdict`.

use std::net::IpAddr;
use std::time::Instant;

use crate::clock;
use crate::outgoing::{payload, reply, sign, ssrf, Outgoing};
use crate::store::{Attempt, Bot, ClaimedDelivery};

/// The most of a response herald reads (a reply body), and keeps for the attempt log.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const EXCERPT_BYTES: usize = 512;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 2xx; the body, if it is a DingTalk-format message, is the bot's reply.
    Delivered { reply: Option<serde_json::Value> },
    /// Timeout, connection error, 408, 429 or 5xx; `after_ms` from `Retry-After`.
    Retry { after_ms: Option<i64> },
    /// Any other answer: retrying would not help.
    Fail,
}

/// The result of one attempt, as recorded and as the worker acts on it.
pub struct Attempted {
    pub attempt: Attempt,
    pub verdict: Verdict,
}

/// Sends one delivery to its bot.
pub async fn deliver(out: &Outgoing, bot: &Bot, d: &ClaimedDelivery) -> Attempted {
    let started = Instant::now();
    let now = clock::now_ms();
    let finish =
        |status: Option<i32>, response: Option<String>, error: Option<String>, verdict| Attempted {
            attempt: Attempt {
                at_ms: now,
                status,
                latency_ms: started.elapsed().as_millis() as i64,
                response,
                error,
            },
            verdict,
        };
    if let Err(e) = check_literal_ip(out, &bot.callback_url) {
        return finish(None, None, Some(e), Verdict::Fail);
    }
    let body = stamp_session(out, bot, d, now);
    let webhook_id = format!("msg_{}", d.id);
    let h = sign::sign(&bot.signing_secrets(now), &webhook_id, now, body.as_bytes());
    let sent = out
        .client
        .post(&bot.callback_url)
        .header("content-type", "application/json")
        .header("webhook-id", h.webhook_id)
        .header("webhook-timestamp", h.webhook_timestamp)
        .header("webhook-signature", h.webhook_signature)
        .header("timestamp", h.timestamp_ms)
        .header("sign", h.sign)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            let verdict = if is_refusal(&e) {
                Verdict::Fail
            } else {
                Verdict::Retry { after_ms: None }
            };
            return finish(None, None, Some(describe(&e)), verdict);
        }
    };
    let status = response.status();
    let retry_after = retry_after_ms(response.headers());
    let text = match read_limited(response).await {
        Ok(text) => text,
        Err(e) => {
            let verdict = Verdict::Retry { after_ms: None };
            return finish(
                Some(status.as_u16() as i32),
                None,
                Some(describe(&e)),
                verdict,
            );
        }
    };
    let verdict = classify(status, retry_after, &text);
    let excerpt = excerpt(&text);
    finish(Some(status.as_u16() as i32), excerpt, None, verdict)
}

/// reqwest skips the resolver for an IP literal, so such URLs are checked here.
pub(crate) fn check_literal_ip(out: &Outgoing, url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad callback URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_matches(|c| c == '[' || c == ']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        ssrf::check_addrs(host, &[ip], &out.allow).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Message events carry a fresh sessionWebhook on every attempt.
fn stamp_session(out: &Outgoing, bot: &Bot, d: &ClaimedDelivery, now: i64) -> String {
    if !d.event.starts_with("message.") || d.event == "message.recalled" {
        return d.payload.clone();
    }
    let expires = now + out.config.session_webhook_ttl_seconds as i64 * 1000;
    let url = reply::session_url(out, bot.id, d.conversation_id, expires);
    payload::with_session(&d.payload, &url, expires).unwrap_or_else(|| d.payload.clone())
}

/// The verdict of an HTTP answer.
pub fn classify(status: reqwest::StatusCode, retry_after_ms: Option<i64>, body: &str) -> Verdict {
    if status.is_success() {
        return Verdict::Delivered {
            reply: parse_reply(body),
        };
    }
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        return Verdict::Retry {
            after_ms: retry_after_ms,
        };
    }
    Verdict::Fail
}

/// A body that is a DingTalk-format message: a JSON object with a `msgtype`.
fn parse_reply(body: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    value.get("msgtype")?.as_str()?;
    Some(value)
}

/// `Retry-After` in seconds or as an HTTP date, in milliseconds from now.
fn retry_after_ms(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(seconds) = value.trim().parse::<f64>() {
        return Some((seconds.max(0.0) * 1000.0) as i64);
    }
    let format = time::format_description::well_known::Rfc2822;
    let at = time::OffsetDateTime::parse(value.trim(), &format).ok()?;
    Some(((at.unix_timestamp() * 1000) - clock::now_ms()).max(0))
}

async fn read_limited(mut response: reqwest::Response) -> reqwest::Result<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn excerpt(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let mut end = text.len().min(EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_string())
}

/// Whether the SSRF guard refused the connection (then retrying cannot help).
fn is_refusal(e: &reqwest::Error) -> bool {
    describe(e).contains("callbacks may not go there")
}

/// The error with its causes, e.g. "error sending request: … connection refused".
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn answers_are_classified_like_svix() {
        assert_eq!(
            classify(
                StatusCode::OK,
                None,
                r#"{"msgtype":"text","text":{"content":"hi"}}"#
            ),
            Verdict::Delivered {
                reply: Some(serde_json::json!({"msgtype":"text","text":{"content":"hi"}}))
            }
        );
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None, ""),
            Verdict::Delivered { reply: None }
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(3000), ""),
            Verdict::Retry {
                after_ms: Some(3000)
            }
        );
        for retried in [408, 500, 502, 503] {
            let status = StatusCode::from_u16(retried).unwrap();
            assert!(matches!(classify(status, None, ""), Verdict::Retry { .. }));
        }
        for failed in [301, 400, 401, 404, 410] {
            let status = StatusCode::from_u16(failed).unwrap();
            assert_eq!(classify(status, None, ""), Verdict::Fail);
        }
    }
}
