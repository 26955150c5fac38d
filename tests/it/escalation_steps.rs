//! Escalation steps beyond the basic chain, end to end on both backends: a step limited to
//! active hours is skipped outside them and the chain goes on; a later step (or the API)
//! re-sends the same DING to whoever has not confirmed it; failed notification-provider
//! requests are visible on the DING and retried until sent; a custom robot's alert card is
//! updated in place like the alert senders' cards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::alerts::{alert_robot, dings, pagerduty, people, post_json, wait_dings, wait_state};
use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(
    a_step_outside_its_hours_is_skipped_and_the_chain_goes_on,
    a_later_step_resends_the_same_ding_to_the_unconfirmed,
    the_api_resends_only_to_who_has_not_confirmed,
    failed_provider_requests_are_visible_and_retried_until_sent,
    a_custom_robots_card_is_updated_in_place,
);

const ALLOW_LOOPBACK: &str = "[outgoing]\nallow_cidrs = [\"127.0.0.1/32\"]\n";

/// Each request a provider received: its headers and body.
type Requests = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A notification provider that answers 503 to the first `failures` attempts of each request
/// (by `webhook-id`), then 200.
struct Provider {
    url: String,
    hits: Requests,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    async fn start(failures: usize) -> Provider {
        let hits: Requests = Arc::default();
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sms", listener.local_addr().unwrap());
        let recorded = hits.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (recorded, seen) = (recorded.clone(), seen.clone());
                async move {
                    let id = headers
                        .get("webhook-id")
                        .map(|v| v.to_str().unwrap_or_default().to_string());
                    recorded.lock().unwrap().push((headers, body.to_vec()));
                    let attempt = {
                        let mut seen = seen.lock().unwrap();
                        let n = seen.entry(id.unwrap_or_default()).or_default();
                        *n += 1;
                        *n
                    };
                    if attempt <= failures {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Provider { url, hits, task }
    }

    /// The `webhook-id` and JSON body of each request so far.
    fn requests(&self) -> Vec<(String, Value)> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(|(h, body)| {
                let id = h.get("webhook-id").unwrap().to_str().unwrap().to_string();
                (id, serde_json::from_slice(body).unwrap())
            })
            .collect()
    }

    async fn wait_requests(&self, n: usize, server: &Server) -> Vec<(String, Value)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the provider heard {} of {n} requests\n{}",
                got.len(),
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn set_provider(server: &Server, admin: &str, url: &str) {
    let (status, set) = server
        .call(
            reqwest::Method::PUT,
            admin,
            "/api/v1/notification-provider",
            Some(json!({ "url": url })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
}

/// Creates a policy with these steps and attaches it to the robot.
async fn attach_steps(server: &Server, admin: &str, robot: &Value, steps: Value) {
    let (status, policy) = server
        .post(
            admin,
            "/api/v1/escalation-policies",
            json!({"name": "steps", "steps": steps}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let (status, patched) = server
        .call(
            reqwest::Method::PATCH,
            admin,
            &format!("/api/v1/robots/{}", robot["id"].as_str().unwrap()),
            Some(json!({"escalation_policy_id": policy["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
}

/// A weekday that is neither today nor yesterday in UTC, so a window on it alone is closed
/// now (and stays closed for the seconds the test runs, even across midnight).
fn closed_day() -> &'static str {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .weekday()
        .to_monday_zero_offset() as usize;
    DAYS[(today + 3) % 7]
}

/// Polls the incident until its timeline holds an entry with this action.
async fn wait_timeline(server: &Server, token: &str, id: &str, action: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, incident) = server.get(token, &format!("/api/v1/incidents/{id}")).await;
        let timeline = incident["timeline"].as_array().cloned().unwrap_or_default();
        if timeline.iter().any(|e| e["action"] == action) {
            return timeline;
        }
        assert!(
            Instant::now() < deadline,
            "no {action} in the timeline: {incident:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_step_outside_its_hours_is_skipped_and_the_chain_goes_on(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann", "bob"]).await;
    let members: Vec<String> = users.iter().map(|(id, _)| id.clone()).collect();
    let (_, robot) = alert_robot(&server, &admin, "pagerduty", &members).await;
    // Bad windows are refused with the field named.
    for (active, says) in [
        (
            json!({"from": "9am", "to": "18:00", "time_zone": "UTC"}),
            "from",
        ),
        (
            json!({"from": "09:00", "to": "24:01", "time_zone": "UTC"}),
            "to",
        ),
        (
            json!({"from": "09:00", "to": "09:00", "time_zone": "UTC"}),
            "differ",
        ),
        (
            json!({"from": "09:00", "to": "18:00", "time_zone": "Mars/Base"}),
            "time_zone",
        ),
        (
            json!({"days": ["funday"], "from": "09:00", "to": "18:00", "time_zone": "UTC"}),
            "days",
        ),
        (json!({"from": "09:00", "time_zone": "UTC"}), "to"),
    ] {
        let step = json!({"wait_seconds": 0, "targets": {"users": [users[0].0]}, "channel": "ding_app", "active": active});
        let (status, body) = server
            .post(
                &admin,
                "/api/v1/escalation-policies",
                json!({"name": "bad", "steps": [step]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{active}: {body}");
        assert!(
            body["errmsg"].as_str().unwrap().contains(says),
            "{active}: {body}"
        );
    }
    // Ann's step is limited to a day that is not today; bob's window (all day, every day,
    // across midnight in Shanghai) is open.
    let closed =
        json!({"days": [closed_day()], "from": "00:00", "to": "24:00", "time_zone": "UTC"});
    let open = json!({"from": "12:00", "to": "11:59", "time_zone": "Asia/Shanghai"});
    let open_now = {
        // 11:59–12:00 Shanghai is the one closed minute; avoid it.
        let local =
            jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap());
        !(local.hour() == 11 && local.minute() == 59)
    };
    attach_steps(
        &server,
        &admin,
        &robot,
        json!([
            {"wait_seconds": 0, "targets": {"users": [users[0].0]}, "channel": "ding_app", "active": closed},
            {"wait_seconds": 1, "targets": {"users": [users[1].0]}, "channel": "ding_app", "active": open},
        ]),
    )
    .await;
    let url = robot["webhook_url"].as_str().unwrap();
    let (status, _) = post_json(&server, url, pagerduty("trigger", "after-hours")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    if !open_now {
        return;
    }
    let bob = wait_dings(&server, &users[1].1, 1, Duration::from_secs(30)).await;
    let incident = bob[0]["ding"]["incident_id"].as_str().unwrap().to_string();
    assert!(
        dings(&server, &users[0].1).await.is_empty(),
        "ann's step was skipped"
    );
    let timeline = wait_timeline(&server, &admin, &incident, "escalated").await;
    let skipped = timeline.iter().find(|e| e["action"] == "skipped").unwrap();
    assert_eq!(skipped["details"]["step"], 0);
    let reason = skipped["details"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("outside active hours") && reason.contains(closed_day()),
        "{reason}"
    );
    let escalated = timeline
        .iter()
        .find(|e| e["action"] == "escalated")
        .unwrap();
    assert_eq!(escalated["details"]["users"], json!([users[1].0]));
    // The policy shows the windows as given.
    let (_, policies) = server.get(&admin, "/api/v1/escalation-policies").await;
    let step = &policies["escalation_policies"][0]["steps"][1];
    assert_eq!(step["active"]["time_zone"], "Asia/Shanghai");
}

async fn a_later_step_resends_the_same_ding_to_the_unconfirmed(backend: Backend) {
    let server = Server::start(backend, ALLOW_LOOPBACK).await;
    let admin = server.admin_token();
    let provider = Provider::start(0).await;
    set_provider(&server, &admin, &provider.url).await;
    let users = people(&server, &admin, &["ann", "bob"]).await;
    let members: Vec<String> = users.iter().map(|(id, _)| id.clone()).collect();
    let (_, robot) = alert_robot(&server, &admin, "pagerduty", &members).await;
    let (status, body) = server
        .post(
            &admin,
            "/api/v1/escalation-policies",
            json!({"name": "bad", "steps": [{"wait_seconds": 0, "channel": "group", "resend": true}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["errmsg"].as_str().unwrap().contains("resend"),
        "{body}"
    );
    // Step 1 DINGs both in the app; step 2 re-sends that DING by SMS to whoever has not
    // confirmed it.
    attach_steps(
        &server,
        &admin,
        &robot,
        json!([
            {"wait_seconds": 0, "targets": {"users": members}, "channel": "ding_app"},
            {"wait_seconds": 1, "channel": "ding_sms", "resend": true},
        ]),
    )
    .await;
    let url = robot["webhook_url"].as_str().unwrap();
    post_json(&server, url, pagerduty("trigger", "resend")).await;
    let ann = wait_dings(&server, &users[0].1, 2, Duration::from_secs(30)).await;
    let bob = wait_dings(&server, &users[1].1, 2, Duration::from_secs(30)).await;
    for got in [&ann, &bob] {
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!(got[0]["ding"]["id"], got[1]["ding"]["id"], "the same DING");
        assert_eq!(
            (
                got[0]["ding"]["send"].as_i64(),
                got[1]["ding"]["send"].as_i64()
            ),
            (Some(1), Some(2))
        );
        assert_eq!(got[1]["ding"]["channel"], "ding_sms");
    }
    let id = ann[0]["ding"]["id"].as_str().unwrap().to_string();
    // The provider is asked once per recipient for the re-send, under a new webhook id.
    let requests = provider.wait_requests(2, &server).await;
    for (webhook_id, body) in &requests {
        assert!(
            webhook_id.starts_with(&format!("ding_{id}_")) && webhook_id.ends_with("_ding_sms_2"),
            "{webhook_id}"
        );
        assert_eq!(
            (body["ding_id"].as_str(), body["send"].as_i64()),
            (Some(id.as_str()), Some(2))
        );
    }
    let (_, view) = server.get(&admin, &format!("/api/v1/dings/{id}")).await;
    assert_eq!(view["sends"], 2, "{view}");
    for r in view["recipients"].as_array().unwrap() {
        assert_eq!(r["sends"], 2, "{view}");
    }
    let incident = ann[0]["ding"]["incident_id"].as_str().unwrap();
    let timeline = wait_timeline(&server, &admin, incident, "resent").await;
    let resent = timeline.iter().find(|e| e["action"] == "resent").unwrap();
    assert_eq!(
        (
            resent["channel"].as_str(),
            resent["details"]["ding_id"].as_str()
        ),
        (Some("ding_sms"), Some(id.as_str()))
    );
    // Only two DINGs were ever written: the re-send is not a new one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ids: Vec<Value> = dings(&server, &users[0].1)
        .await
        .iter()
        .map(|d| d["ding"]["id"].clone())
        .collect();
    assert!(ids.iter().all(|d| d == id.as_str()), "{ids:?}");
}

async fn the_api_resends_only_to_who_has_not_confirmed(backend: Backend) {
    let server = Server::start(backend, ALLOW_LOOPBACK).await;
    let admin = server.admin_token();
    let provider = Provider::start(0).await;
    set_provider(&server, &admin, &provider.url).await;
    let users = people(&server, &admin, &["ann", "bob", "eve"]).await;
    let (ann, bob, eve) = (&users[0], &users[1], &users[2]);
    let (status, created) = server
        .post(
            &ann.1,
            "/api/v1/dings",
            json!({"user_ids": [bob.0, eve.0], "text": "standup?"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/dings/{id}/resend");
    wait_dings(&server, &bob.1, 1, Duration::from_secs(30)).await;
    let (status, _) = server
        .post(&bob.1, &format!("/api/v1/dings/{id}/confirm"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // A recipient may not re-send; another org does not see it; group is no DING channel.
    let (status, body) = server.post(&eve.1, &path, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    server.cli(&["org", "create", "other"]);
    let outsider = server.cli(&["token", "issue", "--org", "other", "--user", "admin"]);
    let (status, _) = server.post(&outsider, &path, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(&ann.1, &path, json!({"channel": "group"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The sender re-sends by voice: only eve, who has not confirmed, hears it again.
    let (status, view) = server
        .post(&ann.1, &path, json!({"channel": "ding_call"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["sends"], 2);
    let eve_dings = wait_dings(&server, &eve.1, 2, Duration::from_secs(30)).await;
    assert_eq!(eve_dings[1]["ding"]["id"], id.as_str());
    assert_eq!(eve_dings[1]["ding"]["channel"], "ding_call");
    let requests = provider.wait_requests(1, &server).await;
    assert_eq!(requests[0].1["user_id"], eve.0.as_str());
    assert_eq!(requests[0].1["type"], "ding.call");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(dings(&server, &bob.1).await.len(), 1, "bob had confirmed");
    assert_eq!(provider.requests().len(), 1, "nothing for bob");
    let sends: Vec<(Value, Value)> = view["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["user_id"].clone(), r["sends"].clone()))
        .collect();
    assert_eq!(
        sends,
        vec![(json!(bob.0), json!(1)), (json!(eve.0), json!(2))]
    );
    // Once everyone confirmed there is nothing to re-send.
    server
        .post(&eve.1, &format!("/api/v1/dings/{id}/confirm"), json!({}))
        .await;
    let (status, body) = server.post(&ann.1, &path, json!({})).await;
    assert_eq!(
        (status, body["errcode"].as_i64()),
        (StatusCode::CONFLICT, Some(40900)),
        "{body}"
    );
}

/// bob's provider requests on the DING, as the API shows them.
async fn deliveries(server: &Server, token: &str, id: &str) -> Vec<Value> {
    let (status, view) = server.get(token, &format!("/api/v1/dings/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view["recipients"][0]["provider"]
        .as_array()
        .unwrap()
        .clone()
}

async fn failed_provider_requests_are_visible_and_retried_until_sent(backend: Backend) {
    let server = Server::start(backend, ALLOW_LOOPBACK).await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann", "bob"]).await;
    // Without a provider the request waits, retried, with the reason shown.
    let (_, created) = server
        .post(
            &users[0].1,
            "/api/v1/dings",
            json!({"user_ids": [users[1].0], "text": "disk", "channel": "ding_sms"}),
        )
        .await;
    let lonely = created["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = deliveries(&server, &users[0].1, &lonely).await;
        if got.first().is_some_and(|d| d["status"] == "retrying") {
            assert!(
                got[0]["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("no notification provider"),
                "{got:?}"
            );
            assert!(got[0]["next_attempt_at"].is_string(), "{got:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A provider that fails twice: the API shows the failures, then the delivery.
    let provider = Provider::start(2).await;
    set_provider(&server, &admin, &provider.url).await;
    let (_, created) = server
        .post(
            &users[0].1,
            "/api/v1/dings",
            json!({"user_ids": [users[1].0], "text": "cpu", "channel": "ding_call"}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut saw_failure = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let sent = loop {
        let got = deliveries(&server, &users[0].1, &id).await;
        assert_eq!(got.len(), 1, "{got:?}");
        saw_failure |= got[0]["status"] == "retrying"
            && got[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("503"));
        if got[0]["status"] == "sent" {
            break got[0].clone();
        }
        assert!(Instant::now() < deadline, "{got:?}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(saw_failure, "the failures were visible while retrying");
    assert_eq!(
        (sent["attempts"].as_i64(), sent["channel"].as_str()),
        (Some(3), Some("ding_call")),
        "{sent}"
    );
    assert!(sent["sent_at"].is_string(), "{sent}");
    // The first DING's waiting request goes to the provider too once one is set.
    let deadline = Instant::now() + Duration::from_secs(30);
    let requests = loop {
        let requests = provider.requests();
        let of = |ding: &str| {
            requests
                .iter()
                .filter(|(_, b)| b["ding_id"] == ding)
                .count()
        };
        if of(&lonely) >= 1 {
            assert_eq!(of(&id), 3, "{requests:?}");
            break requests;
        }
        assert!(Instant::now() < deadline, "{requests:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let call_ids: Vec<&String> = requests
        .iter()
        .filter(|(_, b)| b["ding_id"] == id.as_str())
        .map(|(w, _)| w)
        .collect();
    assert!(
        call_ids.iter().all(|w| *w == call_ids[0]),
        "one webhook id across retries: {call_ids:?}"
    );
}

/// The robot's messages in the group, as the admin's stream shows them.
async fn robot_events(server: &Server, admin: &str) -> Vec<Value> {
    server
        .sync_all(admin, 0)
        .await
        .into_iter()
        .filter(|e| e["message"]["sender"]["kind"] == "robot")
        .collect()
}

/// Waits until the card was updated (the latest `message.updated` of it) to show `needle`.
async fn wait_card(server: &Server, admin: &str, card: &str, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = robot_events(server, admin).await;
        let latest = events
            .iter()
            .rev()
            .find(|e| e["type"] == "message.updated" && e["message"]["id"] == card);
        if let Some(u) = latest.filter(|u| u["message"].to_string().contains(needle)) {
            return u.clone();
        }
        assert!(
            Instant::now() < deadline,
            "card never showed {needle}: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_custom_robots_card_is_updated_in_place(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let group = server.create_group(&admin, "ops", &[]).await;
    let (status, robot) = server
        .post(
            &admin,
            "/api/v1/robots",
            json!({"kind": "custom", "name": "cron", "conversation_id": group, "alerting": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{robot}");
    let url = robot["webhook_url"].as_str().unwrap().to_string();
    let send = |body: Value| {
        let (server, url) = (&server, url.clone());
        async move {
            let (status, reply) = post_json(server, &url, serde_json::to_vec(&body).unwrap()).await;
            assert_eq!(
                (status, reply["errcode"].as_i64()),
                (StatusCode::OK, Some(0)),
                "{reply}"
            );
        }
    };
    let firing = json!({"msgtype": "markdown", "markdown": {"title": "Backup", "text": "### Backup failed\nexit 2"}, "incident_key": "backup"});
    send(firing.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let card = loop {
        let events = robot_events(&server, &admin).await;
        if let Some(c) = events.iter().find(|e| e["type"] == "message.created") {
            break c.clone();
        }
        assert!(Instant::now() < deadline, "no card");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let card_id = card["message"]["id"].as_str().unwrap().to_string();
    assert_eq!(card["message"]["msgtype"], "actionCard", "{card}");
    // The same alert again: the card already says it, nothing new is posted.
    send(firing.clone()).await;
    // Acknowledged through the API: the card is rewritten in place.
    let (_, list) = server.get(&admin, "/api/v1/incidents").await;
    let incident = list["incidents"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = server
        .post(
            &admin,
            &format!("/api/v1/incidents/{incident}/ack"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let acked = wait_card(&server, &admin, &card_id, "acknowledged").await;
    let titles: Vec<Value> = acked["message"]["actionCard"]["btns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["title"].clone())
        .collect();
    assert_eq!(titles, vec![json!("Resolve")], "{acked}");
    // Resolved by the sender: the same card shows it.
    send(json!({"msgtype": "markdown", "markdown": {"title": "Backup", "text": "### Backup ok"}, "incident_key": "backup", "incident_status": "resolved"})).await;
    wait_state(&server, &admin, &incident, "resolved").await;
    let resolved = wait_card(&server, &admin, &card_id, "resolved").await;
    assert!(
        resolved["message"].to_string().contains("Backup ok"),
        "{resolved}"
    );
    // The card, plus the resolve's threaded follow-up (grouping "both"); no second card.
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = loop {
        let created: Vec<Value> = robot_events(&server, &admin)
            .await
            .into_iter()
            .filter(|e| e["type"] == "message.created")
            .collect();
        if created.len() >= 2 {
            break created;
        }
        assert!(Instant::now() < deadline, "no follow-up: {created:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = robot_events(&server, &admin).await;
    let posted = again
        .iter()
        .filter(|e| e["type"] == "message.created")
        .count();
    assert_eq!(posted, 2, "{again:#?}");
    assert_eq!(
        created[1]["message"]["thread_key"], "backup",
        "{created:#?}"
    );
}
