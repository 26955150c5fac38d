//! `herald plugin check|run`: the author's loop without a server. The same runtime, limits and
//! world checks as the server; nothing is cached on disk unless the config file names a
//! `plugins.cache_dir` (an interpreted guest takes seconds to compile, C milliseconds).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};

use super::{bot, bot_v0_1, Compiled, HostState, PluginRequest, Runtime};
use crate::config::PluginsConfig;

/// Validates a component file; its world, sha256 and size as JSON.
pub fn check(settings: &PluginsConfig, file: &Path) -> anyhow::Result<serde_json::Value> {
    let runtime = Runtime::new(settings, cache_dir(settings))?;
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let compiled = runtime.compile(&wasm)?;
    Ok(serde_json::json!({
        "world": compiled.world,
        "sha256": compiled.sha256,
        "size": compiled.size,
        "wasi": compiled.wasi,
    }))
}

/// The compiled-component cache, only when the config sets one explicitly.
fn cache_dir(settings: &PluginsConfig) -> Option<std::path::PathBuf> {
    (!settings.cache_dir.as_os_str().is_empty()).then(|| settings.cache_dir.clone())
}

/// What `plugin run` was given.
pub struct RunArgs<'a> {
    pub file: &'a Path,
    pub request: &'a Path,
    pub headers: Option<&'a Path>,
    /// `key=value` pairs, as the robot's config.
    pub config: &'a [String],
}

/// Runs a component on a fixture, as `POST /hooks/plugin/{token}` would (an adapter), or as
/// the delivery of one conversation event would (a bot: the fixture is the callback body).
pub fn run(settings: &PluginsConfig, args: &RunArgs<'_>) -> anyhow::Result<serde_json::Value> {
    let runtime = Runtime::new(settings, cache_dir(settings))?;
    let wasm =
        std::fs::read(args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let compiled = runtime.compile(&wasm)?;
    let body = std::fs::read(args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    if compiled.guest.is_bot() {
        return run_bot(&runtime, &compiled, args, &body);
    }
    let request = PluginRequest {
        method: "POST".into(),
        path: "/hooks/plugin/cli".into(),
        query: Vec::new(),
        headers: headers(args.headers)?,
        body: body.into(),
    };
    let mut state = HostState::new(args.file.display().to_string(), config(args.config)?);
    state.guest_stderr = true;
    Ok(serde_json::to_value(
        runtime.call(&compiled, state, &request)?,
    )?)
}

/// A bot's replies to the event in `body`, as `{"messages": [DingTalk-format message…]}`.
fn run_bot(
    runtime: &Runtime,
    compiled: &Compiled,
    args: &RunArgs<'_>,
    body: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let payload = std::str::from_utf8(body)
        .with_context(|| format!("{}: the event must be UTF-8 JSON", args.request.display()))?;
    bot_v0_1::event(payload).map_err(|e| anyhow::anyhow!("{}: {e}", args.request.display()))?;
    let mut state = HostState::new(args.file.display().to_string(), config(args.config)?);
    state.guest_stderr = true;
    let messages = bot::call(runtime, compiled, state, payload)?;
    Ok(serde_json::json!({ "messages": messages }))
}

/// The headers file (an object of name → value), names lower-cased; JSON content by default.
fn headers(file: Option<&Path>) -> anyhow::Result<Vec<(String, String)>> {
    let mut headers: Vec<(String, String)> = match file {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let map: BTreeMap<String, String> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: expected an object of header name → string value",
                    path.display()
                )
            })?;
            map.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect()
        }
    };
    if !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    Ok(headers)
}

fn config(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--config takes key=value, got {pair:?}"),
        })
        .collect()
}
