//! herald's fanout and live-push benchmark: `cargo bench --bench fanout` (or `scripts/bench`).
//!
//! One run reports, as a Markdown table on stdout followed by one JSON line per figure:
//!
//! A. **Fanout throughput**: inbox rows committed per second while herald fans messages out
//!    to a 10,000-member group, next to a bare insert of the same 10,000 rows into the same
//!    database (the physical limit, re-measured in the same run because the machine is noisy),
//!    on SQLite and PostgreSQL, with a nearly empty inbox and with ~1M rows already stored.
//! B. **Live push latency**: time from `POST …/messages` to arrival on 1,000 concurrent SSE
//!    subscribers of one group (SQLite).
//!
//! herald runs in this process through its real pipeline (`herald::run`: HTTP, durable queue,
//! lane workers, hub), so the figures include everything a client would wait for. The bare side
//! talks to the same database file / PostgreSQL database only while herald is idle, so the two
//! never contend for the write lock.
//!
//! PostgreSQL: `HERALD_BENCH_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! must allow `CREATE DATABASE`; the bench works in a fresh `herald_bench_<random>` database
//! and drops it at the end. If the server is unreachable the PostgreSQL rows are skipped.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use herald::auth::Keys;
use herald::config::{Config, Synchronous};
use herald::ids::{ConversationId, OrgId, UserId};
use herald::store::Store;
use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Members of the fanout group, the admin (its owner) included, so a message is 10,000 rows.
const GROUP_SIZE: usize = 10_000;
/// Timed samples per herald cell; the median is reported.
const SAMPLES: usize = 5;
/// Messages posted per sample. Small, so the "empty" cell stays near empty: 5 × 4 messages
/// add 200k rows (20 per member), the same amount LIMITS.md measured its empty figures over.
const MESSAGES_PER_SAMPLE: usize = 4;
/// Repetitions of each bare insert form; the median is reported.
const BARE_REPS: usize = 12;
/// The inbox is grown (through herald) to about this many rows before the deep cell, whose
/// own samples then take it to ~1.1M: the cell straddles 1M.
const DEEP_INBOX_ROWS: i64 = 900_000;
/// Bare rows use pts from here on, far above anything herald allocates, so they never collide
/// with herald's rows; they are deleted again before herald runs next.
const BARE_PTS_BASE: i64 = 1_000_000_000_000;
/// How long herald may take to drain its queue before the bench gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// SSE subscribers of the push-latency group (each a user; the admin posts).
const PUSH_SUBSCRIBERS: usize = 1_000;
/// Messages sent before measuring, to warm connections and caches.
const PUSH_WARMUP: usize = 3;
/// Measured messages.
const PUSH_MESSAGES: usize = 30;
/// Gap between posts, so each message's deliveries are measured on their own.
const PUSH_SPACING: Duration = Duration::from_millis(200);
/// How long after the last post the subscribers may take to receive everything.
const PUSH_GRACE: Duration = Duration::from_secs(15);

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The same-shaped insert herald's fanout performs, in its fastest plain form: set-based, one
/// statement, no pts counters (every row gets the constant `$1`). Valid on both backends.
const BARE_INSERT_SELECT: &str =
    "INSERT INTO inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
     SELECT user_id, $1, 1, conversation_id, 0, $2 FROM members WHERE conversation_id = $3";
/// Removes the bare rows again: those at or above `$1`, the bare pts base.
const BARE_DELETE: &str = "DELETE FROM inbox WHERE pts >= $1 AND user_id IN \
     (SELECT user_id FROM members WHERE conversation_id = $2)";

