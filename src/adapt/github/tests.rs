//! GitHub adapter tests: every shared fixture through the contract (snapshotted), form bodies,
//! unknown events, bad input, and a mutation mini-fuzz. Also the fixture helpers GitLab reuses.

use super::*;
use crate::adapt::contract;
use crate::robot::RobotKind;

/// Every fixture file (but the headers index) of a source, sorted.
pub(in crate::adapt) fn fixtures(source: &str) -> Vec<(String, Vec<u8>)> {
    let dir = contract::fixtures_dir(source);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| !p.ends_with("headers.json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// The header value `key` recorded for each file in `<source>/headers.json`.
pub(in crate::adapt) fn header_index(source: &str, key: &str) -> Vec<(String, String)> {
    let path = contract::fixtures_dir(source).join("headers.json");
    let index: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    index["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f["file"].as_str().unwrap().trim_end_matches(".json");
            (file.to_string(), f[key].as_str().unwrap().to_string())
        })
        .collect()
}

/// Broken copies of a JSON body: truncated at 20 places, and values swapped for
/// null, numbers, strings, arrays and objects.
pub(in crate::adapt) fn mutants(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (1..=20)
        .map(|i| body[..body.len() * i / 21].to_vec())
        .collect();
    let value: Value = serde_json::from_slice(body).unwrap();
    let mut pointers = Vec::new();
    walk(&value, String::new(), &mut pointers);
    let swaps = [
        json!(null),
        json!(7),
        json!("x"),
        json!([1]),
        json!({"a": 1}),
        json!(-1.5),
    ];
    let mut seed: u64 = body.len() as u64;
    for round in 0..120 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pointer = &pointers[(seed >> 33) as usize % pointers.len()];
        let mut copy = value.clone();
        if let Some(slot) = copy.pointer_mut(pointer) {
            *slot = swaps[round % swaps.len()].clone();
        }
        out.push(serde_json::to_vec(&copy).unwrap());
    }
    out
}

fn walk(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(map) => map.iter().for_each(|(k, x)| {
            walk(
                x,
                format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                out,
            )
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, x)| walk(x, format!("{at}/{i}"), out)),
        _ => {}
    }
}

/// A fixed delivery id per file, so snapshots are stable.
fn delivery(name: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        h >> 32,
        h & 0xffff_ffff_ffff
    )
}

fn request(event: &str, name: &str, ctype: &str, body: Vec<u8>) -> RawWebhook<Verified> {
    let id = delivery(name);
    let headers = [
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", id.as_str()),
        ("Content-Type", ctype),
    ];
    contract::verified(RobotKind::Github, &headers, body)
}

fn events() -> std::collections::BTreeMap<String, String> {
    header_index("github", "x_github_event")
        .into_iter()
        .collect()
}

#[test]
fn every_fixture_passes_the_contract() {
    let events = events();
    let all = fixtures("github");
    assert!(all.len() >= 40, "fixtures missing: {}", all.len());
    for (name, body) in all {
        let event = events
            .get(&name)
            .unwrap_or_else(|| panic!("{name}: no header"));
        let raw = request(event, &name, "application/json", body);
        let adapted = contract::check(&name, &raw);
        assert_eq!(adapted.events.len(), 1, "{name}");
        assert_eq!(adapted.events[0].dedupe_key, Some(delivery(&name)));
    }
}

