//! Render: rendering is data, not code. Each built-in source has `bots/<source>/manifest.toml`
//! (the events it handles, each with a title, a MiniJinja template file and buttons) and its
//! templates; both are compiled into the binary. A robot can override any event's text.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use include_dir::{include_dir, Dir};
use minijinja::Environment;
use serde::Deserialize;

use crate::adapt::Normalized;
use crate::model::{ActionButton, ActionCard, Content, Markdown};

static BOTS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/bots");

/// One source's manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub source: String,
    #[serde(default)]
    pub description: String,
    /// Fields a card update takes from the card's earlier events when the later event lacks
    /// them (PagerDuty's acknowledge carries no summary).
    #[serde(default)]
    pub keep_on_update: Vec<String>,
    pub events: BTreeMap<String, EventSpec>,
}

/// How one event renders.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// MiniJinja, one line: the card's title.
    pub title: String,
    /// The template file (in the source's folder) of the message text.
    pub template: String,
    /// Buttons; with any, the message is an actionCard, else markdown.
    #[serde(default)]
    pub buttons: Vec<ButtonSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonSpec {
    /// MiniJinja, like the card title; a button whose title renders empty is left out.
    pub title: String,
    /// MiniJinja; a button whose URL renders empty is left out.
    pub url: String,
}

struct Catalog {
    env: Environment<'static>,
    manifests: BTreeMap<String, Manifest>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error in {event}: {message}")]
    Template { event: String, message: String },
}

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| load(&BOTS).expect("bots/ manifests and templates are valid (tested)"))
}

/// Parses every manifest and template under `bots/`.
fn load(dir: &'static Dir<'static>) -> Result<Catalog, String> {
    let mut env = Environment::new();
    env.add_filter("shorten", shorten);
    let mut manifests = BTreeMap::new();
    for source in dir.dirs() {
        let name = source.path().to_string_lossy().to_string();
        for file in source.files() {
            let path = file.path().to_string_lossy().to_string();
            let text = file
                .contents_utf8()
                .ok_or_else(|| format!("{path} is not UTF-8"))?;
            if path.ends_with("manifest.toml") {
                let manifest: Manifest =
                    toml::from_str(text).map_err(|e| format!("{path}: {e}"))?;
                manifests.insert(name.clone(), manifest);
            } else if path.ends_with(".j2") {
                env.add_template(file.path().to_str().unwrap_or_default(), text)
                    .map_err(|e| format!("{path}: {e}"))?;
            }
        }
    }
    // The one-line templates of the manifests (titles, buttons), compiled once, not per event.
    for (source, manifest) in &manifests {
        for (event, spec) in &manifest.events {
            let mut parts = vec![("title".to_string(), spec.title.clone())];
            for (i, b) in spec.buttons.iter().enumerate() {
                parts.push((format!("button{i}.title"), b.title.clone()));
                parts.push((format!("button{i}.url"), b.url.clone()));
            }
            for (part, text) in parts {
                env.add_template_owned(inline_name(source, event, &part), text)
                    .map_err(|e| format!("{source} {event} {part}: {e}"))?;
            }
        }
    }
    Ok(Catalog { env, manifests })
}

/// The name a manifest's one-line template is compiled under.
fn inline_name(source: &str, event: &str, part: &str) -> String {
    format!("{source}#{event}#{part}")
}

/// `{{ text | shorten(80) }}`: cut at a character boundary with an ellipsis.
fn shorten(value: String, max: Option<usize>) -> String {
    let max = max.unwrap_or(80);
    if value.chars().count() <= max {
        return value;
    }
    let cut: String = value.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

/// The manifest entry for an event, with its key: exact name, then `prefix.*`, then `*`.
fn spec_for<'a>(manifest: &'a Manifest, event: &str) -> Option<(&'a str, &'a EventSpec)> {
    let prefix = event.split('.').next().unwrap_or(event);
    [event.to_string(), format!("{prefix}.*"), "*".to_string()]
        .iter()
        .find_map(|key| manifest.events.get_key_value(key.as_str()))
        .map(|(k, v)| (k.as_str(), v))
}

/// The fields the source's card updates keep from earlier events (`keep_on_update`).
pub fn kept_fields(source: &str) -> &'static [String] {
    catalog()
        .manifests
        .get(source)
        .map_or(&[], |m| m.keep_on_update.as_slice())
}

/// Whether the source renders this event at all.
pub fn handles(source: &str, event: &str) -> bool {
    catalog()
        .manifests
        .get(source)
        .is_some_and(|m| spec_for(m, event).is_some())
}

