//! Outgoing bots end to end: callbacks signed so that the PyPI `standardwebhooks` package
//! verifies them, replies (synchronous and through sessionWebhook) reaching every member,
//! retries that lose nothing and keep order, per-bot isolation, disabling a dead bot with an
//! admin notice, redelivery, the SSRF guard, and pending retries surviving a restart.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(
    callbacks_verify_with_standardwebhooks,
    mention_gets_sync_and_session_replies,
    direct_chat_with_a_bot,
    down_bot_catches_up_in_order_and_dead_bot_is_disabled,
    slow_bot_does_not_delay_fast_bot,
    ssrf_guard_refuses_private_targets,
    dns_rebinding_is_refused_at_delivery,
    pending_retries_survive_restart,
);

/// Loopback allowed, and retries fast enough for a test; `extra` adds `[outgoing]` keys.
fn config(timeout_ms: u64, extra: &str) -> String {
    format!(
        "[outgoing]\nallow_cidrs = [\"127.0.0.1/32\"]\ntimeout_ms = {timeout_ms}\n\
         retry_schedule_seconds = [0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]\n{extra}"
    )
}

/// A bearer token for a member (the tokens endpoint answers 200 or 201 depending on version).
async fn token(server: &Server, admin: &str, user: &str) -> String {
    let (status, body) = server
        .post(admin, &format!("/api/v1/users/{user}/tokens"), json!({}))
        .await;
    assert!(status.is_success(), "{body}");
    body["token"].as_str().expect("token").to_string()
}

/// One callback as the receiver saw it.
#[derive(Debug, Clone)]
struct Hit {
    headers: HashMap<String, String>,
    body: Value,
}

/// What a receiver answers.
#[derive(Debug, Clone)]
enum Behaviour {
    Ok,
    Reply(Value),
    Status(u16),
    Sleep(Duration),
}

#[derive(Clone, Default)]
struct Shared {
    hits: Arc<Mutex<Vec<Hit>>>,
    behaviour: Arc<Mutex<Option<Behaviour>>>,
}