/// Leaving out the members `unread` names changes nothing any event normalizes to: the test
/// that fails when the adapter starts reading one of them.
#[test]
fn the_unread_members_are_never_read() {
    let events = events();
    for (name, body) in fixtures("github") {
        let kind = &events[&name];
        let full: Value = serde_json::from_slice(&body).unwrap();
        let pruned = super::super::prune::from_slice_without(&body, unread).unwrap();
        assert_ne!(full, pruned, "{name}: nothing left out");
        let a = normalize(kind, &full).unwrap();
        let b = normalize(kind, &pruned).unwrap();
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::to_value(&b).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn form_body_equals_json_body() {
    let (name, body) = fixtures("github")
        .into_iter()
        .find(|(n, _)| n == "pull_request.opened")
        .unwrap();
    let form = serde_urlencoded::to_string([("payload", String::from_utf8(body.clone()).unwrap())])
        .unwrap();
    let json_form = request("pull_request", &name, "application/json", body);
    let url_form = request(
        "pull_request",
        &name,
        "application/x-www-form-urlencoded",
        form.into_bytes(),
    );
    let a = adapt(&json_form).unwrap().events.remove(0);
    let b = adapt(&url_form).unwrap().events.remove(0);
    assert_eq!(a.event, "pull_request.opened");
    assert_eq!(
        serde_json::to_value(&a).unwrap(),
        serde_json::to_value(&b).unwrap()
    );
}

#[test]
fn unknown_events_are_named_not_rendered() {
    let body = br#"{"action":"created","sender":{"login":"x"}}"#.to_vec();
    let raw = request("sponsorship", "s", "application/json", body);
    let adapted = adapt(&raw).unwrap();
    assert_eq!(adapted.events[0].event, "sponsorship.created");
    assert!(!crate::render::handles("github", "sponsorship.created"));
    assert!(!crate::render::handles("github", "check_run.created"));
}

#[test]
fn missing_header_or_bad_shape_is_bad_payload() {
    let body = br#"{"action":"opened"}"#.to_vec();
    let no_header = contract::verified(
        RobotKind::Github,
        &[("Content-Type", "application/json")],
        body.clone(),
    );
    assert!(
        matches!(adapt(&no_header), Err(AdaptError::BadPayload(m)) if m.contains("X-GitHub-Event"))
    );
    let shapeless = request("pull_request", "p", "application/json", body);
    assert!(
        matches!(adapt(&shapeless), Err(AdaptError::BadPayload(m)) if m.contains("pull_request"))
    );
    let array = request("push", "a", "application/json", b"[1]".to_vec());
    assert!(matches!(adapt(&array), Err(AdaptError::BadPayload(_))));
}

#[test]
fn merged_pull_requests_have_their_own_name() {
    let events = events();
    for (name, body) in fixtures("github") {
        let raw = request(&events[&name], &name, "application/json", body);
        let event = adapt(&raw).unwrap().events.remove(0);
        match name.as_str() {
            "pull_request.closed-merged" => assert_eq!(event.event, "pull_request.merged"),
            "pull_request.closed-unmerged" => assert_eq!(event.event, "pull_request.closed"),
            _ => {}
        }
    }
}

#[test]
fn mutated_payloads_never_panic() {
    let events = events();
    for (name, body) in fixtures("github") {
        for mutant in mutants(&body) {
            let raw = request(&events[&name], &name, "application/json", mutant);
            if let Ok(adapted) = adapt(&raw) {
                for e in &adapted.events {
                    let _ = crate::render::render("github", e, &Default::default(), 20_000);
                }
            }
        }
    }
}

#[test]
fn long_pushes_are_summarized_and_bots_flagged() {
    let commits: Vec<Value> = (0..8)
        .map(|i| {
            json!({"id": format!("{i}abcdef0123"), "message": format!("change {i}\n\nbody"),
            "author": {"name": "A", "username": "a"}, "added": [format!("src/{i}.rs")]})
        })
        .collect();
    let body = json!({"ref": "refs/heads/main", "commits": commits, "compare": "https://x/c",
        "repository": {"full_name": "o/r", "html_url": "https://github.com/o/r"},
        "sender": {"login": "dependabot[bot]", "type": "Bot"}});
    let raw = request(
        "push",
        "p",
        "application/json",
        body.to_string().into_bytes(),
    );
    let event = adapt(&raw).unwrap().events.remove(0);
    assert!(event.facts.actor_is_bot);
    assert_eq!(event.facts.paths.len(), 8);
    let content = crate::render::render("github", &event, &Default::default(), 20_000)
        .unwrap()
        .unwrap();
    let text = content.plain_text();
    assert!(
        text.contains("change 4") && !text.contains("change 5"),
        "{text}"
    );
    assert!(text.contains("…and 3 more commits"), "{text}");
}

#[test]
fn excerpt_skips_comments_and_code() {
    let body = "<!-- template\nhint -->\n```\ncode\n```\n## Why\nIt **breaks**.\n\nMore.";
    assert_eq!(excerpt(body), "Why It **breaks**.");
}
