//! The values DING storage takes and gives: DINGs with their recipients and provider
//! requests, re-sends, the SMS/voice outbox and digest batches. No SQL here.

use crate::alerts::policy::Channel;
use crate::ids::{ConversationId, DingId, IncidentId, OrgId, RobotId, UserId};
use crate::model::Sender;

/// A DING to send.
#[derive(Debug, Clone)]
pub struct NewDing {
    pub org: OrgId,
    pub sender: Sender,
    pub text: String,
    pub channel: Channel,
    pub incident: Option<IncidentId>,
    pub recipients: Vec<UserId>,
    pub now_ms: i64,
}

/// A DING as stored, with who has confirmed it and what the provider was asked.
#[derive(Debug, Clone)]
pub struct Ding {
    pub id: DingId,
    pub org_id: OrgId,
    pub sender: Sender,
    pub text: String,
    pub channel: Channel,
    pub incident_id: Option<IncidentId>,
    pub created_at_ms: i64,
    /// How often it went out: 1, plus one per re-send.
    pub sends: i64,
    pub last_sent_at_ms: i64,
    pub recipients: Vec<DingRecipient>,
    /// Its SMS/voice requests to the notification provider, oldest first.
    pub deliveries: Vec<ProviderRequest>,
}

/// One recipient of a DING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DingRecipient {
    pub user: UserId,
    pub confirmed_at_ms: Option<i64>,
    /// How often the DING reached them (re-sends go only to those who had not confirmed).
    pub sends: i64,
}

/// One SMS or call request for a recipient, with how its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRequest {
    pub user: UserId,
    /// Which send of the DING it belongs to (1: the first).
    pub send: i64,
    pub channel: Channel,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending or retrying).
    pub run_at_ms: i64,
    /// When the provider accepted it; -1: given up after the last attempt.
    pub sent_at_ms: Option<i64>,
}

impl ProviderRequest {
    /// `pending` (not tried yet), `retrying`, `sent` or `failed` (given up).
    pub fn status(&self) -> &'static str {
        match self.sent_at_ms {
            Some(-1) => "failed",
            Some(_) => "sent",
            None if self.attempts == 0 => "pending",
            None => "retrying",
        }
    }
}

/// A DING to send again, keeping its id, to those of `users` who have not confirmed it.
#[derive(Debug, Clone)]
pub struct Resend {
    pub ding: DingId,
    pub users: Vec<UserId>,
    /// The channel of this send (a re-send may escalate from the app to SMS or a call).
    pub channel: Channel,
    pub now_ms: i64,
}

/// An org's SMS/voice gateway.
#[derive(Debug, Clone)]
pub struct Notifier {
    pub url: String,
    pub secret: String,
}

/// One SMS or call to ask the provider for.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub org_id: OrgId,
    pub ding_id: DingId,
    pub user_id: UserId,
    pub channel: Channel,
    /// Which send of the DING this request belongs to (1: the first).
    pub send_no: i64,
    pub attempts: i64,
    pub mobile: Option<String>,
    pub text: String,
    pub incident_id: Option<IncidentId>,
    pub notifier: Option<Notifier>,
}

/// One line for a robot's digest.
#[derive(Debug, Clone)]
pub struct DigestLine {
    pub org: OrgId,
    pub robot: RobotId,
    pub robot_name: String,
    pub conversation: ConversationId,
    pub line: String,
    pub due_at_ms: i64,
    pub now_ms: i64,
}

/// A robot whose digest is due.
#[derive(Debug, Clone)]
pub struct DueDigest {
    pub robot: RobotId,
    pub org: OrgId,
    pub conversation: ConversationId,
    pub robot_name: String,
    pub due_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attempts: i64, sent_at_ms: Option<i64>) -> ProviderRequest {
        ProviderRequest {
            user: UserId(1),
            send: 1,
            channel: Channel::DingSms,
            attempts,
            last_error: None,
            run_at_ms: 0,
            sent_at_ms,
        }
    }

    #[test]
    fn a_provider_requests_status_follows_its_attempts() {
        assert_eq!(request(0, None).status(), "pending");
        assert_eq!(request(2, None).status(), "retrying");
        assert_eq!(request(3, Some(1_764_080_000_000)).status(), "sent");
        assert_eq!(request(8, Some(-1)).status(), "failed");
    }
}
