//! The sandbox: one wasmtime `Engine` with the pooling allocator and epoch interruption, a
//! ticker thread that advances the epoch, and the two operations on components: `compile`
//! (validate against a supported world, then pre-instantiate) and `call` (a fresh `Store` per
//! call, bounded by a deadline and a memory cap; bots are called through `bot::call`
//! with the same store). Both block: callers run them on blocking threads, never on the
//! async runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter,
    Store, Trap,
};

mod warm;

use super::cache::{hex, DiskCache};
use super::{bot_v0_1, bot_v0_2, v0_1, wasi, HostState, PluginError, PluginOutput, PluginRequest};
use crate::config::PluginsConfig;

/// How often the ticker advances the epoch: the deadline's resolution.
const TICK: Duration = Duration::from_millis(10);

/// Table elements a plugin may grow to (C function-pointer tables are tiny).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Bytes of a freed instance's linear memory (and of its tables) that stay mapped in its
/// pool slot: the pages it dirtied are reset in place (found with Linux's PAGEMAP_SCAN where
/// the kernel has it, ≥ 6.7; else the first bytes are memset) instead of being unmapped, so
/// freeing costs no `madvise` and the next instance in the slot takes no page faults. Those
/// two were most of a small C plugin call's time (benches/plugins.rs). Beyond these bytes,
/// memory is unmapped as before, so a large guest gives its pages back.
const KEEP_RESIDENT: usize = 1024 * 1024;
const TABLE_KEEP_RESIDENT: usize = 64 * 1024;

/// A component that passed validation, pre-instantiated for its world.
pub struct Compiled {
    pub guest: Guest,
    pub world: &'static str,
    pub sha256: String,
    pub size: usize,
    /// The component imports WASI (an interpreter's toolchain): linked with an empty context,
    /// and called in warm instances.
    pub wasi: bool,
    warm: warm::WarmPool,
}

/// The world a component implements, pre-instantiated: what it can be called as.
pub enum Guest {
    /// `herald:adapter@0.1.0`: a robot's webhooks.
    Adapter(v0_1::AdapterPre<HostState>),
    /// `herald:bot@0.1.0`: a bot's conversation events.
    Bot01(bot_v0_1::BotPre<HostState>),
    /// `herald:bot@0.2.0`: the same, with replies that name a thread.
    Bot02(bot_v0_2::BotPre<HostState>),
}

impl Guest {
    /// Accepts a component of any world herald serves, naming the world.
    fn of(instance_pre: wasmtime::component::InstancePre<HostState>) -> Result<Guest, String> {
        let adapter = match v0_1::AdapterPre::new(instance_pre.clone()) {
            Ok(pre) => return Ok(Guest::Adapter(pre)),
            Err(e) => e,
        };
        let bot01 = match bot_v0_1::BotPre::new(instance_pre.clone()) {
            Ok(pre) => return Ok(Guest::Bot01(pre)),
            Err(e) => e,
        };
        match bot_v0_2::BotPre::new(instance_pre) {
            Ok(pre) => Ok(Guest::Bot02(pre)),
            Err(bot02) => Err(format!(
                "the component does not implement a world herald serves: not {} ({adapter}), \
                 not {} ({bot01}), not {} ({bot02})",
                v0_1::WORLD,
                bot_v0_1::WORLD,
                bot_v0_2::WORLD
            )),
        }
    }

    pub fn world(&self) -> &'static str {
        match self {
            Guest::Adapter(_) => v0_1::WORLD,
            Guest::Bot01(_) => bot_v0_1::WORLD,
            Guest::Bot02(_) => bot_v0_2::WORLD,
        }
    }

    /// A bot plugin, of any bot world version.
    pub fn is_bot(&self) -> bool {
        matches!(self, Guest::Bot01(_) | Guest::Bot02(_))
    }
}

