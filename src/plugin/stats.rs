//! Per-plugin call counters that survive a restart. A call only bumps an in-memory delta
//! (`Plugins::run`); `ingress::stats::flush_loop` adds the deltas to the store every second and
//! once more at shutdown, so counting never costs a webhook a database write. `GET /api/v1/plugins/{id}`
//! shows the stored counters plus the delta not flushed yet; a kill -9 loses at most the last
//! second's counts.

use super::{lock, PluginStats, Plugins};
use crate::ids::PluginId;
use crate::AppState;

impl PluginStats {
    /// Adds another count to this one (stored + pending).
    pub fn add(&mut self, other: &PluginStats) {
        self.calls += other.calls;
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.deadline_exceeded += other.deadline_exceeded;
        self.memory_exceeded += other.memory_exceeded;
        self.traps += other.traps;
        self.invalid_output += other.invalid_output;
    }
}

impl Plugins {
    /// Takes every pending delta, for the store.
    fn take_stats(&self) -> Vec<(PluginId, PluginStats)> {
        lock(&self.stats).drain().collect()
    }

    /// Puts deltas back after a failed write, to go with the next flush.
    fn restore_stats(&self, deltas: Vec<(PluginId, PluginStats)>) {
        let mut pending = lock(&self.stats);
        for (id, delta) in deltas {
            pending.entry(id).or_default().add(&delta);
        }
    }

    /// Forgets a deleted plugin: its compiled form and its pending counts.
    pub fn forget(&self, id: PluginId) {
        lock(&self.loaded).remove(&id);
        lock(&self.stats).remove(&id);
    }
}

/// Writes the pending counts to the store.
pub async fn flush(app: &AppState) {
    let _moving = app.plugins.flushing.write().await;
    let deltas = app.plugins.take_stats();
    if deltas.is_empty() {
        return;
    }
    if let Err(e) = app.store.add_plugin_stats(&deltas).await {
        tracing::warn!(error = %e, "saving plugin stats failed; retrying");
        app.plugins.restore_stats(deltas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn pending_counts_are_taken_restored_and_forgotten() {
        let plugins = Plugins::new(Config::defaults().plugins, std::env::temp_dir());
        let ok = PluginStats {
            calls: 1,
            ok: 1,
            ..Default::default()
        };
        let trap = PluginStats {
            calls: 1,
            traps: 1,
            ..Default::default()
        };
        plugins.restore_stats(vec![(PluginId(1), ok), (PluginId(1), trap)]);
        assert_eq!(plugins.stats(PluginId(1)).calls, 2);
        let taken = plugins.take_stats();
        assert_eq!(taken.len(), 1);
        assert_eq!(plugins.stats(PluginId(1)), PluginStats::default());
        plugins.restore_stats(taken);
        assert_eq!(plugins.stats(PluginId(1)).traps, 1);
        plugins.forget(PluginId(1));
        assert_eq!(plugins.stats(PluginId(1)), PluginStats::default());
    }
}
