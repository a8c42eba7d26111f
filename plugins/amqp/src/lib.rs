//! polyhub adapter for amqp (placeholder until its issue lands).

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

/// Builds `type = "amqp"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "amqp"
    }

    fn create(&self, _config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        Err(ConfigError::table("the amqp adapter is not implemented yet"))
    }
}
