//! The webhook endpoints fuzzed over HTTP: every real fixture, mutated by a seeded mutator
//! (byte edits and JSON value swaps) and sent correctly signed, plus broken headers, must get
//! a clean answer from the real binary: never a 5xx, always JSON, errors with an errcode and a
//! message (DingTalk's `/robot/send` always HTTP 200 with an errcode).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixtures::{delivery_id, github_signature, index, payloads};
use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(mutated_webhooks_never_get_a_5xx);

/// Mutants of each fixture.
const PER_FIXTURE: usize = 8;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            leaves(
                x,
                format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                out,
            )
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| leaves(x, format!("{at}/{i}"), out)),
        _ => out.push(at),
    }
}

fn mutate(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let swaps = [
        Value::Null,
        json!(-1),
        json!(1e300),
        json!("💥{{ x }}\u{0}"),
        json!("y".repeat(30_000)),
        json!([]),
        json!({}),
    ];
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) if rng.below(3) > 0 => {
            let mut all = Vec::new();
            leaves(&v, String::new(), &mut all);
            for _ in 0..=rng.below(4) {
                let p = all[rng.below(all.len())].clone();
                if let Some(slot) = v.pointer_mut(&p) {
                    *slot = swaps[rng.below(swaps.len())].clone();
                }
            }
            serde_json::to_vec(&v).unwrap()
        }
        _ => {
            let mut out = body.to_vec();
            let at = rng.below(out.len());
            match rng.below(3) {
                0 => out[at] ^= 0x20,
                1 => out.truncate(at),
                _ => out.splice(at..at, [0xff, b'"', b'{']).for_each(drop),
            }
            out
        }
    }
}

/// Sends one request and checks the answer is clean; returns the status.
async fn check(
    server: &Server,
    what: &str,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> StatusCode {
    let mut req = server.http.post(url).body(body);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.expect("send");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(
        !status.is_server_error(),
        "{what}: {status} {text}\n{}",
        server.log()
    );
    let answer: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {status} {text}"));
    if status.is_client_error() || url.contains("/robot/send") {
        assert!(
            answer["errcode"].is_i64() && answer["errmsg"].is_string(),
            "{what}: {status} {answer}"
        );
    }
    status
}

async fn robot(server: &Server, admin: &str, group: &str, kind: &str, extra: Value) -> Value {
    let mut body = json!({"kind": kind, "name": "fuzz", "conversation_id": group,
                          "rate_per_minute": 100000});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, robot) = server.post(admin, "/api/v1/robots", body).await;
    assert_eq!(status, StatusCode::CREATED, "{robot}");
    robot
}

/// The headers a correct delivery of `body` carries for this robot.
fn headers_for(kind: &str, robot: &Value, event: &str, body: &[u8]) -> Vec<(String, String)> {
    let mut h = vec![("content-type".to_string(), "application/json".to_string())];
    let secret = robot["secret"].as_str().unwrap_or_default();
    match kind {
        "github" => {
            h.push(("x-github-event".into(), event.into()));
            h.push(("x-github-delivery".into(), delivery_id()));
            h.push(("x-hub-signature-256".into(), github_signature(secret, body)));
        }
        "gitlab" => {
            h.push(("x-gitlab-event".into(), event.into()));
            h.push(("x-gitlab-token".into(), secret.into()));
            h.push(("x-gitlab-event-uuid".into(), delivery_id()));
        }
        _ => {}
    }
    h
}

async fn mutated_webhooks_never_get_a_5xx(backend: Backend) {
    let config = "[limits]\ngroup_messages_per_minute = 1000000\n";
    let server = Server::start(backend, config).await;
    let admin = server.admin_token();
    let mut rng = Rng(42);
    let mut sent = 0;
    for kind in ["github", "gitlab", "alertmanager", "grafana", "pagerduty"] {
        let group = server.create_group(&admin, kind, &[]).await;
        let robot = robot(&server, &admin, &group, kind, json!({})).await;
        let url = robot["webhook_url"].as_str().unwrap().to_string();
        let events = match kind {
            "github" | "gitlab" => index(kind, "headers.json", "files"),
            _ => Default::default(),
        };
        let key = format!("x_{kind}_event");
        for (name, body) in payloads(kind) {
            let event = events
                .get(&name)
                .and_then(|e| e[&key].as_str())
                .unwrap_or_default()
                .to_string();
            for i in 0..PER_FIXTURE {
                let mutant = mutate(&body, &mut rng);
                let headers = headers_for(kind, &robot, &event, &mutant);
                let what = format!("{kind}/{name} mutant {i}");
                check(&server, &what, &url, &headers, mutant).await;
                sent += 1;
            }
            // Broken headers around the real body: no event name, a wrong media type, a
            // form body with garbage in `payload`.
            let mut headers = headers_for(kind, &robot, "", &body);
            headers.retain(|(k, _)| !k.ends_with("-event"));
            check(
                &server,
                &format!("{kind}/{name} no event"),
                &url,
                &headers,
                body.clone(),
            )
            .await;
            let mut headers = headers_for(kind, &robot, &event, &body);
            headers[0].1 = "text/plain; charset=utf-16".into();
            check(
                &server,
                &format!("{kind}/{name} text/plain"),
                &url,
                &headers,
                body.clone(),
            )
            .await;
            let form = b"payload=%7B%22a%22%3A%5B".to_vec();
            let mut headers = headers_for(kind, &robot, &event, &form);
            headers[0].1 = "application/x-www-form-urlencoded".into();
            check(
                &server,
                &format!("{kind}/{name} form"),
                &url,
                &headers,
                form,
            )
            .await;
            sent += 3;
        }
    }
    // DingTalk's custom robot: mutated captured bodies, always HTTP 200 with an errcode.
    let group = server.create_group(&admin, "dingtalk", &[]).await;
    let custom = robot(&server, &admin, &group, "custom", json!({})).await;
    let url = custom["webhook_url"].as_str().unwrap().to_string();
    for (name, raw) in payloads("dingtalk") {
        let capture: Value = serde_json::from_slice(&raw).unwrap();
        let Some(body) = capture["request"]["body_raw"].as_str() else {
            continue;
        };
        for i in 0..PER_FIXTURE {
            let mutant = mutate(body.as_bytes(), &mut rng);
            let headers = vec![("content-type".to_string(), "application/json".to_string())];
            let status = check(
                &server,
                &format!("dingtalk/{name} mutant {i}"),
                &url,
                &headers,
                mutant,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "DingTalk answers 200");
            sent += 1;
        }
    }
    assert!(sent > 500, "only {sent} requests");
}
