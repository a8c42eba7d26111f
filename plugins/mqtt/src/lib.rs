//! polyhub adapter for mqtt (placeholder until its issue lands).

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

/// Builds `type = "mqtt"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "mqtt"
    }

    fn create(&self, _config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        Err(ConfigError::table("the mqtt adapter is not implemented yet"))
    }
}
