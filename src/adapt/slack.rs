//! The Slack-format adapter: Slack and Mattermost incoming-webhook payloads (JSON, or a form
//! with `payload=`), so any tool with a Slack notifier can post to herald. The sender has
//! already written its message, so this adapter builds the content itself (`text`, legacy
//! `attachments`, Block Kit `blocks`; mrkdwn converted in `mrkdwn`) instead of using a
//! template. A body with none of those becomes an `unknown` event whose fields are a
//! summarized key/value listing, rendered by `bots/slack/`'s fallback template.

mod fallback;
mod mrkdwn;

use serde_json::{json, Value};
use time::OffsetDateTime;

use self::mrkdwn::{Converter, Style};
use super::{json_body, text, AdaptError, Adapted, Normalized};
use crate::ingress::{RawWebhook, Verified};
use crate::model::{ActionButton, ActionCard, At, Content, Markdown};

/// Room left for the title and buttons under the 20,000-byte message limit.
const MAX_TEXT: usize = 16_000;
/// Attachments, blocks and fields rendered; the rest are counted.
const MAX_PARTS: usize = 50;
/// DingTalk's actionCard holds at most 10 buttons.
const MAX_BUTTONS: usize = 10;

/// Turns one Slack-format payload into one message event.
pub fn adapt(raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    let body = json_body(raw)?;
    check_shape(&body)?;
    let mut message = Message::new();
    if has_items(&body, "blocks") {
        message.blocks(&body["blocks"]);
    } else {
        message.text(text(&body, "/text"));
    }
    if let Some(attachments) = body.get("attachments").and_then(Value::as_array) {
        message.attachments(attachments);
    }
    let event = match message.finish(&body) {
        Some((content, at)) => Normalized {
            event: "message".into(),
            content: Some(content),
            at,
            ..Normalized::default()
        },
        None => fallback::listing(&body),
    };
    Ok(Adapted {
        events: vec![event],
        reply: None,
    })
}

/// `text` must be a string, `attachments` and `blocks` arrays, when present.
fn check_shape(body: &Value) -> Result<(), AdaptError> {
    let wrong = |field: &str, kind: &str| {
        AdaptError::BadPayload(format!("Slack-format payload: \"{field}\" must be {kind}"))
    };
    match body.get("text") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => return Err(wrong("text", "a string")),
    }
    for field in ["attachments", "blocks"] {
        match body.get(field) {
            None | Some(Value::Null | Value::Array(_)) => {}
            Some(_) => return Err(wrong(field, "an array")),
        }
    }
    Ok(())
}

