//! The hub without protocol adapters: in-process clients attached to a
//! running hub, routes, last values and shutdown.

mod common;

use common::*;
use polyhub_sdk::{Envelope, QoS, Topic, TopicFilter};

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

#[tokio::test]
async fn routes_rewrite_topics_and_reach_the_original_adapter() {
    let hub =
        start_hub("[[routes]]\nfrom = \"sensors/+/temp\"\nto = \"telemetry/{1}/temperature\"\n")
            .await;
    let device = hub.attach("device", "test");
    // Also subscribed to what it publishes itself: the hub must not echo
    // the original back, while the route's rewrite (another origin) comes.
    let mut sub = device
        .subscribe([
            TopicFilter::new("telemetry/#").unwrap(),
            TopicFilter::new("sensors/#").unwrap(),
        ])
        .unwrap();
    device
        .publish(
            Envelope::new(topic("sensors/kitchen/temp"), "21.5").with_content_type("text/plain"),
        )
        .await
        .unwrap();
    let got = within("routed envelope", sub.recv()).await.unwrap();
    assert_eq!(got.topic.as_str(), "telemetry/kitchen/temperature");
    assert_eq!(&got.payload[..], b"21.5");
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        got.origin.peer.as_deref(),
        Some("device"),
        "the route says where it came from"
    );
    // The original is not echoed back to the device: an echo would have
    // been queued during the device's own publish, so before this marker
    // from another client.
    let other = hub.attach("other", "test");
    other
        .publish(Envelope::new(topic("sensors/marker"), "m"))
        .await
        .unwrap();
    let next = within("marker", sub.recv()).await.unwrap();
    assert_eq!(
        next.topic.as_str(),
        "sensors/marker",
        "the device got its own publish back"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn last_values_and_retained_values_are_kept_per_topic() {
    let hub = start_hub("").await;
    let a = hub.attach("a", "test");
    a.publish(
        Envelope::new(topic("x/1"), "r")
            .with_retain(true)
            .with_qos(QoS::AtLeastOnce),
    )
    .await
    .unwrap();
    a.publish(Envelope::new(topic("x/1"), "live"))
        .await
        .unwrap();
    let b = hub.attach("b", "test");
    assert_eq!(&b.last_value(&topic("x/1")).unwrap().payload[..], b"live");
    let retained = b.retained(&TopicFilter::new("x/#").unwrap());
    assert_eq!(retained.len(), 1);
    assert_eq!(&retained[0].payload[..], b"r");
    assert!(b.clear_last_value(&topic("x/1")));
    assert!(b.last_value(&topic("x/1")).is_none());
    let snap = hub.snapshot();
    assert_eq!(
        snap.adapters
            .iter()
            .find(|s| s.name == "a")
            .unwrap()
            .metrics
            .messages_in,
        2
    );
    assert!(snap.routing_latency.count >= 2);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn publish_after_shutdown_is_refused() {
    let hub = start_hub("").await;
    let a = hub.attach("a", "test");
    hub.shutdown().await.unwrap();
    assert!(a.publish(Envelope::new(topic("x"), "y")).await.is_err());
}
