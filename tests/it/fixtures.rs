//! Every real fixture in `../shared/fixtures/<source>/` replayed through herald's real HTTP
//! endpoint: exact bytes, the headers the sender sent (from the folder's index), a signature made
//! at test time with the robot's secret. What reaches a member's sync stream is snapshotted with
//! ids and times redacted. The folders are iterated, so a new fixture is picked up (and one
//! missing from its folder's header index fails loudly).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(every_fixture_through_http);

/// The mobile DingTalk's captures mention (`atMobiles`): a member has it, so it resolves.
const MOBILE: &str = "13800000000";

pub fn dir(source: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(source)
}

/// The request bodies in a fixture folder, sorted: every `.json` except the folder's index
/// files and PagerDuty's recorded responses.
pub fn payloads(source: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir(source))
        .unwrap_or_else(|e| panic!("fixtures/{source}: {e}"))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .filter(|name| !is_index(name))
        .map(|name| {
            let bytes = std::fs::read(dir(source).join(&name)).expect("read fixture");
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}

fn is_index(name: &str) -> bool {
    matches!(name, "headers.json" | "captured-index.json") || name.starts_with("response.")
}

fn read_json(source: &str, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir(source).join(name)).expect("read index"))
        .expect("index is JSON")
}

/// `file name → entry` of a folder's `headers.json` (`files`) or `captured-index.json`
/// (`requests`).
pub fn index(source: &str, name: &str, list: &str) -> BTreeMap<String, Value> {
    read_json(source, name)[list]
        .as_array()
        .expect("index list")
        .iter()
        .map(|e| (e["file"].as_str().expect("file").to_string(), e.clone()))
        .collect()
}

pub fn github_signature(secret: &str, body: &[u8]) -> String {
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

fn dingtalk_sign(secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}\n{secret}").as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    serde_urlencoded::to_string([("s", b64)]).unwrap()[2..].to_string()
}

/// A fresh UUID-shaped delivery id, as GitHub and GitLab send.
pub fn delivery_id() -> String {
    let h = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One request to replay: where, with which headers, which bytes.
struct Replay {
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Ctx<'a> {
    server: &'a Server,
    admin: &'a str,
    member: &'a str,
    group: &'a str,
    known_ids: Vec<(String, String)>,
}

impl Ctx<'_> {
    async fn robot(&self, kind: &str, extra: Value) -> Value {
        let mut body = json!({"kind": kind, "name": format!("{kind} fixtures"),
                              "conversation_id": self.group, "rate_per_minute": 1000});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, robot) = self.server.post(self.admin, "/api/v1/robots", body).await;
        assert_eq!(status, StatusCode::CREATED, "{robot}");
        robot
    }

    /// Sends the request, waits for the fanout, and snapshots the answer and what the member
    /// sees.
    async fn replay_and_snapshot(&self, name: &str, robot: &Value, replay: Replay) {
        let db = self.server.db().await;
        // Earlier events (the group's creation, the previous fixture) must be in the inbox
        // before the cursor is taken, or they leak into this fixture's snapshot.
        self.server.drain(&db).await;
        let before = self.server.sync_all(self.member, 0).await;
        let since = before.last().map_or(0, |e| e["pts"].as_i64().unwrap());
        let mut req = self.server.http.post(&replay.url).body(replay.body);
        for (k, v) in &replay.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.expect("send fixture");
        let status = resp.status();
        let answer: Value = resp.json().await.expect("a JSON answer");
        assert!(
            status.is_success(),
            "{name}: {status} {answer}\n{}",
            self.server.log()
        );
        self.server.drain(&db).await;
        let events = self.server.sync_all(self.member, since).await;
        let mut ids = self.known_ids.clone();
        ids.push((robot["id"].as_str().unwrap().into(), "[robot]".into()));
        let snapshot = redact(
            &json!({"status": status.as_u16(), "answer": answer, "events": events}),
            &mut ids,
        );
        let snapshot = scrub_links(&snapshot, &self.server.base);
        insta::assert_json_snapshot!(name.to_string(), snapshot);
    }
}

