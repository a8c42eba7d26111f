//! The run loop of an HTTP adapter: binds, starts the webhook tasks, serves
//! the API (plain or TLS) and drains everything on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use polyhub_sdk::{Adapter, AdapterContext, AdapterError, AdapterState, DurableOptions};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

use crate::api::{self, ApiState};
use crate::config::{HttpConfig, Webhook};
use crate::serve;
use crate::tls::TlsListener;
use crate::webhook;

/// A validated HTTP adapter, ready to run.
pub struct HttpAdapter {
    pub(crate) config: HttpConfig,
    pub(crate) addr: SocketAddr,
    pub(crate) webhooks: Vec<Webhook>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

#[polyhub_sdk::reexports::async_trait]
impl Adapter for HttpAdapter {
    async fn run(self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError> {
        let HttpAdapter {
            config,
            addr,
            webhooks,
            tls,
        } = *self;
        let name = ctx.name().to_owned();
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| AdapterError::Bind {
                addr: config.bind.clone(),
                source,
            })?;
        let local_addr = tcp.local_addr()?;

        if !webhooks.is_empty() {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("polyhub/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| AdapterError::Other(Box::new(e)))?;
            let names = webhook::queue_names(&webhooks);
            for (hook, queue) in webhooks.into_iter().zip(names) {
                // One durable queue per webhook (at least once, across
                // receiver outages and hub restarts); what this adapter's
                // own clients POST goes to its webhooks too.
                let options = DurableOptions {
                    max_queue_bytes: None,
                    include_own: true,
                };
                let sub = ctx
                    .subscribe_durable(&queue, [hook.filter.clone()], options)
                    .map_err(|e| {
                        AdapterError::protocol(format!("cannot subscribe webhook: {e}"))
                    })?;
                ctx.spawn(webhook::run(hook, client.clone(), sub, ctx.clone()));
            }
        }

        let guarded = ctx.auth_enabled() || !config.tokens.is_empty();
        if config.metrics_auth && !guarded {
            return Err(AdapterError::Config(polyhub_sdk::ConfigError::key(
                "metrics_auth",
                "needs credentials to check: an [auth] section in the hub's config, or `tokens`",
            )));
        }
        let state = Arc::new(ApiState {
            ctx: ctx.clone(),
            tokens: config.tokens.entries(),
            guarded,
            metrics_auth: config.metrics_auth,
            max_body_bytes: config.max_body_bytes,
            keep_alive: Duration::from_secs(config.sse_keep_alive_secs),
            queue_depth: config.queue_depth,
            body_timeout: Duration::from_secs(config.body_timeout_secs),
        });
        let limits = || serve::Limits {
            gate: serve::ConnectionGate::new(config.max_connections),
            header_timeout: Duration::from_secs(config.header_timeout_secs),
        };
        let app = api::router(state.clone());
        let shutdown = ctx.shutdown().clone();

        ctx.set_state(AdapterState::Up, None);
        tracing::info!(adapter = %name, addr = %local_addr, tls = tls.is_some(), "Serving HTTP.");
        match tls {
            None => {
                let listener = tcp.tap_io(|s| {
                    let _ = s.set_nodelay(true);
                });
                serve::serve(listener, app, state, limits(), shutdown).await;
            }
            Some(tls) => {
                let listener = TlsListener::new(
                    tcp,
                    tls,
                    &ctx,
                    serve::ConnectionGate::new(config.max_connections),
                )?;
                serve::serve(listener, app, state, limits(), shutdown).await;
            }
        }
        tracing::info!(adapter = %name, "HTTP server stopped.");
        Ok(())
    }
}
