//! polyhub adapter for http (placeholder until its issue lands).

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

/// Builds `type = "http"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "http"
    }

    fn create(&self, _config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        Err(ConfigError::table("the http adapter is not implemented yet"))
    }
}
