-- Alert incidents, escalation policies, durable escalation timers and DINGs (PostgreSQL).
-- Times are Unix milliseconds.
CREATE TABLE escalation_policies (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX escalation_policies_org ON escalation_policies (org_id, id);

-- One row per incident. `open_key` is the sender's key while the incident is open and NULL
-- once resolved, so a sender's key has at most one open incident (NULLs never collide).
CREATE TABLE incidents (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    robot_id BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    incident_key TEXT NOT NULL,
    open_key TEXT,
    state TEXT NOT NULL,
    title TEXT NOT NULL,
    severity TEXT,
    labels TEXT NOT NULL,
    policy_id BIGINT,
    step BIGINT NOT NULL,
    round BIGINT NOT NULL,
    fire_count BIGINT NOT NULL,
    card TEXT,
    silenced_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE UNIQUE INDEX incidents_open ON incidents (robot_id, open_key);
CREATE INDEX incidents_key ON incidents (robot_id, incident_key, id);
CREATE INDEX incidents_org ON incidents (org_id, id);

CREATE TABLE incident_timeline (
    id BIGSERIAL PRIMARY KEY,
    incident_id BIGINT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    channel TEXT NOT NULL,
    details TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX incident_timeline_incident ON incident_timeline (incident_id, id);

-- The one pending timer of an incident: the next escalation step, an acknowledgement
-- timeout or the end of a silence. Claimed with a lease; firing deletes it in the same
-- transaction that writes its effects, so it fires once.
CREATE TABLE escalation_timers (
    incident_id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    step BIGINT NOT NULL,
    round BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX escalation_timers_due ON escalation_timers (due_at);

CREATE TABLE dings (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    text TEXT NOT NULL,
    channel TEXT NOT NULL,
    incident_id BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX dings_incident ON dings (incident_id) WHERE incident_id IS NOT NULL;

CREATE TABLE ding_recipients (
    ding_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    confirmed_at BIGINT,
    PRIMARY KEY (ding_id, user_id)
);
CREATE INDEX ding_recipients_user ON ding_recipients (user_id, ding_id);

-- On-call rotations: members, hand-off rule and overrides as one JSON spec.
CREATE TABLE rotations (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX rotations_org ON rotations (org_id, id);

-- Digest mode: a robot's batched alert lines, and when its next digest is due.
CREATE TABLE digest_items (
    id BIGSERIAL PRIMARY KEY,
    robot_id BIGINT NOT NULL,
    line TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX digest_items_robot ON digest_items (robot_id, id);

CREATE TABLE digest_timers (
    robot_id BIGINT PRIMARY KEY,
    org_id BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    robot_name TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);

-- Per-org SMS/voice gateway.
CREATE TABLE notification_providers (
    org_id BIGINT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- SMS and voice requests to the provider, written with the DING, sent after commit.
CREATE TABLE notification_outbox (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    ding_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    last_error TEXT,
    sent_at BIGINT
);
CREATE INDEX notification_outbox_due ON notification_outbox (run_at) WHERE sent_at IS NULL;
