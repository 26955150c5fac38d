//! A minimal herald outgoing bot in Rust (axum): verifies both signatures herald sends, then
//! answers every callback with a reply that herald posts into the conversation.
//!
//! ```sh
//! BOT_SECRET=whsec_… cargo run --example outgoing_bot -- 127.0.0.1:9000
//! ```
//! Register it with `POST /api/v1/bots {"callback_url": "http://127.0.0.1:9000/", …}` (a
//! loopback URL needs `outgoing.allow_cidrs = ["127.0.0.1/32"]` in herald's config).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// Callbacks older (or newer) than this are refused, as Standard Webhooks recommends.
const TOLERANCE_SECONDS: i64 = 300;

fn hmac_b64(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(base64-decoded secret, "id.ts.body")>`; any of
/// the space-separated signatures may match (during a secret rotation there are two).
fn standard_webhooks_ok(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let (Some(id), Some(ts), Some(sigs)) = (
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp"),
        header(headers, "webhook-signature"),
    ) else {
        return false;
    };
    let Ok(seconds) = ts.parse::<i64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (now - seconds).abs() > TOLERANCE_SECONDS {
        return false;
    }
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let expected = hmac_b64(
        &key,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body].concat(),
    );
    sigs.split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|sig| {
            sig.len() == expected.len()
                && sig.iter().zip(&expected).fold(0, |d, (a, b)| d | (a ^ b)) == 0
        })
}

/// DingTalk: `sign` = base64(HMAC-SHA256(key = secret string, `timestamp + "\n" + secret`)).
fn dingtalk_ok(secret: &str, headers: &HeaderMap) -> bool {
    let (Some(ts), Some(sign)) = (header(headers, "timestamp"), header(headers, "sign")) else {
        return false;
    };
    let expected = STANDARD.encode(hmac_b64(
        secret.as_bytes(),
        format!("{ts}\n{secret}").as_bytes(),
    ));
    expected == sign
}

async fn callback(State(secret): State<Arc<String>>, headers: HeaderMap, body: Bytes) -> Response {
    if !standard_webhooks_ok(&secret, &headers, &body) || !dingtalk_ok(&secret, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    // Membership events need no answer; messages get one.
    if !event["event"]
        .as_str()
        .unwrap_or_default()
        .starts_with("message.")
    {
        return StatusCode::NO_CONTENT.into_response();
    }
    let asked = event["text"]["content"].as_str().unwrap_or("(no text)");
    let who = event["senderNick"].as_str().unwrap_or("someone");
    // Later replies can go to event["sessionWebhook"] (valid until sessionWebhookExpiredTime).
    Json(json!({"msgtype": "text", "text": {"content": format!("{who} asked: {asked}")}}))
        .into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let secret = std::env::var("BOT_SECRET").map_err(|_| anyhow::anyhow!("set BOT_SECRET"))?;
    let app = axum::Router::new()
        .fallback(callback)
        .with_state(Arc::new(secret));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("bot listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
