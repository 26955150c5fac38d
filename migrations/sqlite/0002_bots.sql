-- Outgoing bots (SQLite). Times are Unix milliseconds.
CREATE TABLE bots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    callback_url TEXT NOT NULL,
    secret TEXT NOT NULL,
    -- The secret before the last rotation, still signing until previous_secret_until.
    previous_secret TEXT,
    previous_secret_until INTEGER NOT NULL DEFAULT 0,
    triggers TEXT NOT NULL,
    keywords TEXT NOT NULL,
    events TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    -- Start of the current run of failures; NULL after a success.
    failing_since INTEGER,
    disabled_reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX bots_org ON bots (org_id, id);

CREATE TABLE bot_installs (
    bot_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, bot_id)
) WITHOUT ROWID;
CREATE INDEX bot_installs_bot ON bot_installs (bot_id, conversation_id);

-- One event for one bot: the durable delivery queue and its history.
-- state: 0 pending, 1 delivered, 2 failed.
CREATE TABLE bot_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bot_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX bot_deliveries_pending ON bot_deliveries (state, run_at) WHERE state = 0;
CREATE INDEX bot_deliveries_order ON bot_deliveries (bot_id, conversation_id, id) WHERE state = 0;
CREATE INDEX bot_deliveries_bot ON bot_deliveries (bot_id, id);

CREATE TABLE bot_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status INTEGER,
    latency_ms INTEGER NOT NULL,
    response TEXT,
    error TEXT
);
CREATE INDEX bot_attempts_delivery ON bot_attempts (delivery_id, id);

-- Per org: the group where admins are told about disabled bots.
CREATE TABLE bot_notice_groups (
    org_id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL
);
