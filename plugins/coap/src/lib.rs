//! # polyhub-coap
//!
//! The CoAP adapter (`type = "coap"`): an RFC 7252 server over UDP that
//! maps `/ps/{topic}` resources onto hub topics.
//!
//! - `POST`/`PUT /ps/{topic}` publishes the payload (`2.04 Changed`);
//!   Content-Format becomes the envelope's content type. A CON request
//!   publishes at QoS 1, a NON one at QoS 0; `?retain` and `?qos=0|1`
//!   override.
//! - `GET /ps/{topic}` returns the last value (`2.05`, `4.04` if none);
//!   with `Observe: 0` it registers an observer (RFC 7641) of a topic or of
//!   a filter (`+`, `#` levels): every new envelope is a notification,
//!   confirmable for QoS 1 envelopes and at least every
//!   `observe_con_interval_secs`; `Observe: 1`, a RST or an unacknowledged
//!   confirmable notification ends the observation.
//! - `DELETE /ps/{topic}` forgets the last value (`2.02 Deleted`).
//! - `GET /.well-known/core` lists topics in link-format (RFC 6690),
//!   filtered by `?href=` (`href=/ps/sensors*`) and `?rt=`, block by block
//!   from the hub's ordered topic index (see [`discovery`]): no request
//!   builds the whole list.
//! - Block-wise transfer (RFC 7959) both ways above `block_size` bytes.
//! - Duplicate requests (same peer and message id within
//!   EXCHANGE_LIFETIME) are answered from a cache and processed once.
//! - `push = [{ filter, url }]` sends matching envelopes as CON `PUT` to
//!   devices' CoAP servers, retransmitted with the RFC 7252 back-off.
//! - Malformed datagrams are dropped, or answered with RST when they are
//!   confirmable; every refused datagram or request is counted by reason on
//!   `polyhub_rejected_total` (`malformed_datagram`, `bad_option`,
//!   `bad_path`, `invalid_topic`, `too_large`, `too_many_observers`,
//!   `quota_exceeded`, ...). `dropped_total` counts queue drops only.
//! - Every cache and every piece of per-peer state is bounded in entries
//!   and bytes by a config key (see [`CoapConfig`]).
//! - `dtls_bind` + `psk_file` serve the same resources over DTLS 1.2 with
//!   pre-shared keys (`coaps://`, see [`dtls`]).
//! - With the hub's `[auth]` (see [`access`]): the user is the PSK identity
//!   on `coaps`, or the `u`/`p` Uri-Query items on plain CoAP; `4.01` for
//!   missing or wrong credentials, `4.03` when the ACL refuses; a
//!   notification the observer may not read is not sent.
//!
//! ```toml
//! [[adapters]]
//! name = "coap"
//! type = "coap"
//! [adapters.config]
//! bind = "0.0.0.0:5683"
//! push = [{ filter = "actuators/#", url = "coap://127.0.0.1:5684/led" }]
//! ```

pub mod access;
pub mod adapter;
pub mod config;
pub mod convert;
pub mod dedup;
pub mod discovery;
pub mod dtls;
pub mod error;
pub mod observe;
pub mod push;
pub mod server;
pub mod transmission;

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

pub use adapter::CoapAdapter;
/// The CoAP message codec this crate is built on, for tests and tools.
pub use coap_lite;
pub use config::{CoapConfig, DtlsSettings, Limits, PushTarget, Settings};
pub use error::CoapError;

/// Builds `type = "coap"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "coap"
    }

    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        let settings = Settings::from_config(config)?;
        Ok(Box::new(CoapAdapter::new(settings)))
    }
}
