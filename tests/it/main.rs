//! End-to-end tests: the real `herald` binary over HTTP, SSE and WebSocket, each scenario on
//! SQLite and on a real PostgreSQL server (`HERALD_TEST_PG_URL`, started by `scripts/test`).

mod fixtures;
mod fuzz_hooks;
mod harness;
mod hook_filters;
mod hooks;
mod pagerduty;

mod alertmanager;
mod alerts;
mod big_group;
mod bot_plugins;
mod bots;
mod bursts;
mod crash;
mod escalation_steps;
mod isolation;
mod live;
mod plugin_registry;
mod plugins;
mod plugins_c;
mod plugins_py;
mod robots;
mod story;
mod wasm;
