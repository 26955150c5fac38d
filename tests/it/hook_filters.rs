//! Filters through the real endpoint: "CI on status change" remembers each job's last
//! conclusion in the store, so a repeat stays quiet even after a kill -9 and restart; the
//! robot's posted/skipped counts are kept in the store too.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixtures::{delivery_id, github_signature};
use crate::harness::{on_both_backends, Backend, Server};

on_both_backends!(ci_on_status_change_survives_a_restart);

async fn send_check_run(server: &Server, robot: &Value, file: &str) -> Value {
    let body = std::fs::read(crate::fixtures::dir("github").join(file)).unwrap();
    // The URL carries the port of the first start: rebuild it for this one.
    let url = format!(
        "{}/hooks/github/{}",
        server.base,
        robot["access_token"].as_str().unwrap()
    );
    let resp = server
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "check_run")
        .header("x-github-delivery", delivery_id())
        .header(
            "x-hub-signature-256",
            github_signature(robot["secret"].as_str().unwrap(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{file}");
    resp.json().await.unwrap()
}

async fn ci_on_status_change_survives_a_restart(backend: Backend) {
    let mut server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let group = server.create_group(&admin, "ci", &[]).await;
    let filters = json!({"on_conclusion_change": true, "events": {"include": ["check_run.*"]}});
    let (status, robot) = server
        .post(
            &admin,
            "/api/v1/robots",
            json!({"kind": "github", "name": "ci", "conversation_id": group,
                   "filters": filters, "grouping": "off"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{robot}");
    let ok = "check_run.completed-success.json";
    let failed = "check_run.completed-failure.json";
    let queued = "check_run.created.json";
    let steps = [
        (ok, 1, "the first conclusion of the job"),
        (queued, 0, "a run in progress is not a conclusion"),
        (failed, 1, "a failure after a success"),
        (failed, 0, "the same failure again"),
    ];
    for (file, posted, why) in steps {
        let answer = send_check_run(&server, &robot, file).await;
        assert_eq!(answer["posted"], posted, "{why}: {answer}");
    }
    // Counts reach the store within a second; then a kill -9 keeps them.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.restart().await;
    let path = format!("/api/v1/robots/{}", robot["id"].as_str().unwrap());
    let (_, shown) = server.get(&admin, &path).await;
    assert_eq!(
        (&shown["stats"]["posted"], &shown["stats"]["skipped"]),
        (&json!(2), &json!(2)),
        "stats survive a restart: {shown}"
    );
    let steps = [
        (
            failed,
            0,
            "still failing after a restart: the state is durable",
        ),
        (ok, 1, "fixed"),
        (ok, 0, "still green"),
    ];
    for (file, posted, why) in steps {
        let answer = send_check_run(&server, &robot, file).await;
        assert_eq!(answer["posted"], posted, "{why}: {answer}");
    }
    let db = server.db().await;
    server.drain(&db).await;
    let conclusions: Vec<String> = server
        .sync_all(&admin, 0)
        .await
        .iter()
        .filter(|e| e["type"] == "message.created")
        .map(|e| e["message"].to_string())
        .map(|m| {
            if m.contains("failure") {
                "failure".into()
            } else {
                "success".into()
            }
        })
        .collect();
    assert_eq!(conclusions, ["success", "failure", "success"]);
    let (_, shown) = server.get(&admin, &path).await;
    assert_eq!(
        shown["stats"]["events"]["check_run.completed"],
        json!({"posted": 3, "skipped": 3}),
        "{shown}"
    );
}
