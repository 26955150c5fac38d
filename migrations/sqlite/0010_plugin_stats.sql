-- Per-plugin call counters (SQLite), kept across restarts: herald adds each second's counts
-- (and once more at shutdown) to the plugin's row. Deleted with the plugin.
CREATE TABLE plugin_stats (
    plugin_id INTEGER PRIMARY KEY,
    calls INTEGER NOT NULL DEFAULT 0,
    ok INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    deadline_exceeded INTEGER NOT NULL DEFAULT 0,
    memory_exceeded INTEGER NOT NULL DEFAULT 0,
    traps INTEGER NOT NULL DEFAULT 0,
    invalid_output INTEGER NOT NULL DEFAULT 0
);
