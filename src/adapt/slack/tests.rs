//! Slack-format payloads written from Slack's and Mattermost's documented examples (no
//! captured fixtures exist), run through the shared contract and snapshotted.

use super::*;
use crate::adapt::alertmanager::tests::mutations;
use crate::adapt::contract;
use crate::robot::RobotKind;

const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

fn raw(body: &str) -> RawWebhook<Verified> {
    contract::verified(RobotKind::Slack, JSON, body.into())
}

/// Slack's "Sending messages using incoming webhooks" text example, with mrkdwn.
const TEXT: &str = r#"{"text": "*Deploy* of <https://ci.example.com/builds/42|build #42> finished _successfully_ ~slowly~ <!here>\nRequested by <@U024BE7LH|fred> in <#C024BE7LK|ops> &amp; tagged `release_v1.2`"}"#;

/// Slack's documented legacy attachment example.
const ATTACHMENTS: &str = r##"{"attachments": [{"fallback": "Required plain-text summary of the attachment.", "color": "#2eb886", "pretext": "Optional text that appears above the attachment block", "author_name": "Bobby Tables", "author_link": "http://flickr.com/bobby/", "title": "Slack API Documentation", "title_link": "https://api.slack.com/", "text": "Optional text that appears within the attachment", "fields": [{"title": "Priority", "value": "High", "short": false}], "image_url": "http://my-website.com/path/to/image.jpg", "footer": "Slack API", "ts": 123456789}, {"fallback": "Build failed", "color": "danger"}]}"##;

/// Block Kit: header, section text and fields, divider, context, and URL buttons.
const BLOCKS: &str = r#"{"text": "Build 42 failed", "blocks": [
  {"type": "header", "text": {"type": "plain_text", "text": "Build #42 failed", "emoji": true}},
  {"type": "section", "text": {"type": "mrkdwn", "text": "*api* on `main`: 3 tests failed\n<https://ci.example.com/42|Open the build>"},
   "accessory": {"type": "button", "text": {"type": "plain_text", "text": "Logs"}, "url": "https://ci.example.com/42/logs"}},
  {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Type:*\nPaid Time Off"}, {"type": "mrkdwn", "text": "*Created by:*\n<https://example.com|Fred Enriquez>"}]},
  {"type": "divider"},
  {"type": "context", "elements": [{"type": "image", "image_url": "https://example.com/a.png", "alt_text": "a"}, {"type": "mrkdwn", "text": "Triggered by <@U123>"}, {"type": "plain_text", "text": "2 minutes ago"}]},
  {"type": "actions", "elements": [
    {"type": "button", "text": {"type": "plain_text", "text": "Retry"}, "url": "https://ci.example.com/42/retry", "style": "primary"},
    {"type": "button", "text": {"type": "plain_text", "text": "Approve"}, "value": "click_me_123"},
    {"type": "button", "text": {"type": "plain_text", "text": "Danger"}, "url": "javascript:alert(1)"}]},
  {"type": "rich_text", "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": "Owner: "}, {"type": "user", "user_id": "U42"}, {"type": "text", "text": " urgent", "style": {"bold": true}}]},
    {"type": "rich_text_list", "style": "bullet", "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": "test_a"}]}, {"type": "rich_text_section", "elements": [{"type": "link", "url": "https://x.io", "text": "test_b"}]}]}]},
  {"type": "video", "title": {"type": "plain_text", "text": "skipped"}}
]}"#;

/// Mattermost's incoming-webhook example: Markdown text and an attachment with a hex color.
const MATTERMOST: &str = r#####"{"text": "#### Test results for July 27th, 2017\n@channel please review failed tests.\n\n| Component | Tests Run | Tests Failed |\n|:---|:---|:---|\n| Server | 948 | :white_check_mark: 0 |", "attachments": [{"fallback": "test", "color": "#FF8000", "pretext": "This is optional pretext that shows above the attachment.", "text": "This is the text of the attachment. It should appear just above an image of the Mattermost logo. The left border of the attachment should be colored orange, and below the image it should include additional fields that are formatted in columns. At the top of the attachment, there should be an author name followed by a bolded title. Both the author name and the title should be hyperlinks.", "author_name": "Mattermost", "author_icon": "https://mattermost.com/wp-content/uploads/2022/02/icon_WS.png", "author_link": "https://mattermost.org/", "title": "Example Attachment", "title_link": "https://developers.mattermost.com/integrate/reference/message-attachments/", "fields": [{"short": false, "title": "Long Field", "value": "Testing with a very long piece of text that will take up the whole width of the table. And then some more text to make it extra long."}, {"short": true, "title": "Column One", "value": "Testing"}, {"short": true, "title": "Column Two", "value": "Testing"}], "image_url": "https://mattermost.com/wp-content/uploads/2022/02/icon_WS.png"}]}"#####;

