//! PagerDuty Events API v2 through the real endpoint: an incident's card keeps the trigger's
//! summary when acknowledge and resolve (which carry only the dedup_key) update it, and bad
//! events are refused in PagerDuty's own 400 shape.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(
    incident_card_keeps_its_summary,
    bad_events_get_pagerduty_answers
);

async fn send(server: &Server, url: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = server
        .http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

async fn robot_url(server: &Server, admin: &str) -> String {
    let group = server.create_group(admin, "oncall", &[]).await;
    let (status, robot) = server
        .post(
            admin,
            "/api/v1/robots",
            json!({"kind": "pagerduty", "name": "pd", "conversation_id": group}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{robot}");
    robot["webhook_url"].as_str().unwrap().to_string()
}

async fn incident_card_keeps_its_summary(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let url = robot_url(&server, &admin).await;
    let trigger =
        std::fs::read(crate::fixtures::dir("pagerduty").join("event.trigger.json")).unwrap();
    let key: Value = serde_json::from_slice(&trigger).unwrap();
    let key = key["dedup_key"].as_str().unwrap();
    let (status, answer) = send(&server, &url, trigger.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    for action in ["acknowledge", "resolve"] {
        // The shape of PagerDuty's own acknowledge/resolve examples, for this incident.
        let body =
            json!({"routing_key": "samplekeyhere", "dedup_key": key, "event_action": action});
        let (status, answer) = send(&server, &url, body.to_string().into_bytes()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["dedup_key"], key);
    }
    let db = server.db().await;
    server.drain(&db).await;
    let events = server.sync_all(&admin, 0).await;
    let updates: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.updated")
        .map(|e| {
            // An alert card becomes an action card once it carries ack/resolve buttons.
            let m = &e["message"];
            if m["actionCard"].is_object() {
                &m["actionCard"]
            } else {
                &m["markdown"]
            }
        })
        .collect();
    assert_eq!(updates.len(), 2, "{events:#?}");
    for card in &updates {
        assert!(
            card["title"]
                .as_str()
                .unwrap()
                .contains("Example alert on host1.example.com"),
            "the card keeps the trigger's summary: {card}"
        );
    }
    assert!(updates[1]["title"]
        .as_str()
        .unwrap()
        .starts_with("✅ Resolved"));
}

async fn bad_events_get_pagerduty_answers(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let url = robot_url(&server, &admin).await;
    let cases = [
        json!({"routing_key": "k", "event_action": "acknowledge"}).to_string(),
        json!({"routing_key": "k", "event_action": "explode"}).to_string(),
        json!({"event_action": "trigger"}).to_string(),
        json!({"routing_key": "k", "event_action": "trigger",
               "payload": {"summary": "s", "source": "x", "severity": "fatal"}})
        .to_string(),
        "{not json".to_string(),
        "[]".to_string(),
    ];
    for body in cases {
        let (status, answer) = send(&server, &url, body.clone().into_bytes()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["status"], "invalid event", "{answer}");
        assert_eq!(answer["message"], "Event object is invalid", "{answer}");
        let errors = answer["errors"].as_array().expect("errors");
        assert!(
            errors.len() == 1 && !errors[0].as_str().unwrap().is_empty(),
            "{answer}"
        );
        assert_eq!(answer["errcode"], 40002, "herald's error fields too");
    }
    let db = server.db().await;
    server.drain(&db).await;
    let posted = server
        .sync_all(&admin, 0)
        .await
        .iter()
        .filter(|e| e["type"] == "message.created")
        .count();
    assert_eq!(posted, 0, "nothing posted for bad events");
}
