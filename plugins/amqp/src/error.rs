//! The errors of one broker session; the run loop logs them, counts them and
//! reconnects, except where they show the config can never work.

use thiserror::Error;

/// Why a session with the broker ended.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The broker or the connection to it failed.
    #[error("{context}: {source}")]
    Amqp {
        /// What the adapter was doing.
        context: &'static str,
        /// lapin's error.
        source: lapin::Error,
    },
    /// The broker cancelled the hub's consumer (queue deleted, node down).
    #[error("the broker cancelled the consumer")]
    ConsumerCancelled,
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    HubClosed,
}

impl SessionError {
    /// Wraps a lapin error with what was being done.
    pub fn amqp(context: &'static str) -> impl FnOnce(lapin::Error) -> SessionError {
        move |source| SessionError::Amqp { context, source }
    }
}

impl polyhub_sdk::reconnect::Retry for SessionError {
    /// Retrying cannot help when the broker refused the credentials
    /// (`ACCESS_REFUSED`) or the vhost (`NOT_ALLOWED`).
    fn is_permanent(&self) -> bool {
        use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
        match self {
            SessionError::Amqp { source, .. } => match source.kind() {
                lapin::ErrorKind::ProtocolError(e) => matches!(
                    e.kind(),
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                        | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                ),
                _ => false,
            },
            _ => false,
        }
    }
}
