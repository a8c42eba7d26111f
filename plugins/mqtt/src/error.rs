//! The crate's error type: what can stop an MQTT adapter, beyond the
//! sdk's own [`AdapterError`] kinds.

use polyhub_sdk::AdapterError;
use thiserror::Error;

/// Why an MQTT adapter could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The client's trust roots (`ca_file`) could not be set up.
    #[error(transparent)]
    TlsClient(#[from] polyhub_sdk::tls::TlsError),
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl From<MqttError> for AdapterError {
    fn from(e: MqttError) -> Self {
        AdapterError::Other(Box::new(e))
    }
}
