//! herald's plugin benchmark: `cargo bench --bench plugins` (needs target/plugins/sentry.wasm:
//! run `scripts/build-plugins` first).
//!
//! In one run, on the same payload (the Sentry issue-alert fixture, 5 KB):
//!
//! 1. **C plugin per call**: `Runtime::call` as the webhook path runs it: a fresh instance from
//!    the pooling allocator, the request copied in, `handle`, the output checked and converted.
//! 2. **Native**: the same transform written in Rust (serde_json, same fields, same markdown),
//!    as a built-in adapter would do it. Target: plugin ≤ 2× native.
//! 3. **Instantiate**: a fresh instance alone (pooling allocator, `InstancePre`). Target ≤ 50 µs.
//!    Beside it, a call on Sentry's 436-byte installation ping (answered, nothing posted): what
//!    a call costs besides the guest's own work (instance, request in, output out).
//! 4. For scale: the built-in GitHub adapter + template render of an 8.8 KB push.
//! 5. **Python plugin** (plugins/jenkins, componentize-py; skipped when
//!    target/plugins/jenkins.wasm is missing): per call (`Runtime::call` reuses a warm instance
//!    for interpreted guests) and instantiate alone, on the Jenkins failed-build fixture.
//! 6. **Webhook throughput** through the whole server (`http`): `/hooks/plugin/{token}` with the
//!    C and the Python plugin next to the built-in `/hooks/github/{token}`, in the same run.
//!
//! Each per-call figure is the median over 31 samples of the mean of a batch of calls.

#[path = "plugins/http.rs"]
mod http;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use herald::adapt::{self, Facts, Normalized};
use herald::config::Config;
use herald::ids::{ConversationId, OrgId, RobotId};
use herald::ingress::RawWebhook;
use herald::model::{Content, Markdown};
use herald::plugin::{HostState, PluginRequest, Runtime};
use herald::robot::{Robot, RobotKind, RobotSpec};
use serde_json::{json, Value};
use std::sync::Arc;

