//! Robots recently looked up by access token, so a burst of webhooks reads its robot once
//! instead of once per request. An entry lives a few seconds, because another herald process
//! on a shared PostgreSQL may change the robot; this process drops every entry whenever it
//! changes a robot itself (create, update, rotate, delete), so its own changes apply at once.
//! Unknown tokens are not remembered: each costs a read, as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ids::{ConversationId, OrgId};
use crate::robot::Robot;
use crate::store::{Store, StoreError};

/// How long another process's change to a robot may go unseen here.
pub const TTL: Duration = Duration::from_secs(2);
/// Bounds memory under a flood of distinct valid tokens; past it the map starts over.
const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub struct KnownRobots {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, (Robot, Instant)>,
    /// Bumped by every local change, so a read that raced a change is not kept.
    generation: u64,
}

impl KnownRobots {
    /// The robot whose access token this is, from memory when seen in the last `TTL`.
    pub async fn by_token(
        &self,
        store: &dyn Store,
        token: &str,
    ) -> Result<Option<Robot>, StoreError> {
        let generation = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((robot, at)) = state.entries.get(token) {
                if at.elapsed() < TTL {
                    return Ok(Some(robot.clone()));
                }
            }
            state.generation
        };
        let robot = store.robot_by_token(token).await?;
        if let Some(robot) = &robot {
            self.remember(token, robot, generation);
        }
        Ok(robot)
    }

    /// Forgets every robot: called after this process changed one.
    pub fn forget_all(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.generation += 1;
        state.entries.clear();
    }

    fn remember(&self, token: &str, robot: &Robot, generation: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != generation {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES {
            state.entries.clear();
        }
        state
            .entries
            .insert(token.to_string(), (robot.clone(), Instant::now()));
    }
}

/// Conversations seen to exist. herald never deletes a conversation, so once seen, one stays
/// true for the life of the process and a robot's post needs no read to confirm its group is
/// there. (Whoever adds conversation deletion must forget the id here.)
#[derive(Default)]
pub struct KnownConversations {
    seen: Mutex<std::collections::HashSet<ConversationId>>,
}

impl KnownConversations {
    /// Whether the conversation exists in the org, from memory after the first yes.
    pub async fn exists(
        &self,
        store: &dyn Store,
        org: OrgId,
        id: ConversationId,
    ) -> Result<bool, StoreError> {
        if self.lock().contains(&id) {
            return Ok(true);
        }
        match store.get_conversation(org, id).await {
            Ok(_) => {
                let mut seen = self.lock();
                if seen.len() >= MAX_ENTRIES {
                    seen.clear();
                }
                seen.insert(id);
                Ok(true)
            }
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ConversationId>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}
