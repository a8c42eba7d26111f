//! polyhub adapter for coap (placeholder until its issue lands).

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

/// Builds `type = "coap"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "coap"
    }

    fn create(&self, _config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        Err(ConfigError::table("the coap adapter is not implemented yet"))
    }
}
