-- Incoming robots (SQLite).
CREATE TABLE robots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    conversation_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    access_token TEXT NOT NULL UNIQUE,
    secret TEXT,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX robots_org ON robots (org_id, id);

-- The card message each grouped object (repo#PR, alert group) updates in place.
CREATE TABLE robot_cards (
    robot_id INTEGER NOT NULL,
    object_key TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (robot_id, object_key)
) WITHOUT ROWID;