#[tokio::main]
async fn main() -> ExitCode {
    let mut report = Report {
        load_before: load_average(),
        ..Report::default()
    };
    if wanted("sqlite") {
        section(&mut report, "SQLite fanout", sqlite_fanout()).await;
    }
    if wanted("postgres") {
        section(&mut report, "PostgreSQL fanout", postgres_fanout()).await;
    }
    if wanted("push") {
        section(&mut report, "live push", push_latency()).await;
    }
    report.load_after = load_average();
    report.print();
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Whether `HERALD_BENCH_PARTS` (a comma-separated subset of `sqlite,postgres,push`; all when
/// unset) asks for this part, so one figure can be re-measured without the rest.
fn wanted(part: &str) -> bool {
    std::env::var("HERALD_BENCH_PARTS")
        .map_or(true, |parts| parts.split(',').any(|p| p.trim() == part))
}

/// The 1-minute load average, printed with the results: on a 2-core machine anything else
/// running (a compile) skews every figure, and the reader should know.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Runs one part of the bench; a failure is recorded and the other parts still run.
async fn section(
    report: &mut Report,
    name: &str,
    part: impl std::future::Future<Output = Result<Part>>,
) {
    progress(format!("{name}: starting"));
    match part.await {
        Ok(Part::Fanout(cells)) => report.fanout.extend(cells),
        Ok(Part::Push(figure)) => report.push = Some(figure),
        Ok(Part::Skipped(why)) => {
            println!("skipped: {why}");
            report.skipped.push(why);
        }
        Err(e) => {
            eprintln!("error in {name}: {e:#}");
            report.errors.push(format!("{name}: {e:#}"));
        }
    }
}

/// What one part of the bench produced.
enum Part {
    Fanout(Vec<FanoutCell>),
    Push(PushFigure),
    Skipped(String),
}

/// Progress goes to stderr, so stdout holds only the results.
fn progress(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

// ---------------------------------------------------------------------------------------------
// herald in process
// ---------------------------------------------------------------------------------------------

/// The defaults, with flow control opened wide: the bench measures the write path, and the
/// per-group rate limiter would otherwise (rightly) throttle a 10,000-member group.
fn bench_config() -> Config {
    let mut config = Config::defaults();
    config.limits.group_messages_per_minute = 1_000_000_000;
    config.limits.min_group_messages_per_minute = 1_000_000_000;
    config
}

/// A herald server running in this process, with an admin token for its default org.
struct Herald {
    store: Arc<dyn Store>,
    keys: Keys,
    org: OrgId,
    base: String,
    http: reqwest::Client,
    admin_token: String,
    shutdown: CancellationToken,
    server: JoinHandle<Result<()>>,
}

impl Herald {
    /// Opens the store named by `config` and serves it on an ephemeral local port.
    async fn start(config: Config) -> Result<Herald> {
        let (store, boot) = herald::open_store(&config)
            .await
            .context("opening the store")?;
        let org = store.find_org("default").await?;
        let admin = store.find_user(org.id, "admin").await?;
        let keys = Keys::new(&boot.signing_key, config.auth.token_ttl_seconds);
        let admin_token = keys.issue(&admin)?.token;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}/api/v1", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let (store, shutdown, key) = (store.clone(), shutdown.clone(), boot.signing_key);
            async move { herald::run(config, store, &key, listener, shutdown).await }
        });
        Ok(Herald {
            store,
            keys,
            org: org.id,
            base,
            http: local_client()?,
            admin_token,
            shutdown,
            server,
        })
    }

    /// POSTs JSON as the admin and returns the JSON answer; a non-2xx status is an error.
    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("POST {path}: {status}: {text}");
        }
        response
            .json()
            .await
            .with_context(|| format!("POST {path}: reading the answer"))
    }

    /// Creates `count` users through the batch API, at most 1,000 per call.
    async fn create_users(&self, count: usize) -> Result<Vec<UserId>> {
        let mut ids = Vec::with_capacity(count);
        for start in (0..count).step_by(1000) {
            let users: Vec<Value> = (start..count.min(start + 1000))
                .map(|i| json!({ "name": format!("bench-user-{i}") }))
                .collect();
            let answer = self
                .post("/users/batch", &json!({ "users": users }))
                .await?;
            let created = answer["users"]
                .as_array()
                .context("batch answer without users")?;
            for user in created {
                ids.push(UserId(id_of(&user["id"])?));
            }
        }
        Ok(ids)
    }

    /// Creates a group of the admin (as owner) and `members`.
    async fn create_group(&self, members: &[UserId]) -> Result<ConversationId> {
        let members: Vec<String> = members.iter().map(|u| u.to_string()).collect();
        let body = json!({ "title": "bench group", "members": members });
        let answer = self.post("/conversations", &body).await?;
        Ok(ConversationId(id_of(&answer["id"])?))
    }

    /// Posts one text message as the admin; returns once herald has durably queued it.
    async fn post_message(&self, conversation: ConversationId, text: &str) -> Result<()> {
        let body = json!({ "msgtype": "text", "text": { "content": text } });
        self.post(&format!("/conversations/{conversation}/messages"), &body)
            .await?;
        Ok(())
    }

    /// Waits until every queued task is fanned out, polling about every millisecond (the
    /// resolution of the throughput figures).
    async fn drain(&self) -> Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.store.pending_tasks().await? > 0 {
            ensure!(
                Instant::now() < deadline,
                "herald did not drain its queue within {DRAIN_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Creates a group of `size` members (the admin plus new users) and waits until its
    /// `conversation.created` event is written, so later timings start from an idle queue.
    async fn setup_group(&self, size: usize) -> Result<(ConversationId, Vec<UserId>)> {
        let users = self.create_users(size - 1).await?;
        let conversation = self.create_group(&users).await?;
        self.drain().await?;
        let members = self.store.member_count(conversation).await?;
        ensure!(
            members == size as i64,
            "the group has {members} members, expected {size}"
        );
        Ok((conversation, users))
    }

    /// Stops the server and its workers (they finish the task in hand) and waits for them.
    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(15), self.server).await {
            Ok(joined) => joined.context("the herald task panicked")?,
            Err(_) => bail!("herald did not shut down within 15 s"),
        }
    }
}

/// An HTTP client for the local server that ignores any proxy set in the environment.
fn local_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

/// herald's ids are decimal strings on the wire.
fn id_of(value: &Value) -> Result<i64> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("expected an id string, got {value}"))
}

// ---------------------------------------------------------------------------------------------
// A. fanout throughput
// ---------------------------------------------------------------------------------------------

