//! Pure mapping between the rumqttc client's MQTT 5 publishes (from and to
//! an external broker) and [`Envelope`]s. No I/O here; unit tested below.
//! (The embedded broker maps its devices' packets itself, in
//! `broker/session.rs`.)
//!
//! Topic ↔ topic unchanged; QoS and retain carried both ways; MQTT 5
//! content type, user properties, response topic and correlation data map to
//! `content_type`, `headers`, `reply_to` and `correlation`.

use bytes::Bytes;
use polyhub_sdk::{Envelope, Origin, QoS, Topic};
use rumqttc::v5::mqttbytes::v5::{Publish as CPublish, PublishProperties as CProps};
use rumqttc::v5::mqttbytes::QoS as CQoS;
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
}