/// herald's own links (alert card buttons) carry the run's port and a signature made with the
/// run's key: both become placeholders.
fn scrub_links(value: &Value, base: &str) -> Value {
    let text = value.to_string().replace(base, "http://[herald]");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at + 4]);
        rest = &rest[at + 4..];
        let hex = rest.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        if hex > 0 {
            out.push_str("[sig]");
            rest = &rest[hex..];
        }
    }
    out.push_str(rest);
    serde_json::from_str(&out).expect("still JSON")
}

/// Replaces ids with stable names (`[member]`, `[message 1]`, …) and drops times and pts, so a
/// snapshot shows which message an update touched without depending on the run.
fn redact(value: &Value, ids: &mut Vec<(String, String)>) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "pts" | "created_at" | "updated_at"))
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("id", Value::String(s)) if !ids.iter().any(|(id, _)| id == s) => {
                            let n = ids
                                .iter()
                                .filter(|(_, l)| l.starts_with("[message"))
                                .count();
                            let label = format!("[message {}]", n + 1);
                            ids.push((s.clone(), label.clone()));
                            Value::String(label)
                        }
                        _ => redact(v, ids),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact(v, ids)).collect()),
        Value::String(s) => match ids.iter().find(|(id, _)| id == s) {
            Some((_, label)) => Value::String(label.clone()),
            None => value.clone(),
        },
        other => other.clone(),
    }
}

