-- Incoming robots (PostgreSQL).
CREATE TABLE robots (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    conversation_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    access_token TEXT NOT NULL UNIQUE,
    secret TEXT,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX robots_org ON robots (org_id, id);

CREATE TABLE robot_cards (
    robot_id BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (robot_id, object_key)
);
