//! Configuration: embedded defaults, then an optional TOML file, then flags and `HERALD_*`
//! variables. Validated once at load so the rest of herald can trust every value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The commented defaults; `README.md` documents the same keys.
pub const DEFAULTS: &str = include_str!("config.default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// The base URL senders use to reach herald (webhook URLs are built from it).
    pub public_url: String,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub fanout: FanoutConfig,
    pub limits: LimitsConfig,
    pub stream: StreamConfig,
    pub sqlite: SqliteConfig,
    pub postgres: PostgresConfig,
    pub outgoing: OutgoingConfig,
    pub plugins: PluginsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub token_ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutConfig {
    pub lanes: u32,
    pub chunk_size: u32,
    pub parallel_chunks: u32,
    pub min_parallel_chunk: u32,
    pub direct_max_members: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub group_messages_per_minute: u32,
    pub tighten_above_members: u32,
    pub min_group_messages_per_minute: u32,
    pub max_group_members: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub max_lag_events: i64,
    pub keepalive_seconds: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    pub synchronous: Synchronous,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub max_connections: u32,
}

/// Outgoing bots: delivery of signed callbacks (see `outgoing`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutgoingConfig {
    /// CIDRs a callback URL may resolve to although they are loopback/private/…
    pub allow_cidrs: Vec<String>,
    pub timeout_ms: u64,
    pub concurrency_per_bot: u32,
    /// Delays between attempts; after the last one the event is marked failed.
    pub retry_schedule_seconds: Vec<f64>,
    pub disable_after_seconds: u64,
    pub session_webhook_ttl_seconds: u64,
    pub secret_rotation_overlap_seconds: u64,
    /// Base URL bots use for `sessionWebhook`; empty: `http://<the listening address>`.
    pub public_url: String,
}

/// WASM plugins (see `plugin`): the sandbox's bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Wall-clock budget of one plugin call.
    pub deadline_ms: u64,
    /// Linear memory one plugin instance may use.
    pub memory_mib: u64,
    /// Largest component accepted by `POST /api/v1/plugins`.
    pub max_upload_bytes: usize,
    /// Plugin calls running at once; more wait for a slot.
    pub max_concurrent_calls: u32,
    /// Compiled components; empty: `<data_dir>/plugin-cache`.
    pub cache_dir: PathBuf,
}

impl PluginsConfig {
    /// Where compiled components are cached.
    pub fn cache_dir(&self, data_dir: &Path) -> PathBuf {
        if self.cache_dir.as_os_str().is_empty() {
            data_dir.join("plugin-cache")
        } else {
            self.cache_dir.clone()
        }
    }
}

/// Values given on the command line or in `HERALD_*` variables; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    /// `HERALD_OUTGOING_ALLOW_CIDRS`, comma-separated.
    pub outgoing_allow_cidrs: Option<String>,
}

impl Config {
    /// Loads defaults, then `file` (if any), then `overrides`, and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut merged: toml::Table = toml::from_str(DEFAULTS).context("embedded defaults")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            merge(&mut merged, table);
        }
        let mut config: Config = toml::Value::Table(merged)
            .try_into()
            .context("invalid configuration")?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &overrides.database_url {
            config.database_url = url.clone();
        }
        if let Some(cidrs) = &overrides.outgoing_allow_cidrs {
            config.outgoing.allow_cidrs = cidrs
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect();
        }
        config.validate()?;
        Ok(config)
    }

    /// Whether the store takes concurrent write transactions (PostgreSQL), so a large fanout's
    /// chunks can be written at the same time; the embedded SQLite store has one writer.
    pub fn parallel_writes(&self) -> bool {
        !self.database_url.is_empty()
    }

    /// The defaults alone, for tests and benchmarks that tweak a field or two.
    pub fn defaults() -> Config {
        Config::load(None, &Overrides::default()).expect("embedded defaults are valid")
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(self.database_url.is_empty()
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            bail!("database_url must be empty (embedded SQLite) or a postgres:// URL");
        }
        if self.fanout.lanes == 0 || self.fanout.lanes > 64 {
            bail!("fanout.lanes must be between 1 and 64");
        }
        if self.fanout.chunk_size < 100 {
            bail!("fanout.chunk_size must be at least 100");
        }
        if self.fanout.parallel_chunks == 0 {
            bail!("fanout.parallel_chunks must be at least 1");
        }
        if self.fanout.direct_max_members > self.fanout.chunk_size {
            bail!("fanout.direct_max_members must not exceed fanout.chunk_size");
        }
        if self.fanout.min_parallel_chunk < 100 {
            bail!("fanout.min_parallel_chunk must be at least 100");
        }
        if self.limits.min_group_messages_per_minute == 0 {
            bail!("limits.min_group_messages_per_minute must be at least 1");
        }
        if self.http.max_message_bytes > self.http.max_body_bytes {
            bail!("http.max_message_bytes cannot exceed http.max_body_bytes");
        }
        if self.stream.max_lag_events < 1 {
            bail!("stream.max_lag_events must be positive");
        }
        self.validate_outgoing()?;
        let p = &self.plugins;
        if p.deadline_ms == 0 || p.deadline_ms > 60_000 {
            bail!("plugins.deadline_ms must be between 1 and 60000");
        }
        if p.memory_mib == 0 || p.memory_mib > 4095 {
            bail!("plugins.memory_mib must be between 1 and 4095");
        }
        if p.max_concurrent_calls == 0 || p.max_concurrent_calls > 10_000 {
            bail!("plugins.max_concurrent_calls must be between 1 and 10000");
        }
        Ok(())
    }

    fn validate_outgoing(&self) -> anyhow::Result<()> {
        let o = &self.outgoing;
        for cidr in &o.allow_cidrs {
            crate::outgoing::ssrf::Cidr::parse(cidr)
                .with_context(|| format!("outgoing.allow_cidrs: {cidr:?}"))?;
        }
        if o.timeout_ms == 0 || o.concurrency_per_bot == 0 {
            bail!("outgoing.timeout_ms and outgoing.concurrency_per_bot must be positive");
        }
        if o.retry_schedule_seconds
            .iter()
            .any(|s| s.is_nan() || *s < 0.0)
        {
            bail!("outgoing.retry_schedule_seconds must be non-negative numbers");
        }
        Ok(())
    }

    /// `public_url` without a trailing slash, or the listen address when unset.
    pub fn public_base_url(&self) -> String {
        if self.public_url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.public_url.trim_end_matches('/').to_string()
        }
    }

    /// True when the store is PostgreSQL rather than the embedded SQLite file.
    pub fn uses_postgres(&self) -> bool {
        !self.database_url.is_empty()
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(!c.uses_postgres());
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        std::fs::write(&path, "[fanout]\nlanes = 2\n").unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c.fanout.lanes, 2);
        assert_eq!(c.fanout.chunk_size, 10000);
        std::fs::write(&path, "[fanout]\nlanez = 2\n").unwrap();
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
    }

    #[test]
    fn outgoing_allowlist_comes_from_the_environment_and_is_validated() {
        let overrides = Overrides {
            outgoing_allow_cidrs: Some("127.0.0.1/32, 10.0.0.0/8,".into()),
            ..Overrides::default()
        };
        let c = Config::load(None, &overrides).unwrap();
        assert_eq!(c.outgoing.allow_cidrs, ["127.0.0.1/32", "10.0.0.0/8"]);
        assert!(Config::defaults().outgoing.allow_cidrs.is_empty());
        let bad = Overrides {
            outgoing_allow_cidrs: Some("10.0.0.0/99".into()),
            ..Overrides::default()
        };
        assert!(Config::load(None, &bad).is_err());
    }
}
