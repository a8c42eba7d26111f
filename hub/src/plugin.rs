//! Loading adapters from shared libraries (`plugin = "path.so"`).
//!
//! [`load_factory`] opens the library, checks its header (symbol, magic, ABI
//! major, ABI minor, target) before calling anything else in it, starts it
//! with [`polyhub_sdk::plugin::abi::HostInit`] and wraps its function table in
//! a factory that the rest of the hub uses like a built-in one. Libraries are
//! kept for the life of the process, never unloaded: a library loaded twice
//! (two adapters, or `check` then `run`) is opened once.

mod handshake;
mod host_api;
mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use polyhub_sdk::AdapterFactory;

pub use proxy::PluginFactory;

/// Why a plugin library cannot be used. Every variant names the library
/// and, for version checks, the plugin's value and the hub's side by side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The library could not be opened (missing file, not a shared object,
    /// missing dependency).
    #[error("{path}: cannot load the library: {reason}")]
    Open {
        /// The library path.
        path: String,
        /// The loader's message.
        reason: String,
    },
    /// The library does not export `polyhub_plugin_header`.
    #[error("{path}: not a polyhub plugin: no `{symbol}` symbol (a plugin exports it with polyhub_sdk::declare_plugin!)")]
    NotAPlugin {
        /// The library path.
        path: String,
        /// The symbol looked for.
        symbol: String,
    },
    /// The header's magic bytes are not polyhub's.
    #[error("{path}: not a polyhub plugin header: magic {found}, expected {expected}")]
    Magic {
        /// The library path.
        path: String,
        /// The plugin's bytes.
        found: String,
        /// Ours.
        expected: String,
    },
    /// Another ABI major version.
    #[error("{path}: incompatible plugin ABI: plugin has ABI major {plugin}, this hub has ABI major {hub}; rebuild the plugin against a polyhub-sdk with ABI {hub}.x")]
    AbiMajor {
        /// The library path.
        path: String,
        /// The plugin's major.
        plugin: u32,
        /// The hub's major.
        hub: u32,
    },
    /// A newer ABI minor than the hub knows.
    #[error("{path}: plugin needs a newer hub: plugin has ABI {major}.{plugin}, this hub has ABI {major}.{hub}; upgrade polyhub or build the plugin against an older polyhub-sdk")]
    AbiMinor {
        /// The library path.
        path: String,
        /// The shared major.
        major: u32,
        /// The plugin's minor.
        plugin: u32,
        /// The hub's minor.
        hub: u32,
    },
    /// A header or function table smaller than its ABI version promises.
    #[error(
        "{path}: truncated plugin {what}: plugin has {plugin} bytes, this hub needs at least {hub}"
    )]
    Truncated {
        /// The library path.
        path: String,
        /// Which structure.
        what: &'static str,
        /// The plugin's size.
        plugin: usize,
        /// The size the hub needs.
        hub: usize,
    },
    /// Built for another target.
    #[error("{path}: plugin built for target {plugin}, this hub is {hub}")]
    Target {
        /// The library path.
        path: String,
        /// The plugin's target triple.
        plugin: String,
        /// The hub's.
        hub: String,
    },
    /// The library's `init` failed.
    #[error("{path}: the plugin failed to start: {reason}")]
    Init {
        /// The library path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Libraries opened so far, by canonical path; never unloaded.
static LOADED: Mutex<Vec<(PathBuf, Arc<PluginFactory>)>> = Mutex::new(Vec::new());

/// Loads the adapter factory of the plugin at `path`; `threads` sizes the
/// library's own tokio runtime (the sdk's default when `None`). A library
/// already loaded is not opened again (its runtime keeps its first size).
pub fn load_factory(
    path: &Path,
    threads: Option<usize>,
) -> Result<Arc<dyn AdapterFactory>, PluginError> {
    let shown = path.display().to_string();
    let canonical = path.canonicalize().map_err(|e| PluginError::Open {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut loaded = LOADED.lock();
    if let Some((_, f)) = loaded.iter().find(|(p, _)| *p == canonical) {
        return Ok(f.clone());
    }
    let plugin = handshake::open(&canonical, &shown, threads.unwrap_or(0))?;
    tracing::info!(plugin = %shown, kind = %plugin.kind, sdk = %plugin.sdk_version, rustc = %plugin.rustc, "Loaded plugin.");
    let factory = Arc::new(PluginFactory::new(Arc::new(plugin)));
    loaded.push((canonical, factory.clone()));
    Ok(factory)
}
