//! polyhub adapter for xmpp (placeholder until its issue lands).

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

/// Builds `type = "xmpp"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "xmpp"
    }

    fn create(&self, _config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        Err(ConfigError::table("the xmpp adapter is not implemented yet"))
    }
}