const SAMPLES: usize = 31;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Median over samples of the mean µs per call of `batch` calls.
fn measure(batch: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..batch {
        f(); // warm-up
    }
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[SAMPLES / 2]
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The C plugin's event_alert transform, natively: the comparison point.
fn native_sentry(body: &[u8], request_id: &str) -> Normalized {
    let v: Value = serde_json::from_slice(body).expect("JSON");
    let title = text(&v, "/data/event/title").unwrap_or("an issue alert fired");
    let level = text(&v, "/data/event/level");
    let env = v
        .pointer("/data/event/tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|t| t[0] == "environment")
        .and_then(|t| t[1].as_str());
    let icon = match level {
        Some("fatal" | "error") => "🔴",
        Some("warning") => "🟠",
        Some(_) => "🔵",
        None => "⚪",
    };
    let mut x = format!("### {icon} {title}");
    if let Some(rule) = text(&v, "/data/triggered_rule") {
        x += &format!("\n\n**Alert rule**: {rule}");
    }
    if let Some(culprit) = text(&v, "/data/event/culprit").filter(|c| !c.is_empty()) {
        x += &format!("\n\n**Culprit**: `{culprit}`");
    }
    x += &format!("\n\n**Level**: {}", level.unwrap_or("unknown"));
    if let Some(env) = env {
        x += &format!(" · **Environment**: {env}");
    }
    if let Some(release) = text(&v, "/data/event/release") {
        x += &format!(" · **Release**: {release}");
    }
    if let Some(url) = text(&v, "/data/event/web_url") {
        x += &format!("\n\n[View in Sentry]({url})");
    }
    let content = Content::Markdown(Markdown {
        title: format!("Sentry: {title}"),
        text: x,
    });
    content.validate().expect("valid");
    Normalized {
        event: "event_alert.triggered".into(),
        dedupe_key: Some(request_id.to_string()),
        object_key: text(&v, "/data/event/issue_id").map(|id| format!("sentry-issue:{id}")),
        facts: Facts {
            severity: level.map(String::from),
            labels: env
                .map(|e| format!("environment:{e}"))
                .into_iter()
                .collect(),
            ..Facts::default()
        },
        content: Some(content),
        ..Normalized::default()
    }
}

fn github_push() -> RawWebhook<herald::ingress::Verified> {
    let dir = root().join("../shared/fixtures/github");
    let body = std::fs::read(dir.join("push.branch.json")).expect("push fixture");
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("x-github-event", "push"),
        ("x-github-delivery", "bench"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let robot = Robot {
        id: RobotId(1),
        org_id: OrgId(1),
        kind: RobotKind::Github,
        conversation_id: ConversationId(1),
        name: "bench".into(),
        access_token: "t".into(),
        secret: None,
        spec: RobotSpec::default(),
        created_at_ms: 0,
    };
    let raw = RawWebhook::new(
        robot,
        headers,
        BTreeMap::new(),
        body.into(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    );
    herald::verify::verify(raw, 0).expect("verified")
}

fn main() {
    let wasm_path = root().join("target/plugins/sentry.wasm");
    let wasm = std::fs::read(&wasm_path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-plugins)", wasm_path.display()));
    let config = Config::defaults();
    let runtime = Runtime::new(&config.plugins, None).expect("runtime");
    let compile_start = Instant::now();
    let compiled = runtime.compile(&wasm).expect("compiles");
    let compile_ms = compile_start.elapsed().as_secs_f64() * 1e3;

    let fixtures = root().join("plugins/sentry/fixtures");
    let body = std::fs::read(fixtures.join("event_alert.triggered.json")).expect("fixture");
    let request = PluginRequest {
        method: "POST".into(),
        path: "/hooks/plugin/bench".into(),
        query: Vec::new(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "request-id".into(),
                "9c1d6f0e-8b7a-4e3d-a2c1-5f4e3d2c1b0a".into(),
            ),
            ("sentry-hook-resource".into(), "event_alert".into()),
        ],
        body: body.clone().into(),
    };
    // Both sides must say the same thing before their speed means anything.
    let out = runtime
        .call(
            &compiled,
            HostState::new("bench", BTreeMap::new()),
            &request,
        )
        .expect("plugin call");
    let native = native_sentry(&body, "9c1d6f0e-8b7a-4e3d-a2c1-5f4e3d2c1b0a");
    assert_eq!(
        Some(&out.messages[0].content),
        native.content.as_ref(),
        "same output"
    );

    let plugin_us = measure(500, || {
        let out = runtime
            .call(
                &compiled,
                HostState::new("bench", BTreeMap::new()),
                &request,
            )
            .expect("call");
        std::hint::black_box(out);
    });
    let native_us = measure(500, || {
        std::hint::black_box(native_sentry(&body, "9c1d6f0e-8b7a-4e3d-a2c1-5f4e3d2c1b0a"));
    });
    let ping = PluginRequest {
        headers: vec![("sentry-hook-resource".into(), "installation".into())],
        body: std::fs::read(fixtures.join("installation.created.json"))
            .expect("fixture")
            .into(),
        ..request.clone()
    };
    let ping_us = measure(500, || {
        let out = runtime
            .call(&compiled, HostState::new("bench", BTreeMap::new()), &ping)
            .expect("call");
        std::hint::black_box(out);
    });
    let instantiate_us = measure(2000, || {
        runtime.instantiate(&compiled).expect("instantiate")
    });
    let push = github_push();
    let github_us = measure(500, || {
        let adapted = adapt::adapt(&push).expect("adapts");
        for event in &adapted.events {
            let rendered = herald::render::render("github", event, &BTreeMap::new(), 20_000);
            std::hint::black_box(rendered.expect("renders"));
        }
    });

    println!(
        "plugin benchmark ({} byte component, compiled in {compile_ms:.1} ms; {} byte payload)\n",
        wasm.len(),
        body.len()
    );
    println!("| measure | median µs/call | ratio |");
    println!("| --- | ---: | ---: |");
    println!(
        "| C plugin (sentry), per call incl. fresh instance | {plugin_us:.1} | **{:.2}× native** |",
        plugin_us / native_us
    );
    println!("| native Rust, same transform | {native_us:.1} | 1.00× |");
    println!(
        "| C plugin, installation ping ({} B body, no message): a call's fixed cost | {ping_us:.1} | |",
        ping.body.len()
    );
    println!("| instantiate alone (pooling, InstancePre) | {instantiate_us:.2} | target ≤ 50 µs |");
    println!("| built-in GitHub adapter + render, 8.8 KB push | {github_us:.1} | (scale) |");
    if let Some(row) = python_plugin(&runtime, native_us) {
        println!("{row}");
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(throughput(&wasm)).expect("throughput");
}

/// The Jenkins plugin (Python) per call and instantiate alone, as table rows.
fn python_plugin(runtime: &Runtime, native_us: f64) -> Option<String> {
    let wasm = std::fs::read(root().join("target/plugins/jenkins.wasm")).ok()?;
    let compile_start = Instant::now();
    let compiled = runtime.compile(&wasm).expect("the Python plugin compiles");
    let compile_ms = compile_start.elapsed().as_secs_f64() * 1e3;
    let body = std::fs::read(root().join("plugins/jenkins/fixtures/build.completed.failure.json"))
        .expect("fixture");
    let request = PluginRequest {
        method: "POST".into(),
        path: "/hooks/plugin/bench".into(),
        query: Vec::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.clone().into(),
    };
    let call = || {
        runtime
            .call(
                &compiled,
                HostState::new("bench", BTreeMap::new()),
                &request,
            )
            .expect("call")
    };
    assert_eq!(
        call().messages.len(),
        1,
        "the plugin posts the failed build"
    );
    let per_call = measure(100, || {
        std::hint::black_box(call());
    });
    let instantiate = measure(200, || runtime.instantiate(&compiled).expect("instantiate"));
    Some(format!(
        "| Python plugin (jenkins, {} MB, compiled in {compile_ms:.0} ms), per call in a warm \
         instance, {} byte payload | {per_call:.1} | {:.2}× native sentry |\n\
         | Python plugin, instantiate alone | {instantiate:.1} | |",
        wasm.len() / 1_000_000,
        body.len(),
        per_call / native_us
    ))
}

/// `/hooks/plugin/{token}` (C and Python plugins) next to `/hooks/github/{token}`.
async fn throughput(sentry: &[u8]) -> anyhow::Result<()> {
    let herald = http::Herald::start().await?;
    let mut targets = Vec::new();
    let github_secret = "bench-github-secret";
    let github = herald
        .robot("github", json!({"secret": github_secret}))
        .await?;
    let push = std::fs::read(root().join("../shared/fixtures/github/push.branch.json"))?;
    targets.push((
        "built-in `/hooks/github/{token}`, 8.8 KB push",
        http::Target {
            url: github["webhook_url"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-github-event".into(), "push".into()),
                (
                    "x-hub-signature-256".into(),
                    http::github_signature(github_secret, &push),
                ),
            ],
            body: push,
            unique_header: "x-github-delivery",
        },
    ));
    let sentry_id = herald.plugin("sentry", sentry.to_vec()).await?;
    let robot = herald
        .robot("plugin", json!({"plugin_id": sentry_id}))
        .await?;
    let alert = std::fs::read(root().join("plugins/sentry/fixtures/event_alert.triggered.json"))?;
    targets.push((
        "`/hooks/plugin/{token}`, C plugin (sentry), 5 KB alert",
        http::Target {
            url: robot["webhook_url"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("sentry-hook-resource".into(), "event_alert".into()),
            ],
            body: alert,
            unique_header: "request-id",
        },
    ));
    if let Ok(jenkins) = std::fs::read(root().join("target/plugins/jenkins.wasm")) {
        let id = herald.plugin("jenkins", jenkins).await?;
        let robot = herald.robot("plugin", json!({"plugin_id": id})).await?;
        let body = std::fs::read(root().join("plugins/jenkins/fixtures/build.started.json"))?;
        targets.push((
            "`/hooks/plugin/{token}`, Python plugin (jenkins), 1 KB build (deduped after the first)",
            http::Target {
                url: robot["webhook_url"].as_str().unwrap_or_default().to_string(),
                headers: vec![("content-type".into(), "application/json".into())],
                body,
                unique_header: "x-bench-request",
            },
        ));
    }
    println!(
        "\nwebhook throughput ({} concurrent clients, SQLite, durable enqueue)\n",
        16
    );
    println!("| endpoint | requests/s | p50 ms | vs built-in |");
    println!("| --- | ---: | ---: | ---: |");
    let mut builtin = None;
    for (name, target) in targets {
        let rate = http::drive(&herald, Arc::new(target)).await?;
        let base = *builtin.get_or_insert(rate.per_second);
        println!(
            "| {name} | {:.0} | {:.2} | {:.2}× |",
            rate.per_second,
            rate.p50_ms,
            rate.per_second / base
        );
    }
    herald.stop().await
}
