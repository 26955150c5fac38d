//! The adapters' fuzz test: every real fixture (and Slack's documented payloads), mutated by a
//! seeded, deterministic mutator at the byte and the JSON level and sent with the right and
//! with wrong event headers, through `adapt` and `render`. Every outcome must be clean: Ok with
//! events that render within the size limit, or a bad-payload / media-type error with a
//! message. A render error would be a 500 at the endpoint, so it fails here.

use serde_json::{json, Value};

use super::contract::{self, FixtureBody};
use super::{adapt, AdaptError};
use crate::robot::RobotKind;

/// A small deterministic generator (PCG-style LCG), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() as usize) % n.max(1)
    }
}

/// Values that break assumptions: types, sizes, depth, odd text, template syntax.
fn nasty(rng: &mut Rng) -> Value {
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let choices = [
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(1e308),
        json!(-0.0),
        json!(""),
        json!("x".repeat(50_000)),
        json!("\u{202e}\u{202d} 🚀 e\u{301} \u{0} <script>alert(1)</script> ](javascript:x) **"),
        json!("{{ 7 * 7 }} {% for x in range(1000000) %}{{ x }}{% endfor %}"),
        json!("refs/heads/"),
        json!("0000000000000000000000000000000000000000"),
        json!([]),
        json!([null, 1, "a", {}]),
        json!({}),
        json!({"a": {"b": null}}),
        deep,
    ];
    choices[rng.below(choices.len())].clone()
}

fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    let esc = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| pointers(x, format!("{at}/{}", esc(k)), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| pointers(x, format!("{at}/{i}"), out)),
        _ => {}
    }
}

/// `count` mutants of a body: byte edits (flips, invalid UTF-8, cuts, repeats) and JSON edits
/// (values replaced by nasty ones, keys removed, several at once).
fn mutants(body: &[u8], seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let mut all = Vec::new();
    if let Some(v) = &value {
        pointers(v, String::new(), &mut all);
    }
    (0..count)
        .map(|i| match (i % 4, &value) {
            (0, _) | (_, None) => byte_edit(body, &mut rng),
            (_, Some(v)) => {
                let mut copy = v.clone();
                for _ in 0..=rng.below(3) {
                    let p = &all[rng.below(all.len())];
                    json_edit(&mut copy, p, &mut rng);
                }
                serde_json::to_vec(&copy).unwrap_or_default()
            }
        })
        .collect()
}

fn byte_edit(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = body.to_vec();
    if out.is_empty() {
        return vec![0xff];
    }
    let at = rng.below(out.len());
    match rng.below(4) {
        0 => out[at] ^= 1 << rng.below(8),
        1 => out.splice(at..at, [0xff, 0xfe, 0xc3]).for_each(drop),
        2 => out.truncate(at),
        _ => {
            let end = (at + rng.below(64)).min(out.len());
            let span = out[at..end].to_vec();
            out.splice(at..at, span).for_each(drop);
        }
    }
    out
}

fn json_edit(v: &mut Value, pointer: &str, rng: &mut Rng) {
    if rng.below(5) == 0 {
        if let Some((parent, key)) = pointer.rsplit_once('/') {
            if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                m.remove(&key.replace("~1", "/").replace("~0", "~"));
                return;
            }
        }
    }
    let replacement = nasty(rng);
    if let Some(slot) = v.pointer_mut(pointer) {
        *slot = replacement;
    }
}

/// Adapts and renders one request; panics on anything but a clean outcome.
fn check_clean(name: &str, kind: RobotKind, headers: &[(&str, &str)], body: Vec<u8>) {
    let raw = contract::verified(kind, headers, body);
    match adapt(&raw) {
        Ok(adapted) => {
            for event in &adapted.events {
                let json = serde_json::to_string(event).unwrap_or_default();
                assert!(!json.contains("\\u0000"), "{name}: a NUL got through");
                let content = match &event.content {
                    Some(c) => Some(c.clone()),
                    None => {
                        crate::render::render(kind.as_str(), event, &Default::default(), 20_000)
                            .unwrap_or_else(|e| panic!("{name}: render error (a 500): {e}"))
                    }
                };
                if let Some(content) = content {
                    content
                        .validate()
                        .unwrap_or_else(|e| panic!("{name}: invalid message: {e}"));
                    let size = content.body_json().to_string().len();
                    assert!(size <= 20_000, "{name}: {size} bytes");
                }
            }
        }
        Err(AdaptError::BadPayload(m) | AdaptError::UnsupportedMediaType(m)) => {
            assert!(!m.trim().is_empty(), "{name}: an error without a message");
        }
        Err(e) => panic!("{name}: unexpected error {e:?}"),
    }
}

/// Every request the fuzz starts from: the shared fixtures and Slack's documented payloads.
fn seeds() -> Vec<FixtureBody> {
    let mut seeds = contract::fixture_bodies();
    for (name, body) in super::slack::tests::CASES {
        let headers = vec![("content-type", "application/json".to_string())];
        seeds.push(FixtureBody {
            name: format!("slack/{name}"),
            kind: RobotKind::Slack,
            headers,
            body: body.as_bytes().into(),
        });
    }
    seeds
}

#[test]
fn mutated_fixtures_get_clean_answers() {
    let seeds = seeds();
    assert!(seeds.len() > 70, "fixtures not found");
    for (i, seed) in seeds.iter().enumerate() {
        let headers: Vec<(&str, &str)> =
            seed.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (j, mutant) in mutants(&seed.body, i as u64 + 1, 48)
            .into_iter()
            .enumerate()
        {
            check_clean(
                &format!("{} mutant {j}", seed.name),
                seed.kind,
                &headers,
                mutant,
            );
        }
    }
}

#[test]
fn fixtures_under_other_event_headers_get_clean_answers() {
    let seeds = seeds();
    // Every body sent as every other event of its source, and as an unknown one.
    for seed in &seeds {
        let events: Vec<String> = seeds
            .iter()
            .filter(|other| other.kind == seed.kind)
            .filter_map(|other| other.headers.get(1).map(|(_, v)| v.clone()))
            .chain(["no such event".to_string()])
            .collect();
        let Some((header, _)) = seed.headers.get(1) else {
            continue;
        };
        let (name, kind, body) = (&seed.name, &seed.kind, &seed.body);
        for event in events {
            let swapped = [
                ("content-type", "application/json"),
                (*header, event.as_str()),
            ];
            check_clean(&format!("{name} as {event}"), *kind, &swapped, body.clone());
        }
    }
}

#[test]
fn the_mutator_is_deterministic_and_mutates() {
    let body = br#"{"a": {"b": [1, 2, "c"]}, "d": "e"}"#;
    let one = mutants(body, 7, 40);
    assert_eq!(one, mutants(body, 7, 40));
    assert!(one.iter().all(|m| m.as_slice() != body.as_slice()) || one.len() == 40);
    assert!(one
        .iter()
        .any(|m| serde_json::from_slice::<Value>(m).is_err()));
    assert!(one
        .iter()
        .any(|m| serde_json::from_slice::<Value>(m).is_ok()));
}