/// One row of the fanout table: herald and the bare insert at one store and depth.
struct FanoutCell {
    store: &'static str,
    depth: &'static str,
    /// Inbox rows stored when the bare insert was measured.
    inbox_rows: i64,
    herald: HeraldFigure,
    bare: BareFigure,
}

impl FanoutCell {
    fn ratio(&self) -> f64 {
        self.herald.rows_per_s / self.bare.rows_per_s()
    }
}

/// herald's median sample (`MESSAGES_PER_SAMPLE` posts until the queue drained), per message
/// and as inbox rows committed per second.
struct HeraldFigure {
    per_message: Duration,
    rows_per_s: f64,
}

/// The median time of each bare insert form for one message's worth of rows.
struct BareFigure {
    rows: i64,
    forms: Vec<(&'static str, Duration)>,
}

impl BareFigure {
    /// The fastest form: the physical limit herald is compared with.
    fn best(&self) -> (&'static str, Duration) {
        self.forms
            .iter()
            .copied()
            .min_by_key(|(_, time)| *time)
            .unwrap_or(("none", Duration::MAX))
    }

    fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.best().1.as_secs_f64()
    }
}

/// Where the bare side writes: the same database herald uses.
enum BareDb {
    Sqlite {
        path: std::path::PathBuf,
        synchronous: Synchronous,
    },
    Postgres {
        url: String,
    },
}

async fn sqlite_fanout() -> Result<Part> {
    let dir = tempfile::tempdir()?;
    let mut config = bench_config();
    config.data_dir = dir.path().to_path_buf();
    let bare = BareDb::Sqlite {
        path: dir.path().join("herald.db"),
        synchronous: config.sqlite.synchronous,
    };
    Ok(Part::Fanout(fanout_cells("sqlite", config, &bare).await?))
}

/// Runs the PostgreSQL cells in a fresh database, which is dropped again whatever happens.
async fn postgres_fanout() -> Result<Part> {
    let admin_url = std::env::var("HERALD_BENCH_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
    let connect = PgConnection::connect(&admin_url);
    let mut admin = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Ok(Part::Skipped(format!("PostgreSQL not reachable ({e})"))),
        Err(_) => return Ok(Part::Skipped("PostgreSQL not reachable (timeout)".into())),
    };
    let name = format!("herald_bench_{:08x}", rand::random::<u32>());
    // Simple-protocol statements: CREATE/DROP DATABASE and VACUUM refuse to run in the
    // implicit transaction of a prepared statement.
    admin
        .execute(&*format!("CREATE DATABASE {name}"))
        .await
        .context("creating the bench database")?;
    let outcome = match with_database(&admin_url, &name) {
        Ok(url) => {
            let mut config = bench_config();
            config.database_url = url.clone();
            fanout_cells("postgres", config, &BareDb::Postgres { url }).await
        }
        Err(e) => Err(e),
    };
    let dropped = admin
        .execute(&*format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    admin.close().await.ok();
    let cells = outcome?;
    dropped.with_context(|| format!("dropping database {name}"))?;
    Ok(Part::Fanout(cells))
}

/// `url` with its database (the path) replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> Result<String> {
    let scheme_end = url.find("://").context("database URL without ://")? + 3;
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    Ok(format!("{}/{database}{query}", &head[..authority_end]))
}

/// Starts herald on `config`, measures the empty and the ~1M cells, and stops it.
async fn fanout_cells(
    store: &'static str,
    config: Config,
    bare: &BareDb,
) -> Result<Vec<FanoutCell>> {
    let herald = Herald::start(config).await?;
    let cells = measure_depths(store, &herald, bare).await;
    let stopped = herald.stop().await;
    let cells = cells?;
    stopped?;
    Ok(cells)
}

async fn measure_depths(
    store: &'static str,
    herald: &Herald,
    bare: &BareDb,
) -> Result<Vec<FanoutCell>> {
    progress(format!("{store}: creating a {GROUP_SIZE}-member group"));
    let (conversation, _) = herald.setup_group(GROUP_SIZE).await?;
    let empty = measure_cell(store, "empty", herald, bare, conversation).await?;
    grow_inbox(herald, bare, conversation).await?;
    let deep = measure_cell(store, "~1M", herald, bare, conversation).await?;
    Ok(vec![empty, deep])
}

/// herald first, then the bare insert while herald is idle, at the current depth.
async fn measure_cell(
    store: &'static str,
    depth: &'static str,
    herald: &Herald,
    bare: &BareDb,
    conversation: ConversationId,
) -> Result<FanoutCell> {
    progress(format!("{store}/{depth}: herald fanout"));
    let herald_figure = measure_herald(herald, conversation).await?;
    let inbox_rows = bare.count_inbox().await?;
    progress(format!(
        "{store}/{depth}: bare insert ({inbox_rows} inbox rows)"
    ));
    let bare_figure = bare.measure(conversation).await?;
    let cell = FanoutCell {
        store,
        depth,
        inbox_rows,
        herald: herald_figure,
        bare: bare_figure,
    };
    progress(format!(
        "{store}/{depth}: herald {:.0} rows/s, bare {:.0} rows/s ({:.0}%)",
        cell.herald.rows_per_s,
        cell.bare.rows_per_s(),
        cell.ratio() * 100.0
    ));
    Ok(cell)
}