async fn every_fixture_through_http(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let (status, user) = server
        .post(
            &admin,
            "/api/v1/users",
            json!({"name": "on call", "mobile": MOBILE}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let user_id = user["id"].as_str().unwrap().to_string();
    let member = server.token_for(&admin, &user_id).await;
    let group = server
        .create_group(&admin, "fixtures", std::slice::from_ref(&user_id))
        .await;
    let known_ids = vec![
        (user_id, "[member]".to_string()),
        (group.clone(), "[conversation]".to_string()),
    ];
    let ctx = Ctx {
        server: &server,
        admin: &admin,
        member: &member,
        group: &group,
        known_ids,
    };
    let counts = [
        ("github", github(&ctx).await),
        ("gitlab", gitlab(&ctx).await),
        ("alertmanager", alertmanager(&ctx).await),
        ("grafana", plain(&ctx, "grafana").await),
        ("pagerduty", plain(&ctx, "pagerduty").await),
        ("dingtalk", dingtalk(&ctx).await),
    ];
    for (source, n) in counts {
        assert!(n > 0, "no {source} fixture replayed");
    }
}

async fn github(ctx: &Ctx<'_>) -> usize {
    let events = index("github", "headers.json", "files");
    let real = &read_json("github", "headers.json")["example_real_delivery_headers"]["headers"];
    let files = payloads("github");
    for (name, body) in &files {
        let event = events
            .get(name)
            .unwrap_or_else(|| panic!("github/{name} is not in github/headers.json"))
            ["x_github_event"]
            .as_str()
            .unwrap();
        let robot = ctx.robot("github", json!({})).await;
        let secret = robot["secret"].as_str().unwrap();
        let headers = vec![
            ("content-type".into(), "application/json".into()),
            (
                "user-agent".into(),
                real["user-agent"].as_str().unwrap().into(),
            ),
            ("accept".into(), "*/*".into()),
            ("x-github-event".into(), event.into()),
            ("x-github-delivery".into(), delivery_id()),
            ("x-hub-signature-256".into(), github_signature(secret, body)),
        ];
        let url = robot["webhook_url"].as_str().unwrap().to_string();
        let replay = Replay {
            url,
            headers,
            body: body.clone(),
        };
        ctx.replay_and_snapshot(&format!("github__{name}"), &robot, replay)
            .await;
    }
    files.len()
}

async fn gitlab(ctx: &Ctx<'_>) -> usize {
    let events = index("gitlab", "headers.json", "files");
    let files = payloads("gitlab");
    for (name, body) in &files {
        let event = events
            .get(name)
            .unwrap_or_else(|| panic!("gitlab/{name} is not in gitlab/headers.json"))
            ["x_gitlab_event"]
            .as_str()
            .unwrap();
        let robot = ctx.robot("gitlab", json!({})).await;
        let uuid = delivery_id();
        let headers = vec![
            ("content-type".into(), "application/json".into()),
            ("x-gitlab-event".into(), event.into()),
            (
                "x-gitlab-token".into(),
                robot["secret"].as_str().unwrap().into(),
            ),
            ("x-gitlab-event-uuid".into(), uuid.clone()),
            ("idempotency-key".into(), uuid),
            ("x-gitlab-webhook-uuid".into(), delivery_id()),
        ];
        let replay = Replay {
            url: robot["webhook_url"].as_str().unwrap().to_string(),
            headers,
            body: body.clone(),
        };
        ctx.replay_and_snapshot(&format!("gitlab__{name}"), &robot, replay)
            .await;
    }
    files.len()
}

/// Alertmanager: the captured requests' own headers (User-Agent, Bearer when configured);
/// payloads from elsewhere go with a JSON content type.
async fn alertmanager(ctx: &Ctx<'_>) -> usize {
    let captured = index("alertmanager", "captured-index.json", "requests");
    let files = payloads("alertmanager");
    for (name, body) in &files {
        let mut headers: Vec<(String, String)> = match captured.get(name) {
            Some(entry) => entry["headers"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| {
                    !matches!(k.to_ascii_lowercase().as_str(), "host" | "content-length")
                })
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            None => vec![("content-type".into(), "application/json".into())],
        };
        let bearer = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let extra = match &bearer {
            Some(secret) => json!({"secret": secret}),
            None => json!({}),
        };
        let robot = ctx.robot("alertmanager", extra).await;
        if bearer.is_some() {
            // The robot's secret is the Bearer token the capture carries: check it is required.
            let resp = ctx
                .server
                .http
                .post(robot["webhook_url"].as_str().unwrap())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{name} without Bearer"
            );
        }
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
        let replay = Replay {
            url: robot["webhook_url"].as_str().unwrap().to_string(),
            headers,
            body: body.clone(),
        };
        ctx.replay_and_snapshot(&format!("alertmanager__{name}"), &robot, replay)
            .await;
    }
    files.len()
}

/// Grafana and PagerDuty: JSON bodies with no recorded headers.
async fn plain(ctx: &Ctx<'_>, source: &str) -> usize {
    let files = payloads(source);
    for (name, body) in &files {
        let robot = ctx.robot(source, json!({})).await;
        let replay = Replay {
            url: robot["webhook_url"].as_str().unwrap().to_string(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.clone(),
        };
        ctx.replay_and_snapshot(&format!("{source}__{name}"), &robot, replay)
            .await;
    }
    files.len()
}

/// DingTalk: each capture's exact body and headers; the query keeps the client's shape with
/// this robot's token and, when the client signed, a fresh timestamp and sign from the same
/// secret (the capture's own sign is valid for an hour only). Files without a `request`
/// (the rate-limit timing record) are not requests.
async fn dingtalk(ctx: &Ctx<'_>) -> usize {
    let mut count = 0;
    for (name, raw) in payloads("dingtalk") {
        let capture: Value = serde_json::from_slice(&raw).expect("JSON");
        let Some(request) = capture.get("request") else {
            continue;
        };
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(request["query_string"].as_str().unwrap()).unwrap();
        let signed = query.iter().any(|(k, _)| k == "sign");
        let extra = match (signed, capture["secret"].as_str()) {
            (true, Some(secret)) => json!({"security": {"sign": true}, "secret": secret}),
            _ => json!({}),
        };
        let robot = ctx.robot("custom", extra).await;
        let token = robot["access_token"].as_str().unwrap();
        let ts = now_ms();
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| match k.as_str() {
                "access_token" => format!("access_token={token}"),
                "timestamp" => format!("timestamp={ts}"),
                "sign" => format!(
                    "sign={}",
                    dingtalk_sign(robot["secret"].as_str().unwrap(), ts)
                ),
                _ => serde_urlencoded::to_string([(k, v)]).unwrap(),
            })
            .collect();
        let headers = request["headers"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.to_ascii_lowercase().as_str(),
                    "host" | "content-length" | "connection" | "accept-encoding"
                )
            })
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let replay = Replay {
            url: format!("{}/robot/send?{}", ctx.server.base, query.join("&")),
            headers,
            body: request["body_raw"].as_str().unwrap().as_bytes().to_vec(),
        };
        ctx.replay_and_snapshot(&format!("dingtalk__{name}"), &robot, replay)
            .await;
        count += 1;
    }
    count
}
