//! herald: a chatbot integration gateway. Webhooks and API calls become group messages that
//! are fanned out to every member's inbox and pushed to live connections.
//!
//! The data path, one module per stage:
//!
//! 1. **ingress** (`api`): HTTP handlers. Authenticate (`auth`), check the schema, size and
//!    membership, apply per-group flow control (`ratelimit`), then
//! 2. **queue** (`queue`): commit a task row to the durable queue and answer at once.
//! 3. **fanout** (`fanout`): lane workers claim tasks in order per conversation and write one
//!    inbox row per member, each with the member's next pts, in the same transaction.
//! 4. **hub** (`hub`): after each commit, wake the members' live connections (on PostgreSQL,
//!    other herald processes hear the commit through NOTIFY and wake theirs).
//! 5. **sync** (`sync`): `/sync`, SSE and WebSocket read the inbox after the client's cursor,
//!    so a reconnect with the last pts gets exactly what it missed.
//!
//! Alerts (`alerts`) hang off ingress: an alert robot's event opens or updates an incident;
//! a durable timer escalates it to DINGs, which reach their recipients through fanout.
//!
//! Outgoing bots (`outgoing`) hang off fanout: the transaction that writes an event also
//! queues a delivery for every bot that hears it; `outgoing::worker` signs and sends them,
//! or, for a bot that runs a `herald:bot` plugin, `outgoing::plugin_bot` calls the plugin.
//!
//! Robots of kind `plugin` run a user's WebAssembly component (`plugin`) in place of a
//! built-in adapter: ingress → verify → plugin → the same filter, grouping and post path.
//!
//! Storage (`store`) is one trait with a SQLite and a PostgreSQL implementation.

// `deny`, not `forbid`: loading a cached compiled plugin is the one unsafe call
// (`plugin::cache::deserialize`, which says why it is sound).
#![deny(unsafe_code)]

pub mod adapt;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod fanout;
pub mod filter;
pub mod hub;
pub mod ids;
pub mod ingress;
pub mod model;
pub mod outgoing;
pub mod plugin;
pub mod queue;
pub mod ratelimit;
pub mod render;
pub mod robot;
pub mod store;
pub mod sync;
pub mod verify;

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::Store;

/// Everything a handler or worker needs, shared by reference.
pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub hub: Arc<hub::Hub>,
    pub lanes: Arc<queue::Lanes>,
    pub keys: auth::Keys,
    pub ids: ids::IdGenerator,
    pub limiter: ratelimit::GroupLimiter,
    /// Outgoing bots: the guarded callback client, wake-ups and per-bot slots.
    pub outgoing: Arc<outgoing::Outgoing>,
    pub robot_limiter: ratelimit::RobotLimiter,
    /// What each robot's sender delivered: posted and skipped events.
    pub robot_stats: ingress::stats::Counters,
    pub known_robots: ingress::known::KnownRobots,
    pub known_conversations: ingress::known::KnownConversations,
    /// Wakes the burst flusher when a burst starts.
    pub burst_bell: tokio::sync::Notify,
    /// Alerts: escalation and provider wake-ups, the card-button key.
    pub alerts: alerts::Alerts,
    /// WASM plugins: the sandbox, compiled plugins and their failure counters.
    pub plugins: plugin::Plugins,
    /// Cancelled on shutdown: live streams end so the server can drain.
    pub shutdown: CancellationToken,
}

/// The axum state: a cheap handle to `Shared`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        signing_key: &[u8],
        shutdown: CancellationToken,
    ) -> AppState {
        AppState(Arc::new(Shared {
            keys: auth::Keys::new(signing_key, config.auth.token_ttl_seconds),
            lanes: queue::Lanes::new(config.fanout.lanes),
            limiter: ratelimit::GroupLimiter::new(config.limits.clone()),
            // The allowlist was validated at config load; building a rustls client does not
            // fail short of a broken build.
            outgoing: Arc::new(
                outgoing::Outgoing::new(&config.outgoing, signing_key)
                    .expect("outgoing client from a validated config"),
            ),
            robot_limiter: ratelimit::RobotLimiter::default(),
            alerts: alerts::Alerts::new(signing_key),
            robot_stats: ingress::stats::Counters::default(),
            known_robots: ingress::known::KnownRobots::default(),
            known_conversations: ingress::known::KnownConversations::default(),
            burst_bell: tokio::sync::Notify::new(),
            plugins: plugin::Plugins::new(
                config.plugins.clone(),
                config.plugins.cache_dir(&config.data_dir),
            ),
            hub: Arc::new(hub::Hub::default()),
            ids: ids::IdGenerator::new(),
            store,
            config,
            shutdown,
        }))
    }
}

/// Opens the store named by the config, creating the default org on first start.
pub async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, store::Bootstrap)> {
    let store = store::open(config).await?;
    let boot = store.bootstrap().await?;
    Ok((store, boot))
}

/// Serves the API on `listener` and runs the fanout workers until `shutdown` is cancelled,
/// then drains: the HTTP server stops accepting, workers finish the task in hand.
/// `main` and the benchmarks both call this.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    signing_key: &[u8],
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut config = config;
    // With port 0 the real port is known only now; webhook URLs are built from it.
    config.listen = listener.local_addr()?;
    let app = AppState::new(config, store, signing_key, shutdown.clone());
    let workers: Vec<_> = (0..app.lanes.count())
        .map(|lane| tokio::spawn(queue::worker_loop(app.clone(), lane, shutdown.clone())))
        .collect();
    app.outgoing.set_listen_addr(listener.local_addr()?);
    let mut workers = workers;
    workers.extend(outgoing::worker::spawn(app.clone(), shutdown.clone()));
    if let Some(changes) = app.store.watch_inbox().await? {
        workers.push(tokio::spawn(sync::relay_peer_writes(app.clone(), changes)));
    }
    workers.push(tokio::spawn(ingress::stats::flush_loop(
        app.clone(),
        shutdown.clone(),
    )));
    workers.push(tokio::spawn(ingress::burst::flush_loop(
        app.clone(),
        shutdown.clone(),
    )));
    workers.extend(alerts::spawn(app.clone(), shutdown.clone()));
    let router = api::router(app.clone());
    let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    for worker in workers {
        let _ = worker.await;
    }
    Ok(())
}
