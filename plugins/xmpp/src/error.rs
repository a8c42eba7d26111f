//! Errors of the XMPP adapter.

use thiserror::Error;

/// Why a connection attempt or the session failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum XmppError {
    /// TCP connect or I/O failure.
    #[error("cannot reach {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Stream negotiation or SASL failed at the XMPP level.
    #[error("XMPP stream: {0}")]
    Stream(#[from] tokio_xmpp::Error),
    /// The server refused the credentials.
    #[error("the server refused the login of {jid}: {reason}")]
    Auth {
        /// The account.
        jid: String,
        /// The server's reason.
        reason: String,
    },
    /// `tls = "starttls"` but the server offers no STARTTLS.
    #[error("the server does not offer STARTTLS (set tls = \"none\" for a plaintext server on loopback)")]
    NoStarttls,
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The trust roots (`ca_file`) could not be set up.
    #[error(transparent)]
    TlsSetup(#[from] polyhub_sdk::tls::TlsError),
    /// I/O error on an established stream.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl polyhub_sdk::reconnect::Retry for XmppError {
    /// Retrying cannot help after a wrong password or with an unusable CA
    /// file.
    fn is_permanent(&self) -> bool {
        matches!(self, XmppError::Auth { .. } | XmppError::TlsSetup(_))
    }
}
