-- Per-plugin call counters (PostgreSQL), kept across restarts: herald adds each second's
-- counts (and once more at shutdown) to the plugin's row. Deleted with the plugin.
CREATE TABLE plugin_stats (
    plugin_id BIGINT PRIMARY KEY,
    calls BIGINT NOT NULL DEFAULT 0,
    ok BIGINT NOT NULL DEFAULT 0,
    rejected BIGINT NOT NULL DEFAULT 0,
    deadline_exceeded BIGINT NOT NULL DEFAULT 0,
    memory_exceeded BIGINT NOT NULL DEFAULT 0,
    traps BIGINT NOT NULL DEFAULT 0,
    invalid_output BIGINT NOT NULL DEFAULT 0
);
