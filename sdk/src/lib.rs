//! # polyhub-sdk
//!
//! Everything an adapter needs to plug a protocol into the polyhub core: the
//! [`Envelope`] every message travels in, MQTT-style [`Topic`]s and
//! [`TopicFilter`]s, and the [`Adapter`] / [`AdapterFactory`] traits with the
//! [`AdapterContext`] an adapter runs with.
//!
//! Built-in adapters (MQTT, CoAP, HTTP, AMQP, XMPP) are written against this
//! crate exactly as third-party plugins are.
#![deny(missing_docs)]

pub mod access;
pub mod adapter;
pub mod clients;
pub mod config;
pub mod envelope;
pub mod metrics;
pub mod reconnect;
pub mod status;
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;
pub mod topic;

pub use access::{Access, Action, Denied, Identity, Refused};
pub use adapter::{
    Acker, Adapter, AdapterContext, AdapterError, AdapterFactory, AdapterState, DurableOptions,
    DurableQueue, HubLink, PublishError, Stored, SubscribeError, SubscribeOptions, Subscription,
    SubscriptionId,
};
pub use bytes::Bytes;
pub use clients::{ClientHandle, ClientInfo, ClientRegistry, ClientSnapshot};
pub use config::{AdapterConfig, ConfigError};
pub use envelope::{Envelope, MessageId, Origin, QoS};
pub use metrics::{
    AdapterMetrics, AdapterSnapshot, HistogramSnapshot, HubSnapshot, MetricsSnapshot,
    StoreSnapshot, REJECTED_PREFIX,
};
pub use topic::{Topic, TopicError, TopicFilter};

/// Re-exports adapter crates commonly need, so plugins agree on their versions.
pub mod reexports {
    pub use async_trait::async_trait;
    pub use tokio_util::sync::CancellationToken;
    pub use toml;
    pub use tracing;
}
pub mod plugin;
