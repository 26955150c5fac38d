//! Webhook throughput through the whole server: herald runs in this process (`herald::run` on
//! SQLite, `synchronous = full`, each accepted webhook a durable enqueue) and a pool of
//! clients posts, in turn, to a plugin robot's `/hooks/plugin/{token}` and to a built-in
//! GitHub robot's `/hooks/github/{token}`, in the same run. Every request is a new delivery
//! (a unique request id), so dedupe never short-cuts the work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use herald::auth::Keys;
use herald::config::Config;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

/// Clients posting at once, and how long each endpoint is driven.
const CLIENTS: usize = 16;
const DRIVE: Duration = Duration::from_secs(4);

/// herald in this process, with an admin token.
pub struct Herald {
    base: String,
    http: reqwest::Client,
    token: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<()>>,
    _dir: tempfile::TempDir,
}

impl Herald {
    pub async fn start() -> Result<Herald> {
        let dir = tempfile::tempdir()?;
        let mut config = Config::defaults();
        config.data_dir = dir.path().to_path_buf();
        let (store, boot) = herald::open_store(&config).await?;
        let org = store.find_org("default").await?;
        let admin = store.find_user(org.id, "admin").await?;
        let token = Keys::new(&boot.signing_key, 3600).issue(&admin)?.token;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let (shutdown, key) = (shutdown.clone(), boot.signing_key);
            async move { herald::run(config, store, &key, listener, shutdown).await }
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(CLIENTS)
            .build()?;
        Ok(Herald {
            base,
            http,
            token,
            shutdown,
            server,
            _dir: dir,
        })
    }

    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.server.await??;
        Ok(())
    }

    async fn api(&self, path: &str, body: reqwest::RequestBuilder) -> Result<Value> {
        let resp = body.bearer_auth(&self.token).send().await?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{path}: {status}: {value}");
        }
        Ok(value)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        self.api(path, self.http.post(url).json(&body)).await
    }

    /// Uploads a component; its id.
    pub async fn plugin(&self, name: &str, wasm: Vec<u8>) -> Result<String> {
        let url = format!("{}/api/v1/plugins?name={name}&version=1", self.base);
        let req = self
            .http
            .post(url)
            .header("content-type", "application/wasm")
            .body(wasm);
        let plugin = self.api("/plugins", req).await?;
        Ok(plugin["id"].as_str().context("plugin id")?.to_string())
    }

    /// A robot of `kind` in a fresh group with one member, never throttled; its JSON.
    pub async fn robot(&self, kind: &str, extra: Value) -> Result<Value> {
        let user = self
            .post("/users", json!({"name": format!("{kind}-member")}))
            .await?;
        let group = self
            .post(
                "/conversations",
                json!({"title": kind, "members": [user["id"]]}),
            )
            .await?;
        let mut body = json!({"kind": kind, "name": kind, "conversation_id": group["id"],
                              "rate_per_minute": 6_000_000});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.post("/robots", body).await
    }
}

/// One endpoint to drive: its URL, the body, fixed headers, and the header that must be
/// unique per request.
pub struct Target {
    pub url: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub unique_header: &'static str,
}

/// Requests per second answered 2xx, and the median latency in ms.
pub struct Rate {
    pub per_second: f64,
    pub p50_ms: f64,
}

/// Drives `target` with `CLIENTS` concurrent clients for `DRIVE`.
pub async fn drive(herald: &Herald, target: Arc<Target>) -> Result<Rate> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + DRIVE;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, target) = (herald.http.clone(), target.clone());
        let (ok, failed, seq) = (ok.clone(), failed.clone(), seq.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let mut req = http.post(&target.url).body(target.body.clone());
                for (k, v) in &target.headers {
                    req = req.header(k, v);
                }
                req = req.header(target.unique_header, format!("bench-{n:016x}"));
                let start = Instant::now();
                match req.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        latencies.push(start.elapsed().as_secs_f64() * 1e3);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} requests to {} failed", target.url);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Rate {
        per_second: ok.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(0.0),
    })
}

/// `sha256=<hex>` of `body` under `secret`, as GitHub signs.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}
