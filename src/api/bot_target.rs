//! What a bot answers through: a callback URL (checked against the SSRF guard) or a
//! `herald:bot` plugin of the bot's own org. Exactly one of the two, fixed at creation: a bot
//! changes its URL or its plugin (a new version), never from one kind to the other.

use std::collections::BTreeMap;

use crate::error::ApiError;
use crate::ids::{OrgId, PluginId};
use crate::outgoing::ssrf;
use crate::plugin::BOT_WORLDS;
use crate::store::{Bot, StoreError};
use crate::AppState;

/// The most config a plugin bot carries (as for plugin robots).
const MAX_CONFIG_KEYS: usize = 64;
const MAX_CONFIG_BYTES: usize = 16 * 1024;

/// A checked target.
pub(crate) enum Target {
    Url(String),
    Plugin(PluginId),
}

impl Target {
    /// As stored: the URL (empty for a plugin) and the plugin.
    pub(crate) fn into_parts(self) -> (String, Option<PluginId>) {
        match self {
            Target::Url(url) => (url, None),
            Target::Plugin(id) => (String::new(), Some(id)),
        }
    }
}

/// The target of a new bot.
pub(crate) async fn check(
    app: &AppState,
    org: OrgId,
    callback_url: Option<&str>,
    plugin_id: Option<&str>,
) -> Result<Target, ApiError> {
    match (callback_url, plugin_id) {
        (Some(url), None) => Ok(Target::Url(check_callback(app, url).await?)),
        (None, Some(id)) => Ok(Target::Plugin(check_plugin(app, org, id).await?)),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "a bot has a callback_url or a plugin_id, not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "a bot needs a callback_url (an HTTP bot) or a plugin_id (a bot plugin, see \
             GET /api/v1/plugins)",
        )),
    }
}

/// A bot's new URL or plugin, each only for its own kind; a config only for a plugin bot.
pub(crate) async fn check_change(
    app: &AppState,
    bot: &Bot,
    callback_url: Option<&str>,
    plugin_id: Option<&str>,
    config: Option<&BTreeMap<String, String>>,
) -> Result<(Option<String>, Option<PluginId>), ApiError> {
    let runs_plugin = bot.plugin_id.is_some();
    if runs_plugin && callback_url.is_some() {
        return Err(ApiError::bad_request(
            "this bot runs a plugin: change its plugin_id, or create an HTTP bot",
        ));
    }
    if !runs_plugin && (plugin_id.is_some() || config.is_some()) {
        return Err(ApiError::bad_request(
            "this bot calls a URL: plugin_id and config apply to plugin bots only",
        ));
    }
    if let Some(config) = config {
        check_config_size(config)?;
    }
    let url = match callback_url {
        Some(url) => Some(check_callback(app, url).await?),
        None => None,
    };
    let plugin = match plugin_id {
        Some(id) => Some(check_plugin(app, bot.org_id, id).await?),
        None => None,
    };
    Ok((url, plugin))
}

/// A config is for a plugin bot, within the limits.
pub(crate) fn check_config(
    config: &BTreeMap<String, String>,
    runs_plugin: bool,
) -> Result<(), ApiError> {
    if !runs_plugin && !config.is_empty() {
        return Err(ApiError::bad_request(
            "config applies to plugin bots only (an HTTP bot keeps its settings itself)",
        ));
    }
    check_config_size(config)
}

fn check_config_size(config: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bytes: usize = config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if config.len() > MAX_CONFIG_KEYS || bytes > MAX_CONFIG_BYTES {
        return Err(ApiError::bad_request(format!(
            "config holds at most {MAX_CONFIG_KEYS} keys and 16 KiB in all"
        )));
    }
    Ok(())
}

async fn check_callback(app: &AppState, url: &str) -> Result<String, ApiError> {
    ssrf::check_url(url, &app.outgoing.allow)
        .await
        .map_err(|e| ApiError::bad_request(format!("callback_url refused: {e:#}")))?;
    Ok(url.to_string())
}

/// One of the org's plugins, and a bot one: another org's id is as unknown as a made-up one.
async fn check_plugin(app: &AppState, org: OrgId, id: &str) -> Result<PluginId, ApiError> {
    let missing = || ApiError::bad_request(format!("plugin_id {id:?} names no plugin of this org"));
    let plugin: PluginId = id.parse().map_err(|_| missing())?;
    let record = match app.store.get_plugin(org, plugin).await {
        Ok(record) => record,
        Err(StoreError::NotFound(_)) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    if !BOT_WORLDS.contains(&record.world.as_str()) {
        return Err(ApiError::bad_request(format!(
            "plugin {id} implements {}; a bot needs a {} plugin",
            record.world,
            BOT_WORLDS.join(" or ")
        )));
    }
    Ok(plugin)
}
