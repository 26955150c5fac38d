//! WASM plugins end to end: upload, route `/hooks/plugin/{token}` through a plugin, hot-swap
//! versions without a restart, and the sandbox's promises against hostile plugins (a spin, a
//! memory bomb, a trap, a WASI import), each counted per plugin and visible in the API; and a
//! plugin's messages held to the robot's filters, keywords, rate and the message size limit,
//! exactly as a built-in adapter's.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{on_both_backends, Backend, Server};
use crate::wasm;

on_both_backends!(
    upload_validates_and_lists,
    hot_swap_without_restart,
    hostile_plugins_are_contained,
    plugins_stay_in_their_org,
    plugin_output_meets_the_robot_rules
);

/// Uploads a component; the status and body.
pub async fn upload(
    server: &Server,
    token: &str,
    name: &str,
    version: &str,
    wasm: Vec<u8>,
) -> (StatusCode, Value) {
    let resp = server
        .http
        .post(format!(
            "{}/api/v1/plugins?name={name}&version={version}",
            server.base
        ))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await
        .expect("upload");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Uploads a component that must be accepted; its id.
pub async fn register(
    server: &Server,
    token: &str,
    name: &str,
    version: &str,
    wasm: Vec<u8>,
) -> String {
    let (status, body) = upload(server, token, name, version, wasm).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("id").to_string()
}

/// A plugin robot in `group`; its JSON (with `webhook_url`).
pub async fn plugin_robot(
    server: &Server,
    admin: &str,
    group: &str,
    plugin: &str,
    config: Value,
) -> Value {
    let (status, robot) = server
        .post(
            admin,
            "/api/v1/robots",
            json!({"kind": "plugin", "name": "plugin robot", "conversation_id": group,
                   "plugin_id": plugin, "config": config, "rate_per_minute": 1000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{robot}");
    robot
}

/// The robot's webhook URL on the server's current address (a restart changes the port).
pub fn webhook_url(server: &Server, robot: &Value) -> String {
    let url = robot["webhook_url"].as_str().expect("webhook_url");
    let path = &url[url.find("/hooks/").expect("a /hooks/ URL")..];
    format!("{}{path}", server.base)
}

/// Posts a body to a robot's webhook URL.
pub async fn hook(server: &Server, robot: &Value, body: &str) -> (StatusCode, Value) {
    let resp = server
        .http
        .post(webhook_url(server, robot))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("webhook");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An example plugin's fixture `plugins/<plugin>/fixtures/<case>.json` with its recorded
/// headers (`<case>.headers.json`).
pub fn fixture(plugin: &str, case: &str) -> (Vec<u8>, Vec<(String, String)>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(plugin)
        .join("fixtures");
    let body = std::fs::read(dir.join(format!("{case}.json"))).expect("fixture");
    let headers: serde_json::Map<String, Value> = serde_json::from_slice(
        &std::fs::read(dir.join(format!("{case}.headers.json"))).expect("headers"),
    )
    .expect("headers JSON");
    let headers = headers
        .into_iter()
        .map(|(k, v)| (k, v.as_str().expect("string header").to_string()))
        .collect();
    (body, headers)
}

/// POSTs raw bytes with the given headers; the answer's status and JSON (or its text).
pub async fn post_raw(
    server: &Server,
    url: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = server.http.post(url);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = req.body(body).send().await.expect("webhook");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The texts robots posted in the member's view, oldest first.
pub async fn posted_texts(server: &Server, member: &str) -> Vec<String> {
    let db = server.db().await;
    server.drain(&db).await;
    server
        .robot_messages(member)
        .await
        .iter()
        .map(|m| {
            m["text"]["content"]
                .as_str()
                .or(m["markdown"]["title"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

async fn stats(server: &Server, admin: &str, plugin: &str) -> Value {
    let (status, body) = server
        .get(admin, &format!("/api/v1/plugins/{plugin}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["stats"].clone()
}

async fn upload_validates_and_lists(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let (status, body) = upload(&server, &admin, "echo", "1.0.0", wasm::text_plugin("hi")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "echo");
    assert_eq!(body["version"], "1.0.0");
    assert_eq!(body["world"], "herald:adapter/adapter@0.1.0");
    assert_eq!(body["sha256"].as_str().expect("sha256").len(), 64);
    // Same name and version again: refused, the first stays.
    let (status, body) = upload(&server, &admin, "echo", "1.0.0", wasm::text_plugin("other")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Broken uploads: each a clear 4xx.
    let core = wat::parse_str("(module)").expect("wat");
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "garbage",
            b"not wasm at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "not a WebAssembly component",
        ),
        (
            "core",
            core,
            StatusCode::BAD_REQUEST,
            "core WebAssembly module",
        ),
        (
            "empty-component",
            wat::parse_str("(component)").expect("wat"),
            StatusCode::BAD_REQUEST,
            "does not implement",
        ),
        (
            // WASI 0.2 is linked (empty) for interpreters' toolchains; anything else is not.
            "wasi-0.3",
            wasm::wasi_plugin("0.3.0"),
            StatusCode::BAD_REQUEST,
            "wasi:cli/environment@0.3.0",
        ),
    ];
    for (name, bytes, want, says) in cases {
        let (status, body) = upload(&server, &admin, name, "1", bytes).await;
        assert_eq!(status, want, "{name}: {body}");
        let errmsg = body["errmsg"].as_str().unwrap_or_default();
        assert!(errmsg.contains(says), "{name}: {errmsg}");
    }
    let (status, body) = upload(&server, &admin, "bad name!", "1", wasm::text_plugin("x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let resp = server
        .http
        .post(format!("{}/api/v1/plugins?name=x&version=1", server.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, list) = server.get(&admin, "/api/v1/plugins").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["echo"]);
    // A plugin robot needs a plugin of its org.
    let users = server.create_users(&admin, "u", 1).await;
    let group = server.create_group(&admin, "g", &users).await;
    for plugin_id in [json!(null), json!("999999")] {
        let (status, body) = server
            .post(&admin, "/api/v1/robots",
                  json!({"kind": "plugin", "name": "p", "conversation_id": group, "plugin_id": plugin_id}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
}

async fn hot_swap_without_restart(backend: Backend) {
    let mut server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let member = server.token_for(&admin, &users[0]).await;
    let group = server.create_group(&admin, "g", &users).await;
    let v1 = register(
        &server,
        &admin,
        "greeter",
        "1",
        wasm::text_plugin("hello from v1"),
    )
    .await;
    let robot = plugin_robot(
        &server,
        &admin,
        &group,
        &v1,
        json!({"greeting": "hello from v2"}),
    )
    .await;
    let (status, body) = hook(&server, &robot, "{}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["posted"], 1, "{body}");

    // v2 reads the robot's config; switching needs only a PATCH.
    let v2 = register(
        &server,
        &admin,
        "greeter",
        "2",
        wasm::config_plugin("greeting"),
    )
    .await;
    let robot_path = format!("/api/v1/robots/{}", robot["id"].as_str().expect("id"));
    let (status, body) = server
        .call(
            Method::PATCH,
            &admin,
            &robot_path,
            Some(json!({"plugin_id": v2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = hook(&server, &robot, "{}").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A broken v3 is refused at upload, and a robot cannot be pointed at it: v2 keeps serving.
    let (status, body) = upload(
        &server,
        &admin,
        "greeter",
        "3",
        b"\0asm\x0d\0\x01\0broken".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = server
        .call(
            Method::PATCH,
            &admin,
            &robot_path,
            Some(json!({"plugin_id": "424242"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = hook(&server, &robot, "{}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        posted_texts(&server, &member).await,
        ["hello from v1", "hello from v2", "hello from v2"]
    );

    // After kill -9 the registry and the robot's choice are still there.
    server.restart().await;
    let (status, body) = hook(&server, &robot, "{}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(posted_texts(&server, &member).await.len(), 4);
    assert_eq!(
        stats(&server, &admin, &v2).await["ok"],
        1,
        "counters restart with the process"
    );
}

async fn hostile_plugins_are_contained(backend: Backend) {
    let server = Server::start(backend, "[plugins]\ndeadline_ms = 100\nmemory_mib = 16\n").await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let member = server.token_for(&admin, &users[0]).await;
    let group = server.create_group(&admin, "g", &users).await;
    let spin = register(&server, &admin, "spin", "1", wasm::spinning_plugin()).await;
    let bomb = register(&server, &admin, "bomb", "1", wasm::memory_bomb()).await;
    let trap = register(&server, &admin, "trap", "1", wasm::trapping_plugin()).await;
    let reject = register(
        &server,
        &admin,
        "reject",
        "1",
        wasm::rejecting_plugin(403, "bad signature"),
    )
    .await;
    let bad = register(
        &server,
        &admin,
        "bad-output",
        "1",
        wasm::config_plugin("missing"),
    )
    .await;
    let good = register(
        &server,
        &admin,
        "good",
        "1",
        wasm::text_plugin("still served"),
    )
    .await;
    let spin_robot = plugin_robot(&server, &admin, &group, &spin, json!({})).await;
    let good_robot = plugin_robot(&server, &admin, &group, &good, json!({})).await;

    // While two requests spin, the good robot and a custom robot keep answering.
    let spinning = async {
        let a = hook(&server, &spin_robot, "{}");
        let b = hook(&server, &spin_robot, "{}");
        tokio::join!(a, b)
    };
    let served = async {
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(hook(&server, &good_robot, "{}").await);
        }
        answers.push(server.send_text(&admin, &group, "members too").await);
        answers
    };
    let ((a, b), answers) = tokio::join!(spinning, served);
    for (status, body) in [a, b] {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["errcode"], 42210, "{body}");
        assert!(
            body["errmsg"]
                .as_str()
                .unwrap_or_default()
                .contains("100 ms"),
            "{body}"
        );
    }
    for (status, body) in answers {
        assert!(status.is_success(), "{status} {body}");
    }

    let cases = [
        (&bomb, StatusCode::UNPROCESSABLE_ENTITY, 42211, "16 MiB"),
        (
            &trap,
            StatusCode::UNPROCESSABLE_ENTITY,
            42212,
            "unreachable",
        ),
        (&reject, StatusCode::FORBIDDEN, 42200, "bad signature"),
        (
            &bad,
            StatusCode::UNPROCESSABLE_ENTITY,
            42213,
            "text.content",
        ),
    ];
    for (plugin, want, errcode, says) in cases {
        let robot = plugin_robot(&server, &admin, &group, plugin, json!({})).await;
        let (status, body) = hook(&server, &robot, "{}").await;
        assert_eq!(status, want, "{body}");
        assert_eq!(body["errcode"], errcode, "{body}");
        assert!(
            body["errmsg"].as_str().unwrap_or_default().contains(says),
            "{body}"
        );
    }
    // Each failure is counted on its plugin.
    assert_eq!(stats(&server, &admin, &spin).await["deadline_exceeded"], 2);
    assert_eq!(stats(&server, &admin, &bomb).await["memory_exceeded"], 1);
    assert_eq!(stats(&server, &admin, &trap).await["traps"], 1);
    assert_eq!(stats(&server, &admin, &reject).await["rejected"], 1);
    assert_eq!(stats(&server, &admin, &bad).await["invalid_output"], 1);
    let good_stats = stats(&server, &admin, &good).await;
    assert_eq!(
        (good_stats["calls"].clone(), good_stats["ok"].clone()),
        (json!(3), json!(3))
    );
    // The gateway is still whole: the good plugin's messages all arrived.
    let texts = posted_texts(&server, &member).await;
    assert_eq!(texts, ["still served"; 3]);
}

async fn plugins_stay_in_their_org(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin_a = server.admin_token();
    server.cli(&["org", "create", "acme"]);
    let admin_b = server.cli(&["token", "issue", "--org", "acme", "--user", "admin"]);
    let a_plugin = register(
        &server,
        &admin_a,
        "secret-sauce",
        "1",
        wasm::text_plugin("A"),
    )
    .await;
    let (_, list) = server.get(&admin_b, "/api/v1/plugins").await;
    assert_eq!(list["plugins"], json!([]));
    let (status, _) = server
        .get(&admin_b, &format!("/api/v1/plugins/{a_plugin}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let b_users = server.create_users(&admin_b, "b", 1).await;
    let b_group = server.create_group(&admin_b, "b", &b_users).await;
    let (status, body) = server
        .post(&admin_b, "/api/v1/robots",
              json!({"kind": "plugin", "name": "p", "conversation_id": b_group, "plugin_id": a_plugin}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The same bytes uploaded by B are B's own entry.
    let b_plugin = register(
        &server,
        &admin_b,
        "secret-sauce",
        "1",
        wasm::text_plugin("A"),
    )
    .await;
    assert_ne!(a_plugin, b_plugin);
}

/// A plugin's messages meet the same robot rules as a built-in adapter's, with the same
/// answers: the filter engine skips, the keyword rule refuses, the rate limit throttles and
/// the message size limit refuses; nothing refused is posted.
async fn plugin_output_meets_the_robot_rules(backend: Backend) {
    let server = Server::start(backend, "[http]\nmax_message_bytes = 200\n").await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let member = server.token_for(&admin, &users[0]).await;
    let group = server.create_group(&admin, "g", &users).await;
    let robot = |text: &str, spec: Value| {
        let (server, admin, group) = (&server, &admin, &group);
        let wasm = wasm::text_plugin(text);
        let name = format!("rules-{}", text.len());
        async move {
            let plugin = register(server, admin, &name, "1", wasm).await;
            let mut body = json!({"kind": "plugin", "name": "rules", "conversation_id": group,
                                  "plugin_id": plugin});
            for (k, v) in spec.as_object().expect("spec") {
                body[k] = v.clone();
            }
            let (status, robot) = server.post(admin, "/api/v1/robots", body).await;
            assert_eq!(status, StatusCode::CREATED, "{robot}");
            robot
        }
    };
    // Filters: the plugin's event name is what `events` matches.
    let skipped = robot("a", json!({"filters": {"events": {"exclude": ["test.*"]}}})).await;
    let (status, body) = hook(&server, &skipped, "{}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["posted"], &body["skipped"]),
        (&json!(0), &json!(["test.posted"]))
    );
    // Keywords: the plugin's text must carry one.
    let keyword = robot("bb", json!({"security": {"keywords": ["deploy"]}})).await;
    let (status, body) = hook(&server, &keyword, "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["errmsg"]
            .as_str()
            .unwrap_or_default()
            .contains("keywords"),
        "{body}"
    );
    // Rate: one a minute, then 429.
    let rated = robot("ccc", json!({"rate_per_minute": 1})).await;
    let (status, body) = hook(&server, &rated, "{}").await;
    assert_eq!(
        (status, &body["posted"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    let (status, body) = hook(&server, &rated, "{}").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], 42900, "{body}");
    // Size: the configured message limit, not only DingTalk's shape rules.
    let long = robot(&"d".repeat(300), json!({})).await;
    let (status, body) = hook(&server, &long, "{}").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["errcode"], 41300, "{body}");
    assert!(
        body["errmsg"]
            .as_str()
            .unwrap_or_default()
            .contains("200 bytes"),
        "{body}"
    );
    assert_eq!(posted_texts(&server, &member).await, ["ccc"]);
}
