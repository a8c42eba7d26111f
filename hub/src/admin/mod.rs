//! The `[admin]` listener: a JSON API over the running hub (adapters,
//! connected clients, subscriptions, topics, publish), `/metrics` and
//! `/health` whatever adapters are configured, and a live dashboard at `/`
//! served from the binary (`dashboard.html`, no CDN, no build step).
//!
//! Live updates: one sampler task reads the hub once a second and sends a
//! `tick` (rates, adapters, counts, the latest messages) to every
//! `/api/events` Server-Sent Events stream; nothing on the routing hot path
//! but one `#` subscription whose queue keeps the latest messages.
//!
//! Access: without `[auth]`, open (the listener binds loopback by
//! default); with `[auth]`, HTTP Basic credentials of one of `[auth]
//! admin_users` on every route.

mod api;
mod sampler;

use std::net::SocketAddr;
use std::sync::Arc;

use polyhub_sdk::AdapterContext;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Shared;

/// The peer's address, for any listener with socket addresses (plain TCP
/// and TLS): what `ConnectInfo` gives the handlers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

#[cfg(feature = "http")]
impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, polyhub_http::tls::TlsListener>,
    > for PeerAddr
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'_, polyhub_http::tls::TlsListener>,
    ) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Binds the admin listener on `addr` and serves it (and its sampler) on
/// `tracker` until `token` is cancelled. `ctx` is the internal client the
/// admin publishes as. Returns the bound address.
pub(crate) async fn start(
    addr: SocketAddr,
    hub: Arc<Shared>,
    admin_users: Vec<String>,
    tls: Option<crate::config::AdminTlsConfig>,
    ctx: AdapterContext,
    tracker: &TaskTracker,
    token: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let sampler = sampler::Sampler::start(hub.clone(), &ctx, tracker, token.clone());
    #[cfg(feature = "http")]
    let tls_ctx = ctx.clone();
    let state = Arc::new(api::AdminState {
        hub,
        admin_users,
        ctx,
        sampler,
        token: token.clone(),
    });
    let app = api::router(state);
    let app = app.into_make_service_with_connect_info::<PeerAddr>();
    match tls {
        None => {
            tracker.spawn(async move {
                let serve =
                    axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
                if let Err(e) = serve.await {
                    tracing::warn!(addr = %bound, error = %e, "Admin listener stopped.");
                }
            });
        }
        #[cfg(feature = "http")]
        Some(tls) => {
            // Handshakes off the accept path, at most this many at once.
            const MAX_HANDSHAKES: usize = 256;
            let listener = polyhub_http::tls::TlsListener::new(
                listener,
                tls,
                &tls_ctx,
                polyhub_http::ConnectionGate::new(MAX_HANDSHAKES),
            )?;
            tracker.spawn(async move {
                let serve =
                    axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
                if let Err(e) = serve.await {
                    tracing::warn!(addr = %bound, error = %e, "Admin listener stopped.");
                }
            });
        }
        #[cfg(not(feature = "http"))]
        Some(never) => match never {},
    }
    Ok(bound)
}
