//! HTTPS: loading the certificate and key (rustls), and a listener that
//! completes TLS handshakes off the accept path, so a slow or silent client
//! cannot hold up other connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use polyhub_sdk::{AdapterContext, ConfigError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The server configuration [`load`] makes.
pub use tokio_rustls::rustls::ServerConfig;

use crate::config::TlsConfig;
use crate::serve::ConnectionGate;

/// Time a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the HTTP server to take them.
const ACCEPT_BACKLOG: usize = 64;

/// Reads the PEM files of `tls` into a rustls server config (HTTP/1.1 ALPN,
/// the aws-lc-rs provider).
pub fn load(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::key(
                "tls.cert",
                format!("cannot read certificates from {}: {e}", tls.cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::key(
            "tls.cert",
            format!("{} holds no PEM certificate", tls.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        ConfigError::key(
            "tls.key",
            format!("cannot read a private key from {}: {e}", tls.key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::key("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::key("tls.key", format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An `axum::serve` listener yielding TLS streams.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves handshakes for connections on `tcp` until `shutdown`.
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        ctx: &AdapterContext,
        handshakes: Arc<ConnectionGate>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let acceptor = TlsAcceptor::from(config);
        let adapter: Arc<str> = Arc::from(ctx.name());
        let metrics = ctx.metrics().clone();
        let shutdown = ctx.shutdown().clone();
        let spawner = ctx.clone();
        ctx.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(adapter = %adapter, error = %e, "Accept failed.");
                            metrics.record_error();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                // At most `max_connections` handshakes under way too.
                let Some(slot) = handshakes.enter() else {
                    metrics.record_rejected("too_many_connections");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let adapter = adapter.clone();
                let metrics = metrics.clone();
                spawner.spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(adapter = %adapter, peer = %peer, error = %e, "TLS handshake failed.");
                            metrics.incr("tls_handshake_failures");
                        }
                        Err(_) => {
                            tracing::debug!(adapter = %adapter, peer = %peer, "TLS handshake timed out.");
                            metrics.incr("tls_handshake_failures");
                        }
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // Shutting down: the server stops asking for connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
