//! Verify: the trust boundary. Only `verify` turns a `RawWebhook<Unverified>` into a
//! `RawWebhook<Verified>`, and adapters accept nothing else. Signatures are checked over the raw
//! bytes as received, secrets are compared in constant time.

use std::net::IpAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ingress::{RawWebhook, Unverified, Verified};
use crate::robot::RobotKind;

/// DingTalk accepts a signed timestamp for one hour (its client reuses one signature that long).
pub const SIGN_WINDOW_MS: i64 = 3_600_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    #[error("ip {0} not in whitelist")]
    IpNotAllowed(IpAddr),
    #[error("sign not match")]
    SignMismatch,
    #[error("missing timestamp or sign")]
    SignMissing,
    #[error("invalid timestamp")]
    TimestampInvalid,
    #[error("{0}")]
    Signature(String),
}

/// The signature scheme a robot's sender uses: one enum, matched in one place.
enum Scheme<'a> {
    /// DingTalk: `sign` = base64(HMAC-SHA256(secret, "timestamp\nsecret")) in the query.
    DingTalk(&'a str),
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
    GitHub(&'a str),
    /// GitLab: `X-Gitlab-Token` is the secret itself.
    GitLabToken(&'a str),
    /// A shared secret as `Authorization: Bearer …` (Alertmanager, Grafana, Slack senders).
    Bearer(&'a str),
    /// The URL's access token is the only credential.
    TokenOnly,
}

fn scheme_of(raw: &RawWebhook<Unverified>) -> Scheme<'_> {
    let robot = &raw.robot;
    let secret = robot.secret.as_deref().filter(|s| !s.is_empty());
    match (robot.kind, secret) {
        (RobotKind::Custom, Some(s)) if robot.spec.security.sign => Scheme::DingTalk(s),
        (RobotKind::Github, Some(s)) => Scheme::GitHub(s),
        (RobotKind::Gitlab, Some(s)) => Scheme::GitLabToken(s),
        (RobotKind::Alertmanager | RobotKind::Grafana | RobotKind::Slack, Some(s)) => {
            Scheme::Bearer(s)
        }
        _ => Scheme::TokenOnly,
    }
}

/// Checks the sender's address and signature.
pub fn verify(
    raw: RawWebhook<Unverified>,
    now_ms: i64,
) -> Result<RawWebhook<Verified>, VerifyError> {
    check_ip(&raw)?;
    match scheme_of(&raw) {
        Scheme::DingTalk(secret) => check_dingtalk(&raw, secret, now_ms)?,
        Scheme::GitHub(secret) => check_github(&raw, secret)?,
        Scheme::GitLabToken(secret) => check_header_secret(&raw, "x-gitlab-token", secret, "")?,
        Scheme::Bearer(secret) => check_header_secret(&raw, "authorization", secret, "Bearer ")?,
        Scheme::TokenOnly => {}
    }
    Ok(raw.into_verified())
}

fn check_ip(raw: &RawWebhook<Unverified>) -> Result<(), VerifyError> {
    let ranges = &raw.robot.spec.security.ip_ranges;
    if ranges.is_empty() {
        return Ok(());
    }
    let peer = raw.peer;
    let allowed = ranges
        .iter()
        .filter_map(|r| parse_range(r))
        .any(|net| net.contains(&peer));
    if allowed {
        Ok(())
    } else {
        Err(VerifyError::IpNotAllowed(peer))
    }
}

/// A CIDR range or a single address.
pub fn parse_range(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// DingTalk's `timestamp + "\n" + secret` signature, base64.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn check_dingtalk(
    raw: &RawWebhook<Unverified>,
    secret: &str,
    now_ms: i64,
) -> Result<(), VerifyError> {
    let (Some(ts), Some(sign)) = (raw.query.get("timestamp"), raw.query.get("sign")) else {
        return Err(VerifyError::SignMissing);
    };
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| VerifyError::TimestampInvalid)?;
    if (now_ms - ts).abs() > SIGN_WINDOW_MS {
        return Err(VerifyError::TimestampInvalid);
    }
    let expected = dingtalk_sign(secret, ts);
    if bool::from(expected.as_bytes().ct_eq(sign.as_bytes())) {
        Ok(())
    } else {
        Err(VerifyError::SignMismatch)
    }
}

fn check_github(raw: &RawWebhook<Unverified>, secret: &str) -> Result<(), VerifyError> {
    let header = raw
        .header("x-hub-signature-256")
        .ok_or_else(|| VerifyError::Signature("missing X-Hub-Signature-256".into()))?;
    let hex = header.strip_prefix("sha256=").ok_or_else(|| {
        VerifyError::Signature("X-Hub-Signature-256 must start with sha256=".into())
    })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(&raw.body);
    let expected = crate::robot::hex(&mac.finalize().into_bytes());
    if bool::from(
        expected
            .as_bytes()
            .ct_eq(hex.trim().to_ascii_lowercase().as_bytes()),
    ) {
        Ok(())
    } else {
        Err(VerifyError::Signature(
            "X-Hub-Signature-256 does not match the body".into(),
        ))
    }
}

fn check_header_secret(
    raw: &RawWebhook<Unverified>,
    header: &str,
    secret: &str,
    prefix: &str,
) -> Result<(), VerifyError> {
    let given = raw.header(header).unwrap_or_default();
    let expected = format!("{prefix}{secret}");
    if !given.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(VerifyError::Signature(format!(
            "missing or wrong {header} header"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dingtalk_sign_matches_the_captured_client() {
        // From shared/fixtures/dingtalk/text.at-mobiles.json (DingtalkChatbot 1.5.7).
        let secret = "SEC0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let sign = dingtalk_sign(secret, 1795614918494);
        assert_eq!(sign, "F2BVpB4zv1xW9OZJ6/YVBPHxooDky3DNHX/AVetdH34=");
    }

    #[test]
    fn github_vector() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"It's a Secret to Everybody").unwrap();
        mac.update(b"Hello, World!");
        assert_eq!(
            crate::robot::hex(&mac.finalize().into_bytes()),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn ranges_accept_cidr_and_single_addresses() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(parse_range("10.0.0.0/8").unwrap().contains(&ip));
        assert!(parse_range("10.1.2.3").unwrap().contains(&ip));
        assert!(!parse_range("192.168.0.0/16").unwrap().contains(&ip));
    }
}
