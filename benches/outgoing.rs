//! herald's outgoing-bot benchmark: `cargo bench --bench outgoing`.
//!
//! 50 bots (trigger `all`) installed in 8 groups, all calling one local axum receiver. One run
//! reports, as a Markdown table:
//!
//! 1. **Bare limit**: a plain reqwest client POSTing the same callback bodies to the same
//!    receiver (64 in flight), re-measured here because the machine is noisy.
//! 2. **Saturated**: messages posted as fast as 8 clients can; callbacks delivered per second
//!    (first POST to last callback) and p50/p99 latency from POST to callback.
//! 3. **Paced**: ~1,000 callbacks/s for 10 s; p50/p99 latency.
//! 4. **Paced, one bot hung**: the same, with a 51st bot whose endpoint never answers (it hits
//!    the 5 s timeout on every attempt); latency of the 50 healthy bots.
//!
//! herald runs in this process through `herald::run` on SQLite (`synchronous = full`), so
//! every callback was durably queued, leased and recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use herald::auth::Keys;
use herald::config::Config;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const BOTS: usize = 50;
const GROUPS: usize = 8;
const SATURATED_MESSAGES: usize = 400;
const POSTERS: usize = 8;
const PACED_MESSAGES_PER_S: f64 = 20.0;
const PACED_SECONDS: f64 = 10.0;
const BARE_POSTS: usize = 20_000;
const BARE_IN_FLIGHT: usize = 64;

/// Arrivals at the receiver: message id and when its callback came in.
#[derive(Default)]
struct Arrivals {
    seen: Mutex<Vec<(String, Instant)>>,
    count: AtomicUsize,
    sample: Mutex<Option<Bytes>>,
}

async fn on_callback(State(arrivals): State<Arc<Arrivals>>, body: Bytes) -> &'static str {
    let at = Instant::now();
    let msg_id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["msgId"].as_str().map(String::from))
        .unwrap_or_default();
    arrivals.seen.lock().unwrap().push((msg_id, at));
    arrivals.count.fetch_add(1, Ordering::Relaxed);
    arrivals.sample.lock().unwrap().get_or_insert(body);
    "ok"
}

async fn on_hang() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    "late"
}

