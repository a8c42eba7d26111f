//! # tcp-line-plugin
//!
//! A polyhub plugin for the plainest IoT devices there are: anything that can
//! open a TCP socket and write a line. Each line is `topic payload\n`
//! (`sensors/t1 21.5`); the hub's envelopes matching `subscribe` go back to
//! every connected device in the same form. Built as a `cdylib` against
//! `polyhub-sdk` only, and loaded with `plugin = "…/libtcp_line_plugin.so"`.
//!
//! - `config.rs`: the `[adapters.config]` table.
//! - `convert.rs`: lines ↔ envelopes, pure and unit-tested.
//! - `adapter.rs`: the listener and the per-device connections.

mod adapter;
mod config;
mod convert;

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

pub use config::TcpLineConfig;

/// Builds `tcp-line` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "tcp-line"
    }

    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        let config: TcpLineConfig = config.parse()?;
        config.validate()?;
        Ok(Box::new(adapter::TcpLineAdapter::new(config)))
    }
}

polyhub_sdk::declare_plugin!(Factory);