/// Times `SAMPLES` bursts of `MESSAGES_PER_SAMPLE` posts, each from the first POST until
/// herald's queue is empty again, i.e. until every inbox row is committed.
async fn measure_herald(herald: &Herald, conversation: ConversationId) -> Result<HeraldFigure> {
    let mut times = Vec::with_capacity(SAMPLES);
    for sample in 0..SAMPLES {
        herald.drain().await?;
        let start = Instant::now();
        for message in 0..MESSAGES_PER_SAMPLE {
            let text = format!("fanout sample {sample} message {message}");
            herald.post_message(conversation, &text).await?;
        }
        herald.drain().await?;
        times.push(start.elapsed());
    }
    let sample = median(times);
    let rows = (MESSAGES_PER_SAMPLE * GROUP_SIZE) as f64;
    Ok(HeraldFigure {
        per_message: sample / MESSAGES_PER_SAMPLE as u32,
        rows_per_s: rows / sample.as_secs_f64(),
    })
}

/// Posts messages through herald until the inbox holds about `DEEP_INBOX_ROWS` rows. Going
/// through herald (rather than bulk filler) keeps every invariant herald relies on (pts
/// counters, message rows) and lays the rows out the way herald's own writes do.
async fn grow_inbox(herald: &Herald, bare: &BareDb, conversation: ConversationId) -> Result<()> {
    let rows = bare.count_inbox().await?;
    let needed = (DEEP_INBOX_ROWS - rows).max(0) as usize;
    let messages = needed.div_ceil(GROUP_SIZE);
    progress(format!(
        "growing the inbox from {rows} rows with {messages} messages"
    ));
    let start = Instant::now();
    for first in (0..messages).step_by(20) {
        for message in first..messages.min(first + 20) {
            herald
                .post_message(conversation, &format!("filler {message}"))
                .await?;
        }
        herald.drain().await?;
    }
    progress(format!("grown in {:.1} s", start.elapsed().as_secs_f64()));
    Ok(())
}

impl BareDb {
    async fn count_inbox(&self) -> Result<i64> {
        let sql = "SELECT COUNT(*) FROM inbox";
        Ok(match self {
            BareDb::Sqlite { path, synchronous } => {
                let mut conn = sqlite_connect(path, *synchronous).await?;
                let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
                conn.close().await?;
                count
            }
            BareDb::Postgres { url } => {
                let mut conn = PgConnection::connect(url).await?;
                let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
                conn.close().await?;
                count
            }
        })
    }

    /// The median time to commit one message's worth of inbox rows, per insert form.
    async fn measure(&self, conversation: ConversationId) -> Result<BareFigure> {
        match self {
            BareDb::Sqlite { path, synchronous } => {
                let mut conn = sqlite_connect(path, *synchronous).await?;
                let figure = sqlite_bare(&mut conn, conversation).await;
                conn.close().await?;
                figure
            }
            BareDb::Postgres { url } => {
                let mut conn = PgConnection::connect(url).await?;
                let figure = postgres_bare(&mut conn, conversation).await;
                conn.close().await?;
                figure
            }
        }
    }
}

/// A connection set up like herald's writer (WAL, the same `synchronous`, the same cache), so
/// the bare figure differs from herald's only in what herald does on top of the insert.
async fn sqlite_connect(path: &Path, synchronous: Synchronous) -> Result<SqliteConnection> {
    let synchronous = match synchronous {
        Synchronous::Full => SqliteSynchronous::Full,
        Synchronous::Normal => SqliteSynchronous::Normal,
    };
    Ok(SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-65536")
        .pragma("temp_store", "memory")
        .connect()
        .await?)
}

/// SQLite's bare limit, in two forms of the set-based INSERT … SELECT, each repetition one
/// autocommit transaction with its WAL fsync'd (so equally durable):
/// - as herald's writer runs, SQLite checkpointing the WAL into the database file inside
///   nearly every commit (the default `wal_autocheckpoint` of 1,000 pages);
/// - with the checkpoint deferred until after all repetitions and its time spread over them.
///   Durability does not need the checkpoint, and herald already skips some of them while its
///   readers pin the WAL, so this form is the floor.
async fn sqlite_bare(
    conn: &mut SqliteConnection,
    conversation: ConversationId,
) -> Result<BareFigure> {
    let rows = member_count(conn, conversation).await?;
    let each_commit = sqlite_checkpoint_each_commit(conn, conversation, rows).await?;
    let deferred = sqlite_checkpoint_deferred(conn, conversation, rows).await?;
    Ok(BareFigure {
        rows,
        forms: vec![
            ("INSERT…SELECT", each_commit),
            ("INSERT…SELECT, checkpoint deferred", deferred),
        ],
    })
}

/// The median repetition, each followed (untimed) by deleting its rows again.
async fn sqlite_checkpoint_each_commit(
    conn: &mut SqliteConnection,
    conversation: ConversationId,
    rows: i64,
) -> Result<Duration> {
    let mut times = Vec::with_capacity(BARE_REPS);
    for rep in 0..BARE_REPS as i64 {
        times.push(sqlite_insert_select(conn, conversation, BARE_PTS_BASE + rep, rows).await?);
        delete_bare_rows(&mut *conn, conversation).await?;
    }
    Ok(median(times))
}

