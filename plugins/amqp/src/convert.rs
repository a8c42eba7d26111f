//! Pure mapping between AMQP 0-9-1 messages and [`Envelope`]s, without a
//! network: topic ↔ routing key exactly as RabbitMQ's MQTT plugin does it,
//! topic filters → binding keys, and AMQP properties ↔ envelope fields.

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use polyhub_sdk::{Envelope, Origin, QoS, Topic, TopicError, TopicFilter};
use thiserror::Error;

/// The header that marks messages this hub published, so that the adapter
/// does not take its own messages back in from its queue.
pub const ORIGIN_HEADER: &str = "x-polyhub-origin";

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;
/// AMQP delivery mode 1: the message lives in memory only.
const TRANSIENT: u8 = 1;

/// Why a message cannot cross between AMQP and the hub.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConvertError {
    /// The routing key does not map to a valid topic name (empty, or it holds
    /// `+` or `#`, which are wildcards in MQTT topics).
    #[error("routing key `{key}` is not a valid topic: {source}")]
    RoutingKey {
        /// The routing key as received.
        key: String,
        /// Why the mapped topic is invalid.
        source: TopicError,
    },
    /// The topic maps to a routing key longer than AMQP's 255 bytes.
    #[error("topic `{0}` is longer than the 255 bytes an AMQP routing key can hold")]
    TooLong(String),
}

/// Swaps `/` and `.`: the one rule that turns a topic into a routing key and
/// back (it is its own inverse).
fn swap_separators(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            other => other,
        })
        .collect()
}

/// The routing key for a topic: `sensors/t1.raw` → `sensors.t1/raw`.
pub fn topic_to_routing_key(topic: &Topic) -> Result<ShortString, ConvertError> {
    ShortString::try_new(swap_separators(topic.as_str()))
        .map_err(|_| ConvertError::TooLong(topic.as_str().to_owned()))
}

/// The topic for a routing key: `sensors.t1/raw` → `sensors/t1.raw`.
pub fn routing_key_to_topic(key: &str) -> Result<Topic, ConvertError> {
    Topic::try_from(swap_separators(key)).map_err(|source| ConvertError::RoutingKey {
        key: key.to_owned(),
        source,
    })
}

/// The binding key for a topic filter: separators swapped, `+` → `*`,
/// `#` → `#` (`sensors/+/temp` → `sensors.*.temp`).
pub fn filter_to_binding_key(filter: &TopicFilter) -> Result<ShortString, ConvertError> {
    let key = filter
        .as_str()
        .split('/')
        .map(|level| match level {
            "+" => "*".to_owned(),
            other => other.replace('.', "/"),
        })
        .collect::<Vec<_>>()
        .join(".");
    ShortString::try_new(key).map_err(|_| ConvertError::TooLong(filter.as_str().to_owned()))
}

/// One AMQP message as the adapter publishes it to the exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Routing key, from the topic.
    pub routing_key: ShortString,
    /// Properties: content type, headers (with the origin marker), delivery
    /// mode, correlation id, reply-to, message id, timestamp.
    pub properties: BasicProperties,
}

/// Maps an envelope to an AMQP message. `marker` goes into the
/// [`ORIGIN_HEADER`]; `persistent` selects delivery mode 2.
pub fn envelope_to_amqp(
    envelope: &Envelope,
    marker: &str,
    persistent: bool,
) -> Result<Outgoing, ConvertError> {
    let routing_key = topic_to_routing_key(&envelope.topic)?;
    let mut headers = FieldTable::default();
    for (k, v) in &envelope.headers {
        // A header key longer than a short string cannot be sent; skip it
        // rather than failing the whole message.
        if k == ORIGIN_HEADER {
            continue;
        }
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            headers.insert(key, AMQPValue::LongString(LongString::from(v.as_bytes())));
        }
    }
    headers.insert(
        ShortString::from(ORIGIN_HEADER),
        AMQPValue::LongString(LongString::from(marker.as_bytes())),
    );
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(if persistent { PERSISTENT } else { TRANSIENT })
        .with_timestamp(envelope.timestamp_millis() / 1000);
    if let Ok(id) = ShortString::try_new(envelope.id.to_string()) {
        properties = properties.with_message_id(id);
    }
    if let Some(ct) = envelope
        .content_type
        .as_deref()
        .and_then(|c| ShortString::try_new(c).ok())
    {
        properties = properties.with_content_type(ct);
    }
    if let Some(corr) = envelope
        .correlation
        .as_ref()
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| ShortString::try_new(c).ok())
    {
        properties = properties.with_correlation_id(corr);
    }
    if let Some(reply) = envelope
        .reply_to
        .as_deref()
        .and_then(|r| ShortString::try_new(swap_separators(r)).ok())
    {
        properties = properties.with_reply_to(reply);
    }
    Ok(Outgoing {
        routing_key,
        properties,
    })
}

/// Whether a delivery carries `marker` in its [`ORIGIN_HEADER`], i.e. this
/// adapter published it and must not take it back in.
pub fn is_own_echo(properties: &BasicProperties, marker: &str) -> bool {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ORIGIN_HEADER))
        .is_some_and(|v| header_value(v).as_deref() == Some(marker))
}

/// A header value as text, for the envelope's string headers. Nested tables,
/// arrays and void values have no faithful string form and are left out.
fn header_value(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ByteArray(b) => String::from_utf8(b.as_slice().to_vec()).ok()?,
        AMQPValue::DecimalValue(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::Void => return None,
    })
}

