//! Starts the real `herald` binary on a random loopback port with a temporary data dir (and,
//! for PostgreSQL, a fresh database) and talks to it over HTTP, SSE and WebSocket.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Expands a scenario `async fn name(Backend)` into one test per backend.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario($crate::harness::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario($crate::harness::Backend::Postgres).await
            }
        }
    )*};
}
pub(crate) use on_both_backends;

fn pg_admin_url() -> String {
    std::env::var("HERALD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh database on the test PostgreSQL server and returns its URL.
async fn fresh_pg_database() -> String {
    static CLEANED: AtomicBool = AtomicBool::new(false);
    let admin = pg_admin_url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is needed (scripts/test starts one): {e}")
        });
    if !CLEANED.swap(true, Ordering::SeqCst) {
        drop_stale_databases(&pool).await;
    }
    let name = format!("herald_it_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create test database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

/// Drops databases left by earlier test runs that nobody uses any more.
async fn drop_stale_databases(pool: &sqlx::PgPool) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'herald_it_%' \
         AND datname NOT IN (SELECT datname FROM pg_stat_activity WHERE datname IS NOT NULL)",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for name in names {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(pool)
            .await;
    }
}

pub struct Server {
    pub base: String,
    pub http: reqwest::Client,
    child: Option<Child>,
    dir: TempDir,
    database_url: Option<String>,
    config_path: PathBuf,
    /// `HERALD_LOG` for this server, when a test reads its log.
    log_filter: Option<String>,
}

impl Server {
    /// Starts herald with the given extra TOML config (merged over the defaults).
    pub async fn start(backend: Backend, extra_config: &str) -> Server {
        Self::start_logged(backend, extra_config, None).await
    }