/// Renders the event as a message, or None when the source does not render it. `overrides`
/// maps event names to the robot's own text templates; `max_bytes` bounds the text.
pub fn render(
    source: &str,
    event: &Normalized,
    overrides: &BTreeMap<String, String>,
    max_bytes: usize,
) -> Result<Option<Content>, RenderError> {
    let catalog = catalog();
    let Some(manifest) = catalog.manifests.get(source) else {
        return Ok(None);
    };
    let Some((key, spec)) = spec_for(manifest, &event.event) else {
        return Ok(None);
    };
    let fail = |e: minijinja::Error| RenderError::Template {
        event: event.event.clone(),
        message: e.to_string(),
    };
    // Converted once: rendering from the JSON value directly would convert the whole event
    // again for the title, the text and every button.
    let ctx = &minijinja::Value::from_serialize(&event.fields);
    let inline = |part: &str| -> Result<String, RenderError> {
        let template = catalog
            .env
            .get_template(&inline_name(source, key, part))
            .map_err(fail)?;
        Ok(template.render(ctx).map_err(fail)?.trim().to_string())
    };
    let title = inline("title")?;
    let text = match overrides.get(&event.event) {
        Some(template) => catalog.env.render_str(template, ctx).map_err(fail)?,
        None => {
            let name = format!("{source}/{}", spec.template);
            let template = catalog.env.get_template(&name).map_err(fail)?;
            template.render(ctx).map_err(fail)?
        }
    };
    let mut buttons = Vec::new();
    for i in 0..spec.buttons.len() {
        let url = inline(&format!("button{i}.url"))?;
        let title = shorten(inline(&format!("button{i}.title"))?, Some(MAX_BUTTON_TITLE));
        if !url.is_empty() && url.len() <= MAX_URL && !title.is_empty() {
            buttons.push(ActionButton {
                title,
                action_url: url,
            });
        }
    }
    let title = shorten(title, Some(MAX_TITLE));
    Ok(Some(within(title, tidy(&text), buttons, max_bytes)))
}

/// Longest card title, in characters (a payload field can be any length).
const MAX_TITLE: usize = 200;
const MAX_BUTTON_TITLE: usize = 40;
/// A longer button URL is left out rather than cut.
const MAX_URL: usize = 2048;

/// The card with as much of the text as fits in `max_bytes` of JSON: whole lines, so markup
/// is never cut; escaping can make JSON longer than the text, so the size is measured.
fn within(title: String, text: String, buttons: Vec<ActionButton>, max_bytes: usize) -> Content {
    let mut budget = max_bytes.saturating_sub(title.len() + 512);
    loop {
        let content = card(title.clone(), fit(text.clone(), budget), buttons.clone());
        let size = content.body_string().len();
        if size <= max_bytes || budget < 64 {
            return content;
        }
        budget = budget.saturating_sub((size - max_bytes).max(budget / 4));
    }
}

fn card(title: String, text: String, mut buttons: Vec<ActionButton>) -> Content {
    match buttons.len() {
        0 => Content::Markdown(Markdown { title, text }),
        1 => {
            let only = buttons.remove(0);
            Content::ActionCard(ActionCard {
                title,
                text,
                single_title: Some(only.title),
                single_url: Some(only.action_url),
                btns: vec![],
                btn_orientation: None,
            })
        }
        _ => Content::ActionCard(ActionCard {
            title,
            text,
            single_title: None,
            single_url: None,
            btns: buttons,
            btn_orientation: Some("1".into()),
        }),
    }
}

/// Trims trailing spaces and collapses runs of blank lines left by template conditionals.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.trim().lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_string()
}

/// Keeps whole lines within `max` bytes and says how many were left out, so markup is never
/// cut in the middle.
fn fit(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut kept = 0;
    for line in &lines {
        if out.len() + line.len() + 64 > max {
            break;
        }
        out.push_str(line);
        out.push('\n');
        kept += 1;
    }
    out.push_str(&format!("\n…and {} more lines", lines.len() - kept));
    out
}

/// Every source that has a manifest, for the contract test and the API.
pub fn sources() -> Vec<&'static str> {
    catalog().manifests.keys().map(|s| s.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_and_template_loads() {
        let catalog = load(&BOTS).unwrap();
        for (source, manifest) in &catalog.manifests {
            assert_eq!(&manifest.source, source);
            for (event, spec) in &manifest.events {
                let name = format!("{source}/{}", spec.template);
                assert!(
                    catalog.env.get_template(&name).is_ok(),
                    "{source} {event}: no {name}"
                );
            }
        }
    }

    #[test]
    fn fit_keeps_whole_lines() {
        let text = (0..100)
            .map(|i| format!("- item {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let out = fit(text, 200);
        assert!(out.len() <= 200);
        assert!(out.ends_with("more lines"));
        assert!(out
            .lines()
            .all(|l| l.is_empty() || l.starts_with("- item") || l.starts_with('…')));
    }

    #[test]
    fn shorten_adds_an_ellipsis() {
        assert_eq!(shorten("abcdef".into(), Some(4)), "abc…");
        assert_eq!(shorten("abc".into(), Some(4)), "abc");
    }
}