fn has_items(body: &Value, field: &str) -> bool {
    body.get(field)
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Whether an attachment has its own words, so its `fallback` is not needed.
fn shows_content(a: &Value) -> bool {
    ["/text", "/pretext"]
        .iter()
        .any(|p| !text(a, p).trim().is_empty())
        || has_items(a, "fields")
        || has_items(a, "blocks")
}

/// The message being assembled: Markdown paragraphs, buttons and a title.
struct Message {
    md: Converter,
    plain: Converter,
    paragraphs: Vec<String>,
    buttons: Vec<ActionButton>,
    title: Option<String>,
}

impl Message {
    fn new() -> Message {
        Message {
            md: Converter::new(Style::Markdown),
            plain: Converter::new(Style::Plain),
            paragraphs: Vec::new(),
            buttons: Vec::new(),
            title: None,
        }
    }

    /// Adds mrkdwn text as a paragraph; the first one also proposes the title.
    fn text(&mut self, mrkdwn: &str) {
        if mrkdwn.trim().is_empty() {
            return;
        }
        let converted = self.md.convert(mrkdwn);
        self.paragraphs.push(converted);
    }

    fn button(&mut self, title: &str, url: &str) {
        let url = super::alertmanager::web_url(url);
        if url.is_empty() || title.trim().is_empty() || self.buttons.len() >= MAX_BUTTONS {
            return;
        }
        let title = shorten(&self.plain.convert(title), 30);
        self.buttons.push(ActionButton {
            title,
            action_url: url,
        });
    }

    fn blocks(&mut self, blocks: &Value) {
        let list = blocks.as_array().map(Vec::as_slice).unwrap_or_default();
        for block in list.iter().take(MAX_PARTS) {
            self.block(block);
        }
        self.more(list.len(), "blocks");
    }

    /// One Block Kit block; unknown kinds are skipped.
    fn block(&mut self, block: &Value) {
        match text(block, "/type") {
            "header" => {
                let header = text(block, "/text/text").trim();
                if !header.is_empty() {
                    self.title.get_or_insert_with(|| header.to_string());
                    self.paragraphs.push(format!("### {}", one_line(header)));
                }
            }
            "section" => self.section(block),
            "context" => self.context(block),
            "divider" => self.paragraphs.push("---".into()),
            "actions" => self.actions(block),
            "image" => self.image(block),
            "rich_text" => {
                let rich = rich_text(block);
                self.text(&rich);
            }
            _ => {}
        }
    }

    fn section(&mut self, block: &Value) {
        self.text(&text_object(block.get("text")));
        let fields = block.get("fields").and_then(Value::as_array);
        let lines: Vec<String> = fields
            .into_iter()
            .flatten()
            .take(MAX_PARTS)
            .map(|f| one_line(&self.md.convert(&text_object(Some(f)))))
            .filter(|l| !l.is_empty())
            .collect();
        if !lines.is_empty() {
            self.paragraphs.push(lines.join("\n\n"));
        }
        if let Some(accessory) = block.get("accessory") {
            self.element(accessory);
        }
    }

    fn context(&mut self, block: &Value) {
        let elements = block.get("elements").and_then(Value::as_array);
        let parts: Vec<String> = elements
            .into_iter()
            .flatten()
            .map(|e| match text(e, "/type") {
                "image" => String::new(),
                _ => one_line(&self.md.convert(&text_object(Some(e)))),
            })
            .filter(|p| !p.is_empty())
            .collect();
        if !parts.is_empty() {
            self.paragraphs.push(format!("> {}", parts.join(" · ")));
        }
    }

    fn actions(&mut self, block: &Value) {
        let elements = block.get("elements").and_then(Value::as_array);
        for element in elements.into_iter().flatten() {
            self.element(element);
        }
    }

    /// A button with a URL becomes a button; an image accessory an image.
    fn element(&mut self, element: &Value) {
        match text(element, "/type") {
            "button" => {
                let title = text_object(element.get("text"));
                self.button(&title, text(element, "/url"));
            }
            "image" => self.image(element),
            _ => {}
        }
    }

    fn image(&mut self, image: &Value) {
        let url = super::alertmanager::web_url(text(image, "/image_url"));
        if !url.is_empty() {
            let alt = one_line(&self.plain.convert(text(image, "/alt_text")));
            self.paragraphs
                .push(format!("![{}]({url})", alt.replace(['[', ']'], "")));
        }
    }

    fn attachments(&mut self, attachments: &[Value]) {
        for attachment in attachments.iter().take(MAX_PARTS) {
            if attachment.is_object() {
                self.attachment(attachment);
            }
        }
        self.more(attachments.len(), "attachments");
    }

    /// A legacy attachment: pretext, a colored title line, text, fields, image, footer.
    fn attachment(&mut self, a: &Value) {
        self.text(text(a, "/pretext"));
        let start = self.paragraphs.len();
        let marker = color_marker(text(a, "/color"));
        let title = self.attachment_title(a);
        if !title.is_empty() {
            self.paragraphs
                .push(format!("{marker} {title}").trim().to_string());
        }
        if has_items(a, "blocks") {
            self.blocks(&a["blocks"]);
        }
        self.text(text(a, "/text"));
        self.fields(a.get("fields"));
        if let Some(actions) = a.get("actions").and_then(Value::as_array) {
            for action in actions {
                self.button(text(action, "/text"), text(action, "/url"));
            }
        }
        self.image(&json!({"image_url": text(a, "/image_url"), "alt_text": "image"}));
        self.footer(a);
        if title.is_empty() && !shows_content(a) {
            self.text(text(a, "/fallback"));
        }
        if let (true, false, Some(first)) = (
            title.is_empty(),
            marker.is_empty(),
            self.paragraphs.get_mut(start),
        ) {
            *first = format!("{marker} {first}");
        }
    }

    fn attachment_title(&mut self, a: &Value) -> String {
        let title = text(a, "/title").trim();
        let author = text(a, "/author_name").trim();
        if title.is_empty() {
            return match author {
                "" => String::new(),
                _ => format!("**{}**", one_line(&self.plain.convert(author))),
            };
        }
        let plain = one_line(&self.plain.convert(title));
        match super::alertmanager::web_url(text(a, "/title_link")) {
            url if url.is_empty() => format!("**{plain}**"),
            url => format!("**[{}]({url})**", plain.replace(['[', ']'], "")),
        }
    }

    fn fields(&mut self, fields: Option<&Value>) {
        let list = fields.and_then(Value::as_array);
        let lines: Vec<String> = list
            .into_iter()
            .flatten()
            .take(MAX_PARTS)
            .filter_map(|f| {
                let title = one_line(&self.plain.convert(text(f, "/title")));
                let value = one_line(&self.md.convert(&super::alertmanager::scalar(
                    f.get("value").unwrap_or(&Value::Null),
                )));
                match (title.is_empty(), value.is_empty()) {
                    (true, true) => None,
                    (true, false) => Some(value),
                    (false, _) => Some(format!("**{title}**: {value}")),
                }
            })
            .collect();
        if !lines.is_empty() {
            self.paragraphs.push(lines.join("\n\n"));
        }
    }

    fn footer(&mut self, a: &Value) {
        let footer = one_line(&self.md.convert(text(a, "/footer")));
        let ts = a.get("ts").and_then(|t| match t {
            Value::String(s) => s.split('.').next()?.parse::<i64>().ok(),
            other => other.as_f64().map(|f| f as i64),
        });
        let when = ts
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .map(super::alertmanager::utc_text);
        let parts: Vec<String> = [Some(footer), when]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect();
        if !parts.is_empty() {
            self.paragraphs.push(format!("> {}", parts.join(" · ")));
        }
    }

    fn more(&mut self, total: usize, what: &str) {
        if total > MAX_PARTS {
            self.paragraphs
                .push(format!("…and {} more {what}", total - MAX_PARTS));
        }
    }

    /// The finished content, or None when the payload said nothing herald can show.
    fn finish(self, body: &Value) -> Option<(Content, At)> {
        let words = fit(&self.paragraphs.join("\n\n"));
        if words.trim().is_empty() {
            return None;
        }
        let title = title(self.title.as_deref(), body, &words);
        let at = At {
            is_at_all: self.md.at_all,
            ..At::default()
        };
        Some((card(title, words, self.buttons), at))
    }
}

/// The card title: a header block, else what Slack would notify with (the text, the first
/// attachment's fallback, title or pretext), else the message's first line.
fn title(header: Option<&str>, body: &Value, words: &str) -> String {
    let mut plain = Converter::new(Style::Plain);
    let pointers = [
        "/text",
        "/attachments/0/fallback",
        "/attachments/0/title",
        "/attachments/0/pretext",
    ];
    let candidates = pointers
        .into_iter()
        .map(|p| plain.convert(text(body, p)))
        .chain([words.to_string()]);
    header
        .map(str::to_string)
        .into_iter()
        .chain(candidates)
        .find_map(|t| {
            let line = t
                .lines()
                .map(|l| l.trim_start_matches(['#', '>', ' ']))
                .find(|l| !l.trim().is_empty())?;
            Some(shorten(line, 64))
        })
        .unwrap_or_else(|| "Message".into())
}

fn card(title: String, text: String, mut buttons: Vec<ActionButton>) -> Content {
    if buttons.is_empty() {
        return Content::Markdown(Markdown { title, text });
    }
    let (single_title, single_url, btns) = if buttons.len() == 1 {
        let only = buttons.remove(0);
        (Some(only.title), Some(only.action_url), vec![])
    } else {
        (None, None, buttons)
    };
    Content::ActionCard(ActionCard {
        title,
        text,
        single_title,
        single_url,
        btn_orientation: (!btns.is_empty()).then(|| "1".to_string()),
        btns,
    })
}

/// A Block Kit text object (`{type, text}`), or a bare string.
fn text_object(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(v) => text(v, "/text").to_string(),
        None => String::new(),
    }
}

