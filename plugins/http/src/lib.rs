//! # polyhub-http
//!
//! The HTTP adapter (`type = "http"`): devices publish with `POST`/`PUT
//! /topics/{topic}` (→ `202`), read a topic's last value with `GET` (`200`
//! with its Content-Type, or `404`), clear it with `DELETE` (→ `204`) and
//! follow topic filters as Server-Sent Events on `GET /events?filter=…`.
//! Matching envelopes can also be pushed to `webhooks`. `GET /health` and
//! `GET /metrics` report on the whole hub. Errors are JSON `{"error": "…"}`.
//! With the hub's `[auth]`, callers are users (HTTP Basic, or `tokens`
//! mapped to users) or anonymous, and every path that reads or writes a
//! topic asks the ACL (`401` / `403` on refusal; see `api.rs`).
//!
//! ```toml
//! [[adapters]]
//! name = "http"
//! type = "http"
//! [adapters.config]
//! bind = "0.0.0.0:8080"
//! webhooks = [{ filter = "alerts/#", url = "http://127.0.0.1:9000/hook" }]
//! ```
//!
//! Files: `config.rs` (settings), `adapter.rs` (run loop), `api.rs` (routes
//! and handlers), `convert.rs` (HTTP ↔ envelope mapping), `hub_status.rs`
//! (`/health` and `/metrics` rendering), `serve.rs` (the connection loop),
//! `webhook.rs`, `tls.rs`. What one client `POST`s reaches this adapter's
//! own SSE streams and webhooks through the router (`include_own`
//! subscriptions), like any other adapter's.

mod adapter;
pub mod api;
pub mod config;
pub mod convert;
pub mod hub_status;
mod serve;
pub mod tls;
mod webhook;

pub use adapter::HttpAdapter;
pub use config::{HttpConfig, TlsConfig, WebhookConfig};
pub use serve::ConnectionGate;

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

/// Builds `type = "http"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "http"
    }

    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        let mut parsed: HttpConfig = config.parse()?;
        if let Some(tls) = &mut parsed.tls {
            tls.cert = config.resolve(&tls.cert);
            tls.key = config.resolve(&tls.key);
        }
        let (addr, webhooks) = parsed.validate()?;
        let tls = parsed.tls.as_ref().map(tls::load).transpose()?;
        Ok(Box::new(HttpAdapter {
            config: parsed,
            addr,
            webhooks,
            tls,
        }))
    }
}
