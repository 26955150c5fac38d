-- Outgoing bots (PostgreSQL). Times are Unix milliseconds.
CREATE TABLE bots (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    callback_url TEXT NOT NULL,
    secret TEXT NOT NULL,
    -- The secret before the last rotation, still signing until previous_secret_until.
    previous_secret TEXT,
    previous_secret_until BIGINT NOT NULL DEFAULT 0,
    triggers TEXT NOT NULL,
    keywords TEXT NOT NULL,
    events TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    -- Start of the current run of failures; NULL after a success.
    failing_since BIGINT,
    disabled_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX bots_org ON bots (org_id, id);

CREATE TABLE bot_installs (
    bot_id BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, bot_id)
);
CREATE INDEX bot_installs_bot ON bot_installs (bot_id, conversation_id);

-- One event for one bot: the durable delivery queue and its history.
-- state: 0 pending, 1 delivered, 2 failed.
CREATE TABLE bot_deliveries (
    id BIGSERIAL PRIMARY KEY,
    bot_id BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX bot_deliveries_pending ON bot_deliveries (state, run_at) WHERE state = 0;
CREATE INDEX bot_deliveries_order ON bot_deliveries (bot_id, conversation_id, id) WHERE state = 0;
CREATE INDEX bot_deliveries_bot ON bot_deliveries (bot_id, id);

CREATE TABLE bot_attempts (
    id BIGSERIAL PRIMARY KEY,
    delivery_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status INTEGER,
    latency_ms BIGINT NOT NULL,
    response TEXT,
    error TEXT
);
CREATE INDEX bot_attempts_delivery ON bot_attempts (delivery_id, id);

-- Per org: the group where admins are told about disabled bots.
CREATE TABLE bot_notice_groups (
    org_id BIGINT PRIMARY KEY,
    conversation_id BIGINT NOT NULL
);