async fn start_receiver(arrivals: Arc<Arrivals>) -> Result<String> {
    let app = axum::Router::new()
        .route("/ok/{bot}", post(on_callback))
        .route("/bare", post(on_callback))
        .route("/hang", post(on_hang))
        .with_state(arrivals);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

struct Herald {
    base: String,
    http: reqwest::Client,
    token: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Herald {
    async fn start() -> Result<Herald> {
        let dir = tempfile::tempdir()?;
        let mut config = Config::defaults();
        config.data_dir = dir.path().to_path_buf();
        config.limits.group_messages_per_minute = 1_000_000_000;
        config.limits.min_group_messages_per_minute = 1_000_000_000;
        config.outgoing.allow_cidrs = vec!["127.0.0.1/32".into()];
        let (store, boot) = herald::open_store(&config).await?;
        let org = store.find_org("default").await?;
        let admin = store.find_user(org.id, "admin").await?;
        let token = Keys::new(&boot.signing_key, 3600).issue(&admin)?.token;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}/api/v1", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let key = boot.signing_key;
            herald::run(config, store, &key, listener, stop).await
        });
        Ok(Herald {
            base,
            http: reqwest::Client::builder().no_proxy().build()?,
            token,
            shutdown,
            _dir: dir,
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!("POST {path}: {status}: {}", response.text().await?);
        }
        Ok(response.json().await?)
    }

    /// Posts a message; returns its id and when the POST started.
    async fn message(&self, group: &str, text: &str) -> Result<(String, Instant)> {
        let started = Instant::now();
        let body = json!({"msgtype": "text", "text": {"content": text}});
        let answer = self
            .post(&format!("/conversations/{group}/messages"), &body)
            .await?;
        let id = answer["id"].as_str().context("message id")?.to_string();
        Ok((id, started))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Latencies of the callbacks of `sent` messages that arrived after `from` in `arrivals`.
fn latencies(sent: &HashMap<String, Instant>, arrivals: &Arrivals, from: usize) -> Vec<Duration> {
    let seen = arrivals.seen.lock().unwrap();
    let mut out: Vec<Duration> = seen[from..]
        .iter()
        .filter_map(|(id, at)| sent.get(id).map(|t0| at.duration_since(*t0)))
        .collect();
    out.sort_unstable();
    out
}

async fn wait_for(arrivals: &Arrivals, total: usize, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    while arrivals.count.load(Ordering::Relaxed) < total {
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} callbacks arrived",
                arrivals.count.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen = arrivals.seen.lock().unwrap();
    Ok(seen.last().map_or_else(Instant::now, |(_, at)| *at))
}

/// The bare limit: the same bodies straight to the same receiver.
async fn bare(receiver: &str, arrivals: &Arc<Arrivals>) -> Result<(f64, Vec<Duration>)> {
    let body = arrivals
        .sample
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| Bytes::from_static(b"{}"));
    let client = reqwest::Client::builder().no_proxy().build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..BARE_IN_FLIGHT)
        .map(|_| {
            let (client, next, body) = (client.clone(), next.clone(), body.clone());
            let url = format!("{receiver}/bare");
            tokio::spawn(async move {
                let mut times = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < BARE_POSTS {
                    let t0 = Instant::now();
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if let Ok(r) = sent {
                        let _ = r.bytes().await;
                    }
                    times.push(t0.elapsed());
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for w in workers {
        times.extend(w.await?);
    }
    let rate = BARE_POSTS as f64 / started.elapsed().as_secs_f64();
    times.sort_unstable();
    Ok((rate, times))
}

async fn saturated(
    herald: &Arc<Herald>,
    groups: &[String],
    arrivals: &Arc<Arrivals>,
    bots: usize,
) -> Result<(f64, Vec<Duration>)> {
    let from = arrivals.count.load(Ordering::Relaxed);
    let started = Instant::now();
    let posters: Vec<_> = (0..POSTERS)
        .map(|p| {
            let (herald, groups) = (herald.clone(), groups.to_vec());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                for i in (p..SATURATED_MESSAGES).step_by(POSTERS) {
                    sent.push(
                        herald
                            .message(&groups[i % groups.len()], &format!("s{i}"))
                            .await?,
                    );
                }
                Ok::<_, anyhow::Error>(sent)
            })
        })
        .collect();
    let mut sent = HashMap::new();
    for p in posters {
        sent.extend(p.await??);
    }
    let total = from + SATURATED_MESSAGES * bots;
    let last = wait_for(arrivals, total, Duration::from_secs(300)).await?;
    let rate = (SATURATED_MESSAGES * bots) as f64 / last.duration_since(started).as_secs_f64();
    Ok((rate, latencies(&sent, arrivals, from)))
}

async fn paced(
    herald: &Herald,
    groups: &[String],
    arrivals: &Arrivals,
    bots: usize,
) -> Result<Vec<Duration>> {
    let from = arrivals.count.load(Ordering::Relaxed);
    let count = (PACED_MESSAGES_PER_S * PACED_SECONDS) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / PACED_MESSAGES_PER_S));
    let mut sent = HashMap::new();
    for i in 0..count {
        tick.tick().await;
        let (id, t0) = herald
            .message(&groups[i % groups.len()], &format!("p{i}"))
            .await?;
        sent.insert(id, t0);
    }
    wait_for(arrivals, from + count * bots, Duration::from_secs(120)).await?;
    Ok(latencies(&sent, arrivals, from))
}

async fn run() -> Result<()> {
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(arrivals.clone()).await?;
    let herald = Arc::new(Herald::start().await?);
    let mut groups = Vec::new();
    for g in 0..GROUPS {
        let answer = herald
            .post(
                "/conversations",
                &json!({"title": format!("g{g}"), "members": []}),
            )
            .await?;
        groups.push(answer["id"].as_str().context("group id")?.to_string());
    }
    for b in 0..BOTS {
        let bot = json!({"name": format!("bot{b}"), "callback_url": format!("{receiver}/ok/{b}"),
                         "conversations": groups, "triggers": ["all"]});
        herald.post("/bots", &bot).await?;
    }
    // Warm up: connections, caches, and a sample body for the bare client.
    paced_warmup(&herald, &groups, &arrivals).await?;

    let (bare_rate, bare_times) = bare(&receiver, &arrivals).await?;
    let (sat_rate, sat) = saturated(&herald, &groups, &arrivals, BOTS).await?;
    let calm = paced(&herald, &groups, &arrivals, BOTS).await?;
    let hung = json!({"name": "hung", "callback_url": format!("{receiver}/hang"),
                      "conversations": groups, "triggers": ["all"]});
    herald.post("/bots", &hung).await?;
    let with_hung = paced(&herald, &groups, &arrivals, BOTS).await?;
    let (sat_hung_rate, sat_hung) = saturated(&herald, &groups, &arrivals, BOTS).await?;

    println!("| run | callbacks/s | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| bare reqwest → receiver ({BARE_IN_FLIGHT} in flight) | {bare_rate:.0} | {} | {} |",
        ms(percentile(&bare_times, 0.5)),
        ms(percentile(&bare_times, 0.99))
    );
    println!(
        "| herald, {BOTS} bots, saturated | {sat_rate:.0} | {} | {} |",
        ms(percentile(&sat, 0.5)),
        ms(percentile(&sat, 0.99))
    );
    println!(
        "| herald, {BOTS} bots, paced {:.0}/s | — | {} | {} |",
        PACED_MESSAGES_PER_S * BOTS as f64,
        ms(percentile(&calm, 0.5)),
        ms(percentile(&calm, 0.99))
    );
    println!(
        "| herald, {BOTS} healthy + 1 hung bot, paced | — | {} | {} |",
        ms(percentile(&with_hung, 0.5)),
        ms(percentile(&with_hung, 0.99))
    );
    println!(
        "| herald, {BOTS} healthy + 1 hung bot, saturated | {sat_hung_rate:.0} | {} | {} |",
        ms(percentile(&sat_hung, 0.5)),
        ms(percentile(&sat_hung, 0.99))
    );
    herald.shutdown.cancel();
    Ok(())
}

async fn paced_warmup(herald: &Herald, groups: &[String], arrivals: &Arrivals) -> Result<()> {
    let from = arrivals.count.load(Ordering::Relaxed);
    for i in 0..20 {
        herald.message(&groups[i % groups.len()], "warm-up").await?;
    }
    wait_for(arrivals, from + 20 * BOTS, Duration::from_secs(60)).await?;
    Ok(())
}

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
