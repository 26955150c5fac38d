//! The example C plugin (plugins/sentry), built from source by `scripts/build-plugins`:
//! its real fixtures posted over HTTP with a signature made at test time, and the
//! `herald plugin` CLI run against the same fixtures.

use std::path::Path;
use std::process::Command;

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{on_both_backends, Backend, Server};
use crate::plugins::{plugin_robot, register};

on_both_backends!(sentry_plugin_end_to_end);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(case: &str) -> (Vec<u8>, Vec<(String, String)>) {
    crate::plugins::fixture("sentry", case)
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn deliver(
    server: &Server,
    robot: &Value,
    case: &str,
    secret: Option<&str>,
) -> (StatusCode, Value) {
    let (body, mut headers) = fixture(case);
    if let Some(secret) = secret {
        headers.push(("sentry-hook-signature".into(), sign(secret, &body)));
    }
    let url = robot["webhook_url"].as_str().expect("url");
    crate::plugins::post_raw(server, url, headers, body).await
}

async fn sentry_plugin_end_to_end(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let member = server.token_for(&admin, &users[0]).await;
    let group = server.create_group(&admin, "oncall", &users).await;
    let wasm = std::fs::read(crate::plugins_py::built("sentry")).expect("wasm");
    let plugin = register(&server, &admin, "sentry", "1.0.0", wasm).await;
    // The plugin's mention hints (Sentry assignees' e-mails) map to members like forge logins.
    server
        .map_mention(&admin, "plugin", "mei.lin@example.com", &users[0])
        .await;
    let secret = "test-client-secret";
    let robot = plugin_robot(
        &server,
        &admin,
        &group,
        &plugin,
        json!({"client_secret": secret}),
    )
    .await;

    // Unsigned, or signed with another secret: the plugin's own rejection reaches the sender.
    for wrong in [None, Some("not-the-secret")] {
        let (status, body) = deliver(&server, &robot, "event_alert.triggered", wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["errcode"], 42200);
        assert_eq!(body["errmsg"], "invalid Sentry-Hook-Signature");
    }
    // The installation handshake: answered, nothing posted.
    let (status, body) = deliver(&server, &robot, "installation.created", Some(secret)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The alert, then the life: one card, updated, with threaded follow-ups. (Each
    // event waits for the previous one's fanout, as in the built-in senders' test: the card
    // can only be updated once it is stored.)
    let db = server.db().await;
    for case in ["event_alert.triggered", "issue.assigned", "issue.resolved"] {
        let (status, body) = deliver(&server, &robot, case, Some(secret)).await;
        assert_eq!(status, StatusCode::OK, "{case}: {body}");
        assert_eq!(body["posted"], 1, "{case}: {body}");
        server.drain(&db).await;
    }
    // Sentry's redelivery (same Request-ID) posts nothing new.
    let (status, body) = deliver(&server, &robot, "event_alert.triggered", Some(secret)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["posted"], 0, "{body}");

    server.drain(&db).await;
    let events = server.sync_all(&member, 0).await;
    let created: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.created" && e["message"]["sender"]["kind"] == "robot")
        .map(|e| &e["message"])
        .collect();
    let titles: Vec<&str> = created
        .iter()
        .map(|m| m["markdown"]["title"].as_str().unwrap_or_default())
        .collect();
    // The card (first) now shows the latest state; the follow-ups keep each step.
    assert_eq!(
        titles,
        [
            "Sentry SHOP-BACKEND-2K resolved",
            "Sentry SHOP-BACKEND-2K assigned",
            "Sentry SHOP-BACKEND-2K resolved"
        ]
    );
    for m in &created {
        assert_eq!(m["thread_key"], "sentry-issue:5912347081", "{m}");
    }
    assert_eq!(
        created[1]["at"]["atUserIds"],
        json!([users[0]]),
        "the assignee is mentioned"
    );
    let updates: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "message.updated")
        .map(|e| e["message"]["id"].as_str().unwrap_or_default())
        .collect();
    let card = created[0]["id"].as_str().unwrap_or_default();
    assert_eq!(
        updates,
        [card, card],
        "each later event updates the card in place"
    );
    let (_, stats) = server
        .get(&admin, &format!("/api/v1/plugins/{plugin}"))
        .await;
    assert_eq!(stats["stats"]["rejected"], 2, "{stats}");
    assert_eq!(stats["stats"]["ok"], 5, "{stats}");
}

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_LOG", "herald=warn")
        .env_remove("HERALD_CONFIG")
        .output()
        .expect("run herald")
}

#[test]
fn cli_checks_and_runs_a_plugin() {
    let wasm = crate::plugins_py::built("sentry");
    let wasm = wasm.to_str().expect("utf8 path");
    let out = herald(&["plugin", "check", wasm]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(checked["world"], "herald:adapter/adapter@0.1.0");

    let dir = root().join("plugins/sentry/fixtures");
    let request = dir.join("issue.assigned.json");
    let headers = dir.join("issue.assigned.headers.json");
    let (request, headers) = (
        request.to_str().expect("path"),
        headers.to_str().expect("path"),
    );
    let out = herald(&[
        "plugin",
        "run",
        wasm,
        "--request",
        request,
        "--headers",
        headers,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ran: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let message = &ran["messages"][0];
    assert_eq!(message["event"], "issue.assigned", "{ran}");
    assert_eq!(message["content"]["msgtype"], "markdown", "{ran}");
    assert_eq!(
        message["mention_hints"],
        json!(["mei.lin@example.com"]),
        "{ran}"
    );
    assert_eq!(message["facts"]["actor"], "Jonas Weber", "{ran}");

    // With a client secret configured, the unsigned fixture is rejected.
    let out = herald(&[
        "plugin",
        "run",
        wasm,
        "--request",
        request,
        "--headers",
        headers,
        "--config",
        "client_secret=s3cret",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid Sentry-Hook-Signature"));

    // Not a plugin: a clear refusal.
    let not_wasm = dir.join("issue.assigned.json");
    let out = herald(&["plugin", "check", not_wasm.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly component"));
}
