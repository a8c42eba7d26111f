//! Loading adapters from shared libraries (`plugin = "path.so"`).
//!
//! Placeholder until the dynamic-plugin issue lands: every plugin entry is
//! refused with a clear error.

use std::path::Path;
use std::sync::Arc;

use polyhub_sdk::AdapterFactory;

/// Why a plugin library cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// This build cannot load plugins.
    #[error("{path}: this build of polyhub cannot load plugins yet")]
    Unsupported {
        /// The library path.
        path: String,
    },
}

/// Loads the adapter factory of the plugin at `path`.
pub fn load_factory(
    path: &Path,
    _threads: Option<usize>,
) -> Result<Arc<dyn AdapterFactory>, PluginError> {
    Err(PluginError::Unsupported {
        path: path.display().to_string(),
    })
}
