//! The connection loop: hyper's HTTP/1 server on every accepted connection
//! (plain TCP or TLS). Publishes — `POST`/`PUT /topics/{topic}`, the hot
//! path — are handled straight away; everything else goes through the axum
//! router. On shutdown, accepting stops, every connection is asked to close
//! after its current request (Server-Sent Event streams end on the same
//! token), and the loop returns once they have.

use std::convert::Infallible;
use std::net::SocketAddr;
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

use crate::api::{self, PeerName, Shared};

/// How long a connection may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` (with the publish fast path of `state`) on `listener`
/// until `shutdown` is cancelled.
pub async fn serve<L>(mut listener: L, router: Router, state: Shared, shutdown: CancellationToken)
where
    L: Listener<Addr = SocketAddr>,
{
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (router, state, shutdown) = (router.clone(), state.clone(), shutdown.clone());
        let peer = PeerName(Arc::from(peer.to_string()));
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut req: Request = req.map(Body::new);
                req.extensions_mut().insert(peer.clone());
                let routed = match api::fast_publish(&state, req) {
                    Ok(fast) => Ok(fast),
                    Err(req) => Err(router.clone().call(req)),
                };
                async move {
                    Ok::<Response, Infallible>(match routed {
                        Ok(fast) => fast.await,
                        Err(routed) => match routed.await {
                            Ok(resp) => resp,
                            Err(never) => match never {},
                        },
                    })
                }
            });
            // A client must send a request's headers within 30 s (idle
            // keep-alive connections included), so slow or silent peers
            // do not hold connections forever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
