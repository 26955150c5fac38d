//! Webhooks from real senders through `/hooks/{kind}/{token}`, with their real headers and a
//! signature made at test time: a pull request's life becomes one card updated in place plus
//! its thread; an Alertmanager group that fires then resolves updates one card.

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(
    pull_request_life_is_one_card_and_a_thread,
    alert_group_updates_one_card
);

fn fixture(path: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

async fn robot(server: &Server, admin: &str, group: &str, kind: &str) -> Value {
    let (status, robot) = server
        .post(
            admin,
            "/api/v1/robots",
            json!({"kind": kind, "name": kind, "conversation_id": group}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{robot}");
    robot
}

async fn github(
    server: &Server,
    robot: &Value,
    event: &str,
    file: &str,
    delivery: &str,
) -> (StatusCode, Value) {
    let body = fixture(&format!("github/{file}"));
    let secret = robot["secret"].as_str().unwrap();
    let resp = server
        .http
        .post(robot["webhook_url"].as_str().unwrap())
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", github_signature(secret, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn pull_request_life_is_one_card_and_a_thread(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let octo = server.create_users(&admin, "octo", 1).await;
    let group = server.create_group(&admin, "dev", &octo).await;
    let robot = robot(&server, &admin, &group, "github").await;
    // The reviewer's GitHub login means this member.
    server
        .map_mention(&admin, "github", "octocat", &octo[0])
        .await;
    let bad = json!({"entries": [{"source": "jira", "external": "x", "user_id": octo[0]}]});
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            &admin,
            "/api/v1/mention-map",
            Some(bad),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let db = server.db().await;
    let life = [
        ("pull_request", "pull_request.opened.json"),
        ("pull_request", "pull_request.review_requested.json"),
        ("pull_request_review", "pull_request_review.submitted.json"),
        ("pull_request", "pull_request.synchronize.json"),
        ("pull_request", "pull_request.closed-unmerged.json"),
    ];
    for (i, (event, file)) in life.iter().enumerate() {
        let (status, body) = github(&server, &robot, event, file, &format!("d-{i}")).await;
        assert_eq!(status, StatusCode::OK, "{file}: {body}");
        server.drain(&db).await;
    }
    // A redelivery (same X-GitHub-Delivery) posts nothing new.
    let (status, _) = github(
        &server,
        &robot,
        "pull_request",
        "pull_request.opened.json",
        "d-0",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // A wrong signature is refused and posts nothing.
    let resp = server
        .http
        .post(robot["webhook_url"].as_str().unwrap())
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-hub-signature-256", "sha256=00")
        .body(fixture("github/pull_request.opened.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["errmsg"]
            .as_str()
            .unwrap()
            .contains("X-Hub-Signature-256"),
        "{body}"
    );
    server.drain(&db).await;

    let events = server.sync_all(&admin, 0).await;
    let created: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.created")
        .collect();
    let updated: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.updated")
        .collect();
    assert_eq!(
        created.len(),
        life.len(),
        "one card plus one follow-up per later event"
    );
    assert_eq!(
        updated.len(),
        life.len() - 1,
        "the card is updated by every later event"
    );
    let card = created[0]["message"]["id"].as_str().unwrap();
    assert!(updated.iter().all(|e| e["message"]["id"] == card));
    let thread = created[0]["message"]["thread_key"]
        .as_str()
        .expect("the card carries the thread key");
    assert!(created.iter().all(|e| e["message"]["thread_key"] == thread));
    assert_eq!(created[0]["message"]["sender"]["kind"], "robot");
    let (_, shown) = server
        .get(
            &admin,
            &format!("/api/v1/robots/{}", robot["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        (
            shown["stats"]["posted"].as_i64(),
            shown["stats"]["skipped"].as_i64()
        ),
        (Some(5), Some(1)),
        "{shown}"
    );
    // review_requested names octocat: its follow-up @-mentions the mapped member.
    assert_eq!(
        created[1]["message"]["at"]["atUserIds"],
        json!([octo[0].clone()]),
        "{:#}",
        created[1]
    );
    let last = &updated.last().unwrap()["message"];
    let text = last.to_string().to_lowercase();
    assert!(
        text.contains("closed"),
        "the card shows the latest state: {last}"
    );
}

async fn alert_group_updates_one_card(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let group = server.create_group(&admin, "ops", &[]).await;
    let robot = robot(&server, &admin, &group, "alertmanager").await;
    let db = server.db().await;
    // The firing notification comes twice (Alertmanager repeats it): the repeat adds nothing.
    for file in [
        "captured-1-firing-2alerts.json",
        "captured-1-firing-2alerts.json",
        "captured-4-resolved.json",
    ] {
        let resp = server
            .http
            .post(robot["webhook_url"].as_str().unwrap())
            .header("content-type", "application/json")
            .header("user-agent", "Alertmanager/0.25.0")
            .body(fixture(&format!("alertmanager/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        server.drain(&db).await;
    }
    let events = server.sync_all(&admin, 0).await;
    let created: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.created")
        .collect();
    let updated: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.updated")
        .collect();
    assert_eq!(
        created.len(),
        2,
        "the card and the resolution's follow-up: {events:#?}"
    );
    assert_eq!(updated.len(), 1, "{events:#?}");
    assert_eq!(updated[0]["message"]["id"], created[0]["message"]["id"]);
    assert!(updated[0]["message"]
        .to_string()
        .to_lowercase()
        .contains("resolved"));
    // Bad input: not JSON, wrong shape, wrong content type, unknown token.
    let url = robot["webhook_url"].as_str().unwrap();
    for (ctype, body, status) in [
        ("application/json", "{nope", StatusCode::BAD_REQUEST),
        (
            "application/json",
            "{\"alerts\": 3}",
            StatusCode::BAD_REQUEST,
        ),
        ("text/plain", "{}", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let resp = server
            .http
            .post(url)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{body}");
        let answer: Value = resp.json().await.unwrap();
        assert!(
            answer["errcode"].as_i64().unwrap() >= 40000
                && !answer["errmsg"].as_str().unwrap().is_empty()
        );
    }
    let huge = "a".repeat(2_000_000);
    // Its own connection: the server closes one whose body it refused to read.
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer: Value = resp.json().await.expect("a JSON error body");
    assert_eq!(answer["errcode"], 41300);
    let resp = server
        .http
        .post(url.replace(robot["access_token"].as_str().unwrap(), "nope"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