/// The median repetition with automatic checkpoints off, plus one checkpoint of all of them
/// divided by the repetitions. The rows stay until the end so no delete adds to the WAL.
async fn sqlite_checkpoint_deferred(
    conn: &mut SqliteConnection,
    conversation: ConversationId,
    rows: i64,
) -> Result<Duration> {
    conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
    let mut times = Vec::with_capacity(BARE_REPS);
    for rep in 0..BARE_REPS as i64 {
        times.push(sqlite_insert_select(conn, conversation, BARE_PTS_BASE + rep, rows).await?);
    }
    let start = Instant::now();
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await?;
    let checkpoint = start.elapsed();
    delete_bare_rows(&mut *conn, conversation).await?;
    conn.execute("PRAGMA wal_autocheckpoint = 1000").await?;
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    Ok(median(times) + checkpoint / BARE_REPS as u32)
}

async fn sqlite_insert_select(
    conn: &mut SqliteConnection,
    conversation: ConversationId,
    pts: i64,
    rows: i64,
) -> Result<Duration> {
    let start = Instant::now();
    let inserted = sqlx::query(BARE_INSERT_SELECT)
        .bind(pts)
        .bind(herald::clock::now_ms())
        .bind(conversation.0)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let time = start.elapsed();
    ensure!(
        inserted as i64 == rows,
        "INSERT…SELECT wrote {inserted} rows, expected {rows}"
    );
    Ok(time)
}

/// Removes every bare row again (primary-key range seeks per member, no scan of the inbox),
/// so the depth herald sees next is its own.
async fn delete_bare_rows<'c, E>(conn: E, conversation: ConversationId) -> Result<()>
where
    E: Executor<'c>,
    i64: sqlx::Type<E::Database> + for<'q> sqlx::Encode<'q, E::Database>,
    for<'q> <E::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, E::Database>,
{
    sqlx::query(BARE_DELETE)
        .bind(BARE_PTS_BASE)
        .bind(conversation.0)
        .execute(conn)
        .await?;
    Ok(())
}

async fn member_count(conn: &mut SqliteConnection, conversation: ConversationId) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE conversation_id = $1")
            .bind(conversation.0)
            .fetch_one(conn)
            .await?,
    )
}

/// PostgreSQL's bare limit: INSERT … SELECT and binary COPY, alternating which goes first in
/// each repetition so drift on the noisy machine hits both alike. Each is one autocommit
/// transaction (commit and WAL flush included, as in herald).
async fn postgres_bare(
    conn: &mut PgConnection,
    conversation: ConversationId,
) -> Result<BareFigure> {
    let users: Vec<i64> = sqlx::query_scalar(
        "SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id",
    )
    .bind(conversation.0)
    .fetch_all(&mut *conn)
    .await?;
    let rows = users.len() as i64;
    let (mut insert_times, mut copy_times) = (Vec::new(), Vec::new());
    for rep in 0..BARE_REPS as i64 {
        let (insert_pts, copy_pts) = (BARE_PTS_BASE + 2 * rep, BARE_PTS_BASE + 2 * rep + 1);
        let copy = copy_binary(&users, copy_pts, conversation.0, herald::clock::now_ms());
        if rep % 2 == 0 {
            insert_times.push(pg_insert_select(conn, conversation, insert_pts, rows).await?);
            copy_times.push(pg_copy(conn, &copy, rows).await?);
        } else {
            copy_times.push(pg_copy(conn, &copy, rows).await?);
            insert_times.push(pg_insert_select(conn, conversation, insert_pts, rows).await?);
        }
        delete_bare_rows(&mut *conn, conversation).await?;
    }
    // The deletes leave dead tuples exactly where herald's next rows go; clean them up so the
    // next herald measurement sees the table as herald alone would have left it.
    conn.execute("VACUUM inbox").await?;
    Ok(BareFigure {
        rows,
        forms: vec![
            ("INSERT…SELECT", median(insert_times)),
            ("binary COPY", median(copy_times)),
        ],
    })
}

async fn pg_insert_select(
    conn: &mut PgConnection,
    conversation: ConversationId,
    pts: i64,
    rows: i64,
) -> Result<Duration> {
    let start = Instant::now();
    let inserted = sqlx::query(BARE_INSERT_SELECT)
        .bind(pts)
        .bind(herald::clock::now_ms())
        .bind(conversation.0)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let time = start.elapsed();
    ensure!(
        inserted as i64 == rows,
        "INSERT…SELECT wrote {inserted} rows, expected {rows}"
    );
    Ok(time)
}

async fn pg_copy(conn: &mut PgConnection, data: &[u8], rows: i64) -> Result<Duration> {
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw(
            "COPY inbox (user_id, pts, kind, conversation_id, ref_id, created_at) \
             FROM STDIN WITH (FORMAT binary)",
        )
        .await?;
    copy.send(data).await?;
    let copied = copy.finish().await?;
    let time = start.elapsed();
    ensure!(
        copied as i64 == rows,
        "COPY wrote {copied} rows, expected {rows}"
    );
    Ok(time)
}

