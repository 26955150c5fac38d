//! Hand-written plugins for the sandbox tests: core modules in WAT, wrapped into components
//! for `herald:adapter@0.1.0` with `wit-component`, exactly as `wasm-tools component new`
//! does for a C or Rust guest. Layouts follow the component model's canonical ABI.

use std::path::Path;

/// Where the return area (a `result<output, rejection>`) and one `message` record live.
const RET: u32 = 8192;
const MSG: u32 = 4096;
const EVENT: u32 = 1024;
const TEXT: u32 = 1280;

fn le(n: u32) -> String {
    n.to_le_bytes()
        .iter()
        .map(|b| format!("\\{b:02x}"))
        .collect()
}

/// A core module with memory, a bump `cabi_realloc`, `handle` whose body is `body`, and extra
/// imports/data.
fn module(imports: &str, data: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $ok
      (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (drop (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap)
        (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))))
    (local.get $p))
  {data}
  (func (export "handle") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    {body})
)"#
    )
}

/// Data for an `ok` output with one text message `event`/`text` (the text may be overwritten
/// at run time at MSG+12/MSG+16).
fn one_text_message(event: &str, text: &str) -> String {
    format!(
        r#"(data (i32.const {EVENT}) "{event}")
  (data (i32.const {TEXT}) "{text}")
  (data (i32.const {MSG}) "{}{}\00\00\00\00{}{}")
  (data (i32.const {RET}) "\00\00\00\00{}{}")"#,
        le(EVENT),
        le(event.len() as u32),
        le(TEXT),
        le(text.len() as u32),
        le(MSG),
        le(1),
    )
}

/// Posts one text message.
pub fn text_plugin(text: &str) -> Vec<u8> {
    component(&module(
        "",
        &one_text_message("test.posted", text),
        &format!("(i32.const {RET})"),
    ))
}

/// Posts the robot's config value `key` as a text message (none → an empty text, which is
/// invalid output).
pub fn config_plugin(key: &str) -> Vec<u8> {
    let imports =
        r#"(import "herald:adapter/host@0.1.0" "config" (func $config (param i32 i32 i32)))"#;
    let data = format!(
        "{}\n  (data (i32.const 2048) \"{key}\")",
        one_text_message("test.config", "")
    );
    let body = format!(
        "(call $config (i32.const 2048) (i32.const {}) (i32.const 3072))
    (i32.store (i32.const {}) (i32.load (i32.const 3076)))
    (i32.store (i32.const {}) (i32.load (i32.const 3080)))
    (i32.const {RET})",
        key.len(),
        MSG + 12,
        MSG + 16
    );
    component(&module(imports, &data, &body))
}

/// Rejects every request with `status` and `message`.
pub fn rejecting_plugin(status: u16, message: &str) -> Vec<u8> {
    let data = format!(
        r#"(data (i32.const {TEXT}) "{message}")
  (data (i32.const {RET}) "\01\00\00\00{}\00\00{}{}")"#,
        &le(status as u32)[..6],
        le(TEXT),
        le(message.len() as u32)
    );
    component(&module("", &data, &format!("(i32.const {RET})")))
}

/// Never returns.
pub fn spinning_plugin() -> Vec<u8> {
    component(&module("", "", "(loop $spin (br $spin)) (i32.const 0)"))
}

/// Grows its memory until something stops it.
pub fn memory_bomb() -> Vec<u8> {
    component(&module(
        "",
        "",
        "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable",
    ))
}

/// Traps at once (what a C `abort()` or a Rust panic becomes).
pub fn trapping_plugin() -> Vec<u8> {
    component(&module("", "", "unreachable"))
}

/// Imports `wasi:cli/environment@{version}` besides the host interface and calls
/// `get-arguments`: posts a message when the list is empty, traps otherwise. WASI 0.2 is linked
/// (with an empty context), so a 0.2 version is accepted and posts; 0.3 is refused at upload.
pub fn wasi_plugin(version: &str) -> Vec<u8> {
    let wasi = format!(
        "package wasi:cli@{version};\ninterface environment {{\n  get-arguments: func() -> list<string>;\n}}\n"
    );
    let world = format!(
        "package test:hostile;\nworld hostile {{\n  include herald:adapter/adapter@0.1.0;\n  import wasi:cli/environment@{version};\n}}\n"
    );
    let imports = format!(
        r#"(import "wasi:cli/environment@{version}" "get-arguments" (func $args (param i32)))"#
    );
    // The list comes back as (pointer, length) at 3072: any argument at all traps.
    let body = format!(
        "(call $args (i32.const 3072)) \
         (if (i32.ne (i32.load (i32.const 3076)) (i32.const 0)) (then unreachable)) \
         (i32.const {RET})"
    );
    let core = module(
        &imports,
        &one_text_message("test.wasi", "no arguments"),
        &body,
    );
    build(
        &core,
        &[("wasi.wit", &wasi), ("hostile.wit", &world)],
        "test:hostile/hostile",
    )
}

/// Wraps a core module into a component of the adapter world.
pub fn component(core_wat: &str) -> Vec<u8> {
    build(core_wat, &[], "herald:adapter/adapter@0.1.0")
}

fn build(core_wat: &str, extra_wit: &[(&str, &str)], world: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/wit/adapter-0.1.0");
    let mut resolve = wit_parser::Resolve::default();
    let (herald, _) = resolve.push_dir(&dir).expect("herald WIT");
    let mut packages = vec![herald];
    for (name, text) in extra_wit {
        packages.push(resolve.push_str(name, text).expect("extra WIT"));
    }
    let world = resolve.select_world(&packages, Some(world)).expect("world");
    let mut module = wat::parse_str(core_wat).expect("core WAT");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .expect("embed WIT");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("core module")
        .validate(true)
        .encode()
        .expect("component")
}
