//! GitLab adapter tests: every shared fixture through the contract (snapshotted), dedupe keys,
//! test hooks, unknown events, bad input, failed pipelines, and the mutation mini-fuzz.

use super::*;
use crate::adapt::contract;
use crate::adapt::github::tests::{fixtures, header_index, mutants};
use crate::robot::RobotKind;

fn request(event: &str, name: &str, body: Vec<u8>) -> RawWebhook<Verified> {
    let uuid = format!("7a1e0000-0000-4000-8000-{:012}", name.len());
    let key = format!("idem-{name}");
    let headers = [
        ("X-Gitlab-Event", event),
        ("X-Gitlab-Event-UUID", uuid.as_str()),
        ("Idempotency-Key", key.as_str()),
        ("Content-Type", "application/json"),
    ];
    contract::verified(RobotKind::Gitlab, &headers, body)
}

fn events() -> std::collections::BTreeMap<String, String> {
    header_index("gitlab", "x_gitlab_event")
        .into_iter()
        .collect()
}

#[test]
fn every_fixture_passes_the_contract() {
    let events = events();
    let all = fixtures("gitlab");
    assert!(all.len() >= 20, "fixtures missing: {}", all.len());
    for (name, body) in all {
        let event = events
            .get(&name)
            .unwrap_or_else(|| panic!("{name}: no header"));
        let adapted = contract::check(&name, &request(event, &name, body));
        assert_eq!(adapted.events.len(), 1, "{name}");
        assert_eq!(adapted.events[0].dedupe_key, Some(format!("idem-{name}")));
    }
}

#[test]
fn event_uuid_is_the_fallback_dedupe_key() {
    let body = br#"{"object_kind":"push","ref":"refs/heads/main"}"#.to_vec();
    let headers = [
        ("X-Gitlab-Event", "Push Hook"),
        ("X-Gitlab-Event-UUID", "u-1"),
    ];
    let raw = contract::verified(RobotKind::Gitlab, &headers, body);
    assert_eq!(
        adapt(&raw).unwrap().events[0].dedupe_key.as_deref(),
        Some("u-1")
    );
}

#[test]
fn test_hooks_and_unknown_events_are_named() {
    let (_, body) = fixtures("gitlab")
        .into_iter()
        .find(|(n, _)| n == "push.branch")
        .unwrap();
    let test = adapt(&request("Test Hook", "t", body))
        .unwrap()
        .events
        .remove(0);
    assert_eq!(test.event, "push");
    assert_eq!(test.fields["test"], json!(true));
    let member = br#"{"event_name":"user_add_to_team","user_username":"x"}"#.to_vec();
    let raw = request("Member Hook", "m", member);
    let event = adapt(&raw).unwrap().events.remove(0);
    assert_eq!(event.event, "member.user_add_to_team");
    assert!(!crate::render::handles("gitlab", &event.event));
}

#[test]
fn missing_header_or_bad_shape_is_bad_payload() {
    let body = br#"{"object_kind":"merge_request"}"#.to_vec();
    let no_header = contract::verified(
        RobotKind::Gitlab,
        &[("Content-Type", "application/json")],
        body.clone(),
    );
    let header_named = |r: Result<Adapted, AdaptError>, word: &str| matches!(r, Err(AdaptError::BadPayload(m)) if m.contains(word));
    assert!(header_named(adapt(&no_header), "X-Gitlab-Event"));
    let shapeless = request("Merge Request Hook", "m", body);
    assert!(header_named(adapt(&shapeless), "object_attributes"));
}

#[test]
fn mutated_payloads_never_panic() {
    let events = events();
    for (name, body) in fixtures("gitlab") {
        for mutant in mutants(&body) {
            if let Ok(adapted) = adapt(&request(&events[&name], &name, mutant)) {
                for e in &adapted.events {
                    let _ = crate::render::render("gitlab", e, &Default::default(), 20_000);
                }
            }
        }
    }
}

#[test]
fn failed_pipelines_name_their_failed_jobs() {
    let (_, body) = fixtures("gitlab")
        .into_iter()
        .find(|(n, _)| n == "pipeline.success")
        .unwrap();
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["object_attributes"]["status"] = json!("failed");
    v["object_attributes"]["detailed_status"] = json!("failed");
    for b in v["builds"].as_array_mut().unwrap() {
        b["status"] = json!("failed");
    }
    let raw = request("Pipeline Hook", "f", v.to_string().into_bytes());
    let event = adapt(&raw).unwrap().events.remove(0);
    assert_eq!(event.event, "pipeline.failed");
    assert_eq!(event.facts.conclusion.as_deref(), Some("failed"));
    let content = crate::render::render("gitlab", &event, &Default::default(), 20_000)
        .unwrap()
        .unwrap();
    assert!(
        content.plain_text().contains("Failed jobs: "),
        "{content:?}"
    );
}

#[test]
fn bots_are_recognized() {
    assert!(is_bot("project_42_bot_3f2a"));
    assert!(is_bot("renovate-bot"));
    assert!(!is_bot("robotics"));
}