/// PostgreSQL's binary COPY stream of one inbox row per user: signature, flags and header
/// extension length, then per tuple a field count and length-prefixed big-endian fields, then
/// the -1 trailer. Column types follow migrations/postgres (kind is INTEGER, the rest BIGINT).
fn copy_binary(users: &[i64], pts: i64, conversation: i64, now_ms: i64) -> Vec<u8> {
    const FIELDS: i16 = 6;
    let mut buf = Vec::with_capacity(19 + users.len() * 54 + 2);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
    let int8 = |buf: &mut Vec<u8>, v: i64| {
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&v.to_be_bytes());
    };
    for &user in users {
        buf.extend_from_slice(&FIELDS.to_be_bytes());
        int8(&mut buf, user);
        int8(&mut buf, pts);
        buf.extend_from_slice(&4i32.to_be_bytes());
        buf.extend_from_slice(&1i32.to_be_bytes());
        int8(&mut buf, conversation);
        int8(&mut buf, 0);
        int8(&mut buf, now_ms);
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

// ---------------------------------------------------------------------------------------------
// B. live push latency
// ---------------------------------------------------------------------------------------------

/// Latency from just before a POST to each subscriber's receipt of the event.
struct PushFigure {
    subscribers: usize,
    messages: usize,
    delivered: usize,
    pts_breaks: usize,
    connect: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Median over messages of the first subscriber's latency: the queue, fanout and one read.
    /// The gap to p50 is what waking and serving the other subscribers costs.
    first_p50: Duration,
}

/// What one subscriber saw.
#[derive(Default)]
struct Receipts {
    /// (message sequence number, arrival time since the shared origin).
    arrivals: Vec<(usize, Duration)>,
    /// Events whose pts (the SSE `id`) did not follow the previous one by exactly 1: a lost
    /// or repeated event, which herald's gap-free sync promises never to produce.
    pts_breaks: usize,
}

async fn push_latency() -> Result<Part> {
    let dir = tempfile::tempdir()?;
    let mut config = bench_config();
    config.data_dir = dir.path().to_path_buf();
    let herald = Herald::start(config).await?;
    let figure = measure_push(&herald).await;
    let stopped = herald.stop().await;
    let figure = figure?;
    stopped?;
    Ok(Part::Push(figure))
}

async fn measure_push(herald: &Herald) -> Result<PushFigure> {
    progress(format!(
        "push: creating {PUSH_SUBSCRIBERS} users and their group"
    ));
    let (conversation, users) = herald.setup_group(PUSH_SUBSCRIBERS + 1).await?;
    let tokens = mint_tokens(herald, &users).await?;
    let connect_start = Instant::now();
    let streams = open_streams(herald, &tokens).await?;
    let connect = connect_start.elapsed();
    progress(format!(
        "push: {} streams open in {:.0} ms",
        streams.len(),
        ms(connect)
    ));
    let origin = Instant::now();
    let delivered = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let subscribers: Vec<JoinHandle<Result<Receipts>>> = streams
        .into_iter()
        .map(|response| {
            let (delivered, stop) = (delivered.clone(), stop.clone());
            let expected = PUSH_WARMUP + PUSH_MESSAGES;
            tokio::spawn(receive(response, origin, expected, delivered, stop))
        })
        .collect();
    let sent = send_push_messages(herald, conversation, origin, &delivered).await;
    let everything = PUSH_SUBSCRIBERS * (PUSH_WARMUP + PUSH_MESSAGES);
    // Whatever has arrived by then is reported; `delivered / expected` shows any shortfall.
    wait_for_count(&delivered, everything, PUSH_GRACE).await;
    stop.cancel();
    let sent = sent?;
    let mut receipts = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        receipts.push(subscriber.await.context("a subscriber panicked")??);
    }
    push_figure(&receipts, &sent, connect)
}

/// Latencies of the measured messages (warm-up excluded), grouped by message.
fn latencies_by_message(receipts: &[Receipts], sent: &[Duration]) -> Vec<Vec<Duration>> {
    let mut by_message: Vec<Vec<Duration>> = (0..PUSH_MESSAGES)
        .map(|_| Vec::with_capacity(receipts.len()))
        .collect();
    for subscriber in receipts {
        for &(seq, at) in &subscriber.arrivals {
            if let (Some(i), Some(sent_at)) = (seq.checked_sub(PUSH_WARMUP), sent.get(seq)) {
                if let Some(latencies) = by_message.get_mut(i) {
                    latencies.push(at.saturating_sub(*sent_at));
                }
            }
        }
    }
    by_message
}

fn push_figure(receipts: &[Receipts], sent: &[Duration], connect: Duration) -> Result<PushFigure> {
    let by_message = latencies_by_message(receipts, sent);
    let firsts: Vec<Duration> = by_message
        .iter()
        .filter_map(|l| l.iter().min().copied())
        .collect();
    let mut all: Vec<Duration> = by_message.into_iter().flatten().collect();
    ensure!(!all.is_empty(), "no measured message was delivered");
    all.sort_unstable();
    Ok(PushFigure {
        subscribers: receipts.len(),
        messages: PUSH_MESSAGES,
        delivered: all.len(),
        pts_breaks: receipts.iter().map(|r| r.pts_breaks).sum(),
        connect,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        max: all[all.len() - 1],
        first_p50: median(firsts),
    })
}

