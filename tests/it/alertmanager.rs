//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, on 127.0.0.1 only)
//! posts to herald: an unacknowledged alert DINGs the on-call user after the policy's delay,
//! escalates to the next level and stops when acknowledged; a resolved alert stops its chain,
//! updates the card and tells whoever was DINGed. `scripts/test` installs the package.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::alerts::{alert_robot, dings, incidents, people, wait_dings, wait_state};
use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(real_alertmanager_escalates_acks_and_resolves);

/// An Alertmanager process that posts every group to one herald webhook URL.
struct Alertmanager {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    async fn start(webhook_url: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global: {{ resolve_timeout: 1m }}\n\
             route: {{ receiver: herald, group_by: ['alertname'], group_wait: 1s, group_interval: 2s, repeat_interval: 1h }}\n\
             receivers:\n  - name: herald\n    webhook_configs:\n      - url: '{webhook_url}'\n        send_resolved: true\n"
        );
        let path = dir.path().join("alertmanager.yml");
        std::fs::write(&path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager must be installed (scripts/test installs it)");
        let am = Alertmanager {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/-/ready", am.url)).send().await {
                if r.status().is_success() {
                    return am;
                }
            }
            assert!(Instant::now() < deadline, "Alertmanager never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts one alert; `resolved` sets its end in the past.
    async fn alert(&self, labels: Value, summary: &str, resolved: bool) {
        let mut alert = json!({"labels": labels, "annotations": {"summary": summary}});
        if resolved {
            let now = herald::clock::now_ms();
            alert["startsAt"] = json!(herald::clock::rfc3339(now - 60_000));
            alert["endsAt"] = json!(herald::clock::rfc3339(now - 1000));
        }
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&json!([alert]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A policy chosen by label matchers (the robot names none).
async fn policy(server: &Server, admin: &str, alertname: &str, steps: &[(u64, &str)]) {
    let steps: Vec<Value> = steps
        .iter()
        .map(|(wait, user)| {
            json!({"wait_seconds": wait, "targets": {"users": [user]}, "channel": "ding_app"})
        })
        .collect();
    let (status, body) = server
        .post(
            admin,
            "/api/v1/escalation-policies",
            json!({"name": alertname, "steps": steps, "match": {"alertname": alertname}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Waits for the open incident whose title is `title`.
async fn incident_titled(server: &Server, admin: &str, title: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = incidents(server, admin, "")
            .await
            .into_iter()
            .find(|i| i["title"] == title);
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no incident {title:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dings_about(list: &[Value], incident: &str) -> usize {
    list.iter()
        .filter(|d| d["ding"]["incident_id"] == incident)
        .count()
}

async fn real_alertmanager_escalates_acks_and_resolves(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let users = people(&server, &admin, &["ann", "bob", "cyd"]).await;
    let (ann, bob, cyd) = (&users[0], &users[1], &users[2]);
    let (_, robot) = alert_robot(&server, &admin, "alertmanager", &[]).await;
    policy(
        &server,
        &admin,
        "DiskFull",
        &[(2, &ann.0), (2, &bob.0), (2, &cyd.0)],
    )
    .await;
    policy(&server, &admin, "HighLatency", &[(1, &ann.0), (8, &bob.0)]).await;
    let am = Alertmanager::start(robot["webhook_url"].as_str().unwrap()).await;

    // Unacknowledged: ann after two seconds, then bob; the ack stops it before cyd.
    am.alert(
        json!({"alertname": "DiskFull", "severity": "critical"}),
        "Disk almost full",
        false,
    )
    .await;
    let disk = incident_titled(&server, &admin, "Disk almost full").await;
    let opened = Instant::now();
    let disk_id = disk["id"].as_str().unwrap().to_string();
    assert_eq!(disk["state"], "triggered");
    assert!(disk["labels"]
        .as_array()
        .unwrap()
        .contains(&json!("alertname=DiskFull")));
    wait_dings(&server, &ann.1, 1, Duration::from_secs(20)).await;
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "the policy's delay held"
    );
    assert!(
        dings(&server, &bob.1).await.is_empty(),
        "bob is the next level, not yet"
    );
    wait_dings(&server, &bob.1, 1, Duration::from_secs(20)).await;
    let (status, acked) = server
        .post(
            &ann.1,
            &format!("/api/v1/incidents/{disk_id}/ack"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        dings(&server, &cyd.1).await.is_empty(),
        "the ack stopped the chain"
    );
    // Alertmanager keeps the group firing: the incident stays one, acknowledged.
    let disk = incident_titled(&server, &admin, "Disk almost full").await;
    assert_eq!(disk["state"], "acknowledged");

    // Resolved by the sender after the first DING: the chain stops before bob's level.
    am.alert(
        json!({"alertname": "HighLatency", "severity": "warning"}),
        "p99 above 2s",
        false,
    )
    .await;
    let latency = incident_titled(&server, &admin, "p99 above 2s").await;
    let latency_id = latency["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dings_about(&dings(&server, &ann.1).await, &latency_id) == 0 {
        assert!(
            Instant::now() < deadline,
            "ann was never DINGed about the latency"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    am.alert(
        json!({"alertname": "HighLatency", "severity": "warning"}),
        "p99 above 2s",
        true,
    )
    .await;
    let resolved = wait_state(&server, &admin, &latency_id, "resolved").await;
    let last = resolved["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["channel"], "sender");
    // Ann, who was DINGed, hears of the resolution; bob's level never fires.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = dings(&server, &ann.1).await;
        let told = got.iter().any(|d| {
            d["ding"]["incident_id"] == latency_id.as_str()
                && d["ding"]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("✅ Resolved")
        });
        if told {
            break;
        }
        assert!(Instant::now() < deadline, "ann was not told: {got:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dings_about(&dings(&server, &bob.1).await, &latency_id), 0);
    // The card was updated in place to show the resolution.
    let events = server.sync_all(&admin, 0).await;
    let updated = events.iter().any(|e| {
        e["type"] == "message.updated"
            && e["message"]["actionCard"]["text"]
                .as_str()
                .is_some_and(|t| {
                    t.contains(&format!("Incident #{latency_id}")) && t.contains("resolved")
                })
    });
    assert!(updated, "no card update shows the resolution: {events:#?}");
}
