//! Pure mapping between MQTT publishes and [`Envelope`]s, for both the rumqttc
//! client (MQTT 5 packets from an external broker) and the rumqttd embedded
//! broker (its local-link publishes). No I/O here; unit tested below.
//!
//! Topic ↔ topic unchanged; QoS and retain carried both ways; MQTT 5
//! content type, user properties, response topic and correlation data map to
//! `content_type`, `headers`, `reply_to` and `correlation`. The embedded
//! broker serves MQTT 3.1.1 devices, which have no properties: rumqttd cannot
//! write them to 3.1.1 connections, so none are handed to it.

use bytes::{BufMut, Bytes, BytesMut};
use polyhub_sdk::{Envelope, Origin, QoS, Topic};
use rumqttc::v5::mqttbytes::v5::{Publish as CPublish, PublishProperties as CProps};
use rumqttc::v5::mqttbytes::QoS as CQoS;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    Error as DProtocolError, Packet as DPacket, Protocol as _, Publish as DPublish,
    PublishProperties as DProps,
};
use thiserror::Error;

/// Why an MQTT publish could not become an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvertError {
    /// The topic is not UTF-8.
    #[error("topic is not UTF-8")]
    TopicNotUtf8,
    /// The topic breaks the MQTT topic rules.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
}

impl ConvertError {
    /// The reason it is counted under (`polyhub_rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        "invalid_topic"
    }
}

/// Hub QoS → MQTT QoS (rumqttc).
pub fn client_qos(q: QoS) -> CQoS {
    match q {
        QoS::AtMostOnce => CQoS::AtMostOnce,
        QoS::AtLeastOnce => CQoS::AtLeastOnce,
        QoS::ExactlyOnce => CQoS::ExactlyOnce,
    }
}