/// Maps a message taken from the hub's queue to an envelope.
pub fn amqp_to_envelope(
    routing_key: &str,
    properties: &BasicProperties,
    payload: Vec<u8>,
    qos: QoS,
    origin: Origin,
) -> Result<Envelope, ConvertError> {
    let topic = routing_key_to_topic(routing_key)?;
    let mut envelope = Envelope::new(topic, Bytes::from(payload))
        .with_qos(qos)
        .with_origin(origin);
    envelope.content_type = properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_owned());
    if let Some(headers) = properties.headers() {
        envelope.headers = headers
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != ORIGIN_HEADER)
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), header_value(v)?)))
            .collect();
    }
    envelope.correlation = properties
        .correlation_id()
        .as_ref()
        .map(|c| Bytes::copy_from_slice(c.as_str().as_bytes()));
    envelope.reply_to = properties
        .reply_to()
        .as_ref()
        .map(|r| swap_separators(r.as_str()));
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn topics_map_to_routing_keys_like_the_rabbitmq_mqtt_plugin() {
        let cases = [
            ("sensors/t1", "sensors.t1"),
            ("a.b/c", "a/b.c"),
            ("a//b", "a..b"),
            ("/leading", ".leading"),
            ("trailing/", "trailing."),
            ("$SYS/broker/load", "$SYS.broker.load"),
            ("v1.2.3", "v1/2/3"),
            ("ünïcode/ключ", "ünïcode.ключ"),
            ("star*/x", "star*.x"),
            ("/", "."),
        ];
        for (t, k) in cases {
            assert_eq!(topic_to_routing_key(&topic(t)).unwrap().as_str(), k, "{t}");
            assert_eq!(routing_key_to_topic(k).unwrap().as_str(), t, "{k}");
        }
    }

    #[test]
    fn topic_routing_key_round_trip_is_the_identity_on_awkward_topics() {
        for t in [
            "a", "a/b/c", "a.b.c", "./.", "..//..", "$share/x", "a/./b", "x/ /y", "%2f/&",
        ] {
            let key = topic_to_routing_key(&topic(t)).unwrap();
            assert_eq!(routing_key_to_topic(key.as_str()).unwrap().as_str(), t);
        }
    }

    #[test]
    fn filters_map_wildcards_to_binding_key_wildcards() {
        let cases = [
            ("#", "#"),
            ("sensors/+/temp", "sensors.*.temp"),
            ("a.b/#", "a/b.#"),
            ("+/+", "*.*"),
            ("+", "*"),
            ("a//+", "a..*"),
            ("$SYS/#", "$SYS.#"),
        ];
        for (f, k) in cases {
            assert_eq!(
                filter_to_binding_key(&filter(f)).unwrap().as_str(),
                k,
                "{f}"
            );
        }
    }

    #[test]
    fn routing_keys_that_are_not_topics_are_refused() {
        assert!(matches!(
            routing_key_to_topic(""),
            Err(ConvertError::RoutingKey { .. })
        ));
        assert!(routing_key_to_topic("a.#").is_err());
        assert!(routing_key_to_topic("a.+").is_err());
    }

    #[test]
    fn topics_too_long_for_a_routing_key_are_refused() {
        let long = "x".repeat(256);
        assert_eq!(
            topic_to_routing_key(&topic(&long)),
            Err(ConvertError::TooLong(long.clone()))
        );
        assert!(topic_to_routing_key(&topic(&long[..255])).is_ok());
    }

    #[test]
    fn envelope_properties_survive_the_trip_through_amqp() {
        let mut env = Envelope::new(topic("req/a.b"), &b"\x00\xffbin"[..])
            .with_content_type("application/octet-stream")
            .with_header("k", "v")
            .with_header(ORIGIN_HEADER, "forged")
            .with_qos(QoS::AtLeastOnce);
        env.correlation = Some(Bytes::from_static(b"c-42"));
        env.reply_to = Some("replies/a.b".into());

        let out = envelope_to_amqp(&env, "hub-1.amqp", true).unwrap();
        assert_eq!(out.routing_key.as_str(), "req.a/b");
        let p = &out.properties;
        assert_eq!(p.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/octet-stream")
        );
        assert_eq!(
            p.reply_to().as_ref().map(|c| c.as_str()),
            Some("replies.a/b")
        );
        assert!(is_own_echo(p, "hub-1.amqp"), "marker replaces a forged one");
        assert!(!is_own_echo(p, "hub-2.amqp"));

        let back = amqp_to_envelope(
            out.routing_key.as_str(),
            p,
            env.payload.to_vec(),
            QoS::AtLeastOnce,
            Origin::default(),
        )
        .unwrap();
        assert_eq!(back.topic, env.topic);
        assert_eq!(back.payload, env.payload);
        assert_eq!(back.content_type, env.content_type);
        assert_eq!(back.headers, vec![("k".to_owned(), "v".to_owned())]);
        assert_eq!(back.correlation, env.correlation);
        assert_eq!(back.reply_to, env.reply_to);
        assert_eq!(back.qos, QoS::AtLeastOnce);
    }

    #[test]
    fn transient_mode_and_typed_headers_map_as_expected() {
        let env = Envelope::new(topic("t"), "x");
        let out = envelope_to_amqp(&env, "m", false).unwrap();
        assert_eq!(out.properties.delivery_mode(), &Some(TRANSIENT));

        let mut h = FieldTable::default();
        h.insert("n".into(), AMQPValue::LongLongInt(-7));
        h.insert("b".into(), AMQPValue::Boolean(true));
        h.insert("t".into(), AMQPValue::FieldTable(FieldTable::default()));
        let props = BasicProperties::default().with_headers(h);
        let env =
            amqp_to_envelope("t", &props, vec![], QoS::AtMostOnce, Origin::default()).unwrap();
        assert_eq!(env.header("n"), Some("-7"));
        assert_eq!(env.header("b"), Some("true"));
        assert_eq!(env.header("t"), None, "nested tables have no string form");
        assert!(!is_own_echo(&props, "m"));
    }
}
