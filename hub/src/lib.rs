//! # polyhub
//!
//! The hub: a router that moves [`polyhub_sdk::Envelope`]s between protocol
//! adapters, the last-value store, config loading, the adapter registry and
//! the plugin loader. The `polyhub` binary (`src/main.rs`) is a thin CLI over
//! this library; `ARCHITECTURE.md` shows how an envelope flows.

pub mod admin;
pub mod auth;
#[cfg(feature = "compare")]
pub mod compare;
pub mod config;
pub mod durable;
pub mod hub;
pub mod last_value;
pub mod plugin;
pub mod registry;
pub mod router;
pub mod routes;
pub mod store;
pub mod trie;

pub use auth::Auth;
pub use config::{Config, ConfigFileError};
pub use hub::{Hub, HubError};
pub use registry::Registry;
pub use router::Router;
pub use trie::TopicTrie;

/// Parses and checks config text with the built-in adapters, then starts a
/// hub on it (convenient for tests and embedding).
pub async fn start_str(text: &str) -> anyhow::Result<Hub> {
    let config = Config::parse(text, "<inline>", &Registry::builtin(), None)?;
    Ok(Hub::start(config).await?)
}