/// MQTT QoS (rumqttc) → hub QoS.
pub fn hub_qos(q: CQoS) -> QoS {
    match q {
        CQoS::AtMostOnce => QoS::AtMostOnce,
        CQoS::AtLeastOnce => QoS::AtLeastOnce,
        CQoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn topic_from_bytes(raw: &[u8]) -> Result<Topic, ConvertError> {
    let s = std::str::from_utf8(raw).map_err(|_| ConvertError::TopicNotUtf8)?;
    Topic::new(s).map_err(|e| ConvertError::InvalidTopic(e.to_string()))
}

/// Moves MQTT 5 publish properties onto an envelope.
fn apply_properties(
    env: &mut Envelope,
    content_type: Option<&String>,
    user: &[(String, String)],
    response_topic: Option<&String>,
    correlation: Option<&Bytes>,
) {
    env.content_type = content_type.cloned();
    env.headers = user.to_vec();
    env.reply_to = response_topic.cloned();
    env.correlation = correlation.cloned();
}

/// A publish received by the rumqttc client → an envelope.
pub fn envelope_from_client(publish: &CPublish, origin: Origin) -> Result<Envelope, ConvertError> {
    let topic = topic_from_bytes(&publish.topic)?;
    let mut env = Envelope::new(topic, publish.payload.clone())
        .with_qos(hub_qos(publish.qos))
        .with_retain(publish.retain)
        .with_origin(origin);
    if let Some(p) = &publish.properties {
        apply_properties(
            &mut env,
            p.content_type.as_ref(),
            &p.user_properties,
            p.response_topic.as_ref(),
            p.correlation_data.as_ref(),
        );
    }
    Ok(env)
}

/// MQTT 5 properties of an envelope, `None` when it has none to carry.
fn client_properties(env: &Envelope) -> Option<CProps> {
    if env.content_type.is_none()
        && env.headers.is_empty()
        && env.reply_to.is_none()
        && env.correlation.is_none()
    {
        return None;
    }
    Some(CProps {
        content_type: env.content_type.clone(),
        user_properties: env.headers.clone(),
        response_topic: env.reply_to.clone(),
        correlation_data: env.correlation.clone(),
        ..CProps::default()
    })
}

/// An envelope → a publish for the rumqttc client.
pub fn client_publish(env: &Envelope) -> CPublish {
    let mut p = CPublish::new(
        env.topic.as_str(),
        client_qos(env.qos),
        env.payload.clone(),
        client_properties(env),
    );
    p.retain = env.retain;
    p
}

/// QoS and packet id of an embedded-broker publish (rumqttd keeps these
/// fields private; its own wire-independent serialization exposes them).
pub fn broker_header(publish: &DPublish) -> (QoS, u16) {
    let mut head = publish.clone();
    head.payload = Bytes::new();
    let raw = head.serialize();
    // serialize() always writes the fixed-header byte and the packet id.
    let (first, id) = match raw.get(..3) {
        Some(&[first, hi, lo]) => (first, u16::from_be_bytes([hi, lo])),
        _ => (0, 0),
    };
    (qos_bits(first >> 1), id)
}

/// The QoS of the two QoS bits (3, invalid, reads as QoS 0).
fn qos_bits(bits: u8) -> QoS {
    match bits & 0b11 {
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtMostOnce,
    }
}

/// User property the embedded broker's codec puts on every device publish:
/// the QoS the device published with. rumqttd forwards each publish at the
/// QoS of the subscription, not at the publisher's (a QoS 0 device message
/// reached the hub as QoS 1), so the device's QoS travels beside it.
/// Stripped before anything is written to a device, and never an envelope
/// header. A stop-gap until the embedded broker is replaced.
pub const QOS_MARK: &str = "x-polyhub-qos";
/// User property on every publish the adapter itself hands the embedded
/// broker, so that their echo on the adapter's own subscription is known
/// exactly (rumqttd has no no-local). Unlike a memory of what was sent, a
/// mark cannot overflow: every echo carries it, however many are in flight.
pub const ORIGIN_MARK: &str = "x-polyhub-origin";

/// The properties the embedded broker's codec attaches to a device publish
/// whose fixed-header byte is `first_byte`.
pub fn device_marks(first_byte: u8) -> DProps {
    let qos = match qos_bits(first_byte >> 1) {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    };
    DProps {
        user_properties: vec![(QOS_MARK.to_owned(), qos.to_owned())],
        ..DProps::default()
    }
}

/// The properties the adapter attaches to its own publishes to the broker.
pub fn own_marks() -> DProps {
    DProps {
        user_properties: vec![(ORIGIN_MARK.to_owned(), String::new())],
        ..DProps::default()
    }
}

/// Reads one MQTT 3.1.1 packet from a device as the embedded broker does
/// (rumqttd's codec), marking a publish with the QoS it was sent with
/// ([`device_marks`]). `InsufficientBytes` means "wait for more".
pub fn read_device_packet(
    stream: &mut BytesMut,
    max_size: usize,
) -> Result<DPacket, DProtocolError> {
    let first = stream.first().copied().unwrap_or(0);
    match V4.read_mut(stream, max_size)? {
        // 3.1.1 publishes have no properties of their own.
        DPacket::Publish(publish, _) => Ok(DPacket::Publish(publish, Some(device_marks(first)))),
        other => Ok(other),
    }
}

/// Writes one packet to a device (rumqttd's 3.1.1 codec), first dropping
/// the properties of a publish: MQTT 3.1.1 has none, and rumqttd's codec
/// panics on them.
pub fn write_device_packet(packet: DPacket, out: &mut BytesMut) -> Result<usize, DProtocolError> {
    let packet = match packet {
        DPacket::Publish(publish, Some(_)) => DPacket::Publish(publish, None),
        other => other,
    };
    V4.write(packet, out)
}

/// Why a device's bytes were refused, as counted
/// (`polyhub_rejected_total{reason}`); `None` for "wait for more bytes".
pub fn device_error_reason(e: &DProtocolError) -> Option<&'static str> {
    match e {
        DProtocolError::InsufficientBytes(_) => None,
        DProtocolError::PayloadSizeLimitExceeded(_) | DProtocolError::PayloadTooLong => {
            Some("payload_too_large")
        }
        DProtocolError::TopicNotUtf8 => Some("invalid_topic"),
        _ => Some("malformed_packet"),
    }
}

/// Whether a forwarded publish is the echo of one the adapter made.
pub fn is_own_echo(props: Option<&DProps>) -> bool {
    props.is_some_and(|p| p.user_properties.iter().any(|(k, _)| k == ORIGIN_MARK))
}

/// A publish the embedded broker forwarded to the adapter → an envelope, at
/// the QoS its device published with ([`QOS_MARK`]; the forwarded header's
/// QoS when unmarked).
pub fn envelope_from_broker(
    publish: &DPublish,
    props: Option<&DProps>,
    origin: Origin,
) -> Result<Envelope, ConvertError> {
    let topic = topic_from_bytes(&publish.topic)?;
    let marked = props.and_then(|p| {
        p.user_properties
            .iter()
            .find(|(k, _)| k == QOS_MARK)
            .map(|(_, v)| v.as_str())
    });
    let qos = match marked {
        Some("0") => QoS::AtMostOnce,
        Some("1") => QoS::AtLeastOnce,
        Some("2") => QoS::ExactlyOnce,
        _ => broker_header(publish).0,
    };
    let mut env = Envelope::new(topic, publish.payload.clone())
        .with_qos(qos)
        .with_retain(publish.retain)
        .with_origin(origin);
    if let Some(p) = props {
        let user: Vec<(String, String)> = p
            .user_properties
            .iter()
            .filter(|(k, _)| k != QOS_MARK && k != ORIGIN_MARK)
            .cloned()
            .collect();
        apply_properties(
            &mut env,
            p.content_type.as_ref(),
            &user,
            p.response_topic.as_ref(),
            p.correlation_data.as_ref(),
        );
    }
    Ok(env)
}

/// An envelope → a publish for the embedded broker with packet id `pkid`.
pub fn broker_publish(env: &Envelope, pkid: u16) -> DPublish {
    // rumqttd only lets local links build QoS 0 publishes directly; its
    // deserializer takes the fixed header with QoS, retain and packet id.
    let qos = match env.qos {
        QoS::AtMostOnce => 0u8,
        QoS::AtLeastOnce | QoS::ExactlyOnce => 1u8,
    };
    let topic = env.topic.as_str().as_bytes();
    let mut head = BytesMut::with_capacity(5 + topic.len());
    head.put_u8(0b0011_0000 | (qos << 1) | u8::from(env.retain));
    head.put_u16(if qos == 0 { 0 } else { pkid.max(1) });
    // A Topic is at most 65535 bytes, so its length fits.
    head.put_u16(topic.len() as u16);
    head.put_slice(topic);
    let mut publish = DPublish::deserialize(head.freeze());
    publish.payload = env.payload.clone();
    publish
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(topic: &str, payload: &'static [u8]) -> Envelope {
        Envelope::new(Topic::new(topic).unwrap(), Bytes::from_static(payload))
    }

    #[test]
    fn client_publish_carries_qos_retain_and_properties() {
        let e = env("sensors/t1", b"21.5")
            .with_qos(QoS::AtLeastOnce)
            .with_retain(true)
            .with_content_type("text/plain")
            .with_header("unit", "C");
        let p = client_publish(&e);
        assert_eq!(&p.topic[..], b"sensors/t1");
        assert_eq!(&p.payload[..], b"21.5");
        assert_eq!(p.qos, CQoS::AtLeastOnce);
        assert!(p.retain);
        let props = p.properties.clone().unwrap();
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.user_properties, vec![("unit".into(), "C".into())]);

        let back = envelope_from_client(&p, Origin::default()).unwrap();
        assert_eq!(back.topic.as_str(), "sensors/t1");
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert!(back.retain);
        assert_eq!(back.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.header("unit"), Some("C"));
    }

    #[test]
    fn plain_envelope_has_no_properties() {
        let p = client_publish(&env("a", b"x"));
        assert!(p.properties.is_none());
        assert_eq!(p.qos, CQoS::AtMostOnce);
        assert!(!p.retain);
    }

    #[test]
    fn client_publish_with_bad_topic_is_an_error() {
        let mut p = CPublish::new("a/+", CQoS::AtMostOnce, "x", None);
        assert!(matches!(
            envelope_from_client(&p, Origin::default()),
            Err(ConvertError::InvalidTopic(_))
        ));
        p.topic = Bytes::from_static(&[0xff, 0xfe]);
        assert_eq!(
            envelope_from_client(&p, Origin::default()).unwrap_err(),
            ConvertError::TopicNotUtf8
        );
        p.topic = Bytes::new();
        assert!(envelope_from_client(&p, Origin::default()).is_err());
    }

    #[test]
    fn broker_publish_round_trips() {
        let e = env("home/led", b"on")
            .with_qos(QoS::AtLeastOnce)
            .with_retain(true);
        let p = broker_publish(&e, 7);
        assert_eq!(broker_header(&p), (QoS::AtLeastOnce, 7));
        assert!(p.retain);
        assert_eq!(&p.payload[..], b"on");
        assert_eq!(&p.topic[..], b"home/led");
        let back = envelope_from_broker(&p, None, Origin::default()).unwrap();
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert!(back.retain);
        assert_eq!(&back.payload[..], b"on");
    }

    #[test]
    fn broker_publish_at_qos0_has_no_packet_id() {
        let p = broker_publish(&env("a/b", b""), 9);
        assert_eq!(broker_header(&p), (QoS::AtMostOnce, 0));
        assert!(!p.retain);
    }

    #[test]
    fn a_device_publish_keeps_its_qos_whatever_the_broker_forwards_it_at() {
        // QoS 0 publish "a/b" = "x" on the wire, then a QoS 1 one.
        let mut wire = BytesMut::from(&b"\x30\x04\x00\x01ax\x32\x06\x00\x01a\x00\x07y"[..]);
        let DPacket::Publish(p0, props0) = read_device_packet(&mut wire, 1024).unwrap() else {
            panic!("expected a publish")
        };
        let DPacket::Publish(p1, props1) = read_device_packet(&mut wire, 1024).unwrap() else {
            panic!("expected a publish")
        };
        // rumqttd forwards both at its subscription's QoS.
        let forwarded = broker_publish(&env("a", b"x").with_qos(QoS::AtLeastOnce), 3);
        assert_eq!(broker_header(&forwarded).0, QoS::AtLeastOnce);
        let e0 = envelope_from_broker(&forwarded, props0.as_ref(), Origin::default()).unwrap();
        assert_eq!(e0.qos, QoS::AtMostOnce);
        assert!(
            e0.headers.is_empty(),
            "the mark is no header: {:?}",
            e0.headers
        );
        let e1 = envelope_from_broker(&p1, props1.as_ref(), Origin::default()).unwrap();
        assert_eq!((e1.qos, &e1.payload[..]), (QoS::AtLeastOnce, &b"y"[..]));
        assert!(!is_own_echo(props0.as_ref()));
        // Written back to a device: properties dropped, no panic.
        let mut out = BytesMut::new();
        write_device_packet(DPacket::Publish(p0, props0), &mut out).unwrap();
        assert_eq!(&out[..], b"\x30\x04\x00\x01ax");
        assert_eq!(
            read_device_packet(&mut BytesMut::from(&b"\x30"[..]), 1024)
                .err()
                .and_then(|e| device_error_reason(&e)),
            None
        );
        let e = read_device_packet(&mut BytesMut::from(&b"\xf0\x00"[..]), 1024).unwrap_err();
        assert_eq!(device_error_reason(&e), Some("malformed_packet"));
    }

    #[test]
    fn the_adapters_own_publishes_are_known_by_their_mark_however_many() {
        let marks = own_marks();
        assert!(is_own_echo(Some(&marks)));
        assert!(!is_own_echo(None));
        assert!(!is_own_echo(Some(&device_marks(0x30))));
    }

    #[test]
    fn device_publish_from_broker_becomes_an_envelope() {
        let p = DPublish::new("dev/1/temp", "20", false);
        let e = envelope_from_broker(&p, None, Origin::default()).unwrap();
        assert_eq!(e.topic.as_str(), "dev/1/temp");
        assert_eq!(&e.payload[..], b"20");
        assert_eq!(e.qos, QoS::AtMostOnce);
        let bad = DPublish::new(Bytes::from_static(b"\xff"), Bytes::new(), false);
        assert!(envelope_from_broker(&bad, None, Origin::default()).is_err());
    }
}
