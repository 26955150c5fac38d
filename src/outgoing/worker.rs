//! The delivery worker. `dispatch_loop` leases due deliveries and runs each under its bot's
//! own semaphore, so a slow or dead bot only ever waits on itself; `record_loop` writes the
//! attempts back in batches (one transaction for many callbacks) and schedules retries.
//! A crash between a callback and its record redelivers it with the same `webhook-id`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outgoing::deliver::{self, Verdict};
use crate::outgoing::{plugin_bot, reply};
use crate::store::{Bot, ClaimedDelivery, DeliveryClaim, DeliveryOutcome, NextStep};
use crate::{clock, AppState};

/// Deliveries leased per claim.
const CLAIM_BATCH: i64 = 512;
/// Re-check for due retries (and deliveries queued by another process) at least this often.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Outcomes written per transaction.
const RECORD_BATCH: usize = 512;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER_MS: i64 = 24 * 3600 * 1000;

/// Spawns the dispatcher and the recorder; both stop on `shutdown`.
pub fn spawn(app: AppState, shutdown: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::unbounded_channel();
    vec![
        tokio::spawn(dispatch_loop(app.clone(), tx, shutdown.clone())),
        tokio::spawn(record_loop(app, rx, shutdown)),
    ]
}

/// Leases due deliveries and starts them until shutdown.
pub async fn dispatch_loop(
    app: AppState,
    results: mpsc::UnboundedSender<DeliveryOutcome>,
    shutdown: CancellationToken,
) {
    if let Err(e) = app.store.release_delivery_leases().await {
        tracing::warn!(error = %e, "releasing delivery leases failed");
    }
    while !shutdown.is_cancelled() {
        let claimed = match claim(&app).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claiming deliveries failed");
                Vec::new()
            }
        };
        let full = claimed.len() as i64 == CLAIM_BATCH;
        for delivery in claimed {
            let (app, results) = (app.clone(), results.clone());
            let slots = app.outgoing.slots(delivery.bot_id);
            // Take the slot before spawning so the next claim sees the bot as busy.
            let permit = slots.clone().try_acquire_owned().ok();
            tokio::spawn(async move {
                let _permit = match permit {
                    Some(p) => p,
                    None => match slots.acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let outcome = run_delivery(&app, delivery).await;
                let _ = results.send(outcome);
            });
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = app.outgoing.wake.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

async fn claim(app: &AppState) -> Result<Vec<ClaimedDelivery>, crate::store::StoreError> {
    let now = clock::now_ms();
    let config = &app.outgoing.config;
    // A claim takes at most `per_bot` per bot, so one waits for a slot at most one timeout.
    let lease_ms = (config.timeout_ms as i64) * 2 + 10_000;
    let request = DeliveryClaim {
        now_ms: now,
        lease_until_ms: now + lease_ms,
        per_bot: config.concurrency_per_bot as i64,
        limit: CLAIM_BATCH,
        exclude: app.outgoing.saturated(),
    };
    app.store.claim_deliveries(&request).await
}

/// One attempt and what follows from it, including posting a synchronous reply.
async fn run_delivery(app: &AppState, d: ClaimedDelivery) -> DeliveryOutcome {
    let bot = match app.outgoing.bot(app.store.as_ref(), d.bot_id).await {
        Ok(Some(bot)) => bot,
        Ok(None) => return gone(&d, "the bot was deleted"),
        Err(e) => return gone(&d, &format!("loading the bot: {e}")),
    };
    let attempted = match bot.plugin_id {
        Some(plugin) => plugin_bot::deliver(app, &bot, plugin, &d).await,
        None => deliver_http(app, &bot, &d).await,
    };
    let next = next_step(
        &attempted.verdict,
        d.attempts,
        &app.outgoing.config.retry_schedule_seconds,
        clock::now_ms(),
    );
    tracing::debug!(delivery.id = %d.id, bot.id = %d.bot_id, ?next, "callback attempt");
    DeliveryOutcome {
        delivery_id: d.id,
        bot_id: d.bot_id,
        attempt: attempted.attempt,
        next,
    }
}

/// A signed callback, and its synchronous reply posted as the bot.
async fn deliver_http(app: &AppState, bot: &Bot, d: &ClaimedDelivery) -> deliver::Attempted {
    let mut attempted = deliver::deliver(&app.outgoing, bot, d).await;
    if let Verdict::Delivered { reply: Some(body) } = &attempted.verdict {
        if let Err(e) = reply::post_reply(app, bot, d.conversation_id, body).await {
            attempted.attempt.error = Some(format!("reply not posted: {e}"));
        }
    }
    attempted
}

fn gone(d: &ClaimedDelivery, why: &str) -> DeliveryOutcome {
    DeliveryOutcome {
        delivery_id: d.id,
        bot_id: d.bot_id,
        attempt: crate::store::Attempt {
            at_ms: clock::now_ms(),
            status: None,
            latency_ms: 0,
            response: None,
            error: Some(why.to_string()),
        },
        next: NextStep::Failed,
    }
}

/// After attempt number `previous + 1`: done, failed, or retried after the schedule's next
/// delay (±20% jitter) or the answer's `Retry-After`, whichever is later.
pub fn next_step(verdict: &Verdict, previous: i64, schedule: &[f64], now_ms: i64) -> NextStep {
    let after_ms = match verdict {
        Verdict::Delivered { .. } => return NextStep::Delivered,
        Verdict::Fail => return NextStep::Failed,
        Verdict::Retry { after_ms } => after_ms,
    };
    let Some(delay) = schedule.get(previous.max(0) as usize) else {
        return NextStep::Failed;
    };
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    let mut wait = (delay * 1000.0 * jitter) as i64;
    if let Some(after) = after_ms {
        wait = wait.max((*after).min(MAX_RETRY_AFTER_MS));
    }
    NextStep::RetryAt(now_ms + wait)
}

/// Writes outcomes in batches, frees the bots' places in line, and tells admins about bots
/// that were just disabled.
pub async fn record_loop(
    app: AppState,
    mut results: mpsc::UnboundedReceiver<DeliveryOutcome>,
    shutdown: CancellationToken,
) {
    let disable_after_ms = app.outgoing.config.disable_after_seconds as i64 * 1000;
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    loop {
        let first = tokio::select! {
            got = results.recv() => got,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < RECORD_BATCH {
            match results.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        record(&app, &mut batch, disable_after_ms).await;
    }
}

async fn record(app: &AppState, batch: &mut Vec<DeliveryOutcome>, disable_after_ms: i64) {
    let mut tries = 0;
    let disabled = loop {
        match app
            .store
            .record_deliveries(batch, clock::now_ms(), disable_after_ms)
            .await
        {
            Ok(disabled) => break disabled,
            Err(e) if tries < 5 => {
                tries += 1;
                tracing::warn!(error = %e, "recording deliveries failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            // Unrecorded deliveries stay leased and are sent again after the lease.
            Err(e) => {
                tracing::error!(error = %e, "recording deliveries failed; they will be redelivered");
                break Vec::new();
            }
        }
    };
    batch.clear();
    app.outgoing.wake.notify_one();
    for bot in disabled {
        app.outgoing.forget(bot.id);
        tracing::warn!(bot.id = %bot.id, "bot disabled after failing continuously");
        if let Err(e) = reply::announce_disabled(app, &bot).await {
            tracing::warn!(bot.id = %bot.id, error = %e, "telling admins failed");
        }
    }
}

/// A handle the API uses to nudge the dispatcher after queuing redeliveries.
pub fn wake(app: &AppState) {
    app.outgoing.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_then_fail() {
        let schedule = [5.0, 300.0];
        let retry = Verdict::Retry { after_ms: None };
        match next_step(&retry, 0, &schedule, 0) {
            NextStep::RetryAt(at) => assert!((4000..=6000).contains(&at)),
            other => panic!("{other:?}"),
        }
        match next_step(&retry, 1, &schedule, 0) {
            NextStep::RetryAt(at) => assert!((240_000..=360_000).contains(&at)),
            other => panic!("{other:?}"),
        }
        assert_eq!(next_step(&retry, 2, &schedule, 0), NextStep::Failed);
        assert_eq!(next_step(&Verdict::Fail, 0, &schedule, 0), NextStep::Failed);
        let later = Verdict::Retry {
            after_ms: Some(60_000),
        };
        assert_eq!(
            next_step(&later, 0, &schedule, 0),
            NextStep::RetryAt(60_000)
        );
    }

    #[test]
    fn the_default_schedule_spans_a_day() {
        let total: f64 = crate::config::Config::defaults()
            .outgoing
            .retry_schedule_seconds
            .iter()
            .sum();
        assert!(total >= 24.0 * 3600.0);
    }
}
