//! The hub wakes live connections. Inbox rows are the truth and every connection reads them
//! after its own cursor, so a lost wake-up costs latency, not data. To spare a thousand
//! connections a thousand reads of the same new message, the hub also remembers each connected
//! user's newest event with its pts (`remember`): a connection whose cursor is exactly one
//! behind takes it from there; any other gap falls back to reading the inbox. A remembered
//! message is the message as posted: an edit or recall that raced its fanout follows as its
//! own event, so the client ends in the same state either way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::ids::UserId;
use crate::model::Event;

/// One live connection's doorbell.
#[derive(Default)]
pub struct Listener {
    pub notify: Notify,
    kicked: AtomicBool,
}

impl Listener {
    /// True once the user lost access (deactivated): the connection must end.
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }
}

#[derive(Default)]
pub struct Hub {
    listeners: Mutex<HashMap<UserId, Vec<Arc<Listener>>>>,
    count: AtomicUsize,
    /// Bumped by every subscription, so a fanout that decided nobody was listening can tell
    /// that someone subscribed while it ran.
    generation: AtomicU64,
    /// Connected users' newest committed event: its pts and the event (stored with pts 0).
    recent: Mutex<HashMap<UserId, (i64, Arc<Event>)>>,
}

/// Keeps a listener registered while a connection lives.
pub struct Subscription {
    hub: Arc<Hub>,
    user: UserId,
    pub listener: Arc<Listener>,
}

impl Hub {
    pub fn subscribe(self: &Arc<Self>, user: UserId) -> Subscription {
        let listener = Arc::new(Listener::default());
        self.lock().entry(user).or_default().push(listener.clone());
        self.count.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Subscription {
            hub: self.clone(),
            user,
            listener,
        }
    }

    /// Rings every connection of these users.
    pub fn wake(&self, users: &[UserId]) {
        if !self.has_listeners() {
            return;
        }
        let map = self.lock();
        for user in users {
            if let Some(list) = map.get(user) {
                for listener in list {
                    listener.notify.notify_one();
                }
            }
        }
    }

    /// Remembers a just-committed event for the connected users among `delivered` (each
    /// with the pts it got). Call after the commit and before `wake`.
    pub fn remember(&self, event: &Arc<Event>, delivered: &[(UserId, i64)]) {
        if !self.has_listeners() || delivered.is_empty() {
            return;
        }
        let listeners = self.lock();
        let mut recent = self.recent();
        for (user, pts) in delivered {
            if listeners.contains_key(user) {
                recent.insert(*user, (*pts, event.clone()));
            }
        }
    }

    /// The user's event at exactly `pts`, if it is the one remembered.
    pub fn recent_event(&self, user: UserId, pts: i64) -> Option<Event> {
        let recent = self.recent();
        let (at, event) = recent.get(&user)?;
        (*at == pts).then(|| Event {
            pts,
            ..Event::clone(event)
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (i64, Arc<Event>)>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The users with at least one live connection here.
    pub fn subscribed_users(&self) -> Vec<UserId> {
        self.lock().keys().copied().collect()
    }

    /// The subscription generation (see `wake_if_subscribed_since`).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A fanout that skipped collecting recipients (nobody was listening when it started) calls
    /// this after its commit: if anyone subscribed meanwhile, every connection re-reads its
    /// inbox. A spurious wake-up costs one read; a missed one would cost a poll interval.
    pub fn wake_if_subscribed_since(&self, generation: u64) {
        if self.generation() == generation {
            return;
        }
        for list in self.lock().values() {
            for listener in list {
                listener.notify.notify_one();
            }
        }
    }

    /// Ends every connection of a user who lost access.
    pub fn kick(&self, user: UserId) {
        if let Some(list) = self.lock().get(&user) {
            for listener in list {
                listener.kicked.store(true, Ordering::Release);
                listener.notify.notify_one();
            }
        }
    }

    /// Whether anyone is connected; fanout skips collecting recipients when nobody is.
    pub fn has_listeners(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<Arc<Listener>>>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.hub.lock();
        if let Some(list) = map.get_mut(&self.user) {
            list.retain(|l| !Arc::ptr_eq(l, &self.listener));
            if list.is_empty() {
                map.remove(&self.user);
                self.hub.recent().remove(&self.user);
            }
        }
        self.hub.count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_before_waiting_is_not_lost() {
        let hub = Arc::new(Hub::default());
        let sub = hub.subscribe(UserId(1));
        hub.wake(&[UserId(1)]);
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            sub.listener.notify.notified(),
        )
        .await
        .expect("the stored permit wakes the listener");
        drop(sub);
        assert!(!hub.has_listeners());
    }
}