/// Tokens minted with herald's own key, as `POST /users/{id}/tokens` would.
async fn mint_tokens(herald: &Herald, users: &[UserId]) -> Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(users.len());
    for &id in users {
        let user = herald.store.get_user(herald.org, id).await?;
        tokens.push(herald.keys.issue(&user)?.token);
    }
    Ok(tokens)
}

/// Opens one `GET /stream` per token, 64 handshakes at a time. Each live stream holds its own
/// HTTP/1.1 connection (a pooled client opens a new one whenever all are busy). When a
/// response arrives herald has already subscribed the stream, so no later event is missed.
async fn open_streams(herald: &Herald, tokens: &[String]) -> Result<Vec<reqwest::Response>> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(tokens.len())
        .build()?;
    let url = format!("{}/stream", herald.base);
    futures::stream::iter(tokens)
        .map(|token| {
            let request = client.get(&url).bearer_auth(token).send();
            async move {
                let response = request.await.context(
                    "opening an SSE stream (is `ulimit -n` high enough for 2 fds per stream?)",
                )?;
                let status = response.status();
                ensure!(status.is_success(), "GET /stream: {status}");
                Ok(response)
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await
}

/// Sends the warm-up messages (and waits until every subscriber has them), then the measured
/// ones on a fixed schedule. Returns each message's send instant, taken just before its POST.
async fn send_push_messages(
    herald: &Herald,
    conversation: ConversationId,
    origin: Instant,
    delivered: &AtomicUsize,
) -> Result<Vec<Duration>> {
    let mut sent = Vec::with_capacity(PUSH_WARMUP + PUSH_MESSAGES);
    for seq in 0..PUSH_WARMUP {
        sent.push(origin.elapsed());
        herald.post_message(conversation, &push_text(seq)).await?;
        tokio::time::sleep(PUSH_SPACING).await;
    }
    let warm = PUSH_SUBSCRIBERS * PUSH_WARMUP;
    ensure!(
        wait_for_count(delivered, warm, PUSH_GRACE).await,
        "warm-up: {} of {warm} deliveries arrived",
        delivered.load(Ordering::Relaxed)
    );
    let start = tokio::time::Instant::now();
    for i in 0..PUSH_MESSAGES {
        tokio::time::sleep_until(start + PUSH_SPACING * i as u32).await;
        let seq = PUSH_WARMUP + i;
        sent.push(origin.elapsed());
        herald.post_message(conversation, &push_text(seq)).await?;
    }
    Ok(sent)
}

/// The message text carries its sequence number, which the receivers parse back out.
fn push_text(seq: usize) -> String {
    format!("push seq={seq};")
}

/// The sequence number in an event's JSON, found by its marker (cheaper than parsing the JSON,
/// which would steal CPU from herald on this 2-core machine).
fn seq_of(data: &str) -> Option<usize> {
    let rest = &data[data.find("push seq=")? + "push seq=".len()..];
    rest[..rest.find(';')?].parse().ok()
}

/// True once `counter` reaches `target`; false if `timeout` passes first.
async fn wait_for_count(counter: &AtomicUsize, target: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Reads one SSE stream until it has `expected` messages or `stop` fires, noting when each
/// `message.created` arrived (taken as the chunk arrives, before any parsing).
async fn receive(
    response: reqwest::Response,
    origin: Instant,
    expected: usize,
    delivered: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> Result<Receipts> {
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    let mut frames = Vec::new();
    let mut receipts = Receipts::default();
    let mut last_pts: Option<i64> = None;
    while receipts.arrivals.len() < expected {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = stop.cancelled() => None,
        };
        let Some(chunk) = chunk else { break };
        let at = origin.elapsed();
        parser.push(&chunk.context("reading an SSE stream")?, &mut frames);
        for frame in frames.drain(..) {
            if frame.event.as_deref() != Some("message.created") {
                continue;
            }
            let pts = frame.id.as_deref().and_then(|id| id.parse::<i64>().ok());
            if last_pts.is_some_and(|last| pts != Some(last + 1)) {
                receipts.pts_breaks += 1;
            }
            last_pts = pts;
            if let Some(seq) = seq_of(&frame.data) {
                receipts.arrivals.push((seq, at));
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(receipts)
}

/// One Server-Sent Events frame.
#[derive(Default)]
struct SseFrame {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Splits an SSE byte stream into frames. Chunks may end anywhere, even inside a line, so a
/// partial line is carried over to the next chunk.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    frame: SseFrame,
    has_fields: bool,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<SseFrame>) {
        for &byte in chunk {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.end_line(&line, out);
            } else {
                self.line.push(byte);
            }
        }
    }

    /// A blank line ends a frame; `:` starts a comment (keep-alives); else `field: value`.
    fn end_line(&mut self, line: &[u8], out: &mut Vec<SseFrame>) {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if line.is_empty() {
            if std::mem::take(&mut self.has_fields) {
                out.push(std::mem::take(&mut self.frame));
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.frame.id = Some(value.to_string()),
            "event" => self.frame.event = Some(value.to_string()),
            "data" => {
                if !self.frame.data.is_empty() {
                    self.frame.data.push('\n');
                }
                self.frame.data.push_str(value);
            }
            _ => return,
        }
        self.has_fields = true;
    }
}

// ---------------------------------------------------------------------------------------------
// statistics and the report
// ---------------------------------------------------------------------------------------------

/// The median (upper median for an even count); zero for no samples.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Default)]
struct Report {
    load_before: Option<f64>,
    load_after: Option<f64>,
    fanout: Vec<FanoutCell>,
    push: Option<PushFigure>,
    skipped: Vec<String>,
    errors: Vec<String>,
}

impl Report {
    fn print(&self) {
        println!();
        let load = |l: Option<f64>| l.map_or("?".to_string(), |l| format!("{l:.2}"));
        println!(
            "1-min load average before / after: {} / {} (2 cores: above ~0.5 before, other work skews the figures)",
            load(self.load_before),
            load(self.load_after)
        );
        println!();
        if !self.fanout.is_empty() || !self.skipped.is_empty() {
            self.print_fanout_table();
            println!();
        }
        if self.push.is_some() {
            self.print_push_table();
            println!();
        }
        for cell in &self.fanout {
            println!("{}", fanout_json(cell));
        }
        if let Some(push) = &self.push {
            println!("{}", push_json(push));
        }
        for error in &self.errors {
            println!("error: {error}");
        }
    }

    fn print_fanout_table(&self) {
        println!(
            "## Fanout to a {GROUP_SIZE}-member group: herald vs a bare insert of the same rows \
             (medians; herald: {SAMPLES} samples of {MESSAGES_PER_SAMPLE} messages, bare: {BARE_REPS} reps)"
        );
        let config = bench_config();
        println!(
            "herald: default config but rate limits lifted (fanout.chunk_size {}, fanout.parallel_chunks {}, \
             fanout.lanes {}, sqlite.synchronous {:?})",
            config.fanout.chunk_size,
            config.fanout.parallel_chunks,
            config.fanout.lanes,
            config.sqlite.synchronous
        );
        println!();
        println!("| store | depth | inbox rows | herald rows/s | herald ms/message | bare rows/s | bare ms/10k rows | bare form | herald/bare |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
        for cell in &self.fanout {
            let (form, time) = cell.bare.best();
            println!(
                "| {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.1} | {} | {:.0}% |",
                cell.store,
                cell.depth,
                cell.inbox_rows,
                cell.herald.rows_per_s,
                ms(cell.herald.per_message),
                cell.bare.rows_per_s(),
                ms(time),
                form,
                cell.ratio() * 100.0
            );
        }
        for why in &self.skipped {
            println!("| postgres | – | – | – | – | – | – | skipped: {why} | – |");
        }
    }

    fn print_push_table(&self) {
        println!("## Live push: POST to SSE arrival, one group, SQLite");
        println!();
        println!("| subscribers | messages | delivered / expected | pts breaks | first-arrival p50 ms | p50 ms | p99 ms | max ms | connect all ms |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        if let Some(p) = &self.push {
            println!(
                "| {} | {} | {} / {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
                p.subscribers,
                p.messages,
                p.delivered,
                p.subscribers * p.messages,
                p.pts_breaks,
                ms(p.first_p50),
                ms(p.p50),
                ms(p.p99),
                ms(p.max),
                ms(p.connect)
            );
        }
    }
}

fn fanout_json(cell: &FanoutCell) -> Value {
    let (form, time) = cell.bare.best();
    let forms: serde_json::Map<String, Value> = cell
        .bare
        .forms
        .iter()
        .map(|(name, time)| (name.to_string(), json!(ms(*time))))
        .collect();
    json!({
        "figure": "fanout",
        "store": cell.store,
        "depth": cell.depth,
        "inbox_rows": cell.inbox_rows,
        "group_members": GROUP_SIZE,
        "herald_rows_per_s": cell.herald.rows_per_s.round(),
        "herald_ms_per_message": ms(cell.herald.per_message),
        "bare_rows_per_s": cell.bare.rows_per_s().round(),
        "bare_ms": ms(time),
        "bare_form": form,
        "bare_forms_ms": forms,
        "ratio": cell.ratio(),
    })
}

fn push_json(p: &PushFigure) -> Value {
    json!({
        "figure": "push_latency",
        "store": "sqlite",
        "transport": "sse",
        "subscribers": p.subscribers,
        "messages": p.messages,
        "delivered": p.delivered,
        "expected": p.subscribers * p.messages,
        "pts_breaks": p.pts_breaks,
        "first_arrival_p50_ms": ms(p.first_p50),
        "p50_ms": ms(p.p50),
        "p99_ms": ms(p.p99),
        "max_ms": ms(p.max),
        "connect_ms": ms(p.connect),
    })
}
