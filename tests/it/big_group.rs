//! A 10,000-member group: one message lands in every inbox exactly once, each member's pts +1.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

use crate::harness::{assert_pts_gapless, on_both_backends, Backend, Server};

on_both_backends!(
    ten_thousand_members_get_one_row_each,
    overlapping_groups_fan_out_concurrently,
    batched_small_groups_keep_each_conversations_order,
    a_burst_to_a_large_group_fans_out_in_runs,
);

const MEMBERS: usize = 10_000;

async fn ten_thousand_members_get_one_row_each(backend: Backend) {
    // Chunks of 3,000 exercise the multi-chunk path (4 chunks for 10,001 members).
    let config = "[fanout]\nchunk_size = 3000\n[limits]\ngroup_messages_per_minute = 100000\n";
    let server = Server::start(backend, config).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "m", MEMBERS).await;
    let group = server.create_group(&admin, "everyone", &ids).await;
    let db = server.db().await;
    server.drain(&db).await;
    let before = heads(&db).await;

    let (status, body) = server.send_text(&admin, &group, "all hands at 10").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let message: i64 = body["id"].as_str().unwrap().parse().unwrap();
    server.drain(&db).await;

    let after = heads(&db).await;
    let rows = sqlx::query("SELECT user_id, pts FROM inbox WHERE kind = 1 AND ref_id = $1")
        .bind(message)
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        MEMBERS + 1,
        "one row per member (admin included)"
    );
    let mut seen = HashMap::new();
    for row in rows {
        let user: i64 = row.try_get("user_id").unwrap();
        let pts: i64 = row.try_get("pts").unwrap();
        assert!(
            seen.insert(user, pts).is_none(),
            "user {user} got the message twice"
        );
        assert_eq!(
            pts,
            before[&user] + 1,
            "user {user}: pts must advance by exactly one"
        );
        assert_eq!(
            after[&user], pts,
            "user {user}: the message is their newest event"
        );
    }
    for id in ids.iter().step_by(997) {
        let user: i64 = id.parse().unwrap();
        let token = server.token_for(&admin, id).await;
        let events = server.sync_all(&token, before[&user]).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["message"]["text"]["content"], "all hands at 10");
    }
    let plans: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM fanout_plans")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(plans, 0, "a finished task's chunk plan is removed with it");
    assert_pts_gapless(&db).await;
}

async fn heads(db: &sqlx::AnyPool) -> HashMap<i64, i64> {
    sqlx::query("SELECT user_id, pts FROM user_pts")
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.try_get("user_id").unwrap(), r.try_get("pts").unwrap()))
        .collect()
}

/// Four groups with the same 2,000 members fan out at once on four lanes: every pts counter is
/// bumped by concurrent transactions, which must neither deadlock nor lose or repeat a row.
async fn overlapping_groups_fan_out_concurrently(backend: Backend) {
    let config = "[fanout]\nlanes = 4\n[limits]\ngroup_messages_per_minute = 100000\n";
    let server = Server::start(backend, config).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "o", 2_000).await;
    let mut groups = Vec::new();
    for g in 0..4 {
        groups.push(server.create_group(&admin, &format!("g{g}"), &ids).await);
    }
    let db = server.db().await;
    server.drain(&db).await;
    let before = heads(&db).await;
    let posts = groups.iter().map(|group| {
        let (server, admin) = (&server, &admin);
        async move {
            for i in 0..15 {
                let (status, body) = server.send_text(admin, group, &format!("m{i}")).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
        }
    });
    futures::future::join_all(posts).await;
    server.drain(&db).await;
    let after = heads(&db).await;
    for id in &ids {
        let user: i64 = id.parse().unwrap();
        assert_eq!(
            after[&user] - before[&user],
            60,
            "user {user}: 4 groups × 15 messages"
        );
    }
    assert_pts_gapless(&db).await;
}

