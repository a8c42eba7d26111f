//! The run loop of the CoAP adapter: binds the UDP socket, starts the push
//! targets and the server, reports the adapter up, and drains on shutdown.

use std::sync::Arc;

use polyhub_sdk::{
    Adapter, AdapterContext, AdapterError, AdapterState, SubscribeOptions, TopicFilter,
};
use tokio::net::UdpSocket;
use tracing::{info, Instrument};

use crate::config::Settings;
use crate::push::{self, PushQueue};
use crate::server::Server;

/// A configured CoAP adapter, ready to run.
#[derive(Debug)]
pub struct CoapAdapter {
    settings: Arc<Settings>,
}

impl CoapAdapter {
    /// An adapter with validated settings.
    pub fn new(settings: Settings) -> Self {
        CoapAdapter {
            settings: Arc::new(settings),
        }
    }
}

#[async_trait::async_trait]
impl Adapter for CoapAdapter {
    async fn run(self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError> {
        let span = ctx.span().clone();
        run(self.settings, ctx).instrument(span).await
    }
}

async fn run(settings: Arc<Settings>, ctx: AdapterContext) -> Result<(), AdapterError> {
    let socket = UdpSocket::bind(settings.bind)
        .await
        .map_err(|source| AdapterError::Bind {
            addr: settings.bind.to_string(),
            source,
        })?;
    let local_addr = socket.local_addr()?;

    let queues: Arc<Vec<PushQueue>> = Arc::new(
        settings
            .push
            .iter()
            .map(|p| push::start(&ctx, &settings, p.clone()))
            .collect(),
    );
    if !queues.is_empty() {
        let filters: Vec<TopicFilter> = queues.iter().map(|q| q.endpoint.filter.clone()).collect();
        // Including what this adapter's own clients publish.
        let options = SubscribeOptions {
            depth: None,
            include_own: true,
            ..SubscribeOptions::default()
        };
        let mut sub = ctx
            .subscribe_with(filters, options)
            .map_err(|e| AdapterError::protocol(format!("cannot subscribe for push: {e}")))?;
        let (ctx2, queues2) = (ctx.clone(), queues.clone());
        ctx.spawn(async move {
            loop {
                let envelope = tokio::select! {
                    _ = ctx2.shutdown().cancelled() => break,
                    e = sub.recv() => match e { Some(e) => e, None => break },
                };
                for q in queues2
                    .iter()
                    .filter(|q| q.endpoint.filter.matches(&envelope.topic))
                {
                    q.push(&ctx2, envelope.clone()).await;
                }
            }
        });
    }

    let server = Server::new(ctx.clone(), settings.clone(), Arc::new(socket));
    ctx.set_state(AdapterState::Up, None);
    info!(adapter = %ctx.name(), addr = %local_addr, push_targets = queues.len(), "CoAP server listening.");
    server.serve().await;
    // The hub waits for the tasks of `ctx.spawn` and reports `Stopped`.
    Ok(())
}