    /// `start` with `HERALD_LOG` set to `log_filter`, for a test that reads what it logs.
    pub async fn start_logged(
        backend: Backend,
        extra_config: &str,
        log_filter: Option<&str>,
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("herald.toml");
        std::fs::write(&config_path, extra_config).expect("write config");
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_pg_database().await),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Self::launch(dir, config_path, database_url, http, log_filter).await
    }

    async fn launch(
        dir: TempDir,
        config_path: PathBuf,
        database_url: Option<String>,
        http: reqwest::Client,
        log_filter: Option<&str>,
    ) -> Server {
        let mut server = Server {
            base: String::new(),
            http,
            child: None,
            dir,
            database_url,
            config_path,
            log_filter: log_filter.map(str::to_string),
        };
        server.spawn();
        server.wait_healthy().await;
        server
    }

    /// A second herald process on the same PostgreSQL database (its own data dir and port).
    pub async fn start_peer(&self) -> Server {
        assert!(
            self.database_url.is_some(),
            "peers share a PostgreSQL database"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("herald.toml");
        std::fs::copy(&self.config_path, &config_path).expect("copy config");
        Self::launch(
            dir,
            config_path,
            self.database_url.clone(),
            self.http.clone(),
            None,
        )
        .await
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.args(args)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("HERALD_LISTEN")
            .env(
                "HERALD_DATABASE_URL",
                self.database_url.clone().unwrap_or_default(),
            )
            .env(
                "HERALD_LOG",
                self.log_filter.clone().unwrap_or_else(|| {
                    std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "herald=warn".into())
                }),
            );
        cmd
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let mut child = self
            .command(&["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn herald");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(rest) = line.strip_prefix("herald listening on ") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("herald did not start; log:\n{}", self.log()));
        self.base = base;
        self.child = Some(child);
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.base)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "herald never became healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the binary again on the same store (on a new port).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_healthy().await;
    }

    /// Runs a CLI subcommand with this server's store flags; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run herald cli");
        assert!(
            out.status.success(),
            "herald {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    }

    pub fn admin_token(&self) -> String {
        self.cli(&["token", "issue", "--org", "default", "--user", "admin"])
    }

    /// A direct connection to the store, for checks the API does not expose (pts invariants).
    pub async fn db(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=ro",
                self.dir.path().join("data").join("herald.db").display()
            ),
        };
        sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("connect to the store")
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, token, path, Some(body))
            .await
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, token, path, None).await
    }

    /// Creates users named `{prefix}{i}` (batches of 1,000) and returns their ids.
    pub async fn create_users(&self, admin: &str, prefix: &str, count: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
        for chunk in names.chunks(1000) {
            let users: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, n)| json!({"name": n, "mobile": format!("1{:010}", ids.len() + i)}))
                .collect();
            let (status, body) = self
                .post(admin, "/api/v1/users/batch", json!({"users": users}))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            for u in body["users"].as_array().expect("users") {
                ids.push(u["id"].as_str().expect("id").to_string());
            }
        }
        ids
    }

    pub async fn token_for(&self, admin: &str, user: &str) -> String {
        let (status, body) = self
            .post(admin, &format!("/api/v1/users/{user}/tokens"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().expect("token").to_string()
    }

    pub async fn create_group(&self, token: &str, title: &str, members: &[String]) -> String {
        let (status, body) = self
            .post(
                token,
                "/api/v1/conversations",
                json!({"title": title, "members": members}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_string()
    }

    pub async fn send_text(
        &self,
        token: &str,
        conversation: &str,
        text: &str,
    ) -> (StatusCode, Value) {
        self.post(
            token,
            &format!("/api/v1/conversations/{conversation}/messages"),
            json!({"msgtype": "text", "text": {"content": text}}),
        )
        .await
    }

    /// Maps one external name (a forge login, an e-mail, an alert label) to a member through
    /// `PUT /api/v1/mention-map`, asserting it is accepted.
    pub async fn map_mention(&self, admin: &str, source: &str, external: &str, user: &str) {
        let entry = json!({"source": source, "external": external, "user_id": user});
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                admin,
                "/api/v1/mention-map",
                Some(json!({"entries": [entry]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Every event after `since`, following `has_more`.
    pub async fn sync_all(&self, token: &str, since: i64) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor = since;
        loop {
            let (status, body) = self
                .get(token, &format!("/api/v1/sync?since={cursor}&limit=1000"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let page = body["events"].as_array().expect("events").clone();
            if let Some(last) = page.last() {
                cursor = last["pts"].as_i64().expect("pts");
            }
            events.extend(page);
            if !body["has_more"].as_bool().expect("has_more") {
                return events;
            }
        }
    }

    /// Every message robots posted that this member can see, oldest first.
    pub async fn robot_messages(&self, token: &str) -> Vec<Value> {
        self.sync_all(token, 0)
            .await
            .into_iter()
            .filter(|e| e["type"] == "message.created" && e["message"]["sender"]["kind"] == "robot")
            .map(|e| e["message"].clone())
            .collect()
    }

    /// Waits until the fanout queue is empty (every accepted task written).
    pub async fn drain(&self, db: &AnyPool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tasks")
                .fetch_one(db)
                .await
                .expect("count tasks")
                .try_get("n")
                .expect("n");
            if pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue did not drain: {pending} tasks left\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    /// With `HERALD_TEST_DUMP_LOG=1`, a failing test leaves the server's log on stderr.
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() && std::env::var_os("HERALD_TEST_DUMP_LOG").is_some() {
            let log = std::fs::read_to_string(self.dir.path().join("server.log"));
            eprintln!("--- server.log ---\n{}", log.unwrap_or_default());
            let keep = std::env::temp_dir().join(format!("herald-failed-{}", std::process::id()));
            let _ = std::fs::rename(self.dir.path().join("data"), &keep);
            eprintln!("--- data dir kept in {} ---", keep.display());
        }
    }
}

/// Checks the pts invariant for every user in the store: inbox pts run 1, 2, … with no gap or
/// repeat, and the counter equals the highest pts.
pub async fn assert_pts_gapless(db: &AnyPool) {
    let rows = sqlx::query(
        "SELECT p.user_id AS user_id, p.pts AS head, COUNT(i.pts) AS n, \
         COALESCE(MIN(i.pts), 0) AS lo, COALESCE(MAX(i.pts), 0) AS hi \
         FROM user_pts p LEFT JOIN inbox i ON i.user_id = p.user_id GROUP BY p.user_id, p.pts",
    )
    .fetch_all(db)
    .await
    .expect("pts query");
    for row in rows {
        let user: i64 = row.try_get("user_id").unwrap();
        let head: i64 = row.try_get("head").unwrap();
        let n: i64 = row.try_get("n").unwrap();
        let lo: i64 = row.try_get("lo").unwrap();
        let hi: i64 = row.try_get("hi").unwrap();
        assert_eq!(
            hi, head,
            "user {user}: counter {head} but highest inbox pts {hi}"
        );
        assert_eq!(
            n, hi,
            "user {user}: {n} inbox rows for pts up to {hi} (gap or repeat)"
        );
        if n > 0 {
            assert_eq!(lo, 1, "user {user}: first pts is {lo}");
        }
    }
}

/// A Server-Sent Events client over reqwest.
pub struct Sse {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

#[derive(Debug, Clone)]
pub struct SseFrame {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

impl Sse {
    pub async fn connect(server: &Server, token: &str, last_event_id: Option<i64>) -> Sse {
        let mut req = server
            .http
            .get(format!("{}/api/v1/stream", server.base))
            .timeout(Duration::from_secs(3600))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("connect stream");
        assert_eq!(resp.status(), StatusCode::OK);
        Sse {
            stream: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next frame, or None if the stream ended or nothing came within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<SseFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    fn take_frame(&mut self) -> Option<SseFrame> {
        loop {
            let end = self.buf.find("\n\n")?;
            let raw: String = self.buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
            for line in raw.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            return Some(SseFrame {
                id,
                event,
                data: serde_json::from_str(&data).expect("JSON data"),
            });
        }
    }
}
