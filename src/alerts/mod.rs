//! Alerts: incidents from alert robots, escalation by policy, and DINGs. The stages:
//!
//! 1. **incident** (`incident::observe`): on the receive path, an alerting robot's event
//!    opens, re-opens, counts, acknowledges or resolves the incident of its key, in one store
//!    transaction that also sets the incident's single pending timer.
//! 2. **card** (`card`): the alert card shows the incident's state and signed
//!    Acknowledge/Resolve buttons; a state change updates it in place (`message.updated`).
//! 3. **escalate** (`escalate::timer_loop`): the durable timer; a due step becomes DINGs, a
//!    re-send of an unconfirmed DING or a group message, written in the transaction that
//!    deletes the timer (a batch of due steps per transaction); a step outside its active
//!    hours (`window`) is skipped.
//! 4. **ding** (`ding`): a DING is a `ding` event in each recipient's inbox (through the core
//!    fanout) plus, for SMS and voice, signed requests to the org's notification provider
//!    (`ding::notify_loop`).
//! 5. **digest** (`digest`): low-severity events of a robot in digest mode become one message
//!    per interval, posted by the same timer task.
//! 6. **reply** (`reply::observe`): a member's "ack" / "resolve" in the group that
//!    @-mentions the alert robot, quotes the incident or answers in its thread.
//!
//! Nothing here sleeps in memory for a step: every wait is a row with its due time.

pub mod card;
pub mod digest;
pub mod ding;
pub mod escalate;
pub mod incident;
pub mod policy;
pub mod reply;
pub mod rotation;
pub mod window;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// The alert side's shared state: wake-ups and the key that signs card buttons.
pub struct Alerts {
    /// Rung when a timer may have become due sooner (an incident opened, re-opened, acked).
    pub timers: Notify,
    /// Rung when SMS/voice requests were queued.
    pub notify: Notify,
    action_key: Vec<u8>,
}

impl Alerts {
    pub fn new(signing_key: &[u8]) -> Alerts {
        Alerts {
            timers: Notify::new(),
            notify: Notify::new(),
            action_key: crate::outgoing::sign::derive_key(signing_key, b"herald incident action"),
        }
    }
}

/// Starts the escalation timer and the notification sender.
pub fn spawn(app: AppState, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(escalate::timer_loop(app.clone(), shutdown.clone())),
        tokio::spawn(ding::notify_loop(app, shutdown)),
    ]
}
