//! Incidents, escalation and DING end to end: PagerDuty's trigger/acknowledge/resolve, the
//! escalation chain with ack from a DING, a card button and a group reply, SIGKILL in the
//! middle of a wait, two processes on one PostgreSQL, DINGs with their confirmations and the
//! signed requests to an SMS/voice provider. The real-Alertmanager story is in
//! `alertmanager.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(
    pagerduty_trigger_ack_resolve,
    escalation_dings_in_order_and_stops_on_ding_confirm,
    card_button_acks_and_updates_the_card,
    sigkill_mid_wait_fires_the_next_step_once,
    dings_reach_recipients_and_record_confirmations,
    policies_and_incidents_refuse_bad_input,
    group_replies_ack_and_resolve,
    rotation_hands_off_across_dst_and_is_escalated_to,
    flapping_reopens_where_the_chain_stood_and_ack_times_out,
    digest_batches_low_severity_into_one_message,
    custom_robot_marked_alerting_keys_incidents,
);

mod two_processes {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::two_processes_fire_every_step_once().await
    }
}

pub(crate) fn fixture(path: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A group with `members`, an alerting robot of `kind` in it, and its webhook URL.
pub(crate) async fn alert_robot(
    server: &Server,
    admin: &str,
    kind: &str,
    members: &[String],
) -> (String, Value) {
    let group = server.create_group(admin, "ops", members).await;
    let (status, robot) = server
        .post(
            admin,
            "/api/v1/robots",
            json!({"kind": kind, "name": format!("{kind} alerts"), "conversation_id": group}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{robot}");
    (group, robot)
}

/// Creates a policy of `(wait_seconds, user, channel)` steps and attaches it to the robot.
pub(crate) async fn attach_policy(
    server: &Server,
    admin: &str,
    robot: &Value,
    steps: &[(u64, &str, &str)],
    extra: Value,
) -> String {
    let steps: Vec<Value> = steps
        .iter()
        .map(|(wait, user, channel)| {
            json!({"wait_seconds": wait, "targets": {"users": [user]}, "channel": channel})
        })
        .collect();
    let mut body = json!({"name": "on-call", "steps": steps, "repeat": 0});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, policy) = server
        .post(admin, "/api/v1/escalation-policies", body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let id = policy["id"].as_str().unwrap().to_string();
    let (status, patched) = server
        .call(
            reqwest::Method::PATCH,
            admin,
            &format!("/api/v1/robots/{}", robot["id"].as_str().unwrap()),
            Some(json!({"escalation_policy_id": id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    id
}

/// Users with mobiles, and a token for each.
pub(crate) async fn people(server: &Server, admin: &str, names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (status, user) = server
            .post(
                admin,
                "/api/v1/users",
                json!({"name": name, "mobile": format!("1380000{i:04}")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        let id = user["id"].as_str().unwrap().to_string();
        let token = server.token_for(admin, &id).await;
        out.push((id, token));
    }
    out
}

/// The `ding` events in a user's stream.
pub(crate) async fn dings(server: &Server, token: &str) -> Vec<Value> {
    server
        .sync_all(token, 0)
        .await
        .into_iter()
        .filter(|e| e["type"] == "ding")
        .collect()
}

/// Waits until the user has at least `n` DINGs; returns them.
pub(crate) async fn wait_dings(
    server: &Server,
    token: &str,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let got = dings(server, token).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} DINGs arrived: {got:#?}\n{}",
            got.len(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn incidents(server: &Server, token: &str, query: &str) -> Vec<Value> {
    let (status, body) = server
        .get(token, &format!("/api/v1/incidents{query}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["incidents"].as_array().unwrap().clone()
}

/// Waits until the incident (the first listed) is in `state`.
pub(crate) async fn wait_state(server: &Server, token: &str, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.get(token, &format!("/api/v1/incidents/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["state"] == state {
            return body;
        }
        assert!(Instant::now() < deadline, "incident never {state}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn post_json(server: &Server, url: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = server
        .http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A PagerDuty event: the fixture's body with its action and dedup key set.
pub(crate) fn pagerduty(action: &str, dedup_key: &str) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&fixture("pagerduty/event.trigger.json")).unwrap();
    body["event_action"] = json!(action);
    body["dedup_key"] = json!(dedup_key);
    serde_json::to_vec(&body).unwrap()
}

async fn pagerduty_trigger_ack_resolve(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let (_, robot) = alert_robot(&server, &admin, "pagerduty", &[]).await;
    let url = robot["webhook_url"].as_str().unwrap();
    // The real trigger fixture, byte for byte.
    let (status, reply) = post_json(&server, url, fixture("pagerduty/event.trigger.json")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let open = incidents(&server, &admin, "?state=triggered").await;
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0]["key"], "samplekeyhere");
    assert_eq!(open[0]["title"], "Example alert on host1.example.com");
    let id = open[0]["id"].as_str().unwrap().to_string();
    // A repeat trigger updates the open incident instead of opening another.
    post_json(&server, url, fixture("pagerduty/event.trigger.json")).await;
    let all = incidents(&server, &admin, "").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["fire_count"], 2);
    let (status, _) = post_json(&server, url, pagerduty("acknowledge", "samplekeyhere")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        incidents(&server, &admin, "?state=acknowledged")
            .await
            .len(),
        1
    );
    assert!(incidents(&server, &admin, "?state=triggered")
        .await
        .is_empty());
    let (status, _) = post_json(&server, url, pagerduty("resolve", "samplekeyhere")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let resolved = wait_state(&server, &admin, &id, "resolved").await;
    let actions: Vec<&str> = resolved["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["opened", "acknowledged", "resolved"]);
    assert!(resolved["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["channel"] == "sender" && e["actor"].as_str().unwrap().starts_with("robot:")));
    // A resolve for a key with no open incident changes nothing; a new trigger opens anew.
    post_json(&server, url, pagerduty("resolve", "samplekeyhere")).await;
    post_json(&server, url, pagerduty("trigger", "other-key")).await;
    let all = incidents(&server, &admin, "").await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["key"], "other-key", "newest first");
    // Filters: by label is empty for PagerDuty, by robot finds both.
    let robot_id = robot["id"].as_str().unwrap();
    assert_eq!(
        incidents(&server, &admin, &format!("?robot_id={robot_id}"))
            .await
            .len(),
        2
    );
    assert!(incidents(&server, &admin, "?label=team%3Dweb")
        .await
        .is_empty());
}

async fn escalation_dings_in_order_and_stops_on_ding_confirm(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann", "bob", "cyd"]).await;
    let members: Vec<String> = users.iter().map(|(id, _)| id.clone()).collect();
    let (group, robot) = alert_robot(&server, &admin, "pagerduty", &members).await;
    attach_policy(
        &server,
        &admin,
        &robot,
        &[
            (1, &users[0].0, "ding_app"),
            (1, &users[1].0, "group"),
            (1, &users[2].0, "ding_app"),
        ],
        json!({}),
    )
    .await;
    let url = robot["webhook_url"].as_str().unwrap();
    let opened = Instant::now();
    post_json(&server, url, pagerduty("trigger", "disk-full")).await;
    let ann = wait_dings(&server, &users[0].1, 1, Duration::from_secs(20)).await;
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "step 1 waited its second"
    );
    let ding = &ann[0]["ding"];
    assert_eq!(ding["priority"], "high");
    assert!(
        ding["text"].as_str().unwrap().contains("Example alert"),
        "{ding}"
    );
    // Step 2 is a group message that @-mentions bob.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mention = loop {
        let events = server.sync_all(&users[1].1, 0).await;
        let found = events.into_iter().find(|e| {
            e["type"] == "message.created"
                && e["conversation_id"] == group.as_str()
                && e["message"]["at"]["atUserIds"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|u| u == users[1].0.as_str()))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "bob was never @-mentioned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(mention["message"]["text"]["content"]
        .as_str()
        .unwrap()
        .contains("acknowledge"));
    // Ann confirms her DING: that acknowledges the incident, so cyd is never DINGed.
    let ding_id = ding["id"].as_str().unwrap();
    let (status, confirmed) = server
        .post(
            &users[0].1,
            &format!("/api/v1/dings/{ding_id}/confirm"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    let incident = ding["incident_id"].as_str().unwrap();
    let acked = wait_state(&server, &admin, incident, "acknowledged").await;
    let last = acked["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["channel"], "ding");
    assert_eq!(last["actor"], format!("user:{}", users[0].0));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        dings(&server, &users[2].1).await.is_empty(),
        "the ack stopped the chain"
    );
    // Resolving tells whoever was DINGed.
    let (status, _) = server
        .post(
            &admin,
            &format!("/api/v1/incidents/{incident}/resolve"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ann = wait_dings(&server, &users[0].1, 2, Duration::from_secs(20)).await;
    assert!(ann[1]["ding"]["text"]
        .as_str()
        .unwrap()
        .starts_with("✅ Resolved"));
}

/// The card's buttons, from the robot's first message in the group.
async fn card_buttons(server: &Server, admin: &str) -> (String, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = server.sync_all(admin, 0).await;
        if let Some(card) = events
            .iter()
            .find(|e| e["type"] == "message.created" && e["message"]["msgtype"] == "actionCard")
        {
            let id = card["message"]["id"].as_str().unwrap().to_string();
            return (
                id,
                card["message"]["actionCard"]["btns"]
                    .as_array()
                    .unwrap()
                    .clone(),
            );
        }
        assert!(Instant::now() < deadline, "no alert card: {events:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn card_button_acks_and_updates_the_card(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let (_, robot) = alert_robot(&server, &admin, "alertmanager", &[]).await;
    let url = robot["webhook_url"].as_str().unwrap();
    let (status, _) = post_json(
        &server,
        url,
        fixture("alertmanager/captured-1-firing-2alerts.json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (card, buttons) = card_buttons(&server, &admin).await;
    let ack = buttons
        .iter()
        .find(|b| b["title"] == "Acknowledge")
        .unwrap_or_else(|| panic!("{buttons:#?}"))["actionURL"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ack.contains("/alerts/incidents/") && ack.contains("sig="),
        "{ack}"
    );
    // A forged signature is refused; the real one acknowledges.
    let forged = format!("{}0", ack.trim_end_matches(|c: char| c.is_ascii_hexdigit()));
    let resp = server.http.get(&forged).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resolve_as_ack = ack.replace("/ack?", "/resolve?");
    assert_eq!(
        server
            .http
            .get(&resolve_as_ack)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN,
        "a signature covers its action"
    );
    let resp = server.http.get(&ack).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let incident: Value = resp.json().await.unwrap();
    assert_eq!(incident["state"], "acknowledged");
    // The card is updated in place: acknowledged, with only the Resolve button left.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = server.sync_all(&admin, 0).await;
        let updated = events
            .iter()
            .rev()
            .find(|e| e["type"] == "message.updated" && e["message"]["id"] == card.as_str());
        if let Some(u) = updated {
            let text = u["message"]["actionCard"]["text"].as_str().unwrap();
            assert!(text.contains("acknowledged"), "{text}");
            let titles: Vec<&str> = u["message"]["actionCard"]["btns"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|b| b["title"].as_str())
                .collect();
            assert!(
                titles.contains(&"Resolve") && !titles.contains(&"Acknowledge"),
                "{titles:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the card was never updated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = incident["id"].as_str().unwrap();
    let (_, full) = server.get(&admin, &format!("/api/v1/incidents/{id}")).await;
    assert_eq!(
        full["timeline"].as_array().unwrap().last().unwrap()["channel"],
        "card"
    );
}

async fn sigkill_mid_wait_fires_the_next_step_once(backend: Backend) {
    let mut server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann", "bob"]).await;
    let (_, robot) = alert_robot(&server, &admin, "pagerduty", &[]).await;
    attach_policy(
        &server,
        &admin,
        &robot,
        &[(3, &users[0].0, "ding_app"), (1, &users[1].0, "ding_app")],
        json!({}),
    )
    .await;
    let url = robot["webhook_url"].as_str().unwrap().to_string();
    let (status, _) = post_json(&server, &url, pagerduty("trigger", "kill-me")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Killed one second into the three-second wait: the answered incident and its timer
    // survive; the restarted process fires both steps, each once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().await;
    let ann = wait_dings(&server, &users[0].1, 1, Duration::from_secs(30)).await;
    let bob = wait_dings(&server, &users[1].1, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dings(&server, &users[0].1).await.len(), 1, "{ann:#?}");
    assert_eq!(dings(&server, &users[1].1).await.len(), 1, "{bob:#?}");
    let db = server.db().await;
    let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM escalation_timers")
        .fetch_one(&db)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(pending, 0, "the chain ended");
}

async fn two_processes_fire_every_step_once() {
    const INCIDENTS: usize = 40;
    let first = Server::start(Backend::Postgres, "").await;
    let second = first.start_peer().await;
    let admin = first.admin_token();
    let users = people(&first, &admin, &["ann", "bob"]).await;
    let (_, robot) = alert_robot(&first, &admin, "pagerduty", &[]).await;
    attach_policy(
        &first,
        &admin,
        &robot,
        &[(1, &users[0].0, "ding_app"), (1, &users[1].0, "ding_app")],
        json!({}),
    )
    .await;
    let token = robot["access_token"].as_str().unwrap();
    for i in 0..INCIDENTS {
        let server = if i % 2 == 0 { &first } else { &second };
        let url = format!("{}/hooks/pagerduty/{token}", server.base);
        let (status, _) = post_json(server, &url, pagerduty("trigger", &format!("k{i}"))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    wait_dings(&first, &users[0].1, INCIDENTS, Duration::from_secs(60)).await;
    wait_dings(&second, &users[1].1, INCIDENTS, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dings(&first, &users[0].1).await.len(), INCIDENTS);
    assert_eq!(dings(&first, &users[1].1).await.len(), INCIDENTS);
    let db = first.db().await;
    let rows = sqlx::query(
        "SELECT incident_id, COUNT(*) AS n FROM dings GROUP BY incident_id HAVING COUNT(*) <> 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(rows.is_empty(), "every incident DINGed exactly twice");
    let escalated: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM incident_timeline WHERE action = 'escalated'")
            .fetch_one(&db)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
    assert_eq!(escalated, 2 * INCIDENTS as i64);
    let log = format!("{}{}", first.log(), second.log());
    assert!(!log.contains("panicked"), "{log}");
}

/// Each request a provider received: headers and body.
type Requests = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A notification provider: records each request's headers and body.
struct Provider {
    url: String,
    hits: Requests,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    async fn start() -> Provider {
        let hits: Requests = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sms", listener.local_addr().unwrap());
        let recorded = hits.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let recorded = recorded.clone();
                async move {
                    recorded.lock().unwrap().push((headers, body.to_vec()));
                    "ok"
                }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Provider { url, hits, task }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn dings_reach_recipients_and_record_confirmations(backend: Backend) {
    let server = Server::start(backend, "[outgoing]\nallow_cidrs = [\"127.0.0.1/32\"]\n").await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann", "bob", "eve"]).await;
    let provider = Provider::start().await;
    let (status, set) = server
        .call(
            reqwest::Method::PUT,
            &admin,
            "/api/v1/notification-provider",
            Some(json!({"url": provider.url})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    let secret = set["secret"].as_str().unwrap().to_string();
    let mut live = crate::harness::Sse::connect(&server, &users[1].1, None).await;
    let (status, created) = server
        .post(
            &users[0].1,
            "/api/v1/dings",
            json!({"user_ids": [users[1].0, users[2].0], "text": "call me now", "channel": "ding_sms"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // Live connections get it as it is written, as an SSE event of type `ding`.
    let frame = loop {
        let frame = live
            .next(Duration::from_secs(20))
            .await
            .expect("a live DING");
        if frame.event == "ding" {
            break frame;
        }
    };
    assert_eq!(frame.data["ding"]["id"], id.as_str());
    let got = wait_dings(&server, &users[1].1, 1, Duration::from_secs(20)).await;
    assert_eq!(got[0]["ding"]["id"], id.as_str());
    assert_eq!(
        got[0]["conversation_id"], "0",
        "a DING is about people, not a conversation"
    );
    assert_eq!(got[0]["ding"]["text"], "call me now");
    assert_eq!(got[0]["ding"]["sender"]["id"], users[0].0.as_str());
    assert!(
        dings(&server, &users[0].1).await.is_empty(),
        "only recipients hear it"
    );
    // The provider gets one signed request per recipient, with the mobile and the text.
    let deadline = Instant::now() + Duration::from_secs(20);
    while provider.hits.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the provider heard nothing\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (headers, body) in provider.hits.lock().unwrap().iter() {
        let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_string();
        let expected = herald::outgoing::sign::standard_signature(
            &secret,
            &h("webhook-id"),
            h("webhook-timestamp").parse().unwrap(),
            body,
        )
        .unwrap();
        assert_eq!(h("webhook-signature"), expected);
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["type"], "ding.sms");
        assert_eq!(v["text"], "call me now");
        assert!(v["mobile"].as_str().unwrap().starts_with("1380000"));
    }
    // Who has confirmed: nobody, then bob. Eve may not confirm twice; ann is no recipient.
    let (_, view) = server
        .get(&users[0].1, &format!("/api/v1/dings/{id}"))
        .await;
    assert_eq!(view["unconfirmed"].as_array().unwrap().len(), 2, "{view}");
    let (status, _) = server
        .post(
            &users[1].1,
            &format!("/api/v1/dings/{id}/confirm"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post(
            &users[0].1,
            &format!("/api/v1/dings/{id}/confirm"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, view) = server
        .get(&users[0].1, &format!("/api/v1/dings/{id}"))
        .await;
    assert_eq!(view["confirmed"], json!([users[1].0]));
    assert_eq!(view["unconfirmed"], json!([users[2].0]));
    // Another org sees nothing of it.
    server.cli(&["org", "create", "other"]);
    let outsider = server.cli(&["token", "issue", "--org", "other", "--user", "admin"]);
    let (status, _) = server.get(&outsider, &format!("/api/v1/dings/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(&outsider, &format!("/api/v1/dings/{id}/confirm"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(
            &outsider,
            "/api/v1/dings",
            json!({"user_ids": [users[1].0], "text": "hi"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no DINGs across orgs");
}

async fn policies_and_incidents_refuse_bad_input(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann"]).await;
    let bad = [
        json!({"name": "x", "steps": []}),
        json!({"name": "x", "steps": [{"wait_seconds": 1, "targets": {"users": ["999999"]}, "channel": "ding_app"}]}),
        json!({"name": "x", "steps": [{"wait_seconds": 1, "targets": {}, "channel": "ding_app"}]}),
        json!({"name": "x", "steps": [{"wait_seconds": 1, "targets": {"users": [users[0].0]}, "channel": "pigeon"}]}),
        json!({"name": "x", "steps": [{"wait_seconds": 1, "targets": {"users": [users[0].0]}, "channel": "group"}], "repeat": 1000}),
        json!({"name": "x", "steps": [], "surprise": 1}),
    ];
    for body in bad {
        let (status, err) = server
            .post(&admin, "/api/v1/escalation-policies", body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {err}");
        assert!(err["errcode"].as_i64().unwrap() >= 40000, "{err}");
    }
    let (status, _) = server
        .post(
            &users[0].1,
            "/api/v1/escalation-policies",
            json!({"name": "x", "steps": []}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "admins only");
    let (status, err) = server.get(&admin, "/api/v1/incidents?state=sleeping").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, _) = server.get(&admin, "/api/v1/incidents/123456").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(&admin, "/api/v1/incidents/abc/ack", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(
            &admin,
            "/api/v1/dings",
            json!({"user_ids": ["424242"], "text": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .post(
            &admin,
            "/api/v1/dings",
            json!({"user_ids": [users[0].0], "text": " "}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, robot) = alert_robot(&server, &admin, "alertmanager", &[]).await;
    let (status, err) = server
        .call(
            reqwest::Method::PATCH,
            &admin,
            &format!("/api/v1/robots/{}", robot["id"].as_str().unwrap()),
            Some(json!({"escalation_policy_id": "77777"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    // Policies list, read, change, delete.
    let id = attach_policy(
        &server,
        &admin,
        &robot,
        &[(5, &users[0].0, "ding_app")],
        json!({"match": {"team": "web"}}),
    )
    .await;
    let (_, list) = server.get(&admin, "/api/v1/escalation-policies").await;
    assert_eq!(list["escalation_policies"][0]["match"]["team"], "web");
    let (status, patched) = server
        .call(
            reqwest::Method::PATCH,
            &admin,
            &format!("/api/v1/escalation-policies/{id}"),
            Some(json!({"repeat": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["repeat"], 2);
    let (status, _) = server
        .call(
            reqwest::Method::DELETE,
            &admin,
            &format!("/api/v1/escalation-policies/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .get(&admin, &format!("/api/v1/escalation-policies/{id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn group_replies_ack_and_resolve(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let (group, robot) = alert_robot(&server, &admin, "pagerduty", &[]).await;
    let other = server.create_group(&admin, "elsewhere", &[]).await;
    let url = robot["webhook_url"].as_str().unwrap();
    for key in ["k1", "k2", "k3"] {
        post_json(&server, url, pagerduty("trigger", key)).await;
    }
    let listed = incidents(&server, &admin, "").await;
    let id_of = |key: &str| {
        listed.iter().find(|i| i["key"] == key).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let reply = |conversation: String, body: Value| {
        let server = &server;
        let admin = admin.clone();
        async move {
            let (status, posted) = server
                .post(
                    &admin,
                    &format!("/api/v1/conversations/{conversation}/messages"),
                    body,
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{posted}");
        }
    };
    let robot_mention = format!("robot_{}", robot["id"].as_str().unwrap());
    // Quoting an incident from another conversation does nothing; a bare "ack" neither.
    reply(
        other,
        json!({"msgtype": "text", "text": {"content": format!("ack #{}", id_of("k1"))}}),
    )
    .await;
    reply(
        group.clone(),
        json!({"msgtype": "text", "text": {"content": "ack"}}),
    )
    .await;
    assert_eq!(
        incidents(&server, &admin, "?state=triggered").await.len(),
        3
    );
    // "@robot ack": the robot's newest open incident (k3).
    reply(
        group.clone(),
        json!({"msgtype": "text", "text": {"content": "@alerts ack, looking"}, "at": {"atUserIds": [robot_mention]}}),
    )
    .await;
    let acked = wait_state(&server, &admin, &id_of("k3"), "acknowledged").await;
    let last = acked["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["channel"], "reply");
    // "resolve #id" quotes k1; "resolve" in k2's thread resolves k2.
    reply(
        group.clone(),
        json!({"msgtype": "text", "text": {"content": format!("resolve #{}", id_of("k1"))}}),
    )
    .await;
    wait_state(&server, &admin, &id_of("k1"), "resolved").await;
    reply(
        group.clone(),
        json!({"msgtype": "text", "text": {"content": "resolve"}, "thread_key": "k2"}),
    )
    .await;
    wait_state(&server, &admin, &id_of("k2"), "resolved").await;
}

async fn rotation_hands_off_across_dst_and_is_escalated_to(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann", "bob", "cyd"]).await;
    let (ann, bob, cyd) = (&users[0], &users[1], &users[2]);
    let (status, rotation) = server
        .post(
            &admin,
            "/api/v1/rotations",
            json!({"name": "primary", "members": [ann.0, bob.0], "time_zone": "America/New_York",
                   "handoff": "daily", "handoff_time": "09:00", "start": "2026-03-07",
                   "overrides": [{"user_id": cyd.0, "start": "2026-03-09T00:00:00Z", "end": "2026-03-09T06:00:00Z"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotation}");
    let id = rotation["id"].as_str().unwrap();
    let oncall = |at: &'static str| {
        let (server, member, id) = (&server, ann.1.clone(), id.to_string());
        async move {
            let (status, body) = server
                .get(&member, &format!("/api/v1/rotations/{id}/oncall?at={at}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    // New York springs forward on 2026-03-08: the 09:00 hand-off moves from 14:00Z to 13:00Z.
    assert_eq!(
        oncall("2026-03-07T13:59:00Z").await["user_id"],
        bob.0.as_str(),
        "before the first hand-off"
    );
    assert_eq!(
        oncall("2026-03-07T14:00:00Z").await["user_id"],
        ann.0.as_str()
    );
    assert_eq!(
        oncall("2026-03-08T12:59:00Z").await["user_id"],
        ann.0.as_str()
    );
    assert_eq!(
        oncall("2026-03-08T13:00:00Z").await["user_id"],
        bob.0.as_str()
    );
    let over = oncall("2026-03-09T01:00:00Z").await;
    assert_eq!(
        (over["user_id"].as_str(), over["source"].as_str()),
        (Some(cyd.0.as_str()), Some("override"))
    );
    let (status, _) = server
        .get(
            &admin,
            &format!("/api/v1/rotations/{id}/oncall?at=yesterday"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .post(
            &admin,
            "/api/v1/rotations",
            json!({"name": "x", "members": [ann.0], "time_zone": "Mars/Base",
            "handoff": "daily", "handoff_time": "09:00", "start": "2026-03-07"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A step that targets the rotation DINGs whoever is on call when it fires.
    let (_, now) = server
        .get(&admin, &format!("/api/v1/rotations/{id}/oncall"))
        .await;
    let on_call = users
        .iter()
        .find(|(uid, _)| *uid == now["user_id"].as_str().unwrap())
        .unwrap();
    let (_, robot) = alert_robot(&server, &admin, "pagerduty", &[]).await;
    let (status, policy) = server
        .post(
            &admin,
            "/api/v1/escalation-policies",
            json!({"name": "rota", "steps": [
            {"wait_seconds": 1, "targets": {"rotations": [id]}, "channel": "ding_app"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let (status, _) = server
        .call(
            reqwest::Method::PATCH,
            &admin,
            &format!("/api/v1/robots/{}", robot["id"].as_str().unwrap()),
            Some(json!({"escalation_policy_id": policy["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    post_json(
        &server,
        robot["webhook_url"].as_str().unwrap(),
        pagerduty("trigger", "rota"),
    )
    .await;
    wait_dings(&server, &on_call.1, 1, Duration::from_secs(20)).await;
}

async fn flapping_reopens_where_the_chain_stood_and_ack_times_out(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann", "bob", "cyd"]).await;
    let (ann, bob, cyd) = (&users[0], &users[1], &users[2]);
    let (_, robot) = alert_robot(&server, &admin, "pagerduty", &[]).await;
    attach_policy(
        &server,
        &admin,
        &robot,
        &[
            (1, &ann.0, "ding_app"),
            (1, &bob.0, "ding_app"),
            (1, &cyd.0, "ding_app"),
        ],
        json!({"ack_timeout_seconds": 1}),
    )
    .await;
    let url = robot["webhook_url"].as_str().unwrap();
    post_json(&server, url, pagerduty("trigger", "flappy")).await;
    let first = wait_dings(&server, &ann.1, 1, Duration::from_secs(20)).await;
    let id = first[0]["ding"]["incident_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Resolve and fire again at once: the same incident re-opens at step 2 (bob), not ann.
    post_json(&server, url, pagerduty("resolve", "flappy")).await;
    post_json(&server, url, pagerduty("trigger", "flappy")).await;
    let all = incidents(&server, &admin, "").await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(
        (all[0]["id"].as_str(), all[0]["state"].as_str()),
        (Some(id.as_str()), Some("triggered"))
    );
    assert_eq!(all[0]["fire_count"], 2);
    wait_dings(&server, &bob.1, 1, Duration::from_secs(20)).await;
    let escalations = |list: Vec<Value>| {
        list.iter()
            .filter(|d| d["ding"]["text"].as_str().unwrap().starts_with('🚨'))
            .count()
    };
    assert_eq!(
        escalations(dings(&server, &ann.1).await),
        1,
        "the chain did not restart"
    );
    // Acknowledged with a one-second timeout: escalation resumes (cyd) since nobody resolved it.
    let (status, _) = server
        .post(&admin, &format!("/api/v1/incidents/{id}/ack"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_dings(&server, &cyd.1, 1, Duration::from_secs(20)).await;
    let (_, full) = server.get(&admin, &format!("/api/v1/incidents/{id}")).await;
    let actions: Vec<&str> = full["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "opened",
            "escalated",
            "resolved",
            "reopened",
            "escalated",
            "acknowledged",
            "acknowledgement expired",
            "escalated"
        ],
        "{full:#}"
    );
}

/// The captured Alertmanager notification as another group with another severity.
fn alertmanager_group(key: &str, severity: &str) -> Vec<u8> {
    let mut body: Value =
        serde_json::from_slice(&fixture("alertmanager/captured-1-firing-2alerts.json")).unwrap();
    body["groupKey"] = json!(key);
    body["commonLabels"]["severity"] = json!(severity);
    body["commonAnnotations"]["summary"] = json!(format!("{key} is {severity}"));
    for alert in body["alerts"].as_array_mut().unwrap() {
        alert["labels"]["severity"] = json!(severity);
    }
    serde_json::to_vec(&body).unwrap()
}

async fn digest_batches_low_severity_into_one_message(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let (_, robot) = alert_robot(&server, &admin, "alertmanager", &[]).await;
    let (status, patched) = server
        .call(
            reqwest::Method::PATCH,
            &admin,
            &format!("/api/v1/robots/{}", robot["id"].as_str().unwrap()),
            Some(json!({"digest": {"severities": ["warning", "info"], "interval_seconds": 2}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let url = robot["webhook_url"].as_str().unwrap();
    for (key, severity) in [
        ("g1", "warning"),
        ("g2", "info"),
        ("g3", "warning"),
        ("g4", "critical"),
    ] {
        let (status, _) = post_json(&server, url, alertmanager_group(key, severity)).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Incidents open for all four; only the critical one posts its card at once.
    assert_eq!(incidents(&server, &admin, "").await.len(), 4);
    let deadline = Instant::now() + Duration::from_secs(20);
    let digest = loop {
        let events = server.sync_all(&admin, 0).await;
        let posted: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "message.created")
            .collect();
        if let Some(d) = posted
            .iter()
            .find(|e| e["message"]["msgtype"] == "markdown")
        {
            assert_eq!(
                posted.len(),
                2,
                "the critical card and one digest: {posted:#?}"
            );
            break (*d).clone();
        }
        assert!(Instant::now() < deadline, "no digest: {events:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = digest["message"]["markdown"]["text"].as_str().unwrap();
    assert!(text.starts_with("**3 alert events**"), "{text}");
    for key in ["g1", "g2", "g3"] {
        assert!(text.contains(&format!("{key} is ")), "{text}");
    }
    assert!(!text.contains("g4"), "{text}");
}

async fn custom_robot_marked_alerting_keys_incidents(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let group = server.create_group(&admin, "ops", &[]).await;
    let mut urls = Vec::new();
    for alerting in [true, false] {
        let (status, robot) = server
            .post(&admin, "/api/v1/robots", json!({"kind": "custom", "name": "cron", "conversation_id": group, "alerting": alerting}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{robot}");
        urls.push(robot["webhook_url"].as_str().unwrap().to_string());
    }
    let send = |url: String, body: Value| {
        let server = &server;
        async move {
            let (status, reply) = post_json(server, &url, serde_json::to_vec(&body).unwrap()).await;
            assert_eq!(
                (status, reply["errcode"].as_i64()),
                (StatusCode::OK, Some(0)),
                "{reply}"
            );
        }
    };
    let firing = json!({"msgtype": "text", "text": {"content": "Backup failed\nexit 2"}, "incident_key": "backup", "severity": "critical"});
    send(urls[0].clone(), firing.clone()).await;
    send(urls[1].clone(), firing.clone()).await; // not alerting: just a message
    let open = incidents(&server, &admin, "").await;
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(
        (open[0]["key"].as_str(), open[0]["title"].as_str()),
        (Some("backup"), Some("Backup failed"))
    );
    assert_eq!(open[0]["severity"], "critical");
    send(urls[0].clone(), json!({"msgtype": "text", "text": {"content": "Backup ok"}, "incident_key": "backup", "incident_status": "resolved"})).await;
    let id = open[0]["id"].as_str().unwrap();
    wait_state(&server, &admin, id, "resolved").await;
}
