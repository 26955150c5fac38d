-- What robots remember between webhooks (SQLite).

-- The last finished conclusion of each CI job and branch a robot reported, for the
-- "on_conclusion_change" filter.
CREATE TABLE robot_ci_state (
    robot_id INTEGER NOT NULL,
    ci_key TEXT NOT NULL,
    conclusion TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (robot_id, ci_key)
) WITHOUT ROWID;

-- Events each robot's sender delivered, posted or answered 2xx but not posted, by event name.
CREATE TABLE robot_stats (
    robot_id INTEGER NOT NULL,
    event TEXT NOT NULL,
    posted INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    PRIMARY KEY (robot_id, event)
) WITHOUT ROWID;

-- What a grouped object's card keeps across updates when a later event lacks it (the
-- source manifest's keep_on_update), as a JSON object.
CREATE TABLE robot_card_fields (
    robot_id INTEGER NOT NULL,
    object_key TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (robot_id, object_key)
) WITHOUT ROWID;
