-- Who a sender's login or an alert label value means: forge logins (source github/gitlab) and alert
-- label values (source alert) mapped to org members, so reviewers, assignees and owners get @-mentioned.
CREATE TABLE mention_map (
    org_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    external TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    PRIMARY KEY (org_id, source, external)
) WITHOUT ROWID;