/// Three small overlapping groups on one lane, each posted to sequentially while the others
/// post too: the lane fans out runs of these messages in shared transactions. Every member
/// gets each of their groups' messages exactly once, in the order it was accepted, with no
/// gap in their pts.
async fn batched_small_groups_keep_each_conversations_order(backend: Backend) {
    let config = "[fanout]\nlanes = 1\n[limits]\ngroup_messages_per_minute = 100000\n";
    let server = Server::start(backend, config).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "b", 30).await;
    let spans = [(0, 20), (10, 30), (0, 30)];
    let mut groups = Vec::new();
    for (g, (from, to)) in spans.iter().enumerate() {
        groups.push(
            server
                .create_group(&admin, &format!("b{g}"), &ids[*from..*to])
                .await,
        );
    }
    let db = server.db().await;
    server.drain(&db).await;
    let before = heads(&db).await;
    let posts = groups.iter().enumerate().map(|(g, group)| {
        let (server, admin) = (&server, &admin);
        async move {
            for i in 0..40 {
                let (status, body) = server.send_text(admin, group, &format!("g{g} m{i}")).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
        }
    });
    futures::future::join_all(posts).await;
    server.drain(&db).await;
    for (n, id) in ids.iter().enumerate() {
        let user: i64 = id.parse().unwrap();
        let token = server.token_for(&admin, id).await;
        let events = server.sync_all(&token, before[&user]).await;
        let mut next = [0usize; 3];
        for event in &events {
            let text = event["message"]["text"]["content"].as_str().unwrap();
            let (g, i) = text.split_once(' ').unwrap();
            let g: usize = g[1..].parse().unwrap();
            assert_eq!(
                i,
                format!("m{}", next[g]),
                "user {n}: group {g} out of order"
            );
            next[g] += 1;
        }
        for (g, (from, to)) in spans.iter().enumerate() {
            let expected = if (*from..*to).contains(&n) { 40 } else { 0 };
            assert_eq!(next[g], expected, "user {n}: messages of group {g}");
        }
    }
    assert_pts_gapless(&db).await;
}

