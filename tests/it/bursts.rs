//! Burst coalescing through the real endpoint: a burst of events about one pull request within
//! the robot's window becomes one card update and one follow-up; a burst acknowledged just
//! before a kill -9 is still applied after the restart, and a redelivery of a coalesced event
//! adds nothing.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixtures::github_signature;
use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(a_burst_is_one_update_and_one_follow_up);

const WINDOW_SECONDS: u64 = 3;

async fn send(server: &Server, robot: &Value, event: &str, file: &str, delivery: &str) {
    let body = std::fs::read(crate::fixtures::dir("github").join(file)).unwrap();
    let url = format!(
        "{}/hooks/github/{}",
        server.base,
        robot["access_token"].as_str().unwrap()
    );
    let resp = server
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header(
            "x-hub-signature-256",
            github_signature(robot["secret"].as_str().unwrap(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{file}");
}

/// (message.created, message.updated) events the admin has seen.
async fn counts(server: &Server, admin: &str) -> (Vec<Value>, Vec<Value>) {
    let db = server.db().await;
    server.drain(&db).await;
    let events = server.sync_all(admin, 0).await;
    let of = |t: &str| {
        events
            .iter()
            .filter(|e| e["type"] == t)
            .map(|e| e["message"].clone())
            .collect::<Vec<_>>()
    };
    (of("message.created"), of("message.updated"))
}

/// Waits until the admin has seen `created` new messages, or fails after a generous deadline.
async fn wait_for(server: &Server, admin: &str, created: usize) -> (Vec<Value>, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(WINDOW_SECONDS + 20);
    loop {
        let seen = counts(server, admin).await;
        if seen.0.len() >= created || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_burst_is_one_update_and_one_follow_up(backend: Backend) {
    let mut server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let group = server.create_group(&admin, "dev", &[]).await;
    let (status, robot) = server
        .post(
            &admin,
            "/api/v1/robots",
            json!({"kind": "github", "name": "gh", "conversation_id": group,
                   "burst_seconds": WINDOW_SECONDS}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{robot}");
    send(
        &server,
        &robot,
        "pull_request",
        "pull_request.opened.json",
        "b-0",
    )
    .await;
    let burst = [
        ("pull_request", "pull_request.labeled.json"),
        ("pull_request", "pull_request.review_requested.json"),
        (
            "pull_request_review_comment",
            "pull_request_review_comment.created.json",
        ),
    ];
    for (i, (event, file)) in burst.iter().enumerate() {
        send(&server, &robot, event, file, &format!("b-{}", i + 1)).await;
    }
    let (created, updated) = counts(&server, &admin).await;
    assert_eq!(
        (created.len(), updated.len()),
        (1, 0),
        "the burst waits for its window"
    );
    let (created, updated) = wait_for(&server, &admin, 2).await;
    assert_eq!(created.len(), 2, "the card and one follow-up: {created:#?}");
    assert_eq!(updated.len(), 1, "one card update: {updated:#?}");
    assert_eq!(updated[0]["id"], created[0]["id"]);
    let follow_up = &created[1];
    assert_eq!(follow_up["thread_key"], created[0]["thread_key"]);
    let title = follow_up["markdown"]["title"].as_str().unwrap();
    assert!(title.starts_with("3 updates"), "{follow_up}");
    let card = updated[0].to_string();
    assert!(
        card.contains("comment"),
        "the card shows the latest event: {card}"
    );

    // A redelivery of a coalesced event adds nothing.
    send(
        &server,
        &robot,
        "pull_request",
        "pull_request.labeled.json",
        "b-1",
    )
    .await;
    // A new burst, acknowledged, then kill -9 before its window closes.
    send(
        &server,
        &robot,
        "pull_request",
        "pull_request.synchronize.json",
        "b-4",
    )
    .await;
    send(
        &server,
        &robot,
        "pull_request",
        "pull_request.assigned.json",
        "b-5",
    )
    .await;
    let before = counts(&server, &admin).await;
    server.restart().await;
    let (created, updated) = wait_for(&server, &admin, 3).await;
    assert_eq!(
        created.len(),
        3,
        "the acknowledged burst survives kill -9: {created:#?}"
    );
    assert!(
        updated.len() > before.1.len(),
        "the card was updated after the restart"
    );
    let title = created[2]["markdown"]["title"].as_str().unwrap();
    assert!(title.starts_with("2 updates"), "{:#}", created[2]);
    // Settle: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(WINDOW_SECONDS + 1)).await;
    assert_eq!(counts(&server, &admin).await.0.len(), 3);
}
