//! Incoming robots end to end: DingTalk's custom robot with its security settings and error
//! codes, driven by raw requests and by the unmodified PyPI `DingtalkChatbot` client.

use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(
    custom_robot_security_and_errcodes,
    dingtalk_python_client_sends_every_kind,
    concurrent_repeats_of_a_msg_uuid_post_once
);

fn sign(secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A group with `members` plus a custom robot; returns (group id, robot JSON).
async fn robot_in_group(
    server: &Server,
    admin: &str,
    members: &[String],
    robot: Value,
) -> (String, Value) {
    let group = server.create_group(admin, "alerts", members).await;
    let mut body = robot;
    body["conversation_id"] = json!(group);
    let (status, created) = server.post(admin, "/api/v1/robots", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (group, created)
}

async fn send(server: &Server, query: &str, body: Value) -> Value {
    let resp = server
        .http
        .post(format!("{}/robot/send?{query}", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "DingTalk answers 200 even on errors"
    );
    resp.json().await.unwrap()
}

async fn custom_robot_security_and_errcodes(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "m", 2).await;
    let (group, robot) = robot_in_group(&server, &admin, &ids, json!({
        "kind": "custom", "name": "deploy-bot",
        "security": {"sign": true, "keywords": ["deploy", "告警"], "ip_ranges": ["127.0.0.0/8"]},
        "rate_per_minute": 4
    }))
    .await;
    let token = robot["access_token"].as_str().unwrap();
    let secret = robot["secret"].as_str().unwrap();
    assert!(secret.starts_with("SEC"), "{robot}");
    assert!(robot["webhook_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/robot/send?access_token={token}")));
    let ts = now_ms();
    let signed = |ts: i64| {
        let s = sign(secret, ts);
        format!("access_token={token}&timestamp={ts}&sign={}", urlencode(&s))
    };
    let text = |content: &str| json!({"msgtype": "text", "text": {"content": content}, "at": {"atMobiles": ["10000000001"]}});

    assert_eq!(
        send(&server, &signed(ts), text("deploy v1 done")).await,
        json!({"errcode": 0, "errmsg": "ok"})
    );
    let wrong = send(
        &server,
        &format!("access_token={token}&timestamp={ts}&sign=bm9wZQ%3D%3D"),
        text("deploy"),
    )
    .await;
    assert_eq!(
        (wrong["errcode"].as_i64(), wrong["errmsg"].as_str()),
        (Some(310000), Some("sign not match"))
    );
    let stale = send(&server, &signed(ts - 2 * 3_600_000), text("deploy")).await;
    assert_eq!(
        (stale["errcode"].as_i64(), stale["errmsg"].as_str()),
        (Some(310000), Some("invalid timestamp"))
    );
    let unsigned = send(&server, &format!("access_token={token}"), text("deploy")).await;
    assert_eq!(unsigned["errcode"], 310000);
    let keyword = send(&server, &signed(ts), text("hello")).await;
    assert_eq!(
        (keyword["errcode"].as_i64(), keyword["errmsg"].as_str()),
        (Some(310000), Some("keywords not in content"))
    );
    let unknown = send(&server, "access_token=nope", text("deploy")).await;
    assert_eq!(unknown["errcode"], 300005);
    let long = send(&server, &signed(ts), text(&"deploy ".repeat(4000))).await;
    assert_eq!(long["errcode"], 460101);
    // Its own connection: the server closes one whose body it refused to read.
    let huge = reqwest::Client::new()
        .post(format!("{}/robot/send?{}", server.base, signed(ts)))
        .header("content-type", "application/json")
        .body("a".repeat(2_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::OK);
    assert_eq!(huge.json::<Value>().await.unwrap()["errcode"], 460101);
    let bad = send(&server, &signed(ts), json!({"msgtype": "text"})).await;
    assert_eq!(bad["errcode"], 40035);
    // msgUuid dedupes: the repeat is answered ok but posts nothing.
    let once = json!({"msgtype": "text", "text": {"content": "deploy once"}, "msgUuid": "u-1"});
    assert_eq!(send(&server, &signed(ts), once.clone()).await["errcode"], 0);
    assert_eq!(send(&server, &signed(ts), once).await["errcode"], 0);
    // 4 a minute: the third accepted message fills it, the next is throttled.
    let third = send(&server, &signed(ts), text("deploy v3")).await;
    assert_eq!(third["errcode"], 0);
    let over = send(&server, &signed(ts), text("deploy v4")).await;
    assert_eq!(over["errcode"], 410100, "{over}");
    // IP ranges: once loopback is no longer allowed, the same request is refused.
    let id = robot["id"].as_str().unwrap();
    let (status, patched) = server
        .call(reqwest::Method::PATCH, &admin, &format!("/api/v1/robots/{id}"),
              Some(json!({"security": {"sign": true, "keywords": [], "ip_ranges": ["10.0.0.0/8"]}, "rate_per_minute": 100})))
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert!(
        patched.get("secret").is_none(),
        "the secret is shown only once"
    );
    let ip = send(&server, &signed(ts), text("deploy")).await;
    assert_eq!(
        (ip["errcode"].as_i64(), ip["errmsg"].as_str()),
        (Some(310000), Some("ip 127.0.0.1 not in whitelist"))
    );

    let member = server.token_for(&admin, &ids[0]).await;
    let db = server.db().await;
    server.drain(&db).await;
    let events = server.sync_all(&member, 0).await;
    let messages: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.created")
        .map(|e| &e["message"])
        .collect();
    let texts: Vec<&str> = messages
        .iter()
        .map(|m| m["text"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["deploy v1 done", "deploy once", "deploy v3"]);
    assert_eq!(
        messages[0]["sender"],
        json!({"id": id, "kind": "robot", "name": "deploy-bot"})
    );
    assert_eq!(
        messages[0]["at"]["atUserIds"],
        json!([ids[1].clone()]),
        "atMobiles resolved to the member"
    );
    assert_eq!(messages[0]["conversation_id"], group.as_str());
    // Another org's admin cannot see or change the robot.
    server.cli(&["org", "create", "other"]);
    let other = server.cli(&["token", "issue", "--org", "other", "--user", "admin"]);
    assert_eq!(
        server.get(&other, &format!("/api/v1/robots/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    // Rotating the token retires the old URL.
    let (_, rotated) = server
        .post(&admin, &format!("/api/v1/robots/{id}/rotate"), json!({}))
        .await;
    assert_ne!(rotated["access_token"], robot["access_token"]);
    assert_eq!(
        send(&server, &format!("access_token={token}"), text("deploy")).await["errcode"],
        300005
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Python with the unmodified `DingtalkChatbot` 1.5.7 from PyPI, installed once per run.
fn dingtalk_python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv-dingtalk");
        let python = venv.join("bin/python");
        if !python.exists() {
            let ok = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status()
                .unwrap()
                .success();
            assert!(ok, "python3 -m venv failed");
        }
        let check = Command::new(&python)
            .args(["-c", "import dingtalkchatbot"])
            .status()
            .unwrap();
        if !check.success() {
            let ok = Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "DingtalkChatbot==1.5.7"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "pip install DingtalkChatbot==1.5.7 failed");
        }
        python.to_string_lossy().to_string()
    })
}

const CLIENT: &str = r#"
import json, sys
from dingtalkchatbot.chatbot import DingtalkChatbot, ActionCard, CardItem, FeedLink
bot = DingtalkChatbot(sys.argv[1], secret=sys.argv[2])
results = [
    bot.send_text(msg='hello from python 你好', at_mobiles=['10000000000']),
    bot.send_markdown(title='Deploy report', text='#### Deploy\n> ok', is_at_all=False),
    bot.send_link(title='Link title', text='link body', message_url='https://example.com/page', pic_url='https://example.com/p.png'),
    bot.send_image(pic_url='https://example.com/pic.png'),
    bot.send_action_card(ActionCard(title='AC multi', text='choose', btns=[CardItem(title='Yes', url='https://example.com/yes'), CardItem(title='No', url='https://example.com/no')])),
    bot.send_action_card(ActionCard(title='AC single', text='read', btns=[CardItem(title='Read more', url='https://example.com/read')], btn_orientation=1)),
    bot.send_feed_card([FeedLink(title='Item 1', message_url='https://example.com/1', pic_url='https://example.com/1.png')]),
]
print(json.dumps(results))
"#;

async fn dingtalk_python_client_sends_every_kind(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "p", 1).await;
    let (_, robot) = robot_in_group(
        &server,
        &admin,
        &ids,
        json!({
            "kind": "custom", "name": "py", "security": {"sign": true}
        }),
    )
    .await;
    let url = robot["webhook_url"].as_str().unwrap().to_string();
    let secret = robot["secret"].as_str().unwrap().to_string();
    let python = dingtalk_python();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", CLIENT, &url, &secret])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("client printed JSON");
    for r in &results {
        assert_eq!(r["errcode"], 0, "{results:?}");
    }
    let member = server.token_for(&admin, &ids[0]).await;
    let db = server.db().await;
    server.drain(&db).await;
    let events = server.sync_all(&member, 0).await;
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "message.created")
        .map(|e| e["message"]["msgtype"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "text",
            "markdown",
            "link",
            "image",
            "actionCard",
            "actionCard",
            "feedCard"
        ]
    );
    let first = &events
        .iter()
        .find(|e| e["type"] == "message.created")
        .unwrap()["message"];
    assert!(first["text"]["content"]
        .as_str()
        .unwrap()
        .starts_with("hello from python 你好"));
    assert_eq!(first["at"]["atUserIds"], json!([ids[0].clone()]));
}

/// Forty requests at once — ten `msgUuid`s sent four times each, and ten without one — all
/// answered ok; each uuid is posted exactly once and every other message once. On SQLite
/// these land in shared group commits, repeats of a key within one group included.
async fn concurrent_repeats_of_a_msg_uuid_post_once(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "u", 2).await;
    let robot = json!({"kind": "custom", "name": "ci", "rate_per_minute": 1000,
                       "security": {"sign": false, "keywords": ["deploy"], "ip_ranges": []}});
    let (_, robot) = robot_in_group(&server, &admin, &ids, robot).await;
    let token = robot["access_token"].as_str().unwrap().to_string();
    let query = format!("access_token={token}");
    let bodies: Vec<Value> = (0..40)
        .map(|i| match i % 4 {
            3 => json!({"msgtype": "text", "text": {"content": format!("deploy plain {i}")}}),
            _ => json!({"msgtype": "text", "text": {"content": format!("deploy uuid {}", i / 4)},
                        "msgUuid": format!("u-{}", i / 4)}),
        })
        .collect();
    let answers =
        futures::future::join_all(bodies.into_iter().map(|b| send(&server, &query, b))).await;
    for answer in &answers {
        assert_eq!(answer["errcode"], 0, "{answer}");
    }
    let db = server.db().await;
    server.drain(&db).await;
    let member = server.token_for(&admin, &ids[0]).await;
    let mut texts: Vec<String> = server
        .sync_all(&member, 0)
        .await
        .iter()
        .filter_map(|e| e["message"]["text"]["content"].as_str().map(String::from))
        .collect();
    texts.sort();
    let mut expected: Vec<String> = (0..10)
        .map(|k| format!("deploy uuid {k}"))
        .chain((0..10).map(|k| format!("deploy plain {}", 4 * k + 3)))
        .collect();
    expected.sort();
    assert_eq!(texts, expected);
}
