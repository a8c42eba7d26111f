//! Errors of the CoAP adapter.

use std::net::SocketAddr;

use thiserror::Error;

/// What went wrong in the CoAP adapter.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CoapError {
    /// A datagram is not a well-formed CoAP message.
    #[error("malformed datagram: {0}")]
    Malformed(String),
    /// Encoding an outgoing message failed.
    #[error("cannot encode message: {0:?}")]
    Encode(coap_lite::error::MessageError),
    /// A device did not acknowledge a confirmable message in time.
    #[error("{peer} did not acknowledge after {attempts} transmissions")]
    Timeout {
        /// The device.
        peer: SocketAddr,
        /// Transmissions made.
        attempts: u32,
    },
    /// A device answered with a reset.
    #[error("{0} answered with a reset")]
    Reset(SocketAddr),
    /// A device answered with an error code.
    #[error("{peer} answered {code}")]
    Rejected {
        /// The device.
        peer: SocketAddr,
        /// The response code, as `4.04`.
        code: String,
    },
    /// A device's host name did not resolve.
    #[error("cannot resolve `{host}`: {reason}")]
    Resolve {
        /// Host from the push URL.
        host: String,
        /// Why.
        reason: String,
    },
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
