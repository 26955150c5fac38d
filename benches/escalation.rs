//! herald's escalation benchmark: `cargo bench --bench escalation`.
//!
//! One run, on SQLite and (if reachable) PostgreSQL, through the real pipeline in this process
//! (`herald::run`: HTTP, incident transaction, durable timer, timer loop, fanout):
//!
//! A. **Open + escalate throughput**: 2,000 PagerDuty triggers posted by 16 concurrent clients
//!    to a robot whose policy DINGs the on-call user at once (`wait_seconds: 0`); incidents per
//!    second from the first POST to the last DING row in the user's inbox. Bare limit: single-row
//!    commits per second on the same database (herald commits at least four times per incident:
//!    the incident, its card, the fired step, the DING's fanout).
//! B. **Lateness with 10,000 pending timers**: 10,000 incidents whose first step is due 60 s
//!    after opening, so all 10,000 timers are pending when the first comes due; lateness = the
//!    DING's inbox row time minus the step's due time, p50/p99/max. Bare limit: 10,000 tokio
//!    `sleep_until` timers with the same due times (in memory, not durable).
//!
//! PostgreSQL: `HERALD_BENCH_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! a fresh database is created and dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use herald::auth::Keys;
use herald::config::Config;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, Row};
use tokio_util::sync::CancellationToken;

const THROUGHPUT_INCIDENTS: usize = 2_000;
const PENDING_TIMERS: usize = 10_000;
const WAIT_SECONDS: u64 = 60;
const CLIENTS: usize = 16;
const BARE_COMMITS: usize = 2_000;
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[tokio::main]
async fn main() -> Result<()> {
    sqlx::any::install_default_drivers();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load before: {}",
        load.split_whitespace().next().unwrap_or("?")
    );
    let dir = tempfile::tempdir()?;
    let mut config = bench_config();
    config.data_dir = dir.path().to_path_buf();
    let db_url = format!("sqlite://{}", dir.path().join("herald.db").display());
    run("SQLite", config, &db_url).await?;
    let admin_url = std::env::var("HERALD_BENCH_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
    match sqlx::postgres::PgConnection::connect(&admin_url).await {
        Ok(mut admin) => {
            let name = format!("herald_bench_{:08x}", rand::random::<u32>());
            admin.execute(&*format!("CREATE DATABASE {name}")).await?;
            let (base, _) = admin_url
                .rsplit_once('/')
                .context("PG URL with a database")?;
            let url = format!("{base}/{name}");
            let mut config = bench_config();
            config.database_url = url.clone();
            let outcome = run("PostgreSQL", config, &url).await;
            let _ = admin
                .execute(&*format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            outcome?;
        }
        Err(e) => println!("PostgreSQL skipped: {e}"),
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load after: {}",
        load.split_whitespace().next().unwrap_or("?")
    );
    Ok(())
}

fn bench_config() -> Config {
    let mut config = Config::defaults();
    config.limits.group_messages_per_minute = 1_000_000_000;
    config.limits.min_group_messages_per_minute = 1_000_000_000;
    config
}

/// Both parts on one store, then the bare limits on the same database.
async fn run(store: &str, config: Config, db_url: &str) -> Result<()> {
    let herald = Herald::start(config).await?;
    let user = herald.user("oncall").await?;
    let fast = herald.robot(&user, 0).await?;
    let started = Instant::now();
    herald.trigger_many(&fast.0, THROUGHPUT_INCIDENTS).await?;
    let db = sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(db_url)
        .await?;
    wait_dings(&db, &user, THROUGHPUT_INCIDENTS, Duration::from_secs(600)).await?;
    let rate = THROUGHPUT_INCIDENTS as f64 / started.elapsed().as_secs_f64();

    let slow = herald.robot(&user, WAIT_SECONDS).await?;
    let opening = Instant::now();
    herald.trigger_many(&slow.0, PENDING_TIMERS).await?;
    let opened_in = opening.elapsed();
    let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM escalation_timers")
        .fetch_one(&db)
        .await?
        .try_get("n")?;
    let total = THROUGHPUT_INCIDENTS + PENDING_TIMERS;
    wait_dings(&db, &user, total, Duration::from_secs(WAIT_SECONDS + 600)).await?;
    let late = lateness(&db, &slow.1, &user).await?;
    herald.stop().await?;
    let commits = bare_commits(&db).await?;
    let bare_late = bare_lateness(&late.dues).await;
    let (p50, p99, max) = percentiles(late.values);
    let (b50, b99, bmax) = percentiles(bare_late);
    println!("\n### {store}");
    println!("| figure | herald | bare limit | herald / bare |\n| --- | ---: | ---: | ---: |");
    println!(
        "| incidents opened + escalated (DING written) /s | {rate:.0} | {commits:.0} commits/s | {:.1}% |",
        100.0 * rate / commits
    );
    println!(
        "| lateness p50 / p99 / max, {PENDING_TIMERS} pending (ms) | {p50} / {p99} / {max} | {b50} / {b99} / {bmax} | — |"
    );
    println!(
        "(10,000 incidents opened in {:.1} s; {pending} timers pending when opening ended)",
        opened_in.as_secs_f64()
    );
    Ok(())
}

/// Each DING's inbox-row time minus its step's due time (the incident's open time + wait).
struct Lateness {
    values: Vec<i64>,
    dues: Vec<i64>,
}

async fn lateness(db: &sqlx::AnyPool, robot: &str, user: &str) -> Result<Lateness> {
    let opened: HashMap<i64, i64> =
        sqlx::query("SELECT id, created_at FROM incidents WHERE robot_id = $1")
            .bind(robot.parse::<i64>()?)
            .fetch_all(db)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("created_at")?)))
            .collect::<Result<_>>()?;
    let rows = sqlx::query(
        "SELECT i.created_at AS written, e.details AS details FROM inbox i \
         JOIN conv_events e ON e.id = i.ref_id WHERE i.user_id = $1 AND i.kind = 7",
    )
    .bind(user.parse::<i64>()?)
    .fetch_all(db)
    .await?;
    let (mut values, mut dues) = (Vec::new(), Vec::new());
    for row in rows {
        let details: Value = serde_json::from_str(row.try_get::<&str, _>("details")?)?;
        let incident: i64 = details["ding"]["incident_id"]
            .as_str()
            .unwrap_or("0")
            .parse()?;
        if let Some(open) = opened.get(&incident) {
            let due = open + WAIT_SECONDS as i64 * 1000;
            values.push(row.try_get::<i64, _>("written")? - due);
            dues.push(due);
        }
    }
    ensure!(
        values.len() == PENDING_TIMERS,
        "{} DINGs for {PENDING_TIMERS} incidents",
        values.len()
    );
    Ok(Lateness { values, dues })
}

