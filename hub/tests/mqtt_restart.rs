//! A broker restart in the middle of a QoS 1 stream loses nothing: a private
//! Mosquitto (persistent sessions, so the `mosquitto_sub -c` device keeps its
//! queue) is stopped while the hub publishes and started again on the same
//! port; every message reaches the device after the adapter reconnects.

mod common;
mod mqtt_devices;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use mqtt_devices::{publish, PrivateMosquitto, Sub};
use polyhub_sdk::{AdapterState, Envelope, QoS, Topic, TopicFilter};

const TOTAL: usize = 300;

fn state(hub: &polyhub::Hub) -> AdapterState {
    hub.snapshot()
        .adapters
        .iter()
        .find(|a| a.name == "mqtt")
        .map(|a| a.state)
        .unwrap_or(AdapterState::Failed)
}

#[tokio::test]
async fn broker_restart_during_qos1_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let mut broker = PrivateMosquitto::start(dir.path(), port).await;
    let hub = start_hub(&format!(
        "[[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\n\
         url = \"mqtt://127.0.0.1:{port}\"\nsubscribe = [\"in/#\"]\nforward = [\"stream/#\"]\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 400\n"
    ))
    .await;
    wait_until("adapter up", TIMEOUT, || state(&hub) == AdapterState::Up).await;
    let probe = hub.attach("probe", "test");
    let mut hub_in = probe
        .subscribe([TopicFilter::new("in/#").unwrap()])
        .unwrap();
    // A device with a persistent session: the broker keeps its queue across
    // the restart, and it reconnects by itself.
    let mut device = Sub::start(port, "stream/#", &["-c", "-i", "restart-device"]).await;

    let send = |i: usize| {
        let probe = probe.clone();
        async move {
            probe
                .publish(
                    Envelope::new(Topic::new(&format!("stream/{i}")).unwrap(), i.to_string())
                        .with_qos(QoS::AtLeastOnce),
                )
                .await
                .unwrap();
        }
    };
    for i in 0..TOTAL / 3 {
        send(i).await;
    }
    broker.stop().await;
    wait_until("adapter notices the broker is gone", TIMEOUT, || {
        state(&hub) == AdapterState::Down
    })
    .await;
    for i in TOTAL / 3..2 * TOTAL / 3 {
        send(i).await;
    }
    broker.restart().await;
    wait_until("adapter reconnected", TIMEOUT, || {
        state(&hub) == AdapterState::Up
    })
    .await;
    for i in 2 * TOTAL / 3..TOTAL {
        send(i).await;
    }

    let mut seen = BTreeSet::new();
    let mut deliveries = 0;
    within_for(
        Duration::from_secs(30),
        "every message at the device",
        async {
            while seen.len() < TOTAL {
                let m = match tokio::time::timeout(
                    Duration::from_secs(15),
                    device.next_within(Duration::from_secs(60)),
                )
                .await
                {
                    Ok(m) => m,
                    Err(_) => panic!(
                        "stuck: seen {} of {TOTAL}; missing {:?}; metrics {:?}",
                        seen.len(),
                        (0..TOTAL).filter(|i| !seen.contains(i)).collect::<Vec<_>>(),
                        hub.snapshot().adapters[0].metrics
                    ),
                };
                let i: usize = m.payload.parse().expect("numeric payload");
                assert_eq!(m.topic, format!("stream/{i}"));
                seen.insert(i);
                deliveries += 1;
            }
        },
    )
    .await;
    assert_eq!(seen.len(), TOTAL);
    assert!(deliveries >= TOTAL);

    let snap = hub.snapshot();
    let mqtt = snap.adapters.iter().find(|a| a.name == "mqtt").unwrap();
    assert!(mqtt.metrics.reconnects >= 1, "{:?}", mqtt.metrics);
    assert_eq!(mqtt.metrics.dropped, 0, "{:?}", mqtt.metrics);

    // And MQTT → hub works again after the restart (the adapter resubscribed).
    within("device publish after restart reaches the hub", async {
        loop {
            publish(port, "in/after", "ok", &["-q", "1"]).await;
            if let Ok(Some(env)) =
                tokio::time::timeout(Duration::from_millis(300), hub_in.recv()).await
            {
                assert_eq!(env.topic.as_str(), "in/after");
                return;
            }
        }
    })
    .await;
    hub.shutdown().await.unwrap();
}
