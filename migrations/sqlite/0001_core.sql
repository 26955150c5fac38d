-- herald core schema (SQLite). Times are Unix milliseconds.
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE orgs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    mobile TEXT,
    email TEXT,
    staff_id TEXT,
    role TEXT NOT NULL,
    active INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX users_org ON users (org_id, id);
CREATE INDEX users_mobile ON users (mobile) WHERE mobile IS NOT NULL;

-- Each user's sync position: the pts of the last event written to their inbox.
CREATE TABLE user_pts (user_id INTEGER PRIMARY KEY, pts INTEGER NOT NULL);

CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    owner_id INTEGER NOT NULL,
    member_count INTEGER NOT NULL,
    single_key TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX conversations_org ON conversations (org_id, id);
CREATE UNIQUE INDEX conversations_single ON conversations (org_id, single_key) WHERE single_key IS NOT NULL;

CREATE TABLE members (
    conversation_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    sender_id TEXT NOT NULL,
    sender_kind TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    msgtype TEXT NOT NULL,
    content TEXT NOT NULL,
    at TEXT NOT NULL,
    thread_key TEXT,
    dedupe_key TEXT,
    recalled INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);

-- Dedupe keys are claimed at receive time, so a repeat is answered with the first message's id.
CREATE TABLE dedupe (
    conversation_id INTEGER NOT NULL,
    dedupe_key TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, dedupe_key)
) WITHOUT ROWID;

-- Membership and conversation events are stored once; inbox rows point at them.
CREATE TABLE conv_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    details TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- One row per member per event; (user_id, pts) is the sync stream.
CREATE TABLE inbox (
    user_id INTEGER NOT NULL,
    pts INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    ref_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, pts)
) WITHOUT ROWID;

-- The durable queue between the receive path and the fanout workers.
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX tasks_conversation ON tasks (conversation_id, id);

CREATE TABLE fanout_progress (
    task_id INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    PRIMARY KEY (task_id, chunk)
) WITHOUT ROWID;

CREATE TABLE dead_tasks (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    failed_at INTEGER NOT NULL
);
