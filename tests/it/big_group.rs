//! A 10,000-member group: one message lands in every inbox exactly once, each member's pts +1.

use std::collections::HashMap;

use reqwest::StatusCode;
use sqlx::Row;

use crate::harness::{assert_pts_gapless, on_both_backends, Backend, Server};

on_both_backends!(
    ten_thousand_members_get_one_row_each,
    overlapping_groups_fan_out_concurrently,
    batched_small_groups_keep_each_conversations_order,
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
