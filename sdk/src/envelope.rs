//! The envelope: the one shape every message has inside the hub, whatever
//! protocol brought it in or takes it out.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::topic::Topic;

/// Delivery guarantee of a message, MQTT's three levels.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub enum QoS {
    /// Fire and forget: may be dropped when a queue is full.
    #[default]
    AtMostOnce = 0,
    /// Acknowledged: never dropped by the hub, back-pressure instead.
    AtLeastOnce = 1,
    /// Exactly once, where both ends support it (treated as
    /// [`QoS::AtLeastOnce`] inside the hub).
    ExactlyOnce = 2,
}

impl QoS {
    /// Whether the hub must not drop this message (QoS 1 and 2).
    pub fn is_acknowledged(self) -> bool {
        self != QoS::AtMostOnce
    }
}

impl TryFrom<u8> for QoS {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(format!("invalid QoS {other}: expected 0, 1 or 2")),
        }
    }
}

impl From<QoS> for u8 {
    fn from(q: QoS) -> u8 {
        q as u8
    }
}

/// A message id, unique within the process and sortable by time:
/// 48 bits of Unix milliseconds then 80 bits of per-process sequence,
/// shown as a ULID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u128);

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl MessageId {
    /// A new id for a message received now.
    pub fn generate() -> Self {
        Self::at(SystemTime::now())
    }

    fn at(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed) as u128;
        // Per-process salt keeps ids from two hub processes apart (read
        // once: std::process::id() is a system call every time).
        static SALT: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        let salt = *SALT.get_or_init(|| (std::process::id() as u128 & 0xFFFF) << 64);
        MessageId((ms & 0xFFFF_FFFF_FFFF) << 80 | salt | seq)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ulid::Ulid(self.0), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// Name of the adapter instance that received it (`[[adapters]] name`).
    pub adapter: Arc<str>,
    /// Protocol of that adapter (`mqtt`, `coap`, ...).
    pub protocol: Arc<str>,
    /// Address of the peer that sent it, if known.
    pub peer: Option<Arc<str>>,
    /// Authenticated user or JID of the sender, if any.
    pub user: Option<Arc<str>>,
}

impl Origin {
    /// This origin with a peer address.
    pub fn with_peer(mut self, peer: impl fmt::Display) -> Self {
        self.peer = Some(Arc::from(peer.to_string()));
        self
    }

    /// This origin with an authenticated user.
    pub fn with_user(mut self, user: impl Into<Arc<str>>) -> Self {
        self.user = Some(user.into());
        self
    }
}

/// A message inside the hub.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Unique id, assigned when the hub accepts the message.
    pub id: MessageId,
    /// Topic name (no wildcards).
    pub topic: Topic,
    /// Payload bytes, never re-encoded by the core.
    pub payload: Bytes,
    /// MIME type of the payload, when the protocol says.
    pub content_type: Option<String>,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Whether this value becomes the topic's retained value.
    pub retain: bool,
    /// Where it came from.
    pub origin: Origin,
    /// When the hub received it.
    pub timestamp: SystemTime,
    /// Small list of string key/values: MQTT 5 user properties, AMQP headers,
    /// HTTP `X-` headers.
    pub headers: Vec<(String, String)>,
    /// Where a reply should go, for request/response across protocols.
    pub reply_to: Option<String>,
    /// Correlation data of a request/response pair.
    pub correlation: Option<Bytes>,
}

impl Envelope {
    /// A QoS 0, non-retained envelope with a fresh id and timestamp.
    pub fn new(topic: Topic, payload: impl Into<Bytes>) -> Self {
        let now = SystemTime::now();
        Envelope {
            id: MessageId::at(now),
            topic,
            payload: payload.into(),
            content_type: None,
            qos: QoS::AtMostOnce,
            retain: false,
            origin: Origin::default(),
            timestamp: now,
            headers: Vec::new(),
            reply_to: None,
            correlation: None,
        }
    }

    /// Sets the QoS.
    pub fn with_qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// Sets the retain flag.
    pub fn with_retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = Some(ct.into());
        self
    }

    /// Sets the origin.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// The value of the first header named `key` (case-sensitive).
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Milliseconds since the Unix epoch of [`Envelope::timestamp`].
    pub fn timestamp_millis(&self) -> u64 {
        self.timestamp
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_unique_and_increasing() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert!(b > a);
        assert_eq!(a.to_string().len(), 26);
    }

    #[test]
    fn qos_parses_from_numbers_and_rejects_others() {
        assert_eq!(QoS::try_from(1).unwrap(), QoS::AtLeastOnce);
        assert!(QoS::try_from(3).is_err());
        assert!(QoS::ExactlyOnce.is_acknowledged());
        assert!(!QoS::AtMostOnce.is_acknowledged());
    }
}
