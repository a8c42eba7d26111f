//! The crate's error type: what can stop an MQTT adapter, beyond the
//! sdk's own [`AdapterError`] kinds.

use std::path::PathBuf;

use polyhub_sdk::AdapterError;
use thiserror::Error;

/// Why an MQTT adapter could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The CA file of `ca_file` could not be read or holds no certificate.
    #[error("cannot use CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The broker refused our credentials or client id; retrying will not help.
    #[error("broker {broker} refused the connection: {code}")]
    Refused {
        /// `host:port`.
        broker: String,
        /// The CONNACK reason.
        code: String,
    },
}

impl From<MqttError> for AdapterError {
    fn from(e: MqttError) -> Self {
        AdapterError::Other(Box::new(e))
    }
}
