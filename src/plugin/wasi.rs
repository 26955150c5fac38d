//! WASI for the guests whose toolchain forces its imports (componentize-py, componentize-js
//! bundle an interpreter built against WASI 0.2). Such a component is linked with an EMPTY
//! context: no preopened directories, no environment variables, no arguments, stdin closed,
//! stdout and stderr discarded, every socket address denied and name lookup off; only clocks
//! and random numbers work, as interpreters need them. A component that imports only herald's
//! world is linked without any of this (`Runtime` keeps a linker per kind), so a compiled C or
//! Rust plugin still gets nothing but the four host functions.

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::HostState;

/// The WASI packages herald links (version 0.2.x), by import-name prefix. Anything else in the
/// `wasi:` namespace (`wasi:http`, `wasi:keyvalue`, WASI 0.3) is not provided.
const PROVIDED: &[&str] = &[
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// One call's WASI state, built on the first WASI call so world-only plugins never pay for it.
pub struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiState {
    /// The empty context: the builder's defaults already grant nothing but clocks and random;
    /// the network switches are set explicitly so a change of defaults cannot open them.
    /// `stderr`: pass the guest's stderr through (the CLI only).
    fn empty(stderr: bool) -> WasiState {
        let mut builder = WasiCtx::builder();
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        if stderr {
            builder.inherit_stderr();
        }
        let ctx = builder.build();
        WasiState {
            ctx,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stderr = self.guest_stderr;
        let state = self
            .wasi
            .get_or_insert_with(|| Box::new(WasiState::empty(stderr)));
        WasiCtxView {
            ctx: &mut state.ctx,
            table: &mut state.table,
        }
    }
}

/// Adds WASI 0.2 (synchronous bindings: calls already run on blocking threads) to a linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)
}

/// Whether a component imports anything from the `wasi:` namespace.
pub fn imports_wasi(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, _)| name.starts_with("wasi:"))
}

/// Whether herald links this import for a plugin that imports WASI.
pub fn is_provided(name: &str) -> bool {
    let version = name.rsplit_once('@').map(|(_, v)| v);
    PROVIDED.iter().any(|p| name.starts_with(p)) && version.is_none_or(|v| v.starts_with("0.2."))
}