pub struct Runtime {
    engine: Engine,
    /// Herald's world only: what a component that imports nothing else is linked with.
    linker: Linker<HostState>,
    /// Herald's world plus WASI with an empty context, for components that import WASI.
    wasi_linker: Linker<HostState>,
    cache: DiskCache,
    deadline_ticks: u64,
    pub deadline_ms: u64,
    pub memory_bytes: usize,
    ticker_stop: Arc<AtomicBool>,
    warm_budget: Arc<warm::Budget>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker. `cache_dir: None` keeps nothing on disk.
    pub fn new(
        settings: &PluginsConfig,
        cache_dir: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Runtime> {
        let memory_bytes = settings.memory_mib as usize * 1024 * 1024;
        let engine = Engine::new(&engine_config(settings, memory_bytes))
            .map_err(|e| anyhow::anyhow!("plugin engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        v0_1::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("plugin linker: {e}"))?;
        bot_v0_1::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("plugin linker: {e}"))?;
        bot_v0_2::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("plugin linker: {e}"))?;
        let mut wasi_linker = linker.clone();
        wasi::add_to_linker(&mut wasi_linker)
            .map_err(|e| anyhow::anyhow!("plugin WASI linker: {e}"))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), ticker_stop.clone())?;
        Ok(Runtime {
            cache: DiskCache::new(cache_dir, &engine),
            deadline_ticks: settings.deadline_ms.div_ceil(TICK.as_millis() as u64) + 1,
            deadline_ms: settings.deadline_ms,
            memory_bytes,
            engine,
            linker,
            wasi_linker,
            ticker_stop,
            warm_budget: warm::Budget::new(settings.max_concurrent_calls),
        })
    }

    /// Validates `wasm` as a plugin of a supported world and prepares it for calls.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, PluginError> {
        match wasm.get(..8) {
            Some(b"\0asm\x0d\0\x01\0") => {}
            Some(b"\0asm\x01\0\0\0") => {
                return Err(PluginError::Invalid(
                    "this is a core WebAssembly module, not a component: wrap it with \
                     `wasm-tools component new` (see README, WASM plugins)"
                        .into(),
                ))
            }
            _ => {
                return Err(PluginError::Invalid(
                    "not a WebAssembly component (the body must start with \\0asm and the \
                     component layer)"
                        .into(),
                ))
            }
        }
        let sha256 = hex(&Sha256::digest(wasm));
        let component = self
            .cache
            .component(&self.engine, wasm, &sha256)
            .map_err(|e| PluginError::Invalid(format!("not a valid component: {e}")))?;
        let wasi = wasi::imports_wasi(&self.engine, &component);
        let linker = if wasi {
            &self.wasi_linker
        } else {
            &self.linker
        };
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Invalid(self.import_problem(&component, e)))?;
        let guest = Guest::of(instance_pre).map_err(PluginError::Invalid)?;
        let compiled = Compiled {
            world: guest.world(),
            guest,
            sha256,
            size: wasm.len(),
            wasi,
            warm: warm::WarmPool::new(self.warm_budget.clone()),
        };
        self.instantiate(&compiled).map_err(|e| match e {
            PluginError::Memory(_) | PluginError::Trap(_) | PluginError::Deadline(_) => {
                PluginError::Invalid(format!("the component cannot start: {e}"))
            }
            other => other,
        })?;
        Ok(compiled)
    }

    /// Instantiates a plugin without calling it, within the same limits as a call: at upload
    /// this refuses a component that cannot start (too much initial memory, a trapping start
    /// function); the benchmark measures it.
    pub fn instantiate(&self, compiled: &Compiled) -> Result<(), PluginError> {
        let mut store = self.store(HostState::new("probe", Default::default()));
        let instantiated = match &compiled.guest {
            Guest::Adapter(pre) => pre.instantiate(&mut store).map(drop),
            Guest::Bot01(pre) => pre.instantiate(&mut store).map(drop),
            Guest::Bot02(pre) => pre.instantiate(&mut store).map(drop),
        };
        instantiated.map_err(|e| self.classify(e, store.data()))
    }

    /// Explains a failed link: the imports herald does not provide, by name.
    fn import_problem(&self, component: &Component, e: wasmtime::Error) -> String {
        let ty = component.component_type();
        let foreign: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .filter(|name| {
                !name.starts_with("herald:adapter/")
                    && !name.starts_with("herald:bot/")
                    && !wasi::is_provided(name)
            })
            .collect();
        if foreign.is_empty() {
            format!("the component's imports do not match {}: {e}", v0_1::WORLD)
        } else {
            format!(
                "the component imports {}, which herald does not provide: plugins get only \
                 herald:adapter/host@0.1.0 or herald:bot/host@0.1.0 (0.2.0) and, when their toolchain \
                 needs it, WASI 0.2 with an empty context (no files, environment or network)",
                foreign.join(", ")
            )
        }
    }

    /// Runs `handle` in a fresh instance (a warm one for an interpreted guest, see `warm`),
    /// within the deadline and the memory cap.
    pub fn call(
        &self,
        compiled: &Compiled,
        state: HostState,
        request: &PluginRequest,
    ) -> Result<PluginOutput, PluginError> {
        let Guest::Adapter(pre) = &compiled.guest else {
            return Err(wrong_world(compiled, v0_1::WORLD));
        };
        if compiled.wasi {
            return self.call_warm(compiled, pre, state, request);
        }
        let mut store = self.store(state);
        let request = request.into();
        let result = pre
            .instantiate(&mut store)
            .and_then(|adapter| adapter.call_handle(&mut store, &request));
        match result {
            Ok(result) => v0_1::output(result),
            Err(e) => Err(self.classify(e, store.data())),
        }
    }

    /// A fresh store for one call: the memory cap and the deadline armed.
    pub(super) fn store(&self, state: HostState) -> Store<HostState> {
        let mut store = Store::new(&self.engine, state);
        store.data_mut().limits.max_memory = self.memory_bytes;
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        store
    }

    /// Names what went wrong inside the sandbox.
    pub(super) fn classify(&self, e: wasmtime::Error, state: &HostState) -> PluginError {
        if state.limits.hit {
            return PluginError::Memory(self.memory_bytes / (1024 * 1024));
        }
        if e.is::<wasmtime::PoolConcurrencyLimitError>() {
            return PluginError::Busy;
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Deadline(self.deadline_ms),
            Some(trap) => PluginError::Trap(trap.to_string()),
            None => PluginError::Trap(format!("{e}")),
        }
    }
}

/// A plugin called as a world it does not implement (a bot plugin named by a robot, or the
/// other way round); the API refuses such links, so this is a plugin swapped underneath.
pub(super) fn wrong_world(compiled: &Compiled, wanted: &str) -> PluginError {
    PluginError::Invalid(format!(
        "the plugin implements {}, not {wanted}",
        compiled.world
    ))
}

fn engine_config(settings: &PluginsConfig, memory_bytes: usize) -> Config {
    let instances = settings.max_concurrent_calls.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // An interpreted guest (componentize-py) is ~14 core instances; a C guest 2–3.
    pool.total_component_instances(instances)
        .total_core_instances(instances * 16)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .max_memory_size(memory_bytes)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(512 * 1024)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Advances the engine's epoch every `TICK` until the runtime is dropped.
fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            }
        })?;
    Ok(())
}

/// The per-call memory cap. A grow past it traps (instead of returning -1 to a guest that
/// may not check) and is remembered, so the error names the cap.
#[derive(Debug, Default)]
pub struct Limits {
    pub max_memory: usize,
    pub hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.max_memory);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
