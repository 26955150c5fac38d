//! Outgoing bots: conversation events delivered to a bot's URL over signed callbacks, and the
//! bot's replies posted back through the core pipeline. The stages, in data-flow order:
//!
//! 1. **triggers** (`triggers`): inside the fanout transaction, the store's hook decides which
//!    installed bots hear the event and queues one delivery row per bot (`payload` builds
//!    the body), so an event is queued exactly once and only if it was written.
//! 2. **worker** (`worker`): `dispatch_loop` leases due deliveries (per bot and conversation
//!    only the oldest, so order holds), runs each under its bot's own concurrency limit, and
//!    `record_loop` writes the attempts back in batches, scheduling retries.
//! 3. **deliver** (`deliver`): one signed attempt (`sign`) through the SSRF guard (`ssrf`);
//!    for a bot that runs a plugin, `plugin_bot` calls its `on-event` instead.
//! 4. **reply** (`reply`): a 2xx body or a sessionWebhook POST becomes a message from the bot.
//!
//! Nothing here writes inboxes: replies and notices go through `store.enqueue_message`.

pub mod deliver;
pub mod payload;
pub mod plugin_bot;
pub mod reply;
pub mod sign;
pub mod ssrf;
pub mod triggers;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::config::OutgoingConfig;
use crate::ids::{BotId, ConversationId};
use crate::store::{parse_chatbot_user_id, Bot, Store, StoreError};

/// How long the worker trusts its cached copy of a bot (API changes also clear it).
const BOT_CACHE_TTL: Duration = Duration::from_secs(2);

/// The outgoing side's shared state: the guarded HTTP client, wake-ups and per-bot slots.
pub struct Outgoing {
    pub config: OutgoingConfig,
    pub client: reqwest::Client,
    pub allow: Arc<Vec<ssrf::Cidr>>,
    session_key: Vec<u8>,
    base_url: OnceLock<String>,
    /// Rung when deliveries may have become claimable.
    pub wake: Notify,
    slots: Mutex<HashMap<BotId, Arc<Semaphore>>>,
    bots: Mutex<HashMap<BotId, (Instant, Arc<Bot>)>>,
}

impl Outgoing {
    /// Builds the callback client: no redirects, the SSRF-guarded resolver, per-attempt timeout.
    pub fn new(config: &OutgoingConfig, signing_key: &[u8]) -> anyhow::Result<Outgoing> {
        let allow: Vec<ssrf::Cidr> = config
            .allow_cidrs
            .iter()
            .map(|c| ssrf::Cidr::parse(c))
            .collect::<anyhow::Result<_>>()?;
        let allow = Arc::new(allow);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(ssrf::GuardedResolver {
                allow: allow.clone(),
            }))
            .timeout(Duration::from_millis(config.timeout_ms))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Outgoing {
            config: config.clone(),
            client,
            allow,
            session_key: sign::derive_key(signing_key, b"herald session webhook"),
            base_url: OnceLock::new(),
            wake: Notify::new(),
            slots: Mutex::default(),
            bots: Mutex::default(),
        })
    }

    /// Sets the base URL of sessionWebhooks once the listening address is known.
    pub fn set_listen_addr(&self, addr: std::net::SocketAddr) {
        let url = if self.config.public_url.is_empty() {
            format!("http://{addr}")
        } else {
            self.config.public_url.trim_end_matches('/').to_string()
        };
        let _ = self.base_url.set(url);
    }

    pub fn base_url(&self) -> &str {
        self.base_url.get().map_or("http://127.0.0.1:8080", |s| s)
    }

    /// The bot's own concurrency slots.
    fn slots(&self, bot: BotId) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(bot)
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.concurrency_per_bot as usize)))
            .clone()
    }

    /// Bots with no free slot, which the next claim skips.
    fn saturated(&self) -> Vec<BotId> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|(_, s)| s.available_permits() == 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The bot, from a short-lived cache.
    pub async fn bot(&self, store: &dyn Store, id: BotId) -> Result<Option<Arc<Bot>>, StoreError> {
        {
            let cache = self.bots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, bot)) = cache.get(&id) {
                if at.elapsed() < BOT_CACHE_TTL {
                    return Ok(Some(bot.clone()));
                }
            }
        }
        let Some(bot) = store.bot_by_id(id).await? else {
            return Ok(None);
        };
        let bot = Arc::new(bot);
        let mut cache = self.bots.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(id, (Instant::now(), bot.clone()));
        Ok(Some(bot))
    }

    /// Drops the cached bot after an API change.
    pub fn forget(&self, id: BotId) {
        let mut cache = self.bots.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(&id);
    }
}

/// The `atUserIds` entries that name bots installed in the conversation: they survive
/// mention resolution although bots are not members.
pub async fn mentioned_bots(
    store: &dyn Store,
    conversation: ConversationId,
    at_user_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let named: Vec<BotId> = at_user_ids
        .iter()
        .filter_map(|s| parse_chatbot_user_id(s))
        .collect();
    if named.is_empty() {
        return Ok(Vec::new());
    }
    let installed = store.bots_in(conversation).await?;
    Ok(named
        .into_iter()
        .filter(|b| installed.contains(b))
        .map(crate::store::chatbot_user_id)
        .collect())
}
