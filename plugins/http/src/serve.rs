//! The connection loop: hyper's HTTP/1 server on every accepted connection
//! (plain TCP or TLS). Publishes — `POST`/`PUT /topics/{topic}`, the hot
//! path — are handled straight away; everything else goes through the axum
//! router. On shutdown, accepting stops, every connection is asked to close
//! after its current request (Server-Sent Event streams end on the same
//! token), and the loop returns once they have.
//!
//! Limits (see `HttpConfig`): at most `max_connections` open at once (one
//! more is accepted and closed at once, counted); a request head must
//! arrive within `header_timeout_secs` (also the idle keep-alive timeout).
//! Every refusal is counted by reason: the handlers' JSON errors through the
//! [`Rejected`] mark on their response, hyper's own (a malformed request, a
//! header timeout) from the connection's error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::api::{self, PeerName, Rejected, Shared};

/// Counts open connections against `max_connections` (the TLS listener
/// has one of its own for handshakes under way).
#[derive(Debug)]
pub struct ConnectionGate {
    open: AtomicUsize,
    max: usize,
}

impl ConnectionGate {
    /// A gate letting `max` connections in at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionGate {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot, held until the returned guard is dropped; `None` when
    /// `max_connections` are open already.
    pub fn enter(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }
}

/// One open connection's place in its [`ConnectionGate`].
#[derive(Debug)]
pub struct Slot(Arc<ConnectionGate>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the connection loop needs besides the router.
pub(crate) struct Limits {
    pub gate: Arc<ConnectionGate>,
    pub header_timeout: Duration,
}

/// Serves `router` (with the publish fast path of `state`) on `listener`
/// until `shutdown` is cancelled.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    state: Shared,
    limits: Limits,
    shutdown: CancellationToken,
) where
    L: Listener<Addr = SocketAddr>,
{
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Some(slot) = limits.gate.enter() else {
            // Refused at once: closing it is the answer (writing a 503 to
            // a client that may not read could block).
            drop(io);
            state.ctx.reject(
                "too_many_connections",
                Some(&peer.to_string()),
                &"max_connections are open; closed at once",
            );
            continue;
        };
        let (router, state, shutdown) = (router.clone(), state.clone(), shutdown.clone());
        let header_timeout = limits.header_timeout;
        let peer_name = PeerName(Arc::from(peer.to_string()));
        let peer = peer_name.clone();
        connections.spawn(async move {
            let _slot = slot;
            let served = Arc::new(AtomicBool::new(false));
            let service = {
                let (state, served) = (state.clone(), served.clone());
                hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let mut req: Request = req.map(Body::new);
                    req.extensions_mut().insert(peer_name.clone());
                    let routed = match api::fast_publish(&state, req) {
                        Ok(fast) => Ok(fast),
                        Err(req) => Err(router.clone().call(req)),
                    };
                    let (state, served) = (state.clone(), served.clone());
                    async move {
                        let resp = match routed {
                            Ok(fast) => fast.await,
                            Err(routed) => match routed.await {
                                Ok(resp) => resp,
                                Err(never) => match never {},
                            },
                        };
                        if let Some(&Rejected(reason)) = resp.extensions().get::<Rejected>() {
                            state.ctx.reject(reason, None, &resp.status());
                        }
                        served.store(true, Ordering::Relaxed);
                        Ok::<Response, Infallible>(resp)
                    }
                })
            };
            // A client must send a request's head within the header
            // timeout (idle keep-alive connections included), so slow or
            // silent peers do not hold connections forever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                let reason = if e.is_timeout() {
                    if served.load(Ordering::Relaxed) {
                        // Most likely an idle keep-alive connection: not a
                        // refusal, but counted.
                        state.ctx.metrics().incr("idle_timeouts");
                        None
                    } else {
                        Some("header_timeout")
                    }
                } else if e.is_parse_too_large() {
                    Some("headers_too_large")
                } else if e.is_parse() || e.is_parse_version_h2() {
                    Some("malformed_request")
                } else {
                    None
                };
                match reason {
                    Some(reason) => state.ctx.reject(reason, Some(&peer.0), &e),
                    None => tracing::debug!(adapter = %state.ctx.name(), peer = %peer.0, error = %e, "HTTP connection ended with an error."),
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