/// A rich_text block's words, as mrkdwn: sections and quotes as lines, lists as items.
fn rich_text(block: &Value) -> String {
    let elements = block.get("elements").and_then(Value::as_array);
    let lines: Vec<String> = elements
        .into_iter()
        .flatten()
        .take(MAX_PARTS)
        .map(|e| match text(e, "/type") {
            "rich_text_list" => rich_list(e),
            "rich_text_preformatted" => format!("```{}```", inline(e)),
            "rich_text_quote" => format!("> {}", inline(e)),
            _ => inline(e),
        })
        .collect();
    lines.join("\n\n")
}

fn rich_list(list: &Value) -> String {
    let items = list.get("elements").and_then(Value::as_array);
    let lines: Vec<String> = items
        .into_iter()
        .flatten()
        .take(MAX_PARTS)
        .map(|item| format!("- {}", inline(item)))
        .collect();
    lines.join("\n")
}

/// The inline elements of a rich-text section, written back as mrkdwn.
fn inline(section: &Value) -> String {
    let elements = section.get("elements").and_then(Value::as_array);
    elements
        .into_iter()
        .flatten()
        .take(500)
        .map(|e| match text(e, "/type") {
            "text" => styled(text(e, "/text"), e.get("style")),
            "link" => format!("<{}|{}>", text(e, "/url"), text(e, "/text")),
            "user" => format!("<@{}>", text(e, "/user_id")),
            "channel" => format!("<#{}>", text(e, "/channel_id")),
            "broadcast" => format!("<!{}>", text(e, "/range")),
            "emoji" => format!(":{}:", text(e, "/name")),
            _ => String::new(),
        })
        .collect()
}

