-- Alert incidents, escalation policies, durable escalation timers and DINGs (SQLite).
-- Times are Unix milliseconds.
CREATE TABLE escalation_policies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX escalation_policies_org ON escalation_policies (org_id, id);

-- One row per incident. `open_key` is the sender's key while the incident is open and NULL
-- once resolved, so a sender's key has at most one open incident (NULLs never collide).
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    robot_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    incident_key TEXT NOT NULL,
    open_key TEXT,
    state TEXT NOT NULL,
    title TEXT NOT NULL,
    severity TEXT,
    labels TEXT NOT NULL,
    policy_id INTEGER,
    step INTEGER NOT NULL,
    round INTEGER NOT NULL,
    fire_count INTEGER NOT NULL,
    card TEXT,
    silenced_until INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE UNIQUE INDEX incidents_open ON incidents (robot_id, open_key);
CREATE INDEX incidents_key ON incidents (robot_id, incident_key, id);
CREATE INDEX incidents_org ON incidents (org_id, id);

CREATE TABLE incident_timeline (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    channel TEXT NOT NULL,
    details TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX incident_timeline_incident ON incident_timeline (incident_id, id);

-- The one pending timer of an incident: the next escalation step, an acknowledgement
-- timeout or the end of a silence. Claimed with a lease; firing deletes it in the same
-- transaction that writes its effects, so it fires once.
CREATE TABLE escalation_timers (
    incident_id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    round INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX escalation_timers_due ON escalation_timers (due_at);

CREATE TABLE dings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    text TEXT NOT NULL,
    channel TEXT NOT NULL,
    incident_id INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX dings_incident ON dings (incident_id) WHERE incident_id IS NOT NULL;

CREATE TABLE ding_recipients (
    ding_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    confirmed_at INTEGER,
    PRIMARY KEY (ding_id, user_id)
) WITHOUT ROWID;
CREATE INDEX ding_recipients_user ON ding_recipients (user_id, ding_id);

-- On-call rotations: members, hand-off rule and overrides as one JSON spec.
CREATE TABLE rotations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX rotations_org ON rotations (org_id, id);

-- Digest mode: a robot's batched alert lines, and when its next digest is due.
CREATE TABLE digest_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    robot_id INTEGER NOT NULL,
    line TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX digest_items_robot ON digest_items (robot_id, id);

CREATE TABLE digest_timers (
    robot_id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    robot_name TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    locked_until INTEGER NOT NULL
);

-- Per-org SMS/voice gateway.
CREATE TABLE notification_providers (
    org_id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- SMS and voice requests to the provider, written with the DING, sent after commit.
CREATE TABLE notification_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    ding_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    last_error TEXT,
    sent_at INTEGER
);
CREATE INDEX notification_outbox_due ON notification_outbox (run_at) WHERE sent_at IS NULL;