/// JSON that is no Slack message at all.
const UNKNOWN: &str = r#"{"event": "deploy", "service": {"name": "api", "version": "1.2.3", "meta": {"a": {"b": {"c": {"d": 1}}}}}, "hosts": ["a", "b", "c", "d", "e", "f", "g"], "ok": true, "note": null, "text": ""}"#;

pub(in crate::adapt) const CASES: &[(&str, &str)] = &[
    ("text-mrkdwn", TEXT),
    ("attachments", ATTACHMENTS),
    ("blocks", BLOCKS),
    ("mattermost", MATTERMOST),
    ("unknown-json", UNKNOWN),
];

#[test]
fn documented_payloads_pass_the_contract() {
    for (case, body) in CASES {
        let adapted = contract::check(case, &raw(body));
        assert_eq!(adapted.events.len(), 1, "{case}");
    }
}

#[test]
fn broadcasts_mention_everyone() {
    let event = adapt(&raw(TEXT)).unwrap().events.remove(0);
    assert!(event.at.is_at_all);
    let event = adapt(&raw(BLOCKS)).unwrap().events.remove(0);
    assert!(!event.at.is_at_all);
}

#[test]
fn form_payloads_are_read_like_json() {
    let form = serde_urlencoded::to_string([("payload", TEXT)]).unwrap();
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let from_form = adapt(&contract::verified(RobotKind::Slack, &headers, form.into())).unwrap();
    let from_json = adapt(&raw(TEXT)).unwrap();
    assert_eq!(from_form.events[0].content, from_json.events[0].content);
}

#[test]
fn unknown_json_becomes_a_listing() {
    let event = adapt(&raw(UNKNOWN)).unwrap().events.remove(0);
    assert_eq!(event.event, "unknown");
    assert!(event.content.is_none());
    assert_eq!(event.fields["entries"][0]["key"], "event");
}

#[test]
fn long_messages_stay_under_the_limit() {
    let long = (0..3000)
        .map(|i| format!("line *{i}*"))
        .collect::<Vec<_>>()
        .join("\n");
    let body = json!({"text": long}).to_string();
    let content = adapt(&raw(&body))
        .unwrap()
        .events
        .remove(0)
        .content
        .unwrap();
    assert!(content.body_json().to_string().len() <= 20_000);
    let one_line = json!({"text": "x".repeat(40_000)}).to_string();
    let content = adapt(&raw(&one_line))
        .unwrap()
        .events
        .remove(0)
        .content
        .unwrap();
    assert!(content.body_json().to_string().len() <= 20_000);
}

#[test]
fn wrong_shapes_are_refused() {
    for body in [
        r#"{"text": 5}"#,
        r#"{"attachments": {}}"#,
        r#"{"blocks": "x"}"#,
        "[]",
        "{",
    ] {
        assert!(
            matches!(adapt(&raw(body)), Err(AdaptError::BadPayload(_))),
            "{body}"
        );
    }
    let plain = contract::verified(
        RobotKind::Slack,
        &[("Content-Type", "text/plain")],
        "hi".into(),
    );
    assert!(matches!(
        adapt(&plain),
        Err(AdaptError::UnsupportedMediaType(_))
    ));
}

#[test]
fn colors_become_markers() {
    let markers: Vec<&str> = [
        "good", "danger", "#2eb886", "#FF8000", "#439FE0", "#888", "zzz", "#12",
    ]
    .iter()
    .map(|c| color_marker(c))
    .collect();
    assert_eq!(markers, ["🟢", "🔴", "🟢", "🟠", "🔵", "⚪", "", ""]);
}

#[test]
fn mutated_payloads_never_panic() {
    for (_, body) in CASES {
        for mutated in mutations(body.as_bytes()) {
            let raw = contract::verified(RobotKind::Slack, JSON, mutated);
            if let Ok(adapted) = adapt(&raw) {
                for event in &adapted.events {
                    let _ = crate::render::render("slack", event, &Default::default(), 20_000);
                }
            }
        }
    }
}
