//! A small pool of warm instances for interpreted guests (components that import WASI: an
//! interpreter such as CPython inside). Instantiating one costs a large share of a call (the
//! benchmark measures both), so after a call that returned normally its instance is kept and
//! the next call of the same plugin reuses it; a compiled C or Rust guest instantiates in
//! microseconds and keeps getting a fresh instance per call.
//!
//! What a reused instance keeps is only the guest's own memory (module-level state of the same
//! plugin, in the same org: plugins are per org). Each call still gets its own robot's config,
//! log budget, deadline and the memory cap. An instance that failed in any way (trap, deadline,
//! memory cap) is dropped, never reused; one is also retired after `MAX_CALLS` calls, and idle
//! instances are capped per plugin and across plugins, since each holds a slot of the pooling
//! allocator.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::Store;

use super::{v0_1, Compiled, HostState, PluginError, PluginOutput, PluginRequest, Runtime};
use crate::plugin::lock;

/// Idle instances one plugin keeps.
const PER_PLUGIN: usize = 2;
/// Calls an instance serves before it is retired (bounds what a leaky guest accumulates).
const MAX_CALLS: u32 = 1000;

/// Idle instances across all plugins, against a maximum.
pub struct Budget {
    idle: AtomicUsize,
    max: usize,
}

impl Budget {
    /// A quarter of the instance slots may sit idle and warm.
    pub fn new(max_concurrent_calls: u32) -> Arc<Budget> {
        Arc::new(Budget {
            idle: AtomicUsize::new(0),
            max: (max_concurrent_calls as usize / 4).max(1),
        })
    }

    fn reserve(&self) -> bool {
        let reserved = self.idle.fetch_add(1, Ordering::AcqRel) < self.max;
        if !reserved {
            self.idle.fetch_sub(1, Ordering::AcqRel);
        }
        reserved
    }

    fn release(&self, n: usize) {
        self.idle.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One instance between calls.
pub struct Warm {
    store: Store<HostState>,
    adapter: v0_1::Adapter,
    calls: u32,
}

/// A plugin's idle instances.
pub struct WarmPool {
    idle: Mutex<Vec<Warm>>,
    budget: Arc<Budget>,
}

impl WarmPool {
    pub fn new(budget: Arc<Budget>) -> WarmPool {
        WarmPool {
            idle: Mutex::default(),
            budget,
        }
    }

    fn take(&self) -> Option<Warm> {
        let warm = lock(&self.idle).pop()?;
        self.budget.release(1);
        Some(warm)
    }

    /// Keeps an instance for the next call, if this plugin and the budget have room.
    fn put(&self, warm: Warm) {
        if warm.calls >= MAX_CALLS {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < PER_PLUGIN && self.budget.reserve() {
            idle.push(warm);
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        let n = lock(&self.idle).len();
        self.budget.release(n);
    }
}

impl Runtime {
    /// Runs `handle` in a warm instance of the plugin (or a new one), within the deadline and
    /// the memory cap; keeps the instance afterwards only if the call returned normally.
    pub(super) fn call_warm(
        &self,
        compiled: &Compiled,
        pre: &v0_1::AdapterPre<HostState>,
        state: HostState,
        request: &PluginRequest,
    ) -> Result<PluginOutput, PluginError> {
        let mut warm = match compiled.warm.take() {
            Some(warm) => warm,
            None => self.warm_instance(pre, state.guest_stderr)?,
        };
        // This call's robot: its config, its log budget. The guest's WASI resources (its
        // stdio handles) stay with the instance that holds them.
        let data = warm.store.data_mut();
        data.plugin = state.plugin;
        data.config = state.config;
        data.log_lines = 0;
        warm.store.set_epoch_deadline(self.deadline_ticks);
        let request = request.into();
        let result = warm.adapter.call_handle(&mut warm.store, &request);
        match result {
            Ok(result) => {
                warm.calls += 1;
                compiled.warm.put(warm);
                v0_1::output(result)
            }
            Err(e) => Err(self.classify(e, warm.store.data())),
        }
    }

    fn warm_instance(
        &self,
        pre: &v0_1::AdapterPre<HostState>,
        guest_stderr: bool,
    ) -> Result<Warm, PluginError> {
        let mut state = HostState::new("", Default::default());
        state.guest_stderr = guest_stderr;
        let mut store = Store::new(&self.engine, state);
        store.data_mut().limits.max_memory = self.memory_bytes;
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        match pre.instantiate(&mut store) {
            Ok(adapter) => Ok(Warm {
                store,
                adapter,
                calls: 0,
            }),
            Err(e) => Err(self.classify(e, store.data())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_idle_instances_across_plugins() {
        let budget = Budget::new(8);
        assert_eq!(budget.max, 2);
        assert!(budget.reserve());
        assert!(budget.reserve());
        assert!(!budget.reserve(), "a third idle instance is over budget");
        budget.release(1);
        assert!(budget.reserve());
        assert_eq!(budget.idle.load(Ordering::Acquire), 2);
    }
}
