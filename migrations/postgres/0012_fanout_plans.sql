-- How a large group's fanout is split: the first user id of every chunk after the first
-- (contiguous user-id ranges, so concurrent chunks touch disjoint index pages). Written once
-- per task, before any chunk, so every run of the task splits its members the same way even
-- if the membership changes in between.
CREATE TABLE fanout_plans (
    task_id BIGINT PRIMARY KEY,
    bounds TEXT NOT NULL
);
