//! The shared adapter contract, run over every example plugin in `plugins/` and its fixtures:
//! the plugin accepts each real payload, names every event, keeps dedupe keys stable across
//! runs, stays within the message size limit, and its messages are snapshotted.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{Guest, HostState, PluginOutput, PluginRequest, Runtime};
use crate::config::Config;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/plugins/<name>.wasm`, built by `scripts/build-plugins` (run here once if missing).
pub fn built_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    if !path.exists() {
        BUILT.get_or_init(|| {
            let status = std::process::Command::new("bash")
                .arg(root().join("scripts/build-plugins"))
                .status()
                .expect("run scripts/build-plugins");
            assert!(status.success(), "scripts/build-plugins failed");
        });
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The example plugins: every directory of `plugins/` with sources, except the WIT.
fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("plugins"))
        .expect("plugins/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("fixtures").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Each `<case>.json` of a plugin with its `<case>.headers.json`, as a request.
fn fixtures(name: &str) -> Vec<(String, PluginRequest)> {
    let dir = root().join("plugins").join(name).join("fixtures");
    let mut cases: Vec<(String, PluginRequest)> = std::fs::read_dir(&dir)
        .expect("fixtures/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| !p.to_string_lossy().ends_with(".headers.json"))
        .map(|body| {
            let case = body
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            let headers_file = dir.join(format!("{case}.headers.json"));
            let headers = std::fs::read_to_string(&headers_file)
                .ok()
                .map(|text| serde_json::from_str::<serde_json::Map<_, _>>(&text).expect("headers"))
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let request = PluginRequest {
                method: "POST".into(),
                path: "/hooks/plugin/test".into(),
                query: Vec::new(),
                headers,
                body: std::fs::read(&body).expect("body").into(),
            };
            (case, request)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

#[test]
fn every_example_plugin_keeps_the_adapter_contract() {
    let config = Config::defaults();
    let runtime = Runtime::new(&config.plugins, None).expect("runtime");
    let examples = examples();
    for language_example in ["sentry", "jenkins"] {
        assert!(
            examples.contains(&language_example.to_string()),
            "{examples:?}"
        );
    }
    for name in examples {
        let wasm = std::fs::read(built_plugin(&name)).expect("wasm");
        let compiled = runtime.compile(&wasm).expect("a valid plugin");
        if !matches!(compiled.guest, Guest::Adapter(_)) {
            continue; // bots keep theirs (bot_contract)
        }
        for (case, request) in fixtures(&name) {
            let run = || -> PluginOutput {
                runtime
                    .call(
                        &compiled,
                        HostState::new(&name, Default::default()),
                        &request,
                    )
                    .unwrap_or_else(|e| panic!("{name}/{case}: {e}"))
            };
            let (first, again) = (run(), run());
            let keys = |o: &PluginOutput| {
                o.messages
                    .iter()
                    .map(|m| m.dedupe_key.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                keys(&first),
                keys(&again),
                "{name}/{case}: dedupe keys must be stable"
            );
            for m in &first.messages {
                assert!(
                    !m.event.is_empty(),
                    "{name}/{case}: an event without a name"
                );
                let size = m.content.body_json().to_string().len();
                let max = config.http.max_message_bytes;
                assert!(size <= max, "{name}/{case}: {size} bytes > {max}");
            }
            assert!(
                !first.messages.is_empty() || first.reply.is_some(),
                "{name}/{case}: neither a message nor a reply"
            );
            insta::assert_json_snapshot!(format!("{name}__{case}"), first);
        }
    }
}
