//! The run loop of the CoAP adapter: binds the UDP socket (and the DTLS
//! one, with `dtls_bind`), starts the push targets and the servers, reports
//! the adapter up, and drains on shutdown.

use std::sync::Arc;

use polyhub_sdk::{Adapter, AdapterContext, AdapterError, AdapterState, DurableOptions};
use tokio::net::UdpSocket;
use tracing::{info, Instrument};

use crate::config::Settings;
use crate::dtls::Sessions;
use crate::push;
use crate::server::{Link, Server};

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

    // One durable queue per push target (at least once, across device
    // outages and hub restarts), including what this adapter's own clients
    // publish.
    let names = push::queue_names(&settings.push);
    for (endpoint, queue) in settings.push.iter().zip(names) {
        let options = DurableOptions {
            max_queue_bytes: None,
            include_own: true,
        };
        let sub = ctx
            .subscribe_durable(&queue, [endpoint.filter.clone()], options)
            .map_err(|e| AdapterError::protocol(format!("cannot subscribe for push: {e}")))?;
        push::start(&ctx, &settings, endpoint.clone(), sub);
    }

    let dtls = match &settings.dtls {
        None => None,
        Some(d) => {
            let socket = UdpSocket::bind(d.bind)
                .await
                .map_err(|source| AdapterError::Bind {
                    addr: d.bind.to_string(),
                    source,
                })?;
            let addr = socket.local_addr()?;
            let sessions = Sessions::new(ctx.clone(), d.keys.clone(), d.limits)
                .map_err(|e| AdapterError::protocol(e.to_string()))?;
            let link = Link::Dtls(Arc::new(sessions));
            info!(adapter = %ctx.name(), addr = %addr, identities = d.keys.len(), "CoAP over DTLS listening.");
            Some(Server::new(
                ctx.clone(),
                settings.clone(),
                Arc::new(socket),
                link,
            ))
        }
    };
    let server = Server::new(ctx.clone(), settings.clone(), Arc::new(socket), Link::Plain);
    ctx.set_state(AdapterState::Up, None);
    info!(adapter = %ctx.name(), addr = %local_addr, push_targets = settings.push.len(), "CoAP server listening.");
    match dtls {
        Some(secure) => {
            tokio::join!(server.serve(), secure.serve());
        }
        None => server.serve().await,
    }
    // The hub waits for the tasks of `ctx.spawn` and reports `Stopped`.
    Ok(())
}
