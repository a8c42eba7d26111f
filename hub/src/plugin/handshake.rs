//! Opening a plugin library and checking its header, in order, before any
//! other call into it: symbol, magic, ABI major, ABI minor, header size,
//! target; then `init`, and the size of the function table it returns.

use std::ffi::c_void;
use std::path::Path;

use polyhub_sdk::plugin::abi::{
    self, status, HeaderFn, HostInit, PluginApi, PluginHeader, StrView,
};

use super::host_api;
use super::PluginError;

/// A library that passed the handshake, with its function table.
pub(crate) struct LoadedPlugin {
    /// The path as configured, for messages.
    pub path: String,
    /// The adapter kind it provides.
    pub kind: String,
    /// Its sdk version (informational).
    pub sdk_version: String,
    /// The rustc that built it (informational).
    pub rustc: String,
    /// Its function table.
    pub api: PluginApi,
    /// Keeps the library mapped for the life of the process.
    _library: libloading::Library,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Shows magic bytes as text where printable, else escaped.
fn show_magic(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// Reads a header string.
///
/// # Safety
/// The view must point into the loaded library (or be null).
unsafe fn header_text(view: StrView) -> String {
    // SAFETY: forwarded.
    unsafe { view.bytes() }
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// The most verbose level the hub's subscriber logs, as the ABI numbers it.
fn max_log_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// Opens `path` and runs the handshake; `shown` is the path as configured.
pub(crate) fn open(path: &Path, shown: &str, threads: usize) -> Result<LoadedPlugin, PluginError> {
    let err_path = || shown.to_owned();
    // SAFETY: loading a library runs its initializers; that is the one thing
    // a plugin path in the config is trusted with.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| PluginError::Open {
        path: err_path(),
        reason: e.to_string(),
    })?;
    // SAFETY: the symbol's type is the one declare_plugin! exports; a
    // library that exports the name with another type is refused by the
    // magic check below before anything else is read.
    let header_fn: HeaderFn = unsafe { library.get::<HeaderFn>(abi::HEADER_SYMBOL.as_bytes()) }
        .map(|s| *s)
        .map_err(|_| PluginError::NotAPlugin {
            path: err_path(),
            symbol: abi::HEADER_SYMBOL.to_owned(),
        })?;
    // SAFETY: the exported function takes nothing and returns a pointer.
    let header: *const PluginHeader = unsafe { header_fn() };
    if header.is_null() {
        return Err(PluginError::Magic {
            path: err_path(),
            found: "(null header)".to_owned(),
            expected: show_magic(&abi::MAGIC),
        });
    }
    // SAFETY: every ABI version starts with the magic bytes.
    let magic: [u8; 8] = unsafe { std::ptr::read_unaligned(header as *const [u8; 8]) };
    if magic != abi::MAGIC {
        return Err(PluginError::Magic {
            path: err_path(),
            found: show_magic(&magic),
            expected: show_magic(&abi::MAGIC),
        });
    }
    // SAFETY: magic, header size, major and minor keep their place in every
    // ABI version.
    let (size, major, minor) = unsafe {
        (
            (*header).header_size as usize,
            (*header).abi_major,
            (*header).abi_minor,
        )
    };
    if major != abi::ABI_MAJOR {
        return Err(PluginError::AbiMajor {
            path: err_path(),
            plugin: major,
            hub: abi::ABI_MAJOR,
        });
    }
    if minor > abi::ABI_MINOR {
        return Err(PluginError::AbiMinor {
            path: err_path(),
            major,
            plugin: minor,
            hub: abi::ABI_MINOR,
        });
    }
    let needed = std::mem::size_of::<PluginHeader>();
    if size < needed {
        return Err(PluginError::Truncated {
            path: err_path(),
            what: "header",
            plugin: size,
            hub: needed,
        });
    }
    // SAFETY: same major, full size: the whole header is readable, and its
    // strings point into the library, which stays mapped.
    let header = unsafe { &*header };
    let (target, kind, sdk_version, rustc) = unsafe {
        (
            header_text(header.target),
            header_text(header.kind),
            header_text(header.sdk_version),
            header_text(header.rustc),
        )
    };
    if target != abi::TARGET {
        return Err(PluginError::Target {
            path: err_path(),
            plugin: target,
            hub: abi::TARGET.to_owned(),
        });
    }

    let init = HostInit {
        size: std::mem::size_of::<HostInit>(),
        abi_major: abi::ABI_MAJOR,
        abi_minor: abi::ABI_MINOR,
        worker_threads: threads,
        max_log_level: max_log_level(),
        log_ctx: host_api::log_context(shown, &kind) as *const c_void,
        log: host_api::plugin_log,
    };
    let mut api: *const PluginApi = std::ptr::null();
    // SAFETY: the header passed every check; init takes our HostInit and an
    // out pointer, both valid for the call.
    let code = unsafe { (header.init)(&init, &mut api) };
    if code != status::OK || api.is_null() {
        let reason = match code {
            status::PANIC => "init panicked".to_owned(),
            status::ERROR if kind.is_empty() => {
                "the plugin's factory could not be built (it panicked)".to_owned()
            }
            status::ERROR => "its tokio runtime could not be started".to_owned(),
            other => format!("init returned status {other}"),
        };
        return Err(PluginError::Init {
            path: err_path(),
            reason,
        });
    }
    // SAFETY: init returned a table of the plugin's; its size field comes
    // first in every version.
    let api_size = unsafe { (*api).size };
    let needed = std::mem::size_of::<PluginApi>();
    if api_size < needed {
        return Err(PluginError::Truncated {
            path: err_path(),
            what: "function table",
            plugin: api_size,
            hub: needed,
        });
    }
    // SAFETY: at least our size, static in the library.
    let api = unsafe { std::ptr::read(api) };
    Ok(LoadedPlugin {
        path: shown.to_owned(),
        kind,
        sdk_version,
        rustc,
        api,
        _library: library,
    })
}
