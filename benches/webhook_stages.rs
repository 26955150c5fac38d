//! Where a signed GitHub push's CPU goes in herald, stage by stage, on one core, next to the
//! floor any implementation pays: the HMAC-SHA256 over the body that the signature check needs,
//! and one pass over the JSON that refusing a malformed body needs (serde_json skipping every
//! value, building nothing). `scripts/bench-webhooks` runs it after the HTTP runs and sets
//! those runs against it; alone:
//!
//! ```sh
//! cargo bench --bench webhook_stages
//! ```
//!
//! Prints one JSON line per stage: the median over `BENCH_ROUNDS` rounds (15) of the
//! nanoseconds per operation, each round timing as many operations as fit in ~40 ms.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use serde::de::IgnoredAny;
use sha2::Sha256;

use herald::ids::{ConversationId, OrgId, RobotId};
use herald::ingress::RawWebhook;
use herald::robot::{Robot, RobotKind, RobotSpec};

const SECRET: &str = "bench-secret-0123456789";

fn main() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/github/push.branch.json");
    let body = bytes::Bytes::from(std::fs::read(&path)?);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let headers = github_headers(&body);
    let robot = github_robot();
    let request = || {
        RawWebhook::new(
            robot.clone(),
            headers.clone(),
            BTreeMap::new(),
            body.clone(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )
    };
    let verified = herald::verify::verify(request(), 0)?;
    let adapted = herald::adapt::adapt(&verified)?;
    let event = adapted.events.into_iter().next().expect("a push event");
    let max_bytes = herald::config::Config::defaults().http.max_message_bytes;

    eprintln!(
        "webhook_stages: {} byte push, {rounds} rounds of ~40 ms per stage",
        body.len()
    );
    report("floor: HMAC-SHA256 of the body", rounds, || hmac_of(&body));
    report("floor: one JSON pass, nothing built", rounds, || {
        serde_json::from_slice::<IgnoredAny>(&body).expect("valid JSON")
    });
    report(
        "herald: the request as handed over (clones)",
        rounds,
        request,
    );
    report("herald: verify (signature)", rounds, || {
        herald::verify::verify(request(), 0).expect("signed")
    });
    report("herald: adapt (parse + normalize)", rounds, || {
        herald::adapt::adapt(&verified).expect("a push")
    });
    report("herald: render", rounds, || {
        herald::render::render("github", &event, &BTreeMap::new(), max_bytes)
            .expect("renders")
            .expect("a message")
    });
    Ok(())
}

fn hmac_of(body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn github_robot() -> Robot {
    Robot {
        id: RobotId(1),
        org_id: OrgId(1),
        kind: RobotKind::Github,
        conversation_id: ConversationId(1),
        name: "gh".into(),
        access_token: "t".into(),
        secret: Some(SECRET.into()),
        spec: RobotSpec::default(),
        created_at_ms: 0,
    }
}

fn github_headers(body: &[u8]) -> HeaderMap {
    let signature = herald::robot::hex(&hmac_of(body));
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).expect("a header value"));
    };
    set("content-type", "application/json".into());
    set("x-github-event", "push".into());
    set("x-github-delivery", "bench-delivery".into());
    set("x-hub-signature-256", format!("sha256={signature}"));
    headers
}

/// Times `op` in rounds and prints the median nanoseconds per call as one JSON line.
fn report<T>(stage: &str, rounds: usize, mut op: impl FnMut() -> T) {
    let per_round = calibrate(&mut op);
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(op());
            }
            start.elapsed().as_nanos() as f64 / per_round as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    println!(
        "{}",
        serde_json::json!({"stage": stage, "ns_median": median.round(), "ops_per_round": per_round})
    );
}

/// How many calls take about 40 ms.
fn calibrate<T>(op: &mut impl FnMut() -> T) -> u64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(40) {
        std::hint::black_box(op());
        n += 1;
    }
    n.max(1)
}
