//! The shared adapter contract, run by every adapter's tests over its real fixtures: the
//! adapter accepts the payload, names every event, keeps the dedupe key stable across runs,
//! renders within the size limit without panicking, and the rendered message is snapshotted.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::{adapt, Adapted};
use crate::ids::{ConversationId, OrgId, RobotId};
use crate::ingress::{RawWebhook, Verified};
use crate::robot::{Robot, RobotKind, RobotSpec};

/// The shared fixtures folder (`../shared/fixtures/<source>`).
pub fn fixtures_dir(source: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(source)
}

/// A test robot of `kind` with no secret.
pub fn robot(kind: RobotKind) -> Robot {
    Robot {
        id: RobotId(7),
        org_id: OrgId(1),
        kind,
        conversation_id: ConversationId(1),
        name: format!("{} robot", kind.as_str()),
        access_token: "t".into(),
        secret: None,
        spec: RobotSpec::default(),
        created_at_ms: 0,
    }
}

/// A request as it would arrive, already past `verify` (a robot without a secret).
pub fn verified(kind: RobotKind, headers: &[(&str, &str)], body: Vec<u8>) -> RawWebhook<Verified> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(*name), HeaderValue::from_str(value)) {
            map.insert(n, v);
        }
    }
    let raw = RawWebhook::new(
        robot(kind),
        map,
        BTreeMap::new(),
        body.into(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    );
    crate::verify::verify(raw, 0).expect("a robot without secret or ranges verifies")
}

/// Every request body in the shared fixtures of the webhook sources, named `source/file-stem`,
/// with the event header its folder's `headers.json` records, ready for `adapt`.
pub fn fixture_requests() -> Vec<(String, RawWebhook<Verified>)> {
    fixture_bodies()
        .into_iter()
        .map(|f| {
            let headers: Vec<(&str, &str)> =
                f.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            (f.name, verified(f.kind, &headers, f.body))
        })
        .collect()
}

/// One fixture request before verification.
pub struct FixtureBody {
    /// `source/file-stem`.
    pub name: String,
    pub kind: RobotKind,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The raw parts of `fixture_requests`.
pub fn fixture_bodies() -> Vec<FixtureBody> {
    let sources = [
        (RobotKind::Github, "x-github-event", "x_github_event"),
        (RobotKind::Gitlab, "x-gitlab-event", "x_gitlab_event"),
        (RobotKind::Alertmanager, "", ""),
        (RobotKind::Grafana, "", ""),
        (RobotKind::Pagerduty, "", ""),
    ];
    let mut out = Vec::new();
    for (kind, header, index_key) in sources {
        let dir = fixtures_dir(kind.as_str());
        let index: serde_json::Value = std::fs::read(dir.join("headers.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".json") && !n.starts_with("response."))
            .filter(|n| n != "headers.json" && n != "captured-index.json")
            .collect();
        files.sort();
        for file in files {
            let mut headers = vec![("content-type", "application/json".to_string())];
            let event = index["files"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["file"] == file.as_str())
                .and_then(|f| f[index_key].as_str());
            if let Some(event) = event {
                headers.push((header, event.to_string()));
            }
            let body = std::fs::read(dir.join(&file)).unwrap();
            let name = format!("{}/{}", kind.as_str(), file.trim_end_matches(".json"));
            out.push(FixtureBody {
                name,
                kind,
                headers,
                body,
            });
        }
    }
    out
}

/// Runs the contract over one fixture and snapshots what it renders. Returns the adaptation.
pub fn check(case: &str, raw: &RawWebhook<Verified>) -> Adapted {
    let source = raw.robot.kind.as_str();
    let first = adapt(raw).unwrap_or_else(|e| panic!("{source}/{case}: {e}"));
    let again = adapt(raw).expect("adapts twice");
    let keys = |a: &Adapted| {
        a.events
            .iter()
            .map(|e| e.dedupe_key.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&first),
        keys(&again),
        "{source}/{case}: dedupe keys must be stable"
    );
    let mut rendered = Vec::new();
    for event in &first.events {
        assert!(
            !event.event.is_empty(),
            "{source}/{case}: an event without a name"
        );
        let content = match &event.content {
            Some(c) => Some(c.clone()),
            None => crate::render::render(source, event, &BTreeMap::new(), 20_000)
                .unwrap_or_else(|e| panic!("{source}/{case}: {e}")),
        };
        if let Some(content) = &content {
            content
                .validate()
                .unwrap_or_else(|e| panic!("{source}/{case}: {e}"));
            assert!(
                content.body_json().to_string().len() <= 20_000,
                "{source}/{case}: too long"
            );
        }
        rendered.push(serde_json::json!({
            "event": event.event,
            "object_key": event.object_key,
            "dedupe_key": event.dedupe_key,
            "incident_key": event.incident_key,
            "facts": event.facts,
            "mention_hints": event.mention_hints,
            "at": event.at,
            "message": content.map(|c| {
                let mut m = serde_json::Map::new();
                m.insert("msgtype".into(), c.msgtype().into());
                m.insert(c.msgtype().into(), c.body_json());
                m
            }),
        }));
    }
    let reply = first
        .reply
        .as_ref()
        .map(|r| serde_json::json!({"status": r.status, "body": r.body}));
    insta::assert_json_snapshot!(
        format!("{source}__{case}"),
        serde_json::json!({"events": rendered, "reply": reply})
    );
    first
}
