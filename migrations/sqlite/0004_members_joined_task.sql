-- The task that announced a member's arrival: fanout writes a task's event only to members who
-- joined at or before it, so an event queued before someone joined never reaches them.
ALTER TABLE members ADD COLUMN joined_task INTEGER NOT NULL DEFAULT 0;
