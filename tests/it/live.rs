//! Live delivery: SSE and WebSocket receive events as they commit, and a reconnect with the
//! last pts (`Last-Event-ID`, `since`) gets exactly what was missed. A client that falls too
//! far behind is told to resync.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::harness::{on_both_backends, Backend, Server, Sse};

on_both_backends!(
    sse_resumes_from_last_event_id,
    websocket_resumes_from_since,
    slow_client_is_told_to_resync
);

const WAIT: Duration = Duration::from_secs(10);

async fn sse_resumes_from_last_event_id(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "s", 1).await;
    let reader = server.token_for(&admin, &ids[0]).await;
    let group = server.create_group(&admin, "live", &ids).await;

    let mut live = Sse::connect(&server, &reader, Some(0)).await;
    let created = live.next(WAIT).await.expect("first event");
    assert_eq!(
        (created.id, created.event.as_str()),
        (Some(1), "conversation.created")
    );
    for i in 0..3 {
        assert_eq!(
            server
                .send_text(&admin, &group, &format!("live {i}"))
                .await
                .0,
            StatusCode::CREATED
        );
    }
    let mut last = 1;
    let mut pushed = Vec::new();
    for i in 0..3 {
        let frame = live.next(WAIT).await.expect("live event");
        assert_eq!(frame.event, "message.created");
        assert_eq!(
            frame.data["message"]["text"]["content"],
            format!("live {i}")
        );
        assert_eq!(frame.id, Some(last + 1));
        assert_eq!(frame.data["pts"], last + 1);
        last += 1;
        pushed.push(frame.data);
    }
    // What was pushed (often straight from the fanout, not read back) is exactly what the
    // inbox serves.
    assert_eq!(pushed, server.sync_all(&reader, 1).await);
    drop(live);
    // Offline: five more messages.
    for i in 0..5 {
        server
            .send_text(&admin, &group, &format!("missed {i}"))
            .await;
    }
    let mut again = Sse::connect(&server, &reader, Some(last)).await;
    for i in 0..5 {
        let frame = again.next(WAIT).await.expect("missed event");
        assert_eq!(frame.id, Some(last + 1 + i));
        assert_eq!(
            frame.data["message"]["text"]["content"],
            format!("missed {i}")
        );
    }
    assert!(
        again.next(Duration::from_millis(600)).await.is_none(),
        "no duplicates, nothing extra"
    );
    // /sync with since agrees.
    let events = server.sync_all(&reader, last).await;
    assert_eq!(events.len(), 5);
    // Without a cursor the stream starts at the next new event.
    let mut fresh = Sse::connect(&server, &reader, None).await;
    server.send_text(&admin, &group, "new").await;
    let frame = fresh.next(WAIT).await.expect("new event");
    assert_eq!(frame.id, Some(last + 6));
}

async fn websocket_resumes_from_since(backend: Backend) {
    let server = Server::start(backend, "").await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "w", 1).await;
    let reader = server.token_for(&admin, &ids[0]).await;
    let group = server.create_group(&admin, "ws", &ids).await;
    for i in 0..4 {
        server.send_text(&admin, &group, &format!("m{i}")).await;
    }
    let ws_url = server.base.replace("http://", "ws://");
    let connect = |since: i64| {
        let mut request = format!("{ws_url}/api/v1/ws?since={since}")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {reader}").parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let (mut socket, _) = connect(2).await.expect("websocket");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("frame in time")
            .unwrap()
            .unwrap();
        if let WsMessage::Text(text) = frame {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            seen.push(event["pts"].as_i64().unwrap());
        }
    }
    assert_eq!(seen, [3, 4, 5]);
    // Live after catch-up.
    server.send_text(&admin, &group, "live").await;
    let event = loop {
        if let WsMessage::Text(text) = tokio::time::timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            break serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
    };
    assert_eq!(
        (
            event["pts"].as_i64(),
            event["message"]["text"]["content"].as_str()
        ),
        (Some(6), Some("live"))
    );
    socket.close(None).await.unwrap();
    // Reconnect with the last pts: only what came after.
    server.send_text(&admin, &group, "after").await;
    let (mut socket, _) = connect(6).await.expect("websocket again");
    let event = loop {
        if let WsMessage::Text(text) = tokio::time::timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            break serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
    };
    assert_eq!(event["pts"], 7);
}

async fn slow_client_is_told_to_resync(backend: Backend) {
    let config = "[stream]\nmax_lag_events = 50\n[limits]\ngroup_messages_per_minute = 1000000\n";
    let server = Server::start(backend, config).await;
    let admin = server.admin_token();
    let ids = server.create_users(&admin, "r", 1).await;
    let reader = server.token_for(&admin, &ids[0]).await;
    let group = server.create_group(&admin, "busy", &ids).await;
    for i in 0..300 {
        assert_eq!(
            server.send_text(&admin, &group, &format!("n{i}")).await.0,
            StatusCode::CREATED
        );
    }
    let db = server.db().await;
    server.drain(&db).await;
    // 301 events behind, limit 50: the stream says resync instead of buffering.
    let mut live = Sse::connect(&server, &reader, Some(0)).await;
    let frame = live.next(WAIT).await.expect("resync");
    assert_eq!(frame.event, "resync");
    assert_eq!(frame.data["since"], 0);
    assert!(
        live.next(Duration::from_secs(2)).await.is_none(),
        "the stream ends after resync"
    );
    // Catching up through /sync then reconnecting works.
    let events = server.sync_all(&reader, 0).await;
    assert_eq!(events.len(), 301);
    let mut live = Sse::connect(&server, &reader, Some(301)).await;
    server.send_text(&admin, &group, "caught up").await;
    assert_eq!(live.next(WAIT).await.expect("event").id, Some(302));
}

/// Two herald processes on one PostgreSQL database: a message posted through one reaches a
/// stream held by the other at once, woken by NOTIFY (the feeds' safety-net poll is 10 s,
/// longer than this test waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_processes_wake_each_others_streams() {
    let first = Server::start(Backend::Postgres, "").await;
    let second = first.start_peer().await;
    let admin = first.admin_token();
    let ids = first.create_users(&admin, "p", 2).await;
    let alice = first.token_for(&admin, &ids[0]).await;
    let bob = first.token_for(&admin, &ids[1]).await;
    let group = first.create_group(&alice, "peers", &ids[1..]).await;
    let mut stream = Sse::connect(&second, &bob, None).await;
    // Drain what is already there (conversation.created).
    while stream.next(Duration::from_millis(500)).await.is_some() {}
    for i in 0..3 {
        let text = format!("across processes {i}");
        let (status, body) = first.send_text(&alice, &group, &text).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let frame = stream
            .next(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("message {i} never reached the peer's stream"));
        assert_eq!(frame.data["message"]["text"]["content"], text.as_str());
    }
}