/// A burst to a group split into chunks: the messages queued behind the head ride in its
/// fanout (a run) instead of one fanout each. Every member still gets each message exactly
/// once, in each sender's order, with gapless pts; a member added mid-burst gets every message
/// accepted after they were and none accepted before.
async fn a_burst_to_a_large_group_fans_out_in_runs(backend: Backend) {
    let config = "[fanout]\nlanes = 1\nchunk_size = 100\nmin_parallel_chunk = 100\n\
                  [limits]\ngroup_messages_per_minute = 100000\nmin_group_messages_per_minute = 100000\n";
    let server =
        Server::start_logged(backend, config, Some("herald=warn,herald::fanout=debug")).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "r", 251).await;
    let (members, newcomer) = ids.split_at(250);
    let newcomer = &newcomer[0];
    let group = server.create_group(&admin, "burst", members).await;
    let db = server.db().await;
    server.drain(&db).await;
    let before = heads(&db).await;

    const SENDERS: usize = 4;
    const EACH: usize = 12;
    let accepted_before_join = std::sync::Mutex::new(Vec::new());
    let accepted_after_join = std::sync::Mutex::new(Vec::new());
    // Messages answered before the join was sent must not reach the newcomer; messages sent
    // after the join was answered must. Those in between may go either way.
    let join_sent = std::sync::atomic::AtomicBool::new(false);
    let is_joined = std::sync::atomic::AtomicBool::new(false);
    let senders = (0..SENDERS).map(|s| {
        let (server, admin, group) = (&server, &admin, &group);
        let (before_join, after_join, join_sent, is_joined) = (
            &accepted_before_join,
            &accepted_after_join,
            &join_sent,
            &is_joined,
        );
        async move {
            for i in 0..EACH {
                let text = format!("s{s} m{i}");
                let sent_after_join = is_joined.load(std::sync::atomic::Ordering::SeqCst);
                let (status, body) = server.send_text(admin, group, &text).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                let answered_before_join = !join_sent.load(std::sync::atomic::Ordering::SeqCst);
                if sent_after_join {
                    after_join.lock().unwrap().push(text);
                } else if answered_before_join {
                    before_join.lock().unwrap().push(text);
                }
            }
        }
    });
    let joiner = async {
        // Joins once the burst is under way.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        join_sent.store(true, std::sync::atomic::Ordering::SeqCst);
        let (status, body) = server
            .post(
                &admin,
                &format!("/api/v1/conversations/{group}/members"),
                json!({"user_ids": [newcomer]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        is_joined.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    futures::future::join(futures::future::join_all(senders), joiner).await;
    server.drain(&db).await;

    for (n, id) in ids.iter().enumerate().step_by(25) {
        let user: i64 = id.parse().unwrap();
        let token = server.token_for(&admin, id).await;
        let events = server
            .sync_all(&token, before.get(&user).copied().unwrap_or(0))
            .await;
        let texts: Vec<&str> = events
            .iter()
            .filter_map(|e| e["message"]["text"]["content"].as_str())
            .collect();
        if id == newcomer {
            for text in accepted_after_join.lock().unwrap().iter() {
                assert!(texts.contains(&text.as_str()), "the newcomer misses {text}");
            }
            for text in accepted_before_join.lock().unwrap().iter() {
                assert!(
                    !texts.contains(&text.as_str()),
                    "the newcomer got {text}, sent before they joined"
                );
            }
        } else {
            assert_eq!(
                texts.len(),
                SENDERS * EACH,
                "member {n}: every message once"
            );
        }
        let mut next = [0usize; SENDERS];
        let mut seen = std::collections::HashSet::new();
        for text in texts {
            assert!(seen.insert(text), "member {n} got {text} twice");
            let (s, i) = text.split_once(' ').unwrap();
            let (s, i): (usize, usize) = (s[1..].parse().unwrap(), i[1..].parse().unwrap());
            assert!(i >= next[s], "member {n}: sender {s} out of order");
            next[s] = i + 1;
        }
    }
    assert_pts_gapless(&db).await;
    let plans: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM fanout_plans")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(plans, 0, "finished runs leave no plans behind");
    assert!(
        server.log().contains("fanned out a run"),
        "the burst never formed a run: {}",
        server.log()
    );
}

/// PostgreSQL commits concurrent transactions out of id order, so a member can turn out to
/// have joined (by task id) between a run's head and its last message. They get exactly the
/// run's messages queued from their join on, at consecutive pts. The test stages that: a held
/// row lock stalls one fanout while three more messages queue up behind it, then one member's
/// join is moved between the second and the third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_joined_mid_run_gets_its_tail() {
    let config = "[fanout]\nlanes = 1\nchunk_size = 100\nmin_parallel_chunk = 100\n\
                  [limits]\ngroup_messages_per_minute = 100000\nmin_group_messages_per_minute = 100000\n";
    let server = Server::start_logged(
        Backend::Postgres,
        config,
        Some("herald=warn,herald::fanout=debug"),
    )
    .await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "j", 250).await;
    let group = server.create_group(&admin, "mid-run", &ids).await;
    let db = server.db().await;
    server.drain(&db).await;
    let before = heads(&db).await;
    let (blocker, late) = (&ids[0], &ids[200]);

    let mut lock = db.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT pts FROM user_pts WHERE user_id = {blocker} FOR UPDATE"
    ))
    .execute(&mut *lock)
    .await
    .unwrap();
    for text in ["a", "b", "c", "d"] {
        let (status, body) = server.send_text(&admin, &group, text).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        if text == "a" {
            // "a" is planned (alone) before the others are queued.
            wait_for_plans(&db, 1).await;
        }
    }
    // "a" is stuck behind the lock; "b", "c" and "d" wait in the queue, "b" at its head.
    let queued: Vec<i64> = sqlx::query_scalar("SELECT id FROM tasks ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        queued.len(),
        4,
        "all four are queued while the lock is held"
    );
    sqlx::query(&format!(
        "UPDATE members SET joined_task = {} WHERE user_id = {late}",
        queued[2]
    ))
    .execute(&db)
    .await
    .unwrap();
    lock.rollback().await.unwrap();
    server.drain(&db).await;

    let texts = |events: Vec<serde_json::Value>| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                e["message"]["text"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let late_user: i64 = late.parse().unwrap();
    let token = server.token_for(&admin, late).await;
    let got = texts(server.sync_all(&token, before[&late_user]).await);
    assert_eq!(
        got,
        ["a", "c", "d"],
        "the late member gets the run's tail only"
    );
    let other: i64 = ids[100].parse().unwrap();
    let token = server.token_for(&admin, &ids[100]).await;
    let got = texts(server.sync_all(&token, before[&other]).await);
    assert_eq!(got, ["a", "b", "c", "d"]);
    assert_pts_gapless(&db).await;
    assert!(
        server.log().contains("fanned out a run"),
        "b, c and d did not form a run: {}",
        server.log()
    );
}

/// Waits until `count` chunk plans are stored.
async fn wait_for_plans(db: &sqlx::AnyPool, count: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let plans: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM fanout_plans")
            .fetch_one(db)
            .await
            .unwrap();
        if plans >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no chunk plan was stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
