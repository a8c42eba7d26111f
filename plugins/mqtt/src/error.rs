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
    /// The embedded broker's in-process link failed (boxed: rumqttd's error
    /// carries a whole router event).
    #[error("embedded broker link: {0}")]
    Link(Box<rumqttd::local::LinkError>),
    /// The embedded broker stopped serving.
    #[error("embedded broker: {0}")]
    Broker(String),
}

impl From<rumqttd::local::LinkError> for MqttError {
    fn from(e: rumqttd::local::LinkError) -> Self {
        MqttError::Link(Box::new(e))
    }
}

impl From<MqttError> for AdapterError {
    fn from(e: MqttError) -> Self {
        AdapterError::Other(Box::new(e))
    }
}
