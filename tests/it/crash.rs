//! Crash safety: SIGKILL during a burst of accepted messages, restart, and every message that
//! was answered with success is in every member's inbox exactly once, with gapless pts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{assert_pts_gapless, on_both_backends, Backend, Server};

on_both_backends!(kill9_during_burst_loses_nothing);

const SENDERS: usize = 4;

async fn kill9_during_burst_loses_nothing(backend: Backend) {
    let config = "[limits]\ngroup_messages_per_minute = 1000000\n[fanout]\nchunk_size = 100\n";
    let mut server = Server::start(backend, config).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "c", 250).await;
    let groups = [
        server.create_group(&admin, "a", &ids).await,
        server.create_group(&admin, "b", &ids[..50]).await,
    ];
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let url = server.base.clone();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (acked, url, admin, group) = (
            acked.clone(),
            url.clone(),
            admin.clone(),
            groups[s % 2].clone(),
        );
        let client = server.http.clone();
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let body = json!({"msgtype": "text", "text": {"content": format!("s{s}-{i}")}});
                let sent = client
                    .post(format!("{url}/api/v1/conversations/{group}/messages"))
                    .bearer_auth(&admin)
                    .json(&body)
                    .send()
                    .await;
                let Ok(resp) = sent else { return };
                if resp.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(body) = resp.json::<serde_json::Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .push(body["id"].as_str().unwrap().to_string());
            }
        }));
    }
    // Let the burst build a backlog, then kill without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for s in senders {
        let _ = s.await;
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the burst should have been accepted in part: {}",
        acked.len()
    );

    server.restart().await;
    let db = server.db().await;
    server.drain(&db).await;
    assert_pts_gapless(&db).await;

    // Members of both groups must hold every acked message exactly once.
    let member = server.token_for(&admin, &ids[0]).await;
    let events = server.sync_all(&member, 0).await;
    let mut got = HashSet::new();
    for e in events.iter().filter(|e| e["type"] == "message.created") {
        assert!(
            got.insert(e["message"]["id"].as_str().unwrap().to_string()),
            "duplicate {e}"
        );
    }
    for id in &acked {
        assert!(got.contains(id), "acked message {id} lost after kill -9");
    }
    let pts: Vec<i64> = events.iter().map(|e| e["pts"].as_i64().unwrap()).collect();
    assert_eq!(pts, (1..=pts.len() as i64).collect::<Vec<_>>());
}
