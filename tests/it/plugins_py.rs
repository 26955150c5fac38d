//! The example Python plugin (plugins/jenkins, componentize-py) end to end over HTTP, the
//! `herald plugin` CLI on its fixtures, and the WASI sandbox its toolchain needs: a hostile
//! Python plugin (tests/plugins/wasi_probe) and a hand-made WASI component find an empty
//! context — no files, no environment, no arguments, no sockets — and interpreted guests run
//! in warm instances that never carry one robot's config into another's call.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{on_both_backends, Backend, Server};
use crate::plugins::{plugin_robot, register};
use crate::wasm;

on_both_backends!(jenkins_plugin_end_to_end);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/plugins/<name>.wasm`, built once by `scripts/build-plugins` if missing.
pub fn built(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    if !path.exists() {
        BUILT.get_or_init(|| {
            let ok = Command::new("bash")
                .arg(root().join("scripts/build-plugins"))
                .status()
                .expect("run scripts/build-plugins")
                .success();
            assert!(ok, "scripts/build-plugins failed");
        });
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Server config sharing one compiled-plugin cache across the tests' servers: an interpreted
/// guest takes seconds to compile in a debug build, and the cache key covers the engine. The
/// call deadline is raised for these interpreted guests: starting CPython (checked at upload)
/// takes a few ms in a release build but ran past 100 ms in a debug build on a loaded 2-core CI
/// machine. The deadline itself is tested with a spinning plugin (`plugins.rs`).
pub fn shared_cache_config() -> String {
    let dir = root().join("target/plugin-cache-tests");
    format!(
        "[plugins]\ncache_dir = {:?}\ndeadline_ms = 2000\n",
        dir.display().to_string()
    )
}

fn fixture(case: &str) -> (Vec<u8>, Vec<(String, String)>) {
    crate::plugins::fixture("jenkins", case)
}

/// Posts a fixture as Jenkins would, with `?token=` appended when given.
async fn deliver(
    server: &Server,
    robot: &Value,
    case: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut url = crate::plugins::webhook_url(server, robot);
    if let Some(token) = token {
        url.push_str(&format!("?token={token}"));
    }
    let (body, headers) = fixture(case);
    crate::plugins::post_raw(server, &url, headers, body).await
}

async fn jenkins_plugin_end_to_end(backend: Backend) {
    let server = Server::start(backend, &shared_cache_config()).await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let member = server.token_for(&admin, &users[0]).await;
    let group = server.create_group(&admin, "ci", &users).await;
    let wasm = std::fs::read(built("jenkins")).expect("wasm");
    let plugin = register(&server, &admin, "jenkins", "1.0.0", wasm).await;
    // Jenkins culprits (user ids) map to members like forge logins.
    server
        .map_mention(&admin, "plugin", "mei.lin", &users[0])
        .await;
    let token = "jenkins-endpoint-token";
    let robot = plugin_robot(&server, &admin, &group, &plugin, json!({"token": token})).await;

    // Without the token, or with another: the plugin's own 401 reaches Jenkins.
    for wrong in [None, Some("guess")] {
        let (status, body) = deliver(&server, &robot, "build.started", wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            body["errmsg"]
                .as_str()
                .unwrap_or_default()
                .contains("invalid Jenkins token"),
            "{body}"
        );
    }
    // A queued build: the plugin's own answer, nothing posted.
    let (status, body) = deliver(&server, &robot, "build.queued", Some(token)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["errcode"], 0, "{body}");

    let db = server.db().await;
    for (case, posted) in [
        ("build.started", 1),
        ("build.completed.failure", 1),
        // FINALIZED repeats COMPLETED's result under the same dedupe key.
        ("build.finalized.failure", 0),
        ("build.completed.success", 1),
    ] {
        let (status, body) = deliver(&server, &robot, case, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{case}: {body}");
        assert_eq!(body["posted"], posted, "{case}: {body}");
        server.drain(&db).await;
    }

    let created = server.robot_messages(&member).await;
    let titles: Vec<&str> = created
        .iter()
        .map(|m| m["markdown"]["title"].as_str().unwrap_or_default())
        .collect();
    // Build 1482's card shows its latest state; its result follows up in the thread.
    assert_eq!(
        titles,
        [
            "payments/checkout-service/main #1482 failed",
            "payments/checkout-service/main #1482 failed",
            "payments/checkout-service/main #1483 succeeded",
        ]
    );
    let build = "jenkins:job/payments/job/checkout-service/job/main/#1482";
    assert_eq!(created[0]["thread_key"], build);
    assert_eq!(created[1]["thread_key"], build);
    let failure = created[1]["markdown"]["text"].as_str().unwrap_or_default();
    assert!(
        failure.contains("PaymentClientTest.retriesOnGatewayTimeout"),
        "the failure quotes the log's tail: {failure}"
    );
    assert!(failure.contains("**Branch** main"), "{failure}");
    assert_eq!(
        created[1]["at"]["atUserIds"],
        json!([users[0]]),
        "a culprit who is a member is mentioned"
    );
    assert_eq!(
        created[2]["at"]["atUserIds"],
        json!([]),
        "a success mentions no one"
    );

    let (_, info) = server
        .get(&admin, &format!("/api/v1/plugins/{plugin}"))
        .await;
    assert_eq!(info["stats"]["rejected"], 2, "{info}");
    assert_eq!(info["stats"]["ok"], 5, "{info}");
    // The robot's config holds the token: GET shows its key, not its value.
    let (_, shown) = server
        .get(
            &admin,
            &format!("/api/v1/robots/{}", robot["id"].as_str().expect("id")),
        )
        .await;
    assert_eq!(shown["config"], json!({"token": "<redacted>"}), "{shown}");
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
fn cli_runs_the_python_plugin() {
    let wasm = built("jenkins");
    let wasm = wasm.to_str().expect("utf8 path");
    // The shared compiled cache, so each command does not compile 18 MB again.
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), shared_cache_config()).expect("write config");
    let config = config.path().to_str().expect("path");
    let out = herald(&["plugin", "check", wasm, "--config", config]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(checked["world"], "herald:adapter/adapter@0.1.0");
    assert_eq!(checked["wasi"], true, "componentize-py imports WASI");

    let dir = root().join("plugins/jenkins/fixtures");
    let request = dir.join("build.completed.failure.json");
    let request = request.to_str().expect("path");
    let run = |setting: &str| {
        herald(&[
            "plugin",
            "run",
            wasm,
            "--request",
            request,
            "--config",
            setting,
            "--config-file",
            config,
        ])
    };
    let out = run("log_lines=2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ran: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let message = &ran["messages"][0];
    assert_eq!(message["event"], "build.completed", "{ran}");
    assert_eq!(message["facts"]["conclusion"], "failure", "{ran}");
    assert_eq!(message["facts"]["severity"], "error", "{ran}");
    assert_eq!(message["facts"]["branch"], "main", "{ran}");
    assert_eq!(
        message["mention_hints"],
        json!(["mei.lin", "okafor"]),
        "{ran}"
    );
    let text = message["content"]["markdown"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("Failed to execute goal") && text.contains("Finished: FAILURE"));
    assert!(
        !text.contains("Tests run: 214"),
        "log_lines=2 quotes two lines: {text}"
    );

    let out = run("token=x");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid Jenkins token"));

    // A Python exception: the CLI (only the CLI) shows the guest's traceback on stderr.
    let crash = tempfile::NamedTempFile::new().expect("request file");
    std::fs::write(crash.path(), r#"{"crash": true}"#).expect("write");
    let probe = built("wasi_probe");
    let out = herald(&[
        "plugin",
        "run",
        probe.to_str().expect("path"),
        "--request",
        crash.path().to_str().expect("path"),
        "--config-file",
        config,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RuntimeError: the probe crashes on request"),
        "{stderr}"
    );
}

/// A TCP listener that records whether anything connected to it.
fn watch_port() -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut got = Vec::new();
            let _ = stream.read_to_end(&mut got);
            let _ = tx.send(got);
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_plugins_get_an_empty_context() {
    let server = Server::start(Backend::Sqlite, &shared_cache_config()).await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "u", 1).await;
    let member = server.token_for(&admin, &users[0]).await;
    let group = server.create_group(&admin, "g", &users).await;
    let secret_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(secret_file.path(), "host secret").expect("write");
    let (port, connected) = watch_port();

    let probe = std::fs::read(built("wasi_probe")).expect("wasm");
    let plugin = register(&server, &admin, "probe", "1", probe).await;
    let first = plugin_robot(&server, &admin, &group, &plugin, json!({"who": "first"})).await;
    let second = plugin_robot(&server, &admin, &group, &plugin, json!({"who": "second"})).await;
    let target = json!({"path": secret_file.path(), "port": port});
    let post = |robot: &Value, body: &Value| {
        server
            .http
            .post(crate::plugins::webhook_url(&server, robot))
            .json(body)
            .send()
    };
    // Two calls through two robots, a crash, and one more: an interpreted guest runs in a warm
    // instance that counts its calls; each call sees its own robot's config; a crashed
    // instance is dropped, so the last call starts over in a new one.
    for (robot, body, want) in [
        (&first, &target, StatusCode::OK),
        (&second, &target, StatusCode::OK),
        (
            &first,
            &json!({"crash": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (&first, &target, StatusCode::OK),
    ] {
        let resp = post(robot, body).await.expect("webhook");
        let status = resp.status();
        assert_eq!(status, want, "{}", resp.text().await.unwrap_or_default());
    }

    let db = server.db().await;
    server.drain(&db).await;
    let reports: Vec<Value> = server
        .robot_messages(&member)
        .await
        .iter()
        .filter_map(|m| m["text"]["content"].as_str())
        .map(|text| serde_json::from_str(text).expect("report JSON"))
        .collect();
    let seen: Vec<(Value, Value)> = reports
        .iter()
        .map(|r| (r["calls"].clone(), r["who"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (json!(1), json!("first")),
            (json!(2), json!("second")),
            (json!(1), json!("first")),
        ]
    );
    let report = &reports[0];
    for denied in [
        "read",
        "listdir",
        "cwd_listdir",
        "write",
        "connect",
        "resolve",
    ] {
        assert!(
            report[denied]["error"].is_string() && report[denied].get("ok").is_none(),
            "{denied} must fail inside the sandbox: {report}"
        );
    }
    // Denied by WASI itself (no preopens; every socket address refused), not by a missing
    // Python module on the way.
    assert_eq!(report["read"]["error"], "FileNotFoundError", "{report}");
    assert_eq!(report["connect"]["error"], "PermissionError", "{report}");
    assert_eq!(report["environ"], json!({}), "{report}");
    assert!(
        report["argv"]
            .as_array()
            .is_some_and(|a| a.iter().all(|s| s == "")),
        "no arguments: {report}"
    );
    assert!(
        connected.try_recv().is_err(),
        "the plugin reached a socket on the host"
    );
    assert!(!Path::new("/tmp/herald-plugin-escape").exists());
    assert!(!server.log().contains("a plugin's stdout goes nowhere"));
    let (_, info) = server
        .get(&admin, &format!("/api/v1/plugins/{plugin}"))
        .await;
    assert_eq!(info["stats"]["traps"], 1, "{info}");

    // A hand-made component importing WASI 0.2 directly: linked, and sees no arguments.
    let env = register(&server, &admin, "env", "1", wasm::wasi_plugin("0.2.0")).await;
    let robot = plugin_robot(&server, &admin, &group, &env, json!({})).await;
    let resp = server
        .http
        .post(crate::plugins::webhook_url(&server, &robot))
        .json(&json!({}))
        .send()
        .await
        .expect("webhook");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["posted"], 1, "{body}");
}
