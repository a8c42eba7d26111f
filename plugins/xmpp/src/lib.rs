//! polyhub adapter for XMPP (`type = "xmpp"`): the hub logs in to an XMPP
//! server as a client and chats with devices and people.
//!
//! - A `<message>` to the hub with a `<subject>` publishes: subject = topic,
//!   body = payload. A body `subscribe FILTER` / `unsubscribe FILTER` /
//!   `subscriptions` manages the sender's subscriptions, confirmed by a reply;
//!   anything else gets a short help text. Only senders matching `allow`
//!   (default: the hub's own domain) may publish, subscribe or control.
//! - Envelopes matching a subscriber's filters go to it as
//!   `<message type="chat"><subject>{topic}</subject><body>{payload}</body>`;
//!   a payload that is not UTF-8 is sent base64 after the line
//!   `Content-Transfer-Encoding: base64`.
//! - XEP-0323 sensor data (`<fields xmlns="urn:xmpp:iot:sensordata">`) is
//!   published as one envelope per field on `xmpp/{bare jid}/{field}`
//!   (retained unless `retain_readings = false`); XEP-0325 control
//!   (`<set xmlns="urn:xmpp:iot:control">`, in a message or an IQ) on
//!   `xmpp/{bare jid}/control/{field}`.
//! - The hub tracks its subscribers' presence (it asks for a presence
//!   subscription): nothing is sent to an offline dynamic subscriber
//!   (counted as `offline_skipped`), and one coming back online gets the
//!   retained values of its filters. Static subscribers of the config read
//!   a durable queue each and are sent to whatever their presence (the
//!   server keeps offline messages); see `subscribers.rs`. XEP-0199 pings and XEP-0030 disco#info are answered.
//! - Reconnects with backoff after the server goes away; dynamic
//!   subscriptions live in the adapter and survive it.
//! - Every stanza from the server passes a bounded, non-recursive check
//!   ([`stanza_guard`]) before tokio-xmpp parses it: one nested deeper than
//!   `max_stanza_depth`, larger than `max_stanza_bytes`, or with a name or
//!   attribute value the parser cannot take is dropped (an empty stanza of
//!   the same kind takes its place, so stream management acknowledges it and
//!   the server does not redeliver it) and counted in
//!   `polyhub_rejected_total` by reason; the stream stays up.
//!
//! Configuration: see [`config::XmppConfig`].

#![warn(missing_docs)]

pub mod adapter;
pub mod config;
pub mod connection;
pub mod convert;
pub mod error;
pub mod stanza_guard;
pub mod subscribers;

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

pub use config::XmppConfig;
pub use error::XmppError;

/// Builds `type = "xmpp"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "xmpp"
    }

    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        let settings = config::Settings::from_config(config)?;
        Ok(Box::new(adapter::XmppAdapter::new(settings)))
    }
}