/// Sequential single-row commits on the same database.
async fn bare_commits(db: &sqlx::AnyPool) -> Result<f64> {
    sqlx::query("CREATE TABLE bench_commits (id BIGINT PRIMARY KEY, at BIGINT NOT NULL)")
        .execute(db)
        .await?;
    let started = Instant::now();
    for i in 0..BARE_COMMITS {
        let mut tx = db.begin().await?;
        sqlx::query("INSERT INTO bench_commits (id, at) VALUES ($1, $2)")
            .bind(i as i64)
            .bind(herald::clock::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let rate = BARE_COMMITS as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_commits").execute(db).await?;
    Ok(rate)
}

/// In-memory timers with herald's due times: the floor of wake-up lateness on this machine.
async fn bare_lateness(dues: &[i64]) -> Vec<i64> {
    let base_ms = dues.iter().min().copied().unwrap_or_default();
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let now_ms = herald::clock::now_ms() + 200;
    let tasks: Vec<_> = dues
        .iter()
        .map(|due| {
            let at = start + Duration::from_millis((due - base_ms) as u64);
            let due_ms = now_ms + (due - base_ms);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                herald::clock::now_ms() - due_ms
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_default());
    }
    out
}

fn percentiles(mut v: Vec<i64>) -> (i64, i64, i64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap_or(&0))
}

async fn wait_dings(db: &sqlx::AnyPool, user: &str, n: usize, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let got: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM inbox WHERE user_id = $1 AND kind = 7")
                .bind(user.parse::<i64>()?)
                .fetch_one(db)
                .await?
                .try_get("n")?;
        if got as usize >= n {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {got} of {n} DINGs within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// herald in this process, with an admin token.
struct Herald {
    base: String,
    http: reqwest::Client,
    token: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<()>>,
}

impl Herald {
    async fn start(config: Config) -> Result<Herald> {
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
        let http = reqwest::Client::builder().no_proxy().build()?;
        Ok(Herald {
            base,
            http,
            token,
            shutdown,
            server,
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {path}: {status}: {body}");
        }
        Ok(body)
    }

    async fn user(&self, name: &str) -> Result<String> {
        let user = self.post("/users", json!({"name": name})).await?;
        Ok(user["id"].as_str().context("user id")?.to_string())
    }

    /// A PagerDuty robot in a group, with a one-step policy DINGing `user` after `wait`.
    /// Returns its webhook URL and id.
    async fn robot(&self, user: &str, wait: u64) -> Result<(String, String)> {
        let group = self
            .post("/conversations", json!({"title": "ops", "members": []}))
            .await?;
        let policy = self
            .post(
                "/escalation-policies",
                json!({"name": format!("wait {wait}"), "steps": [
                    {"wait_seconds": wait, "targets": {"users": [user]}, "channel": "ding_app"}]}),
            )
            .await?;
        let robot = self
            .post(
                "/robots",
                json!({"kind": "pagerduty", "name": "pd", "conversation_id": group["id"],
                       "rate_per_minute": 100000, "escalation_policy_id": policy["id"]}),
            )
            .await?;
        let url = robot["webhook_url"]
            .as_str()
            .context("webhook_url")?
            .to_string();
        Ok((url, robot["id"].as_str().context("robot id")?.to_string()))
    }

    /// Posts `n` triggers with distinct dedup keys from `CLIENTS` concurrent clients.
    async fn trigger_many(&self, url: &str, n: usize) -> Result<()> {
        let url = Arc::new(url.to_string());
        let results: Vec<Result<()>> = futures::stream::iter(0..n)
            .map(|i| {
                let (http, url) = (self.http.clone(), url.clone());
                async move {
                    let body = json!({"routing_key": "bench", "event_action": "trigger",
                        "dedup_key": format!("bench-{i}"),
                        "payload": {"summary": format!("bench incident {i}"), "source": "bench", "severity": "critical"}});
                    let resp = http.post(url.as_str()).json(&body).send().await?;
                    ensure!(resp.status().as_u16() == 202, "trigger {i}: {}", resp.status());
                    Ok(())
                }
            })
            .buffer_unordered(CLIENTS)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.server).await {
            Ok(joined) => joined.context("the herald task panicked")?,
            Err(_) => bail!("herald did not shut down within 30 s"),
        }
    }
}
