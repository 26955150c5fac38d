//! Reading a member's stream: pages for `/sync`, and the `Feed` behind SSE and WebSocket.
//! A feed keeps a cursor (the last pts sent), reads the inbox after it, and sleeps on the hub
//! between commits. It buffers at most one page, and a client that falls too far behind is
//! told to `resync` and dropped instead of being buffered for.

use std::collections::VecDeque;
use std::time::Duration;

use crate::hub::Subscription;
use crate::ids::UserId;
use crate::model::Event;
use crate::store::StoreError;
use crate::AppState;

/// Events read per round trip by a live feed.
const FEED_PAGE: i64 = 256;
/// On PostgreSQL other herald processes' writes arrive as NOTIFY wake-ups
/// (`relay_peer_writes`); the poll covers only a notice lost while the listener reconnects.
const FEED_POLL_SHARED: Duration = Duration::from_secs(10);
/// With SQLite one process owns the store, so every write wakes the hub; the poll is only a
/// safety net and idle connections cost (almost) nothing.
const FEED_POLL_EMBEDDED: Duration = Duration::from_secs(30);

/// A page of `/sync`.
pub struct SyncPage {
    pub events: Vec<Event>,
    pub has_more: bool,
}

/// Events with pts > since, at most `limit`.
pub async fn read_page(
    app: &AppState,
    user: UserId,
    since: i64,
    limit: i64,
) -> Result<SyncPage, StoreError> {
    let mut events = app.store.read_events(user, since, limit + 1).await?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    Ok(SyncPage { events, has_more })
}

/// What a live connection sends next.
pub enum FeedItem {
    Event(Box<Event>),
    /// The client is too far behind: catch up with `/sync?since=…`, then reconnect.
    Resync {
        since: i64,
        reason: String,
    },
}

pub struct Feed {
    app: AppState,
    user: UserId,
    cursor: i64,
    buffer: VecDeque<Event>,
    subscription: Subscription,
    finished: bool,
}

impl Feed {
    /// Subscribes before the first read, so nothing committed after `since` can be missed.
    pub fn new(app: AppState, user: UserId, since: i64) -> Feed {
        let subscription = app.hub.subscribe(user);
        Feed {
            app,
            user,
            cursor: since,
            buffer: VecDeque::new(),
            subscription,
            finished: false,
        }
    }

    /// The next item, waiting for one if needed; `None` when the feed ends (shutdown, the user
    /// lost access, a store failure, or after a `Resync`). Cancel-safe.
    pub async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if self.finished
                || self.subscription.listener.is_kicked()
                || self.app.shutdown.is_cancelled()
            {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                self.cursor = event.pts;
                return Some(FeedItem::Event(Box::new(event)));
            }
            if let Some(event) = self.app.hub.recent_event(self.user, self.cursor + 1) {
                self.buffer.push_back(event);
                continue;
            }
            let page = match self
                .app
                .store
                .read_events(self.user, self.cursor, FEED_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(user.id = %self.user, error = %e, "feed read failed");
                    self.finished = true;
                    return None;
                }
            };
            if page.len() as i64 == FEED_PAGE {
                if let Some(resync) = self.check_lag().await {
                    self.finished = true;
                    return Some(resync);
                }
            }
            if page.is_empty() {
                self.wait().await;
            }
            self.buffer.extend(page);
        }
    }

    /// The last pts handed out.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    async fn check_lag(&self) -> Option<FeedItem> {
        let head = self.app.store.head_pts(self.user).await.ok()?;
        let lag = head - self.cursor;
        (lag > self.app.config.stream.max_lag_events).then(|| FeedItem::Resync {
            since: self.cursor,
            reason: format!(
                "{lag} events behind (limit {}); catch up with /api/v1/sync?since={} and reconnect",
                self.app.config.stream.max_lag_events, self.cursor
            ),
        })
    }

    fn poll_interval(&self) -> Duration {
        if self.app.config.uses_postgres() {
            FEED_POLL_SHARED
        } else {
            FEED_POLL_EMBEDDED
        }
    }

    async fn wait(&self) {
        tokio::select! {
            _ = self.subscription.listener.notify.notified() => {}
            _ = tokio::time::sleep(self.poll_interval()) => {}
            _ = self.app.shutdown.cancelled() => {}
        }
    }
}

/// Wakes this process's connections for inbox rows another process committed: the members of
/// the conversation who are connected here, and the extra users the notice names.
pub async fn relay_peer_writes(
    app: AppState,
    mut changes: tokio::sync::mpsc::Receiver<crate::store::InboxChange>,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => match change {
                Some(change) => change,
                None => return,
            },
            _ = app.shutdown.cancelled() => return,
        };
        let here = app.hub.subscribed_users();
        if here.is_empty() {
            continue;
        }
        match app
            .store
            .members_among(change.conversation, &here, &[])
            .await
        {
            Ok(members) => app.hub.wake(&members),
            Err(e) => tracing::warn!(error = %e, "could not relay a peer's inbox write"),
        }
        app.hub.wake(&change.users);
    }
}
