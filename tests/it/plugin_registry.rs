//! The plugin registry's second round: multipart uploads, deleting a plugin (refused while a
//! robot uses it), robot config values redacted in answers (and kept by a PATCH that sends
//! the marker back), and per-plugin counters that survive a restart.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{on_both_backends, Backend, Server};
use crate::plugins::{plugin_robot, register, webhook_url};
use crate::wasm;

on_both_backends!(
    multipart_upload,
    delete_is_refused_while_used,
    robot_config_is_redacted,
    plugin_counters_survive_restart
);

const BOUNDARY: &str = "herald-test-boundary-7MA4YWxkTrZu0gW";

/// A multipart/form-data body with text fields and one file field `file` (if given).
fn form(fields: &[(&str, &str)], file: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some(bytes) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"plugin.wasm\"\r\nContent-Type: application/wasm\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn post_form(
    server: &Server,
    token: &str,
    query: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let resp = server
        .http
        .post(format!("{}/api/v1/plugins{query}", server.base))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn multipart_upload(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let wasm = wasm::text_plugin("from a form");
    let (status, body) = post_form(
        &server,
        &admin,
        "",
        form(&[("name", "formed"), ("version", "1.0.0")], Some(&wasm)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "formed");
    assert_eq!(body["version"], "1.0.0");
    assert_eq!(body["world"], "herald:adapter/adapter@0.1.0");
    assert_eq!(body["size"], wasm.len());

    // Name and version may come in the query instead; a clash or a gap is a clear 400.
    let (status, body) = post_form(
        &server,
        &admin,
        "?name=formed&version=1.0.1",
        form(&[], Some(&wasm)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let refused = [
        (
            "",
            form(&[("name", "x"), ("version", "1")], None),
            "no field `file`",
        ),
        (
            "",
            form(&[("version", "1")], Some(&wasm)),
            "name is missing",
        ),
        (
            "?name=y",
            form(&[("name", "x"), ("version", "1")], Some(&wasm)),
            "given twice",
        ),
        (
            "",
            form(
                &[("name", "x"), ("name", "z"), ("version", "1")],
                Some(&wasm),
            ),
            "given twice",
        ),
        (
            "",
            form(
                &[("name", "x"), ("version", "1"), ("kind", "c")],
                Some(&wasm),
            ),
            "unexpected form field",
        ),
        (
            "",
            form(&[("name", "bad name!"), ("version", "1")], Some(&wasm)),
            "name must be",
        ),
        (
            "",
            form(&[("name", "x"), ("version", "1")], Some(b"not wasm")),
            "not a WebAssembly component",
        ),
        ("", b"--no-such-boundary\r\n".to_vec(), "multipart"),
    ];
    for (query, body, says) in refused {
        let (status, answer) = post_form(&server, &admin, query, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{says}: {answer}");
        let errmsg = answer["errmsg"].as_str().unwrap_or_default();
        assert!(errmsg.contains(says), "{says}: {errmsg}");
    }
    // The same name and version again is a conflict, as with a raw upload.
    let (status, body) = post_form(
        &server,
        &admin,
        "",
        form(&[("name", "formed"), ("version", "1.0.0")], Some(&wasm)),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, list) = server.get(&admin, "/api/v1/plugins").await;
    assert_eq!(list["plugins"].as_array().map(Vec::len), Some(2), "{list}");
    // Both upload forms and the delete are in the OpenAPI document.
    let (_, spec) = server.get(&admin, "/api/v1/openapi.json").await;
    let upload = &spec["paths"]["/api/v1/plugins"]["post"]["requestBody"]["content"];
    assert!(upload["multipart/form-data"].is_object(), "{upload}");
    assert!(upload["application/wasm"].is_object(), "{upload}");
    assert!(spec["paths"]["/api/v1/plugins/{id}"]["delete"].is_object());
}

async fn delete_is_refused_while_used(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let group = server.create_group(&admin, "g", &users).await;
    let used = register(&server, &admin, "used", "1", wasm::text_plugin("a")).await;
    // Same bytes under another name: the blob is shared, and must outlive one entry's delete.
    let twin = register(&server, &admin, "twin", "1", wasm::text_plugin("a")).await;
    let other = register(&server, &admin, "other", "1", wasm::text_plugin("b")).await;
    let robot = plugin_robot(&server, &admin, &group, &used, json!({})).await;
    let robot_id = robot["id"].as_str().expect("id").to_string();

    let delete = |id: String| {
        let server = &server;
        let admin = &admin;
        async move {
            server
                .call(
                    Method::DELETE,
                    admin,
                    &format!("/api/v1/plugins/{id}"),
                    None,
                )
                .await
        }
    };
    let (status, body) = delete(used.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errcode"], 40900, "{body}");
    let errmsg = body["errmsg"].as_str().unwrap_or_default();
    assert!(
        errmsg.contains(&robot_id) && errmsg.contains("plugin robot"),
        "{errmsg}"
    );

    // Another org can neither delete this org's plugin nor learn that it exists.
    server.cli(&["org", "create", "acme"]);
    let admin_b = server.cli(&["token", "issue", "--org", "acme", "--user", "admin"]);
    let (status, body) = server
        .call(
            Method::DELETE,
            &admin_b,
            &format!("/api/v1/plugins/{other}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = delete(twin.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = server.get(&admin, &format!("/api/v1/plugins/{twin}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = delete(twin).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted twice");
    // The robot still runs on the shared bytes.
    let resp = server
        .http
        .post(webhook_url(&server, &robot))
        .json(&json!({}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(resp.status(), StatusCode::OK);

    // Switch the robot away: now the plugin can go, and the robot keeps working.
    let (status, body) = server
        .call(
            Method::PATCH,
            &admin,
            &format!("/api/v1/robots/{robot_id}"),
            Some(json!({"plugin_id": other})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = delete(used.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, list) = server.get(&admin, "/api/v1/plugins").await;
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["other"]);
    let resp = server
        .http
        .post(webhook_url(&server, &robot))
        .json(&json!({}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _) = delete("not-an-id".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn robot_config_is_redacted(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let member = server.token_for(&admin, &users[0]).await;
    let group = server.create_group(&admin, "g", &users).await;
    let plugin = register(&server, &admin, "cfg", "1", wasm::config_plugin("api_key")).await;
    let config = json!({"api_key": "sk-live-51H8", "region": "eu"});
    let robot = plugin_robot(&server, &admin, &group, &plugin, config.clone()).await;
    assert_eq!(robot["config"], config, "the creator sees what it sent");
    let id = robot["id"].as_str().expect("id").to_string();
    let hidden = json!({"api_key": "<redacted>", "region": "<redacted>"});

    let (_, shown) = server.get(&admin, &format!("/api/v1/robots/{id}")).await;
    assert_eq!(shown["config"], hidden, "{shown}");
    let (_, list) = server.get(&admin, "/api/v1/robots").await;
    let listed = list["robots"]
        .as_array()
        .expect("robots")
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("listed");
    assert_eq!(listed["config"], hidden, "{listed}");
    assert!(!list.to_string().contains("sk-live-51H8"));

    // Sending back what GET showed keeps the secret; a new value replaces it.
    let (status, patched) = server
        .call(
            Method::PATCH,
            &admin,
            &format!("/api/v1/robots/{id}"),
            Some(json!({"config": {"api_key": "<redacted>", "region": "us"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["config"], hidden, "{patched}");
    let resp = server
        .http
        .post(webhook_url(&server, &robot))
        .json(&json!({}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(resp.status(), StatusCode::OK);
    let db = server.db().await;
    server.drain(&db).await;
    let events = server.sync_all(&member, 0).await;
    let texts: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"]["text"]["content"].as_str())
        .collect();
    assert!(
        texts.contains(&"sk-live-51H8"),
        "the plugin still gets the kept secret: {texts:?}"
    );
}

async fn plugin_counters_survive_restart(backend: Backend) {
    let mut server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let group = server.create_group(&admin, "g", &users).await;
    let good = register(&server, &admin, "good", "1", wasm::text_plugin("ok")).await;
    let trap = register(&server, &admin, "trap", "1", wasm::trapping_plugin()).await;
    let good_robot = plugin_robot(&server, &admin, &group, &good, json!({})).await;
    let trap_robot = plugin_robot(&server, &admin, &group, &trap, json!({})).await;
    for (robot, times) in [(&good_robot, 3), (&trap_robot, 2)] {
        for _ in 0..times {
            server
                .http
                .post(webhook_url(&server, robot))
                .json(&json!({}))
                .send()
                .await
                .expect("webhook");
        }
    }
    // Wait for the once-a-second flush to reach the store, then kill -9.
    let db = server.db().await;
    let stored = "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM plugin_stats";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let calls: i64 = sqlx::query_scalar(stored)
            .fetch_one(&db)
            .await
            .expect("plugin_stats");
        if calls == 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{calls} calls stored");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    db.close().await;
    server.restart().await;
    let (_, good_view) = server.get(&admin, &format!("/api/v1/plugins/{good}")).await;
    assert_eq!(good_view["stats"]["calls"], 3, "{good_view}");
    assert_eq!(good_view["stats"]["ok"], 3, "{good_view}");
    let (_, trap_view) = server.get(&admin, &format!("/api/v1/plugins/{trap}")).await;
    assert_eq!(trap_view["stats"]["traps"], 2, "{trap_view}");
    let (_, list) = server.get(&admin, "/api/v1/plugins").await;
    let traps: Vec<&Value> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| &p["stats"]["traps"])
        .collect();
    assert_eq!(traps, [&json!(0), &json!(2)], "{list}");
}
