-- herald core schema (PostgreSQL). Times are Unix milliseconds.
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE orgs (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    mobile TEXT,
    email TEXT,
    staff_id TEXT,
    role TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX users_org ON users (org_id, id);
CREATE INDEX users_mobile ON users (mobile) WHERE mobile IS NOT NULL;

-- Each user's sync position. Half-empty pages let the hot +1 updates stay HOT.
CREATE TABLE user_pts (user_id BIGINT PRIMARY KEY, pts BIGINT NOT NULL) WITH (fillfactor = 50);

CREATE TABLE conversations (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    owner_id BIGINT NOT NULL,
    member_count BIGINT NOT NULL,
    single_key TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX conversations_org ON conversations (org_id, id);
CREATE UNIQUE INDEX conversations_single ON conversations (org_id, single_key) WHERE single_key IS NOT NULL;

CREATE TABLE members (
    conversation_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    id BIGINT PRIMARY KEY,
    org_id BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    sender_id TEXT NOT NULL,
    sender_kind TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    msgtype TEXT NOT NULL,
    content TEXT NOT NULL,
    at TEXT NOT NULL,
    thread_key TEXT,
    dedupe_key TEXT,
    recalled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);

CREATE TABLE dedupe (
    conversation_id BIGINT NOT NULL,
    dedupe_key TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, dedupe_key)
);

CREATE TABLE conv_events (
    id BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL,
    kind INTEGER NOT NULL,
    details TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE inbox (
    user_id BIGINT NOT NULL,
    pts BIGINT NOT NULL,
    kind INTEGER NOT NULL,
    conversation_id BIGINT NOT NULL,
    ref_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, pts)
);

CREATE TABLE tasks (
    id BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL,
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX tasks_conversation ON tasks (conversation_id, id);

CREATE TABLE fanout_progress (
    task_id BIGINT NOT NULL,
    chunk BIGINT NOT NULL,
    PRIMARY KEY (task_id, chunk)
);

CREATE TABLE dead_tasks (
    id BIGINT PRIMARY KEY,
    conversation_id BIGINT NOT NULL,
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    failed_at BIGINT NOT NULL
);
