-- WASM plugins (PostgreSQL). Components are stored once per content (sha256); each org's
-- registry rows name them. Rows are never changed: a new version is a new row.
CREATE TABLE plugin_blobs (
    sha256 TEXT PRIMARY KEY,
    wasm BYTEA NOT NULL
);

CREATE TABLE plugins (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    world TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name, version)
);
CREATE INDEX plugins_org ON plugins (org_id, id);
