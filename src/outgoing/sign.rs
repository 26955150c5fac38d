//! Callback signatures: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) and DingTalk's outgoing-robot `timestamp` + `sign`. Signatures cover
//! the exact body bytes sent. Pinned to the fixed vector of `fixtures/REPLAY.md`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every bot secret, as Standard Webhooks libraries expect it.
pub const SECRET_PREFIX: &str = "whsec_";

/// A fresh secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        STANDARD.encode(rand::random::<[u8; 32]>())
    )
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A purpose-bound key derived from herald's signing key (e.g. for sessionWebhook tokens).
pub fn derive_key(master: &[u8], purpose: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(master).unwrap_or_else(|_| unreachable!());
    mac.update(purpose);
    mac.finalize().into_bytes().to_vec()
}

/// One `v1,<base64>` entry: HMAC-SHA256 keyed with the base64-decoded secret over
/// `id.timestamp.body`.
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .ok()?;
    let ts = timestamp.to_string();
    let sig = hmac(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    Some(format!("v1,{sig}"))
}

/// DingTalk's `sign`: base64(HMAC-SHA256(key = secret string, `timestamp + "\n" + secret`)).
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let text = format!("{timestamp_ms}\n{secret}");
    hmac(secret.as_bytes(), &[text.as_bytes()])
}

/// The headers of one callback attempt.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    pub webhook_id: String,
    pub webhook_timestamp: String,
    /// Space-separated `v1,…` entries: the current secret first, then one still in overlap.
    pub webhook_signature: String,
    pub timestamp_ms: String,
    pub sign: String,
}

/// Signs `body` with the current secret and, during a rotation's overlap, the previous one.
pub fn sign(secrets: &[&str], webhook_id: &str, now_ms: i64, body: &[u8]) -> SignedHeaders {
    let seconds = now_ms.div_euclid(1000);
    let signatures: Vec<String> = secrets
        .iter()
        .filter_map(|s| standard_signature(s, webhook_id, seconds, body))
        .collect();
    let current = secrets.first().copied().unwrap_or_default();
    SignedHeaders {
        webhook_id: webhook_id.to_string(),
        webhook_timestamp: seconds.to_string(),
        webhook_signature: signatures.join(" "),
        timestamp_ms: now_ms.to_string(),
        sign: dingtalk_sign(current, now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_fixed_vector() {
        let sig = standard_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn secrets_have_the_prefix_and_32_bytes() {
        let s = generate_secret();
        let raw = STANDARD
            .decode(s.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn rotation_signs_with_both_and_dingtalk_with_the_current() {
        let (new, old) = (generate_secret(), generate_secret());
        let h = sign(&[&new, &old], "msg_1", 1_700_000_000_123, b"{}");
        assert_eq!(h.webhook_timestamp, "1700000000");
        assert_eq!(h.webhook_signature.split(' ').count(), 2);
        assert_eq!(h.sign, dingtalk_sign(&new, 1_700_000_000_123));
    }
}
