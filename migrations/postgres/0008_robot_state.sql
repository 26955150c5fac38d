-- What robots remember between webhooks (PostgreSQL).

-- The last finished conclusion of each CI job and branch a robot reported, for the
-- "on_conclusion_change" filter.
CREATE TABLE robot_ci_state (
    robot_id BIGINT NOT NULL,
    ci_key TEXT NOT NULL,
    conclusion TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (robot_id, ci_key)
);

-- Events each robot's sender delivered, posted or answered 2xx but not posted, by event name.
CREATE TABLE robot_stats (
    robot_id BIGINT NOT NULL,
    event TEXT NOT NULL,
    posted BIGINT NOT NULL,
    skipped BIGINT NOT NULL,
    PRIMARY KEY (robot_id, event)
);

-- What a grouped object's card keeps across updates when a later event lacks it (the
-- source manifest's keep_on_update), as a JSON object.
CREATE TABLE robot_card_fields (
    robot_id BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (robot_id, object_key)
);

-- Events of a burst about one grouped object, already rendered, waiting for the robot's burst
-- window to close; flushed rows stay a day so redeliveries are recognised.
CREATE TABLE robot_bursts (
    id BIGSERIAL PRIMARY KEY,
    robot_id BIGINT NOT NULL,
    org_id BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    msgtype TEXT NOT NULL,
    content TEXT NOT NULL,
    at_json TEXT NOT NULL,
    dedupe_key TEXT,
    flushed_at BIGINT
);
CREATE INDEX robot_bursts_waiting ON robot_bursts (robot_id, object_key, id) WHERE flushed_at IS NULL;
CREATE INDEX robot_bursts_due ON robot_bursts (due_at) WHERE flushed_at IS NULL;
CREATE INDEX robot_bursts_delivery ON robot_bursts (robot_id, dedupe_key);
CREATE INDEX robot_bursts_flushed ON robot_bursts (flushed_at);