/// A bot endpoint: an axum server on 127.0.0.1 that records every callback.
struct Receiver {
    url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        Self::start_on(0, behaviour, Shared::default()).await
    }

    async fn start_on(port: u16, behaviour: Behaviour, shared: Shared) -> Receiver {
        *shared.behaviour.lock().unwrap() = Some(behaviour);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/callback"),
            shared,
            task,
        }
    }

    fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = Some(behaviour);
    }

    fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` callbacks arrived.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} callbacks arrived",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.hits.lock().unwrap().push(Hit { headers, body });
    let behaviour = shared.behaviour.lock().unwrap().clone();
    match behaviour.unwrap_or(Behaviour::Ok) {
        Behaviour::Ok => AxumStatus::OK.into_response(),
        Behaviour::Reply(v) => axum::Json(v).into_response(),
        Behaviour::Status(code) => AxumStatus::from_u16(code).unwrap().into_response(),
        Behaviour::Sleep(d) => {
            tokio::time::sleep(d).await;
            AxumStatus::OK.into_response()
        }
    }
}

/// A port nothing listens on (yet): connections to it are refused.
async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

struct BotIds {
    id: String,
    chatbot_user_id: String,
    secret: String,
}

async fn create_bot(server: &Server, admin: &str, body: Value) -> BotIds {
    let (status, bot) = server.post(admin, "/api/v1/bots", body).await;
    assert_eq!(status, StatusCode::CREATED, "{bot}");
    BotIds {
        id: bot["id"].as_str().unwrap().to_string(),
        chatbot_user_id: bot["chatbot_user_id"].as_str().unwrap().to_string(),
        secret: bot["secret"].as_str().unwrap().to_string(),
    }
}

/// Polls `check` until it holds.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bot's deliveries in `state`, once there are `n` of them.
async fn deliveries(server: &Server, admin: &str, bot: &str, state: &str, n: usize) -> Vec<Value> {
    let path = format!("/api/v1/bots/{bot}/deliveries?state={state}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, list) = server.get(admin, &path).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let found = list["deliveries"].as_array().unwrap().clone();
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < deadline, "{list}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Texts of the messages a bot sent, as one member's sync stream shows them.
async fn bot_texts(server: &Server, token: &str) -> Vec<String> {
    server
        .sync_all(token, 0)
        .await
        .iter()
        .filter(|e| e["type"] == "message.created" && e["message"]["sender"]["kind"] == "bot")
        .map(|e| {
            e["message"]["text"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The text of each callback, in arrival order, for one conversation.
fn texts_for(hits: &[Hit], conversation: &str) -> Vec<String> {
    hits.iter()
        .filter(|h| h.body["conversationId"] == conversation)
        .map(|h| {
            h.body["text"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// A Python receiver built on `standardwebhooks` (a venv with it is made on first use).
struct PyVerifier {
    child: Child,
    url: String,
}

impl Drop for PyVerifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    static READY: Mutex<Option<String>> = Mutex::new(None);
    let mut ready = READY.lock().unwrap();
    if let Some(p) = ready.as_ref() {
        return p.clone();
    }
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pyenv-bots");
    let py = venv.join("bin/python");
    let installed = Command::new(&py)
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "creating a Python venv failed");
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "standardwebhooks==1.1.0"])
            .status()
            .expect("pip install standardwebhooks");
        assert!(
            pip.success(),
            "installing standardwebhooks from PyPI failed"
        );
    }
    let path = py.display().to_string();
    *ready = Some(path.clone());
    path
}

impl PyVerifier {
    fn start() -> PyVerifier {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/bots_verifier.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Python verifier");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("listening ").expect("port line");
        PyVerifier {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

async fn callbacks_verify_with_standardwebhooks(backend: Backend) {
    let server = Server::start(backend, &config(2000, "")).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "v", 1).await;
    let group = server.create_group(&admin, "signed", &ids).await;
    let verifier = PyVerifier::start();
    let http = reqwest::Client::new();
    let bot = create_bot(
        &server,
        &admin,
        json!({"name": "verifier", "callback_url": format!("{}/hook", verifier.url),
               "conversations": [group], "triggers": ["all"]}),
    )
    .await;
    assert!(bot.secret.starts_with("whsec_"));
    let set_secrets = |secrets: Value| {
        http.post(format!("{}/secrets", verifier.url))
            .json(&secrets)
            .send()
    };
    set_secrets(json!([bot.secret])).await.unwrap();
    for i in 0..3 {
        server.send_text(&admin, &group, &format!("m{i}")).await;
    }
    let results = || async {
        let r: Vec<Value> = http
            .get(&verifier.url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r
    };
    eventually(Duration::from_secs(20), "3 verified callbacks", || async {
        results().await.len() >= 3
    })
    .await;
    // Rotation: both secrets sign during the overlap; DingTalk's sign uses the new one.
    let (status, rotated) = server
        .post(
            &admin,
            &format!("/api/v1/bots/{}/rotate-secret", bot.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, bot.secret);
    set_secrets(json!([new_secret, bot.secret])).await.unwrap();
    server.send_text(&admin, &group, "after rotation").await;
    eventually(Duration::from_secs(20), "the 4th callback", || async {
        results().await.len() >= 4
    })
    .await;
    let all = results().await;
    for (i, r) in all.iter().enumerate() {
        let expected = if i < 3 {
            json!([true])
        } else {
            json!([true, true])
        };
        assert_eq!(r["verified"], expected, "callback {i}: {r}");
        assert_eq!(r["tampered_body_passes"], false, "{r}");
        assert_eq!(r["old_timestamp_passes"], false, "{r}");
        assert_eq!(r["old_replay_passes"], false, "{r}");
        assert_eq!(r["dingtalk_sign_ok"], true, "{r}");
    }
    assert_eq!(all[3]["signatures"], 2);
}

async fn mention_gets_sync_and_session_replies(backend: Backend) {
    let server = Server::start(backend, &config(2000, "")).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "m", 2).await;
    let alice = token(&server, &admin, &ids[0]).await;
    let bob = token(&server, &admin, &ids[1]).await;
    let group = server.create_group(&alice, "ops", &ids[1..]).await;
    let receiver = Receiver::start(Behaviour::Reply(
        json!({"msgtype": "text", "text": {"content": "on it"}}),
    ))
    .await;
    let bot = create_bot(
        &server,
        &admin,
        json!({"name": "helper", "callback_url": receiver.url, "conversations": [group],
               "triggers": ["mention"]}),
    )
    .await;
    // Installing posts a notice from the bot.
    eventually(Duration::from_secs(10), "the install notice", || async {
        bot_texts(&server, &bob)
            .await
            .iter()
            .any(|t| t.contains("helper was added"))
    })
    .await;
    // Not mentioned: not called.
    server.send_text(&alice, &group, "just chatting").await;
    let path = format!("/api/v1/conversations/{group}/messages");
    let (status, posted) = server
        .post(
            &alice,
            &path,
            json!({"msgtype": "text", "text": {"content": "@helper status?"},
                                    "at": {"atUserIds": [bot.chatbot_user_id]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{posted}");
    let hits = receiver.wait_for(1, Duration::from_secs(10)).await;
    let event = &hits[0].body;
    assert_eq!(event["event"], "message.mentioned");
    assert_eq!(event["text"]["content"], "status?");
    assert_eq!(event["msgId"], posted["id"]);
    assert_eq!(event["conversationType"], "2");
    assert_eq!(event["conversationTitle"], "ops");
    assert_eq!(event["senderId"], ids[0].as_str());
    assert_eq!(event["senderNick"], "m0");
    assert_eq!(event["chatbotUserId"], bot.chatbot_user_id.as_str());
    assert_eq!(event["isAdmin"], false);
    assert_eq!(
        event["atUsers"][0]["dingtalkId"],
        bot.chatbot_user_id.as_str()
    );
    for header in [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "timestamp",
        "sign",
    ] {
        assert!(hits[0].headers.contains_key(header), "missing {header}");
    }
    // The synchronous reply reaches both members.
    for token in [&alice, &bob] {
        eventually(Duration::from_secs(10), "the synchronous reply", || async {
            bot_texts(&server, token)
                .await
                .contains(&"on it".to_string())
        })
        .await;
    }
    // Later, through the sessionWebhook.
    let session = event["sessionWebhook"].as_str().unwrap().to_string();
    assert!(event["sessionWebhookExpiredTime"].as_i64().unwrap() > 0);
    let resp = server
        .http
        .post(&session)
        .json(&json!({"msgtype": "markdown", "markdown": {"title": "done", "text": "all green"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["errcode"], 0);
    for token in [&alice, &bob] {
        eventually(
            Duration::from_secs(10),
            "the sessionWebhook reply",
            || async {
                server.sync_all(token, 0).await.iter().any(|e| {
                    e["message"]["sender"]["kind"] == "bot"
                        && e["message"]["markdown"]["text"] == "all green"
                })
            },
        )
        .await;
    }
    // A tampered session URL is refused; the bot's replies never call the bot again.
    let forged = session.replace(&format!(".{group}."), &format!(".{group}9."));
    let resp = server
        .http
        .post(&forged)
        .json(&json!({"msgtype": "text", "text": {"content": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(receiver.hits().len(), 1);
    // Every attempt is listed.
    let (status, list) = server
        .get(&admin, &format!("/api/v1/bots/{}/deliveries", bot.id))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let deliveries = list["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{list}");
    assert_eq!(deliveries[0]["state"], "delivered");
    assert_eq!(deliveries[0]["attempts"][0]["status"], 200);
    assert!(deliveries[0]["attempts"][0]["response"]
        .as_str()
        .unwrap()
        .contains("on it"));
    let (status, _) = server.get(&bob, "/api/v1/bots").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A member opens a 1:1 chat with a bot: what they write there reaches the bot as
/// `message.direct` (conversationType "1"), the reply lands in that chat only, and opening the
/// chat again answers the same conversation.
async fn direct_chat_with_a_bot(backend: Backend) {
    let server = Server::start(backend, &config(2000, "")).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "d", 2).await;
    let alice = token(&server, &admin, &ids[0]).await;
    let bob = token(&server, &admin, &ids[1]).await;
    let receiver = Receiver::start(Behaviour::Reply(
        json!({"msgtype": "text", "text": {"content": "hello alice"}}),
    ))
    .await;
    let bot = create_bot(
        &server,
        &admin,
        json!({"name": "faq", "callback_url": receiver.url, "triggers": ["direct"],
               "events": ["message.updated"]}),
    )
    .await;
    let chats = format!("/api/v1/bots/{}/chats", bot.id);
    let (status, chat) = server.post(&alice, &chats, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{chat}");
    assert_eq!(chat["kind"], "single");
    let chat_id = chat["id"].as_str().unwrap().to_string();
    let (status, again) = server.post(&alice, &chats, json!({})).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &chat["id"]));
    let (status, bobs) = server.post(&bob, &chats, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{bobs}");
    assert_ne!(bobs["id"], chat["id"]);

    let (status, posted) = server.send_text(&alice, &chat_id, "how do I deploy?").await;
    assert_eq!(status, StatusCode::CREATED, "{posted}");
    let hits = receiver.wait_for(1, Duration::from_secs(10)).await;
    let event = &hits[0].body;
    assert_eq!(event["event"], "message.direct");
    assert_eq!(event["conversationType"], "1");
    assert_eq!(event["conversationId"], chat_id.as_str());
    assert_eq!(event["text"]["content"], "how do I deploy?");
    eventually(Duration::from_secs(10), "the reply in the chat", || async {
        bot_texts(&server, &alice)
            .await
            .contains(&"hello alice".to_string())
    })
    .await;
    // Bob is not in Alice's chat: neither her question nor the reply reaches him, and he
    // cannot post there.
    assert!(!bot_texts(&server, &bob)
        .await
        .contains(&"hello alice".to_string()));
    let (status, _) = server.send_text(&bob, &chat_id, "let me in").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Editing the question reaches the bot (opted in) as message.updated, new text included.
    let (status, edited) = server
        .call(
            Method::PUT,
            &alice,
            &format!("/api/v1/messages/{}", posted["id"].as_str().unwrap()),
            Some(json!({"msgtype": "text", "text": {"content": "how do I roll back?"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    let hits = receiver.wait_for(2, Duration::from_secs(10)).await;
    let update = &hits[1].body;
    assert_eq!(update["event"], "message.updated");
    assert_eq!(update["msgId"], posted["id"]);
    assert_eq!(update["text"]["content"], "how do I roll back?");
    assert_ne!(update["id"], event["id"]);
    // A bot without the direct trigger takes no 1:1 chats.
    let mention_only = create_bot(
        &server,
        &admin,
        json!({"name": "quiet", "callback_url": receiver.url, "triggers": ["mention"]}),
    )
    .await;
    let (status, answer) = server
        .post(
            &alice,
            &format!("/api/v1/bots/{}/chats", mention_only.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(receiver.hits().len(), 2);
}

async fn down_bot_catches_up_in_order_and_dead_bot_is_disabled(backend: Backend) {
    let server = Server::start(backend, &config(300, "disable_after_seconds = 3\n")).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "d", 1).await;
    let groups = [
        server.create_group(&admin, "a", &ids).await,
        server.create_group(&admin, "b", &ids).await,
    ];
    let port = free_port().await;
    let down = create_bot(
        &server,
        &admin,
        json!({"name": "flaky", "callback_url": format!("http://127.0.0.1:{port}/callback"),
               "conversations": groups, "triggers": ["all"]}),
    )
    .await;
    let hung = Receiver::start(Behaviour::Sleep(Duration::from_secs(3600))).await;
    let dead = create_bot(
        &server,
        &admin,
        json!({"name": "hung", "callback_url": hung.url, "conversations": [groups[0]],
               "triggers": ["all"]}),
    )
    .await;
    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..6 {
        let group = &groups[i % 2];
        let text = format!("event {i}");
        let (status, _) = server.send_text(&admin, group, &text).await;
        assert_eq!(status, StatusCode::CREATED);
        sent.entry(group.as_str()).or_default().push(text);
    }
    // Refused connections for a while, then 503s, then healthy.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let flaky = Receiver::start_on(port, Behaviour::Status(503), Shared::default()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    flaky.set(Behaviour::Ok);
    eventually(Duration::from_secs(20), "every event delivered", || async {
        let hits = flaky.hits();
        groups.iter().all(|g| {
            let mut seen = texts_for(&hits, g);
            seen.dedup();
            seen.len() >= sent[g.as_str()].len()
        })
    })
    .await;
    let hits = flaky.hits();
    for g in &groups {
        // Retried in place: the sequence seen is the sent order, each event possibly repeated
        // only while it was failing, never overtaken by a later one.
        let mut seen = texts_for(&hits, g);
        seen.dedup();
        assert_eq!(seen, sent[g.as_str()], "order in {g}");
    }
    let list = deliveries(&server, &admin, &down.id, "delivered", 6).await;
    let retried = &list[5];
    assert!(
        retried["attempts"].as_array().unwrap().len() >= 2,
        "{retried}"
    );
    // The bot that never answers is disabled, and the admins hear of it.
    eventually(Duration::from_secs(30), "the hung bot disabled", || async {
        let (_, bot) = server
            .get(&admin, &format!("/api/v1/bots/{}", dead.id))
            .await;
        bot["enabled"] == false
    })
    .await;
    eventually(Duration::from_secs(10), "the admin notice", || async {
        bot_texts(&server, &admin)
            .await
            .iter()
            .any(|t| t.contains("hung") && t.contains("disabled"))
    })
    .await;
    // Re-enabled and fixed, its failed events can be redelivered.
    hung.set(Behaviour::Ok);
    let before = hung.hits().len();
    let (status, _) = server
        .call(
            Method::PATCH,
            &admin,
            &format!("/api/v1/bots/{}", dead.id),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = server
        .post(
            &admin,
            &format!("/api/v1/bots/{}/redeliver", dead.id),
            json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["redelivered"], 3);
    let hits = hung.wait_for(before + 3, Duration::from_secs(10)).await;
    let mut redelivered = texts_for(&hits[before..], &groups[0]);
    redelivered.dedup();
    assert_eq!(redelivered, sent[groups[0].as_str()]);
}

async fn slow_bot_does_not_delay_fast_bot(backend: Backend) {
    let server = Server::start(backend, &config(15000, "concurrency_per_bot = 2\n")).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "s", 1).await;
    let groups = [
        server.create_group(&admin, "x", &ids).await,
        server.create_group(&admin, "y", &ids).await,
    ];
    let slow = Receiver::start(Behaviour::Sleep(Duration::from_secs(10))).await;
    let fast = Receiver::start(Behaviour::Ok).await;
    for (name, url) in [("slow", &slow.url), ("fast", &fast.url)] {
        create_bot(
            &server,
            &admin,
            json!({"name": name, "callback_url": url, "conversations": groups, "triggers": ["all"]}),
        )
        .await;
    }
    let started = Instant::now();
    for i in 0..20 {
        server
            .send_text(&admin, &groups[i % 2], &format!("n{i}"))
            .await;
    }
    fast.wait_for(20, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the fast bot waited {:?}",
        started.elapsed()
    );
    // The slow bot has one callback in flight per conversation (order), nothing more.
    assert!(slow.hits().len() <= 2, "{}", slow.hits().len());
}

async fn ssrf_guard_refuses_private_targets(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    for url in [
        "http://127.0.0.1:9/x",
        "http://localhost:9/x",
        "http://[::1]:9/x",
        "http://10.0.0.1/x",
        "http://192.168.1.10/x",
        "http://169.254.169.254/latest/meta-data",
        "http://100.100.100.200/x",
        "http://[fd00:ec2::254]/x",
        "http://224.0.0.1/x",
        "ftp://example.com/x",
    ] {
        let (status, body) = server
            .post(
                &admin,
                "/api/v1/bots",
                json!({"name": "b", "callback_url": url, "triggers": ["all"]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["errcode"], 40000);
        assert!(
            body["errmsg"].as_str().unwrap().contains("callback_url"),
            "{body}"
        );
    }
    // Rules are checked too (before any DNS lookup).
    let (status, body) = server
        .post(
            &admin,
            "/api/v1/bots",
            json!({"name": "b", "callback_url": "http://example.com/x",
                                              "triggers": ["keyword"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["errmsg"].as_str().unwrap().contains("keyword"),
        "{body}"
    );
}

/// A name in /etc/hosts (the system resolver herald uses), removed again on drop.
struct HostsEntry {
    name: String,
}

/// One test at a time edits /etc/hosts: the file is rewritten in place (it may be a bind
/// mount, so no rename), and a lookup that lands mid-rewrite finds no entry at all.
static HOSTS_FILE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl HostsEntry {
    const FILE: &'static str = "/etc/hosts";

    fn new(name: &str, ip: &str) -> HostsEntry {
        let entry = HostsEntry {
            name: name.to_string(),
        };
        entry.point_to(ip);
        entry
    }

    /// Rewrites the entry in place: glibc reads the file on every lookup.
    fn point_to(&self, ip: &str) {
        let kept: Vec<String> = std::fs::read_to_string(Self::FILE)
            .expect("read /etc/hosts")
            .lines()
            .filter(|l| !l.ends_with(&format!(" {}", self.name)))
            .map(str::to_string)
            .collect();
        let mut text = kept.join("\n");
        text.push_str(&format!("\n{ip} {}\n", self.name));
        std::fs::write(Self::FILE, text)
            .expect("the rebinding test edits /etc/hosts and must run as root (CI does)");
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string(Self::FILE) {
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.ends_with(&format!(" {}", self.name)))
                .collect();
            let _ = std::fs::write(Self::FILE, kept.join("\n") + "\n");
        }
    }
}

/// DNS rebinding: the callback's name resolves to a public address when the bot is
/// registered, then to loopback (not allowlisted) when herald delivers. The delivery is
/// refused after resolution, recorded with the reason, and nothing reaches the receiver.
async fn dns_rebinding_is_refused_at_delivery(backend: Backend) {
    let _hosts_file = HOSTS_FILE.lock().await;
    let retries = "[outgoing]\ntimeout_ms = 1000\nretry_schedule_seconds = [0.2, 0.2]\n";
    let server = Server::start(backend, retries).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "r", 1).await;
    let group = server.create_group(&admin, "rebind", &ids).await;
    let receiver = Receiver::start(Behaviour::Ok).await;
    let port = receiver.url.rsplit(':').next().unwrap().to_string();
    let name = format!("rebind-{:x}.herald-test", rand::random::<u32>());
    let hosts = HostsEntry::new(&name, "93.184.216.34");
    let bot = create_bot(
        &server,
        &admin,
        json!({"name": "rebinder", "callback_url": format!("http://{name}:{port}"),
               "conversations": [group], "triggers": ["all"]}),
    )
    .await;
    hosts.point_to("127.0.0.1");
    let (status, body) = server.send_text(&admin, &group, "hello?").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let failed = deliveries(&server, &admin, &bot.id, "failed", 1).await;
    let attempts = failed[0]["attempts"].as_array().unwrap();
    assert!(!attempts.is_empty());
    for attempt in attempts {
        let error = attempt["error"].as_str().unwrap_or_default();
        assert!(error.contains("loopback"), "{attempt}");
    }
    assert!(
        receiver.hits().is_empty(),
        "a rebinding name reached loopback"
    );
}

async fn pending_retries_survive_restart(backend: Backend) {
    let mut server = Server::start(
        backend,
        "[outgoing]\nallow_cidrs = [\"127.0.0.1/32\"]\ntimeout_ms = 1000\n\
         retry_schedule_seconds = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n",
    )
    .await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "r", 1).await;
    let group = server.create_group(&admin, "g", &ids).await;
    let receiver = Receiver::start(Behaviour::Status(503)).await;
    let bot = create_bot(
        &server,
        &admin,
        json!({"name": "r", "callback_url": receiver.url, "conversations": [group], "triggers": ["all"]}),
    )
    .await;
    for i in 0..3 {
        server.send_text(&admin, &group, &format!("p{i}")).await;
    }
    receiver.wait_for(1, Duration::from_secs(10)).await;
    server.kill9();
    receiver.set(Behaviour::Ok);
    let before = receiver.hits().len();
    server.restart().await;
    eventually(
        Duration::from_secs(30),
        "the pending events after restart",
        || async {
            let mut seen = texts_for(&receiver.hits()[before..], &group);
            seen.dedup();
            seen == ["p0", "p1", "p2"]
        },
    )
    .await;
    let delivered = deliveries(&server, &admin, &bot.id, "delivered", 3).await;
    assert_eq!(delivered.len(), 3);
}
