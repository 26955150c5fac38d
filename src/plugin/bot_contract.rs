//! The shared bot contract, run over every example bot plugin (`plugins/<name>/world` naming a
//! bot world) and its fixtures (callback bodies) with its example config
//! (`plugins/<name>/config.json`): every event is accepted, the same event gets the same
//! replies, every reply is a valid message within the size limit, and the replies are
//! snapshotted.

use std::collections::BTreeMap;
use std::path::Path;

use super::contract::built_plugin;
use super::{bot, BotReply, HostState, Runtime};
use crate::config::Config;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The example bots: plugin directories whose `world` file names a bot world.
fn bots() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("plugins"))
        .expect("plugins/")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("world"))
                .is_ok_and(|w| w.trim().starts_with("bot-"))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Each `fixtures/<case>.json` of a bot: the case name and the callback body.
fn events(name: &str) -> Vec<(String, String)> {
    let dir = root().join("plugins").join(name).join("fixtures");
    let mut cases: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("fixtures/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let case = p.file_stem().expect("stem").to_string_lossy().into_owned();
            (case, std::fs::read_to_string(&p).expect("fixture"))
        })
        .collect();
    cases.sort();
    cases
}

fn example_config(name: &str) -> BTreeMap<String, String> {
    let path = root().join("plugins").join(name).join("config.json");
    let text = std::fs::read_to_string(&path).expect("plugins/<bot>/config.json");
    serde_json::from_str(&text).expect("config.json: an object of strings")
}

#[test]
fn every_example_bot_keeps_the_bot_contract() {
    let config = Config::defaults();
    let runtime = Runtime::new(&config.plugins, None).expect("runtime");
    let bots = bots();
    assert!(bots.contains(&"faqbot".to_string()), "{bots:?}");
    for name in bots {
        let wasm = std::fs::read(built_plugin(&name)).expect("wasm");
        let compiled = runtime.compile(&wasm).expect("a valid plugin");
        assert!(compiled.guest.is_bot(), "{name}: not a bot");
        let settings = example_config(&name);
        for (case, payload) in events(&name) {
            let run = || -> Vec<BotReply> {
                let state = HostState::new(&name, settings.clone());
                bot::call(&runtime, &compiled, state, &payload)
                    .unwrap_or_else(|e| panic!("{name}/{case}: {e}"))
            };
            let (first, again) = (run(), run());
            let json = |r: &[BotReply]| serde_json::to_value(r).expect("json");
            assert_eq!(
                json(&first),
                json(&again),
                "{name}/{case}: replies must be stable"
            );
            for r in &first {
                let size = r.content.body_json().to_string().len();
                let max = config.http.max_message_bytes;
                assert!(size <= max, "{name}/{case}: {size} bytes > {max}");
            }
            insta::assert_json_snapshot!(format!("bot__{name}__{case}"), first);
        }
    }
}
