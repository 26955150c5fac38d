//! Bot plugins end to end: the example FAQ bot in C (plugins/faqbot, `herald:bot@0.2.0`, built
//! from source by `scripts/build-plugins`) registered as a bot with triggers, answering
//! members' @mentions and keywords as the bot, in the asker's thread; hostile WAT bots (still
//! `herald:bot@0.1.0`, which herald keeps serving beside 0.2.0) stopped at the deadline with
//! the failure recorded on the delivery and retried per policy while another bot keeps
//! answering; plugins and worlds kept apart (org B cannot use org A's plugin, robots take
//! adapters and bots take bots); and the `herald plugin` CLI on the bot's fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{on_both_backends, Backend, Server};
use crate::plugins::{register, upload};
use crate::wasm;

on_both_backends!(
    faq_bot_answers_members_as_the_bot,
    hostile_bot_is_stopped_recorded_and_retried,
    bot_plugins_stay_in_their_org_and_world,
);

/// Fast retries, so a failing bot's whole schedule fits in a test.
const CONFIG: &str = "[outgoing]\nretry_schedule_seconds = [0.2, 0.2]\n";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/plugins/faqbot.wasm`, built once by `scripts/build-plugins` if missing.
fn faqbot_wasm() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = root().join("target/plugins/faqbot.wasm");
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

/// A bot; its JSON (with `id` and `chatbot_user_id`).
async fn create_bot(server: &Server, admin: &str, spec: Value) -> Value {
    let (status, bot) = server.post(admin, "/api/v1/bots", spec).await;
    assert_eq!(status, StatusCode::CREATED, "{bot}");
    bot
}

/// Posts `text` @-mentioning `bot` as the member `token`.
async fn mention(server: &Server, token: &str, group: &str, bot: &Value, text: &str) {
    mention_in(server, token, group, bot, text, None).await;
}

/// The same, in the thread `thread` when given.
async fn mention_in(
    server: &Server,
    token: &str,
    group: &str,
    bot: &Value,
    text: &str,
    thread: Option<&str>,
) {
    let path = format!("/api/v1/conversations/{group}/messages");
    let mut body = json!({"msgtype": "text", "text": {"content": text},
                          "at": {"atUserIds": [bot["chatbot_user_id"]]}});
    if let Some(thread) = thread {
        body["thread_key"] = json!(thread);
    }
    let (status, posted) = server.post(token, &path, body).await;
    assert_eq!(status, StatusCode::CREATED, "{posted}");
}

/// The messages bot `bot` sent, as the member's sync shows them, oldest first.
async fn bot_messages(server: &Server, token: &str, bot: &Value) -> Vec<Value> {
    server
        .sync_all(token, 0)
        .await
        .into_iter()
        .filter(|e| {
            e["type"] == "message.created" && e["message"]["sender"]["id"] == bot["chatbot_user_id"]
        })
        .map(|e| e["message"].clone())
        .collect()
}

/// Waits until the bot has sent `n` messages in the member's view; they, oldest first.
async fn wait_for_messages(server: &Server, token: &str, bot: &Value, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let messages = bot_messages(server, token, bot).await;
        if messages.len() >= n {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages from the bot: {messages:?}\n{}",
            messages.len(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bot's deliveries in `state`, once there are `n`.
async fn deliveries(
    server: &Server,
    admin: &str,
    bot: &Value,
    state: &str,
    n: usize,
) -> Vec<Value> {
    let path = format!(
        "/api/v1/bots/{}/deliveries?state={state}",
        bot["id"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, list) = server.get(admin, &path).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let found = list["deliveries"].as_array().expect("deliveries").clone();
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < deadline, "{list}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn plugin_stats(server: &Server, admin: &str, plugin: &str) -> Value {
    let (status, body) = server
        .get(admin, &format!("/api/v1/plugins/{plugin}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["stats"].clone()
}

fn text(message: &Value) -> &str {
    message["text"]["content"].as_str().unwrap_or_default()
}

async fn faq_bot_answers_members_as_the_bot(backend: Backend) {
    let server = Server::start(backend, CONFIG).await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "m", 2).await;
    let alice = server.token_for(&admin, &users[0]).await;
    let bob = server.token_for(&admin, &users[1]).await;
    let group = server.create_group(&alice, "payments", &users[1..]).await;
    let wasm = std::fs::read(faqbot_wasm()).expect("wasm");
    let (status, uploaded) = upload(&server, &admin, "faqbot", "1.0.0", wasm).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["world"], "herald:bot/bot@0.2.0");
    let plugin = uploaded["id"].as_str().expect("id").to_string();
    let config = json!({"topics": "deploy, vpn", "answer.deploy": "{name}: run `make rollback`.",
                        "answer.vpn": "VPN help: see go/vpn."});
    let bot = create_bot(
        &server,
        &admin,
        json!({"name": "faq", "plugin_id": plugin, "config": config, "conversations": [group],
               "triggers": ["mention", "keyword"], "keywords": ["vpn"]}),
    )
    .await;
    assert_eq!(bot["plugin_id"], plugin.as_str());
    assert_eq!(bot["config"], config);
    assert!(bot.get("callback_url").is_none(), "{bot}");
    // The install notice, then: an @mention naming a topic is answered as the bot, to the asker.
    wait_for_messages(&server, &bob, &bot, 1).await;
    mention(
        &server,
        &alice,
        &group,
        &bot,
        "@faq how do I undo a deploy?",
    )
    .await;
    let messages = wait_for_messages(&server, &bob, &bot, 2).await;
    let answer = &messages[1];
    assert_eq!(text(answer), "m0: run `make rollback`.");
    assert_eq!(answer["sender"]["kind"], "bot");
    assert_eq!(answer["sender"]["name"], "faq");
    assert_eq!(answer["at"]["atUserIds"], json!([users[0]]));
    assert!(answer.get("thread_key").is_none(), "{answer}");
    // Asked in a thread, it answers in that thread (a herald:bot@0.2.0 reply names its thread).
    let thread = Some("incident-2041");
    mention_in(&server, &bob, &group, &bot, "@faq deploy broke", thread).await;
    let messages = wait_for_messages(&server, &alice, &bot, 3).await;
    assert_eq!(text(&messages[2]), "m1: run `make rollback`.");
    assert_eq!(
        messages[2]["thread_key"], "incident-2041",
        "{}",
        messages[2]
    );
    // A keyword reaches it without a mention; an unrelated message does not reach it at all.
    server.send_text(&bob, &group, "lunch at noon").await;
    server.send_text(&bob, &group, "my vpn is down again").await;
    let messages = wait_for_messages(&server, &alice, &bot, 4).await;
    assert_eq!(text(&messages[3]), "VPN help: see go/vpn.");
    // A mention without a topic gets the list of topics.
    mention(&server, &bob, &group, &bot, "@faq hello?").await;
    let messages = wait_for_messages(&server, &alice, &bot, 5).await;
    assert!(
        text(&messages[4]).contains("deploy, vpn"),
        "{}",
        messages[4]
    );
    // A new config applies to the next event, without a restart.
    let (status, body) = server
        .call(
            Method::PATCH,
            &admin,
            &format!("/api/v1/bots/{}", bot["id"].as_str().unwrap()),
            Some(json!({"config": {"topics": "deploy", "answer.deploy": "Deploys are frozen."}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    mention(&server, &alice, &group, &bot, "@faq can I deploy?").await;
    let messages = wait_for_messages(&server, &bob, &bot, 6).await;
    assert_eq!(text(&messages[5]), "Deploys are frozen.");
    // Every event went through the delivery queue and its log.
    let delivered = deliveries(&server, &admin, &bot, "delivered", 5).await;
    for d in &delivered {
        let attempt = &d["attempts"][0];
        assert!(
            attempt["response"]
                .as_str()
                .unwrap()
                .starts_with(r#"{"messages":[{"#),
            "{d}"
        );
        assert!(attempt.get("error").is_none(), "{d}");
    }
    let stats = plugin_stats(&server, &admin, &plugin).await;
    assert_eq!(
        (stats["calls"].clone(), stats["ok"].clone()),
        (json!(5), json!(5)),
        "{stats}"
    );
}

async fn hostile_bot_is_stopped_recorded_and_retried(backend: Backend) {
    let server = Server::start(backend, CONFIG).await;
    let admin = server.admin_token();
    let users = server.create_users(&admin, "m", 1).await;
    let member = server.token_for(&admin, &users[0]).await;
    let group = server.create_group(&admin, "ops", &users).await;
    let spin = register(&server, &admin, "spin", "1", spinning_bot()).await;
    let pong = register(&server, &admin, "pong", "1", replying_bot("pong")).await;
    let trap = register(&server, &admin, "trap", "1", trapping_bot()).await;
    let mut bots = Vec::new();
    for (name, plugin) in [("spinner", &spin), ("ponger", &pong), ("trapper", &trap)] {
        let spec = json!({"name": name, "plugin_id": plugin, "conversations": [group],
                          "triggers": ["mention"]});
        bots.push(create_bot(&server, &admin, spec).await);
    }
    let (spinner, ponger, trapper) = (&bots[0], &bots[1], &bots[2]);
    let started = Instant::now();
    mention(&server, &member, &group, trapper, "@trapper hello").await;
    mention(&server, &member, &group, spinner, "@spinner hello").await;
    mention(&server, &member, &group, ponger, "@ponger ping").await;
    // The healthy bot answers while the other one spins.
    let messages = wait_for_messages(&server, &member, ponger, 2).await;
    assert_eq!(text(&messages[1]), "pong");
    // The spinning bot: stopped at the deadline on each of its three attempts (the first and
    // two retries), each recorded, then failed; it posted nothing but its install notice.
    let failed = deliveries(&server, &admin, spinner, "failed", 1).await;
    let attempts = failed[0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "{}", failed[0]);
    for attempt in attempts {
        let error = attempt["error"].as_str().unwrap_or_default();
        assert!(error.contains("deadline"), "{attempt}");
        assert!(attempt["latency_ms"].as_i64().unwrap() < 2_000, "{attempt}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(bot_messages(&server, &member, spinner).await.len(), 1);
    let stats = plugin_stats(&server, &admin, &spin).await;
    assert_eq!(stats["deadline_exceeded"], 3, "{stats}");
    // A trap (a C abort, a Rust panic) is a failed attempt too, retried the same way.
    let trapped = deliveries(&server, &admin, trapper, "failed", 1).await;
    let attempts = trapped[0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "{}", trapped[0]);
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("the plugin failed"),
        "{}",
        trapped[0]
    );
    assert_eq!(plugin_stats(&server, &admin, &trap).await["traps"], 3);
    // A redelivery runs it again (and it fails again): the queue's usual tools apply.
    let path = format!(
        "/api/v1/bots/{}/deliveries/{}/redeliver",
        spinner["id"].as_str().unwrap(),
        failed[0]["id"].as_str().unwrap()
    );
    let (status, body) = server.post(&admin, &path, json!({})).await;
    assert!(status.is_success(), "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while plugin_stats(&server, &admin, &spin).await["deadline_exceeded"].as_u64() < Some(4) {
        assert!(Instant::now() < deadline, "the redelivery did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bot_plugins_stay_in_their_org_and_world(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin_a = server.admin_token();
    server.cli(&["org", "create", "acme"]);
    let admin_b = server.cli(&["token", "issue", "--org", "acme", "--user", "admin"]);
    let a_users = server.create_users(&admin_a, "a", 1).await;
    let a_group = server.create_group(&admin_a, "a", &a_users).await;
    let b_users = server.create_users(&admin_b, "b", 1).await;
    let b_group = server.create_group(&admin_b, "b", &b_users).await;
    let a_bot_plugin = register(&server, &admin_a, "pong", "1", replying_bot("A")).await;
    let a_adapter = register(&server, &admin_a, "echo", "1", wasm::text_plugin("A")).await;
    let bot = |plugin: &str, group: &str| json!({"name": "b", "plugin_id": plugin, "conversations": [group], "triggers": ["mention"]});
    let refused = [
        // Org B cannot name org A's plugin, for a bot or for a robot.
        (
            &admin_b,
            "/api/v1/bots",
            bot(&a_bot_plugin, &b_group),
            "names no plugin of this org",
        ),
        (
            &admin_b,
            "/api/v1/robots",
            json!({"kind": "plugin", "name": "p", "conversation_id": b_group, "plugin_id": a_bot_plugin}),
            "names no plugin of this org",
        ),
        // Bots take bot plugins, robots take adapters.
        (
            &admin_a,
            "/api/v1/bots",
            bot(&a_adapter, &a_group),
            "a bot needs a herald:bot/bot@0.1.0 or herald:bot/bot@0.2.0 plugin",
        ),
        (
            &admin_a,
            "/api/v1/robots",
            json!({"kind": "plugin", "name": "p", "conversation_id": a_group, "plugin_id": a_bot_plugin}),
            "a robot needs a herald:adapter/adapter@0.1.0 plugin",
        ),
        // A bot has a URL or a plugin, and config is for plugins.
        (
            &admin_a,
            "/api/v1/bots",
            json!({"name": "b", "plugin_id": a_bot_plugin, "callback_url": "https://example.com/x", "triggers": ["mention"]}),
            "not both",
        ),
        (
            &admin_a,
            "/api/v1/bots",
            json!({"name": "b", "triggers": ["mention"]}),
            "needs a callback_url",
        ),
        (
            &admin_a,
            "/api/v1/bots",
            json!({"name": "b", "callback_url": "https://example.com/x", "config": {"k": "v"}, "triggers": ["mention"]}),
            "config applies to plugin bots only",
        ),
    ];
    for (token, path, body, says) in refused {
        let (status, answer) = server.post(token, path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["errmsg"].as_str().unwrap_or_default().contains(says),
            "{says}: {answer}"
        );
    }
    // A's own bot works; B cannot see it, nor switch its plugin.
    let a_bot = create_bot(&server, &admin_a, bot(&a_bot_plugin, &a_group)).await;
    let path = format!("/api/v1/bots/{}", a_bot["id"].as_str().unwrap());
    let (status, _) = server.get(&admin_b, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let b_plugin = register(&server, &admin_b, "pong", "1", replying_bot("B")).await;
    let (status, _) = server
        .call(
            Method::PATCH,
            &admin_b,
            &path,
            Some(json!({"plugin_id": b_plugin})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = server
        .call(
            Method::PATCH,
            &admin_a,
            &path,
            Some(json!({"plugin_id": b_plugin})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = server
        .call(
            Method::PATCH,
            &admin_a,
            &path,
            Some(json!({"callback_url": "https://example.com/x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // A's member mentions A's bot: A's plugin answers.
    let member = server.token_for(&admin_a, &a_users[0]).await;
    mention(&server, &member, &a_group, &a_bot, "@b hi").await;
    let messages = wait_for_messages(&server, &member, &a_bot, 2).await;
    assert_eq!(text(&messages[1]), "A");
    // A new version of A's plugin answers from the next event on, without a restart.
    let v2 = register(&server, &admin_a, "pong", "2", replying_bot("A2")).await;
    let (status, answer) = server
        .call(
            Method::PATCH,
            &admin_a,
            &path,
            Some(json!({"plugin_id": v2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["plugin_id"], v2.as_str());
    mention(&server, &member, &a_group, &a_bot, "@b again").await;
    let messages = wait_for_messages(&server, &member, &a_bot, 3).await;
    assert_eq!(text(&messages[2]), "A2");
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
fn cli_checks_and_runs_a_bot_plugin() {
    let wasm = faqbot_wasm();
    let file = wasm.to_str().expect("utf-8 path");
    let out = herald(&["plugin", "check", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(checked["world"], "herald:bot/bot@0.2.0");
    let fixtures = root().join("plugins/faqbot/fixtures");
    let run = |case: &str| -> Value {
        let request = fixtures.join(format!("{case}.json"));
        let out = herald(&[
            "plugin",
            "run",
            file,
            "--request",
            request.to_str().expect("path"),
            "--config",
            "topics=deploy,vpn",
            "--config",
            "answer.deploy=Hi {name}, see go/rollback.",
            "--config",
            "answer.vpn=See go/vpn.",
            "--config",
            "welcome=Welcome! Ask me about deploys.",
        ]);
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let deploy = run("mention.deploy");
    assert_eq!(
        deploy["messages"][0]["text"]["content"],
        "Hi Mei Lin, see go/rollback."
    );
    assert!(deploy["messages"][0].get("threadKey").is_none(), "{deploy}");
    let threaded = run("mention.in-thread");
    assert_eq!(threaded["messages"][0]["threadKey"], "incident-2041");
    assert_eq!(
        deploy["messages"][0]["at"]["atUserIds"],
        json!(["7316148731486050"])
    );
    assert_eq!(
        run("keyword.vpn")["messages"][0]["text"]["content"],
        "See go/vpn."
    );
    let unknown = run("mention.unknown");
    assert!(unknown["messages"][0]["text"]["content"]
        .as_str()
        .unwrap()
        .contains("deploy,vpn"));
    let joined = run("member.joined");
    assert_eq!(
        joined["messages"][0]["at"]["atUserIds"],
        json!(["7316148731486052"])
    );
}

// ---- hand-written bots (WAT) ----------------------------------------------------------------

/// Where the reply list's (pointer, length) and its one message live.
const RET: u32 = 8192;
const MSG: u32 = 4096;
const TEXT: u32 = 1280;

fn le(n: u32) -> String {
    n.to_le_bytes()
        .iter()
        .map(|b| format!("\\{b:02x}"))
        .collect()
}

/// A core module with memory, a bump `cabi_realloc` and `on-event` whose body is `body`. The
/// event is passed by pointer (it flattens past 16 values); the result is a pointer to the
/// list's (pointer, length).
fn bot_module(data: &str, body: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $ok
      (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (drop (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap)
        (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))))
    (local.get $p))
  {data}
  (func (export "on-event") (param i32) (result i32)
    {body})
)"#
    )
}

/// Answers every event with one text message. A `message` is 60 bytes: the content variant
/// (tag 0 = text, then the string at +4) and empty mentions at +40.
fn replying_bot(text: &str) -> Vec<u8> {
    let data = format!(
        r#"(data (i32.const {TEXT}) "{text}")
  (data (i32.const {MSG}) "\00\00\00\00{}{}")
  (data (i32.const {RET}) "{}{}")"#,
        le(TEXT),
        le(text.len() as u32),
        le(MSG),
        le(1),
    );
    bot_component(&bot_module(&data, &format!("(i32.const {RET})")))
}

/// Never returns.
fn spinning_bot() -> Vec<u8> {
    bot_component(&bot_module("", "(loop $spin (br $spin)) (i32.const 0)"))
}

/// Traps at once.
fn trapping_bot() -> Vec<u8> {
    bot_component(&bot_module("", "unreachable"))
}

/// Wraps a core module into a component of the bot world.
fn bot_component(core_wat: &str) -> Vec<u8> {
    let dir = root().join("plugins/wit/bot-0.1.0");
    let mut resolve = wit_parser::Resolve::default();
    let (herald, _) = resolve.push_dir(&dir).expect("herald WIT");
    let world = resolve
        .select_world(&[herald], Some("herald:bot/bot@0.1.0"))
        .expect("world");
    let mut module = wat::parse_str(core_wat).expect("core WAT");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .expect("embed WIT");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("core module")
        .validate(true)
        .encode()
        .expect("component")
}
