//! End-to-end tests: the real `herald` binary over HTTP, SSE and WebSocket, each scenario on
//! SQLite and on a real PostgreSQL server (`HERALD_TEST_PG_URL`, started by `scripts/test`).

mod harness;
mod hooks;

mod big_group;
mod bots;
mod crash;
mod isolation;
mod live;
mod plugins;
mod plugins_c;
mod robots;
mod story;
mod wasm;
