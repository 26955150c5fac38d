//! The core story: people, a group, messages, recall and edit, membership changes, and the
//! errors a careless client runs into.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{assert_pts_gapless, on_both_backends, Backend, Server};

on_both_backends!(
    messages_reach_every_member_in_order,
    bad_input_gets_clear_errors,
    rate_limit_tightens
);

async fn messages_reach_every_member_in_order(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "member", 3).await;
    let alice = server.token_for(&admin, &ids[0]).await;
    let bob = server.token_for(&admin, &ids[1]).await;
    let group = server.create_group(&admin, "ops", &ids[..2]).await;

    let (status, posted) = server
        .post(&alice, &format!("/api/v1/conversations/{group}/messages"), json!({
            "msgtype": "markdown", "markdown": {"title": "deploy", "text": "## done"},
            "at": {"atMobiles": ["10000000001"], "atUserIds": [ids[2].clone()]}, "thread_key": "t1"
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{posted}");
    let message_id = posted["id"].as_str().unwrap().to_string();
    for (i, kind) in [
        json!({"msgtype": "text", "text": {"content": "plain"}}),
        json!({"msgtype": "link", "link": {"title": "t", "text": "x", "messageUrl": "https://example.com"}}),
        json!({"msgtype": "actionCard", "actionCard": {"title": "t", "text": "x", "btns": [{"title": "ok", "actionURL": "https://a"}]}}),
        json!({"msgtype": "feedCard", "feedCard": {"links": [{"title": "a", "messageURL": "https://a", "picURL": "https://p"}]}}),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = server.post(&bob, &format!("/api/v1/conversations/{group}/messages"), kind).await;
        assert_eq!(status, StatusCode::CREATED, "kind {i}: {body}");
    }
    // A repeated dedupe key answers with the first message and writes nothing new.
    let body = json!({"msgtype": "text", "text": {"content": "once"}, "dedupe_key": "k-1"});
    let (s1, first) = server
        .post(
            &bob,
            &format!("/api/v1/conversations/{group}/messages"),
            body.clone(),
        )
        .await;
    let (s2, again) = server
        .post(
            &bob,
            &format!("/api/v1/conversations/{group}/messages"),
            body,
        )
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["duplicate"], true);

    let db = server.db().await;
    server.drain(&db).await;
    let events = server.sync_all(&alice, 0).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "conversation.created");
    assert_eq!(types.iter().filter(|t| **t == "message.created").count(), 6);
    let pts: Vec<i64> = events.iter().map(|e| e["pts"].as_i64().unwrap()).collect();
    assert_eq!(pts, (1..=events.len() as i64).collect::<Vec<_>>());
    let first_message = &events[1]["message"];
    assert_eq!(first_message["id"], message_id.as_str());
    assert_eq!(first_message["msgtype"], "markdown");
    assert_eq!(first_message["markdown"]["title"], "deploy");
    assert_eq!(first_message["sender"]["kind"], "user");
    assert_eq!(first_message["thread_key"], "t1");
    // atMobiles resolved to the member; a non-member mention dropped.
    assert_eq!(first_message["at"]["atUserIds"], json!([ids[1].clone()]));

    // Recall: members get message.recalled and the content is gone everywhere.
    let (status, _) = server
        .post(
            &bob,
            &format!("/api/v1/messages/{message_id}/recall"),
            json!({}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only the sender or an admin recalls"
    );
    let (status, _) = server
        .post(
            &alice,
            &format!("/api/v1/messages/{message_id}/recall"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Edit another message in place.
    let edited = events[2]["message"]["id"].as_str().unwrap().to_string();
    let (status, body) = server
        .call(
            Method::PUT,
            &bob,
            &format!("/api/v1/messages/{edited}"),
            Some(json!({"msgtype": "text", "text": {"content": "edited"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Membership: add carol, remove bob.
    let (status, body) = server
        .post(
            &admin,
            &format!("/api/v1/conversations/{group}/members"),
            json!({"user_ids": [ids[2].clone()]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["member_count"], 4);
    let (status, _) = server
        .call(
            Method::DELETE,
            &admin,
            &format!("/api/v1/conversations/{group}/members/{}", ids[1]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.drain(&db).await;

    let last = *pts.last().unwrap();
    let later = server.sync_all(&alice, last).await;
    let types: Vec<&str> = later.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "message.recalled",
            "message.updated",
            "member.joined",
            "member.left"
        ]
    );
    assert_eq!(later[0]["message"]["recalled"], true);
    assert!(
        later[0]["message"].get("markdown").is_none(),
        "recalled content is not served"
    );
    assert_eq!(later[1]["message"]["text"]["content"], "edited");
    assert_eq!(later[2]["user_ids"], json!([ids[2].clone()]));
    assert_eq!(later[3]["reason"], "removed");
    // Bob saw his own removal, then nothing more from the group.
    let bob_events = server.sync_all(&bob, 0).await;
    assert_eq!(bob_events.last().unwrap()["type"], "member.left");
    let (status, body) = server.send_text(&bob, &group, "still here?").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], 40301);
    // Carol joined after the recall: her stream starts at member.joined.
    let carol = server.token_for(&admin, &ids[2]).await;
    let carol_events = server.sync_all(&carol, 0).await;
    assert_eq!(carol_events[0]["type"], "member.joined");
    // A recalled message is served without content.
    let (status, body) = server
        .get(&alice, &format!("/api/v1/messages/{message_id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["recalled"], true);
    assert!(body.get("markdown").is_none());
    // Pagination of lists.
    let (_, page) = server.get(&admin, "/api/v1/users?limit=2").await;
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = server
        .get(&admin, &format!("/api/v1/users?limit=10&cursor={cursor}"))
        .await;
    assert_eq!(rest["users"].as_array().unwrap().len(), 2);
    assert!(rest.get("next_cursor").is_none());
    assert_pts_gapless(&db).await;
}

async fn bad_input_gets_clear_errors(backend: Backend) {
    let server = Server::start(backend, "[http]\nmax_body_bytes = 65536\n").await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "u", 2).await;
    let outsider = server.token_for(&admin, &ids[1]).await;
    let group = server.create_group(&admin, "g", &ids[..1]).await;
    let path = format!("/api/v1/conversations/{group}/messages");

    let raw = |body: &'static str, ctype: &'static str| {
        server
            .http
            .post(format!("{}{}", server.base, path))
            .bearer_auth(&admin)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let r = raw("{not json", "application/json").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errcode"], 40001);
    assert!(body["errmsg"].as_str().unwrap().contains("JSON"));
    let r = raw("{}", "text/plain").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let cases = [
        (
            json!({"msgtype": "text"}),
            StatusCode::BAD_REQUEST,
            "missing",
        ),
        (
            json!({"msgtype": "video"}),
            StatusCode::BAD_REQUEST,
            "unknown msgtype",
        ),
        (
            json!({"msgtype": "text", "text": {"content": "  "}}),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            json!({"msgtype": "actionCard", "actionCard": {"title": "a", "text": "b"}}),
            StatusCode::BAD_REQUEST,
            "btns",
        ),
        (
            json!({"msgtype": "text", "text": {"content": "x"}, "surprise": 1}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            json!({"msgtype": "text", "text": {"content": "x".repeat(30_000)}}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, answer) = server.post(&admin, &path, body).await;
        assert_eq!(got, status, "{answer}");
        assert!(answer["errcode"].as_i64().unwrap() >= 40000, "{answer}");
        assert!(
            answer["errmsg"].as_str().unwrap().contains(needle),
            "{answer} lacks {needle:?}"
        );
    }
    let huge = json!({"msgtype": "text", "text": {"content": "y".repeat(100_000)}});
    let (status, answer) = server.post(&admin, &path, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["errcode"], 41300);

    let (status, answer) = server.send_text(&outsider, &group, "hi").await;
    assert_eq!(
        (status, answer["errcode"].as_i64()),
        (StatusCode::FORBIDDEN, Some(40301))
    );
    let (status, _) = server.send_text(&admin, "999999", "hi").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.send_text(&admin, "not-a-number", "hi").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = server
        .post(
            &admin,
            "/api/v1/conversations",
            json!({"title": "x", "members": ["424242"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["errmsg"].as_str().unwrap().contains("424242"));
    let (status, _) = server
        .post(&outsider, "/api/v1/users", json!({"name": "x"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, answer) = server.get("not-a-token", "/api/v1/sync").await;
    assert_eq!(
        (status, answer["errcode"].as_i64()),
        (StatusCode::UNAUTHORIZED, Some(40100))
    );
    let (status, _) = server.get(&admin, "/api/v1/sync?since=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.get(&admin, "/api/v1/sync?since=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, answer) = server.get(&admin, "/api/v1/nowhere").await;
    assert_eq!(
        (status, answer["errcode"].as_i64()),
        (StatusCode::NOT_FOUND, Some(40401))
    );

    // Nothing was half-written: the only events are the group's creation.
    let db = server.db().await;
    server.drain(&db).await;
    let events = server.sync_all(&admin, 0).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_pts_gapless(&db).await;
    let (status, spec) = server.get(&admin, "/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["paths"]["/api/v1/conversations/{id}/messages"]["post"].is_object());
    let routes = routed_operations();
    assert!(routes.len() >= 68, "the route scan found only {routes:?}");
    let missing: Vec<&(String, String)> = routes
        .iter()
        .filter(|(path, method)| !spec["paths"][path.as_str()][method.as_str()].is_object())
        .collect();
    assert!(
        missing.is_empty(),
        "routed but not in openapi.json: {missing:?}"
    );
}

/// Every operation the source routes, as `(path as served, method)`: each `.route("…", …)` in
/// `src/api` (nested under `/api/v1`, except the top-level ones) and `src/ingress`, with the
/// methods its handler chain names. Read from the source so a route added without an
/// `#[utoipa::path]` in `docs.rs` fails the openapi check above.
fn routed_operations() -> Vec<(String, String)> {
    const TOP_LEVEL: &[&str] = &["/healthz", "/alerts/incidents/{id}/{action}"];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for dir in ["api", "ingress"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let source = std::fs::read_to_string(entry.path()).unwrap();
            for (path, methods) in routes_in(&source) {
                let served = if dir == "api" && !TOP_LEVEL.contains(&path.as_str()) {
                    format!("/api/v1{path}")
                } else {
                    path
                };
                out.extend(methods.into_iter().map(|m| (served.clone(), m)));
            }
        }
    }
    out
}

/// The `(path, methods)` of each `.route(` call in one source file.
fn routes_in(source: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (start, _) in source.match_indices(".route(") {
        let args = balanced(&source[start + ".route(".len()..]);
        let Some(path) = args.split('"').nth(1) else {
            continue;
        };
        let mut methods = Vec::new();
        for method in ["get", "post", "put", "patch", "delete"] {
            for call in [format!("{method}("), format!("{method}_route(")] {
                let named = args
                    .match_indices(&call)
                    .any(|(i, _)| !args[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
                if named && !methods.contains(&method.to_string()) {
                    methods.push(method.to_string());
                }
            }
        }
        out.push((path.to_string(), methods));
    }
    out
}

/// The text up to the parenthesis that closes the one just opened.
fn balanced(text: &str) -> &str {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    text
}

async fn rate_limit_tightens(backend: Backend) {
    let config = "[limits]\ngroup_messages_per_minute = 12\ntighten_above_members = 2\nmin_group_messages_per_minute = 6\n";
    let server = Server::start(backend, config).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "u", 3).await;
    let small = server.create_group(&admin, "small", &ids[..1]).await;
    let large = server.create_group(&admin, "large", &ids).await;
    // 12/min for two members: a burst of 2, then 429 with Retry-After.
    assert_eq!(
        server.send_text(&admin, &small, "1").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        server.send_text(&admin, &small, "2").await.0,
        StatusCode::CREATED
    );
    let (status, body) = server.send_text(&admin, &small, "3").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], 42900);
    assert!(body["errmsg"]
        .as_str()
        .unwrap()
        .contains("12 messages a minute"));
    // Four members: the rate halves (floored at 6/min), so the burst is 1.
    assert_eq!(
        server.send_text(&admin, &large, "1").await.0,
        StatusCode::CREATED
    );
    let (status, body) = server.send_text(&admin, &large, "2").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body["errmsg"]
            .as_str()
            .unwrap()
            .contains("6 messages a minute"),
        "{body}"
    );
}
