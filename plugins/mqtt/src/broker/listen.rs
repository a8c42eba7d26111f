//! Listeners: plain TCP, TLS (rustls), and WebSocket over either ([`ws`]).
//! Each accepted connection counts
//! against `max_connections` from accept until it closes; past the limit a
//! connection is closed at once and counted.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use polyhub_sdk::AdapterError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{session, ws, Broker};
use crate::config::TlsSettings;
use crate::error::MqttError;

/// Time a device has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream a device speaks MQTT over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Holds one place of `max_connections` until dropped.
pub(crate) struct ConnGuard(Arc<Broker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place for one more connection, or `None` past `max_connections`
/// (counted as `max_connections`).
fn admit(broker: &Arc<Broker>) -> Option<ConnGuard> {
    let n = broker.connections.fetch_add(1, Ordering::Relaxed);
    let guard = ConnGuard(broker.clone());
    if n >= broker.settings.max_connections {
        broker.rejected("max_connections");
        return None;
    }
    Some(guard)
}

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// The next connection the broker admits (under `max_connections`), tuned;
/// refused connections are closed and counted by `admit`.
async fn accept_admitted(
    broker: &Arc<Broker>,
    l: &TcpListener,
) -> (TcpStream, SocketAddr, ConnGuard) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little.
                warn!(adapter = %broker.ctx.name(), error = %e, "Accept failed.");
                broker.ctx.metrics().record_error();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(guard) = admit(broker) else {
            drop(stream);
            continue;
        };
        tune(&stream);
        return (stream, peer, guard);
    }
}

/// Accepts plain TCP connections until the listener fails.
pub(crate) async fn tcp_loop(broker: Arc<Broker>, l: TcpListener) -> Result<(), AdapterError> {
    loop {
        let (stream, peer, guard) = accept_admitted(&broker, &l).await;
        tokio::spawn(session::serve(
            broker.clone(),
            Box::new(stream),
            peer,
            guard,
        ));
    }
}

/// Accepts TLS connections until the listener fails; handshakes run off the
/// accept path.
pub(crate) async fn tls_loop(
    broker: Arc<Broker>,
    l: TcpListener,
    acceptor: TlsAcceptor,
) -> Result<(), AdapterError> {
    loop {
        let (stream, peer, guard) = accept_admitted(&broker, &l).await;
        let acceptor = acceptor.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => session::serve(broker, Box::new(tls), peer, guard).await,
                Ok(Err(e)) => {
                    debug!(adapter = %broker.ctx.name(), %peer, error = %e, "TLS handshake failed.");
                    broker.rejected("tls_handshake");
                }
                Err(_) => broker.rejected("tls_handshake"),
            }
        });
    }
}

/// Accepts MQTT-over-WebSocket connections (over TLS with `tls`) until the
/// listener fails; handshakes run off the accept path. A failed upgrade is
/// counted as `ws_handshake` (or `tls_handshake` for the TLS under it).
pub(crate) async fn ws_loop(
    broker: Arc<Broker>,
    l: TcpListener,
    tls: Option<TlsAcceptor>,
) -> Result<(), AdapterError> {
    loop {
        let (stream, peer, guard) = accept_admitted(&broker, &l).await;
        let tls = tls.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            let max = broker.settings.max_packet;
            let upgrade = async {
                let io: Box<dyn Io> = match tls {
                    Some(acceptor) => {
                        let tls = acceptor
                            .accept(stream)
                            .await
                            .map_err(|e| ("tls_handshake", e.to_string()))?;
                        Box::new(
                            ws::accept(tls, max)
                                .await
                                .map_err(|e| ("ws_handshake", e.to_string()))?,
                        )
                    }
                    None => Box::new(
                        ws::accept(stream, max)
                            .await
                            .map_err(|e| ("ws_handshake", e.to_string()))?,
                    ),
                };
                Ok::<_, (&str, String)>(io)
            };
            let io = tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade)
                .await
                .unwrap_or_else(|_| Err(("ws_handshake", "timed out".to_owned())));
            match io {
                Ok(io) => session::serve(broker, io, peer, guard).await,
                Err((reason, e)) => {
                    debug!(adapter = %broker.ctx.name(), %peer, error = %e, "WebSocket upgrade failed.");
                    broker.rejected(reason);
                }
            }
        });
    }
}

fn tls_err(msg: String) -> AdapterError {
    MqttError::Tls(msg).into()
}

/// Reads `cert`, `key` and the optional client CA into a TLS acceptor.
pub(crate) fn tls_acceptor(t: &TlsSettings) -> Result<TlsAcceptor, AdapterError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            tls_err(format!(
                "cannot read certificates from {}: {e}",
                t.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{} holds no PEM certificate",
            t.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| {
        tls_err(format!(
            "cannot read a private key from {}: {e}",
            t.key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let builder = match &t.ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| tls_err(format!("cannot read {}: {e}", ca.display())))?;
            for c in cas {
                roots
                    .add(c)
                    .map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| tls_err(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(format!("the key does not fit the certificate: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The peer address of a connection, for logs.
pub(crate) type Peer = SocketAddr;
