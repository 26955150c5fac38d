-- DING re-sends and provider delivery status (PostgreSQL).
-- A DING re-sent by a later escalation step keeps its id: `sends` counts how often it went out
-- (to anyone), a recipient's `sends` how often it reached them. Each provider request records
-- which send it belongs to, so a re-send is a new request with its own webhook id.
ALTER TABLE dings ADD COLUMN sends BIGINT NOT NULL DEFAULT 1;
ALTER TABLE dings ADD COLUMN last_sent_at BIGINT;
ALTER TABLE ding_recipients ADD COLUMN sends BIGINT NOT NULL DEFAULT 1;
ALTER TABLE notification_outbox ADD COLUMN send_no BIGINT NOT NULL DEFAULT 1;
-- `GET /api/v1/dings/{id}` lists a DING's provider requests.
CREATE INDEX notification_outbox_ding ON notification_outbox (ding_id, id);