/// Rich-text styles as mrkdwn markers, around the words but not their outer spaces.
fn styled(words: &str, style: Option<&Value>) -> String {
    let on = |name: &str| style.and_then(|s| s.get(name)).and_then(Value::as_bool) == Some(true);
    let core = words.trim();
    let (lead, trail) = match words.find(core) {
        Some(at) if !core.is_empty() => (&words[..at], &words[at + core.len()..]),
        _ => return words.to_string(),
    };
    let mut out = core.to_string();
    for (name, marker) in [
        ("code", "`"),
        ("bold", "*"),
        ("italic", "_"),
        ("strike", "~"),
    ] {
        if on(name) {
            out = format!("{marker}{out}{marker}");
        }
    }
    format!("{lead}{out}{trail}")
}

/// Slack's named colors and hex colors as a colored-circle marker.
fn color_marker(color: &str) -> &'static str {
    match color.trim().to_ascii_lowercase().as_str() {
        "" => "",
        "good" => "🟢",
        "warning" => "🟡",
        "danger" => "🔴",
        hex => rgb(hex.trim_start_matches('#')).map_or("", hue_marker),
    }
}

fn rgb(hex: &str) -> Option<(f32, f32, f32)> {
    let full: String = match hex.len() {
        3 => hex.chars().flat_map(|c| [c, c]).collect(),
        6 => hex.to_string(),
        _ => return None,
    };
    let channel = |i: usize| {
        full.get(i..i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .map(|v| f32::from(v) / 255.0)
    };
    Some((channel(0)?, channel(2)?, channel(4)?))
}

fn hue_marker((r, g, b): (f32, f32, f32)) -> &'static str {
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    if max - min < 0.15 {
        return if max < 0.3 { "⚫" } else { "⚪" };
    }
    let d = max - min;
    let hue = if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    match hue {
        h if !(15.0..330.0).contains(&h) => "🔴",
        h if h < 45.0 => "🟠",
        h if h < 70.0 => "🟡",
        h if h < 170.0 => "🟢",
        h if h < 260.0 => "🔵",
        _ => "🟣",
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn shorten(s: &str, max: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

/// Keeps whole lines within the size budget and counts the rest, so markup is never cut.
fn fit(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut kept = 0;
    for line in &lines {
        if out.len() + line.len() + 1 > MAX_TEXT {
            break;
        }
        out.push_str(line);
        out.push('\n');
        kept += 1;
    }
    if kept == 0 {
        out = shorten(lines.first().copied().unwrap_or_default(), 2_000);
        out.push('\n');
    }
    out.push_str(&format!("\n…and {} more lines", lines.len() - kept.max(1)));
    out
}

#[cfg(test)]
pub(super) mod tests;
