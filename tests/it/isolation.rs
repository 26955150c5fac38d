//! Tenancy: nothing of org A is visible to, or changeable by, org B; a deactivated user loses
//! access at once.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{on_both_backends, Backend, Server, Sse};

on_both_backends!(
    orgs_cannot_reach_each_other,
    deactivated_user_loses_access_at_once
);

async fn orgs_cannot_reach_each_other(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin_a = server.admin_token();
    let created: serde_json::Value =
        serde_json::from_str(&server.cli(&["org", "create", "acme"])).unwrap();
    assert_eq!(created["name"], "acme");
    let admin_b = server.cli(&["token", "issue", "--org", "acme", "--user", "admin"]);

    let a_users = server.create_users(&admin_a, "a", 2).await;
    let b_users = server.create_users(&admin_b, "b", 1).await;
    let a_group = server.create_group(&admin_a, "secret", &a_users).await;
    let (_, posted) = server.send_text(&admin_a, &a_group, "A only").await;
    let a_message = posted["id"].as_str().unwrap().to_string();

    // Reads.
    for path in [
        format!("/api/v1/users/{}", a_users[0]),
        format!("/api/v1/conversations/{a_group}"),
        format!("/api/v1/conversations/{a_group}/members"),
        format!("/api/v1/messages/{a_message}"),
    ] {
        let (status, body) = server.get(&admin_b, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (_, listed) = server.get(&admin_b, "/api/v1/users").await;
    let names: Vec<&str> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "b0"]);
    let (_, listed) = server.get(&admin_b, "/api/v1/conversations?all=true").await;
    assert_eq!(listed["conversations"], json!([]));
    // Writes.
    let (status, _) = server.send_text(&admin_b, &a_group, "intrusion").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(
            &admin_b,
            &format!("/api/v1/messages/{a_message}/recall"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(
            &admin_b,
            &format!("/api/v1/conversations/{a_group}/members"),
            json!({"user_ids": [b_users[0].clone()]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .call(
            Method::DELETE,
            &admin_b,
            &format!("/api/v1/conversations/{a_group}/members/{}", a_users[0]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(
            &admin_b,
            &format!("/api/v1/users/{}/deactivate", a_users[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(
            &admin_b,
            &format!("/api/v1/users/{}/tokens", a_users[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // B cannot pull A's users into B's groups either.
    let (status, body) = server
        .post(
            &admin_b,
            "/api/v1/conversations",
            json!({"title": "grab", "members": [a_users[0].clone()]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // B's admin has an empty stream: nothing of A leaked into it.
    let events = server.sync_all(&admin_b, 0).await;
    assert!(events.is_empty(), "{events:?}");
    // A is untouched.
    let (status, group) = server
        .get(&admin_a, &format!("/api/v1/conversations/{a_group}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(group["member_count"], 3);
}

async fn deactivated_user_loses_access_at_once(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "d", 2).await;
    let leaver = server.token_for(&admin, &ids[0]).await;
    let group = server.create_group(&admin, "team", &ids).await;
    let mut live = Sse::connect(&server, &leaver, Some(0)).await;
    let first = live
        .next(Duration::from_secs(10))
        .await
        .expect("conversation.created");
    assert_eq!(first.event, "conversation.created");

    let (status, body) = server
        .post(
            &admin,
            &format!("/api/v1/users/{}/deactivate", ids[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["left_conversations"], json!([group.clone()]));
    assert_eq!(body["user"]["active"], false);

    let (status, body) = server.get(&leaver, "/api/v1/sync").await;
    assert_eq!(
        (status, body["errcode"].as_i64()),
        (StatusCode::UNAUTHORIZED, Some(40100))
    );
    let (status, _) = server.send_text(&leaver, &group, "one more").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .post(
            &admin,
            &format!("/api/v1/users/{}/tokens", ids[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The open stream is closed.
    let mut ended = false;
    for _ in 0..20 {
        match live.next(Duration::from_secs(5)).await {
            None => {
                ended = true;
                break;
            }
            Some(_) => continue,
        }
    }
    assert!(ended, "the deactivated user's stream must end");
    // The others see the departure.
    let (_, conv) = server
        .get(&admin, &format!("/api/v1/conversations/{group}"))
        .await;
    assert_eq!(conv["member_count"], 2);
    let db = server.db().await;
    server.drain(&db).await;
    let events = server.sync_all(&admin, 0).await;
    let left = events
        .iter()
        .find(|e| e["type"] == "member.left")
        .expect("member.left");
    assert_eq!(left["reason"], "deactivated");
    assert_eq!(left["user_ids"], json!([ids[0].clone()]));
}
