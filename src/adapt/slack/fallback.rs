//! The fallback for JSON that is not a Slack-format message: an `unknown` event whose fields
//! list the body's values by dotted path, summarized, for `bots/slack/fallback.j2`.

use serde_json::{json, Value};

use super::shorten;
use crate::adapt::alertmanager::scalar;
use crate::adapt::Normalized;

/// Entries of the listing.
const MAX_ENTRIES: usize = 25;

/// An `unknown` event for JSON that is not a Slack message: its fields, flattened.
pub fn listing(body: &Value) -> Normalized {
    let mut entries = Vec::new();
    flatten(body, String::new(), 0, &mut entries);
    let total = entries.len();
    let listed: Vec<Value> = entries
        .into_iter()
        .take(MAX_ENTRIES)
        .map(|(key, value)| json!({"key": key, "value": value}))
        .collect();
    Normalized {
        event: "unknown".into(),
        fields: json!({
            "entries": listed,
            "count": total,
            "more": total.saturating_sub(MAX_ENTRIES),
        }),
        ..Normalized::default()
    }
}

/// Dotted paths to scalar values, arrays by index (the first five items), four levels deep.
fn flatten(value: &Value, path: String, depth: usize, out: &mut Vec<(String, String)>) {
    if out.len() > MAX_ENTRIES * 4 {
        return;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Object(map) if depth < 4 && !map.is_empty() => {
            for (k, v) in map {
                flatten(v, join(k), depth + 1, out);
            }
        }
        Value::Array(items) if depth < 4 && !items.is_empty() => {
            for (i, v) in items.iter().take(5).enumerate() {
                flatten(v, format!("{path}[{i}]"), depth + 1, out);
            }
            if items.len() > 5 {
                out.push((
                    format!("{path}[…]"),
                    format!("{} more items", items.len() - 5),
                ));
            }
        }
        other => {
            let shown = scalar(other).replace('`', "'");
            out.push((shorten(&path, 80), shorten(&shown, 120)));
        }
    }
}
