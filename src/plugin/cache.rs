//! The on-disk cache of compiled components: compiling with Cranelift takes milliseconds for a
//! C plugin and seconds for an interpreter-based one, loading the compiled form well under one.
//! A file is keyed by the wasm's sha256, the wasmtime version and a hash of the engine's
//! compilation settings, so a changed engine never loads a stale artifact. Each file carries a
//! sha256 of its own payload, checked before loading: a torn or tampered file is recompiled.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// The pinned wasmtime line (Cargo.toml); part of every cache key.
pub const WASMTIME_VERSION: &str = "48.0.8";

pub struct DiskCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl DiskCache {
    /// A cache in `dir`; `None` compiles every time (the CLI does, to leave nothing behind).
    pub fn new(dir: Option<PathBuf>, engine: &Engine) -> DiskCache {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize()[..12]);
        DiskCache { dir, engine_key }
    }

    /// The compiled component for `wasm` (whose sha256 is `sha256`), from the cache when it
    /// holds a sound copy, compiled (and stored) otherwise.
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<Component> {
        let Some(path) = self.path(sha256) else {
            return Component::new(engine, wasm);
        };
        if let Some(component) = load(engine, &path) {
            return Ok(component);
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache a compiled plugin");
        }
        Ok(component)
    }

    fn path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!(
            "{sha256}-wasmtime{WASMTIME_VERSION}-{}.cwasm",
            self.engine_key
        )))
    }
}

/// Loads a cached artifact whose checksum matches; anything else is a miss.
fn load(engine: &Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    let (sum, payload) = bytes.split_at_checked(32)?;
    if Sha256::digest(payload).as_slice() != sum {
        tracing::warn!(path = %path.display(), "cached plugin artifact is damaged; recompiling");
        return None;
    }
    deserialize(engine, payload)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "stale plugin artifact"))
        .ok()
}

/// The one unsafe call in herald. wasmtime cannot check that serialized machine code is what
/// it once wrote, so `Component::deserialize` is unsafe; the bytes here come only from
/// `store` below, in herald's own cache directory, and their sha256 was just checked, so they
/// are exactly what `Component::serialize` produced. wasmtime itself then refuses an artifact
/// from another version or engine configuration.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, payload: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: see above: the payload is an unmodified `Component::serialize` output.
    unsafe { Component::deserialize(engine, payload) }
}

/// Writes checksum + artifact to a temporary file and renames it into place, so a reader
/// never sees half a file.
fn store(path: &Path, component: &Component) -> anyhow::Result<()> {
    let payload = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("serialize: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut bytes = Sha256::digest(&payload).to_vec();
    bytes.extend_from_slice(&payload);
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Feeds `Hash` output into sha256, for a key that is stable across processes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0 // unused: the digest is read from the inner state
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

pub use crate::robot::hex;

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).expect("engine")
    }

    #[test]
    fn a_damaged_artifact_is_recompiled_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine();
        let cache = DiskCache::new(Some(dir.path().to_path_buf()), &engine);
        let wasm = wat::parse_str("(component)").expect("wat");
        let sha = hex(&Sha256::digest(&wasm));
        cache.component(&engine, &wasm, &sha).expect("compiles");
        let path = cache.path(&sha).expect("path");
        let first = std::fs::read(&path).expect("cached");
        assert!(load(&engine, &path).is_some(), "a sound artifact loads");
        let mut damaged = first.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        std::fs::write(&path, &damaged).expect("write");
        assert!(
            load(&engine, &path).is_none(),
            "a damaged artifact is a miss"
        );
        cache.component(&engine, &wasm, &sha).expect("recompiles");
        assert!(
            load(&engine, &path).is_some(),
            "the rewritten artifact loads"
        );
    }
}
