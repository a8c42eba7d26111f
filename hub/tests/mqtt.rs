//! The MQTT adapter against real peers: the embedded broker and the
//! shared Mosquitto on 127.0.0.1:1883, with the stock `mosquitto_pub` and
//! `mosquitto_sub` as devices and in-process hub clients on the other side.

mod common;
mod mqtt_devices;

use std::io::Write;
use std::sync::Arc;

use common::*;
use mqtt_devices::{publish, unique_prefix, Sub};
use polyhub_sdk::{Envelope, QoS, Subscription, Topic, TopicFilter};

const MOSQUITTO: u16 = 1883;

fn embedded(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[adapters]]\nname = \"{name}\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n"
    )
}

fn external(name: &str, prefix: &str) -> String {
    format!(
        "[[adapters]]\nname = \"{name}\"\ntype = \"mqtt\"\n[adapters.config]\nurl = \"mqtt://127.0.0.1:{MOSQUITTO}\"\n\
         client_id = \"{prefix}-{name}\"\nsubscribe = [\"{prefix}/#\"]\nforward = [\"{prefix}/#\"]\n"
    )
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

/// Envelopes until (and excluding) the first on `topic`.
async fn until_topic(sub: &mut Subscription, topic: &str) -> Vec<Arc<Envelope>> {
    let mut seen = Vec::new();
    loop {
        let env = within("envelope at the hub client", sub.recv())
            .await
            .expect("hub open");
        if env.topic.as_str() == topic {
            return seen;
        }
        seen.push(env);
    }
}

#[tokio::test]
async fn embedded_broker_device_publish_reaches_hub_client_and_other_device_once() {
    let port = free_tcp_port();
    let hub = start_hub(&embedded("mqtt", port, "")).await;
    let probe = hub.attach("probe", "test");
    let mut hub_sub = probe.subscribe([filter("sensors/#")]).unwrap();
    let mut device = Sub::start(port, "sensors/#", &[]).await;

    publish(port, "sensors/kitchen/temp", "21.5", &["-q", "1"]).await;

    let env = within("envelope", hub_sub.recv()).await.unwrap();
    assert_eq!(env.topic.as_str(), "sensors/kitchen/temp");
    assert_eq!(&env.payload[..], b"21.5");
    assert_eq!(env.qos, QoS::AtLeastOnce);
    assert_eq!(&*env.origin.adapter, "mqtt");

    let m = device.next().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("sensors/kitchen/temp", "21.5")
    );
    assert_eq!(m.qos, 1);

    // Exactly once on both sides: nothing else arrives before a sentinel.
    publish(port, "sensors/end", "x", &["-q", "1"]).await;
    assert!(until_topic(&mut hub_sub, "sensors/end").await.is_empty());
    assert!(device.until_topic("sensors/end").await.is_empty());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn hub_publish_reaches_embedded_devices_with_qos_retain_and_no_echo() {
    let port = free_tcp_port();
    let hub = start_hub(&embedded("mqtt", port, "")).await;
    let probe = hub.attach("probe", "test");
    let observer = hub.attach("observer", "test");
    let mut observed = observer.subscribe([filter("actuators/#")]).unwrap();
    let mut live = Sub::start(port, "actuators/#", &[]).await;

    probe
        .publish(
            Envelope::new(topic("actuators/led"), "on")
                .with_qos(QoS::AtLeastOnce)
                .with_retain(true),
        )
        .await
        .unwrap();
    let m = live.next().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str(), m.qos),
        ("actuators/led", "on", 1)
    );

    // A device that subscribes later gets the retained value, flagged retained.
    let mut late = Sub::start(port, "actuators/led", &[]).await;
    let m = late.next().await;
    assert_eq!((m.payload.as_str(), m.retain), ("on", true));

    // The adapter's own publish did not come back into the hub as a new message.
    // The sentinel takes the path an echo would: device → broker → adapter.
    publish(port, "actuators/end", "x", &["-q", "1"]).await;
    let seen = until_topic(&mut observed, "actuators/end").await;
    assert_eq!(seen.len(), 1, "one copy, no echo: {seen:?}");
    assert_eq!(&*seen[0].origin.adapter, "probe");
    assert!(live.until_topic("actuators/end").await.is_empty());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn wildcard_subscribe_and_forward_filters_choose_what_crosses() {
    let port = free_tcp_port();
    let hub = start_hub(&embedded(
        "mqtt",
        port,
        "subscribe = [\"sensors/+/temp\"]\nforward = [\"cmd/#\"]",
    ))
    .await;
    let probe = hub.attach("probe", "test");
    let mut hub_sub = probe.subscribe([filter("#")]).unwrap();
    let mut device = Sub::start(port, "#", &[]).await;

    publish(port, "sensors/a/hum", "40", &[]).await;
    publish(port, "sensors/a/temp", "20", &[]).await;
    publish(port, "sensors/z/temp", "end", &[]).await;
    let seen = until_topic(&mut hub_sub, "sensors/z/temp").await;
    let topics: Vec<&str> = seen.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["sensors/a/temp"],
        "only `sensors/+/temp` enters the hub"
    );

    // Hub → MQTT only for `cmd/#`.
    device.until_topic("sensors/z/temp").await;
    probe
        .publish(Envelope::new(topic("other/x"), "no"))
        .await
        .unwrap();
    probe
        .publish(Envelope::new(topic("cmd/fan"), "yes"))
        .await
        .unwrap();
    let m = device.next().await;
    assert_eq!((m.topic.as_str(), m.payload.as_str()), ("cmd/fan", "yes"));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn external_mosquitto_to_hub_and_back_without_echo() {
    let prefix = unique_prefix("ext");
    let hub = start_hub(&external("mosq", &prefix)).await;
    wait_until("adapter up", TIMEOUT, || hub.snapshot().all_up()).await;
    let probe = hub.attach("probe", "test");
    let observer = hub.attach("observer", "test");
    let mut hub_sub = probe.subscribe([filter(&format!("{prefix}/#"))]).unwrap();
    let mut observed = observer
        .subscribe([filter(&format!("{prefix}/#"))])
        .unwrap();
    let mut device = Sub::start(MOSQUITTO, &format!("{prefix}/#"), &[]).await;

    // Device → Mosquitto → hub. The adapter subscribes after its CONNACK, so
    // retry a first probe until it is through.
    let ready = format!("{prefix}/ready");
    within("adapter subscribed at Mosquitto", async {
        loop {
            publish(MOSQUITTO, &ready, "?", &[]).await;
            let got =
                tokio::time::timeout(std::time::Duration::from_millis(300), hub_sub.recv()).await;
            if let Ok(Some(env)) = got {
                if env.topic.as_str() == ready {
                    return;
                }
            }
        }
    })
    .await;
    while hub_sub.try_recv().is_some() {}
    while observed.try_recv().is_some() {}
    device.until_topic(&ready).await;

    let t = format!("{prefix}/sensors/t1");
    publish(
        MOSQUITTO,
        &t,
        "21.5",
        &[
            "-q",
            "1",
            "-V",
            "mqttv5",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "user-property",
            "unit",
            "C",
        ],
    )
    .await;
    let env = within("envelope from Mosquitto", hub_sub.recv())
        .await
        .unwrap();
    assert_eq!(env.topic.as_str(), t);
    assert_eq!(&env.payload[..], b"21.5");
    assert_eq!(env.qos, QoS::AtLeastOnce);
    assert_eq!(env.content_type.as_deref(), Some("text/plain"));
    assert_eq!(env.header("unit"), Some("C"));

    // Hub → Mosquitto, exactly once at the device and no echo into the hub.
    let cmd = format!("{prefix}/cmd/led");
    probe
        .publish(Envelope::new(topic(&cmd), "on").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    // The sentinel takes the same path as the command, so it arrives after it.
    let end = format!("{prefix}/end");
    probe
        .publish(Envelope::new(topic(&end), "x").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    let at_device = device.until_topic(&end).await;
    let mut at_device: Vec<(&str, &str)> = at_device
        .iter()
        .filter(|m| m.topic != ready)
        .map(|m| (m.topic.as_str(), m.payload.as_str()))
        .collect();
    at_device.sort();
    assert_eq!(at_device, [(cmd.as_str(), "on"), (t.as_str(), "21.5")]);
    // For the hub side, a sentinel on the path an echo would take:
    // Mosquitto → adapter → hub, sent after the device got the command.
    let end_obs = format!("{prefix}/end-obs");
    publish(MOSQUITTO, &end_obs, "x", &["-q", "1"]).await;
    let seen = until_topic(&mut observed, &end_obs).await;
    let seen: Vec<(&str, &str)> = seen
        .iter()
        .filter(|e| e.topic.as_str() != ready && e.topic.as_str() != end)
        .map(|e| (e.topic.as_str(), &*e.origin.adapter))
        .collect();
    assert_eq!(
        seen,
        [(t.as_str(), "mosq"), (cmd.as_str(), "probe")],
        "no echo of the hub's publish"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn mosquitto_and_embedded_broker_devices_reach_each_other_once_with_retain() {
    let prefix = unique_prefix("bridge");
    let port = free_tcp_port();
    let config = format!(
        "{}{}",
        external("mosq", &prefix),
        embedded(
            "local",
            port,
            &format!("subscribe = [\"{prefix}/#\"]\nforward = [\"{prefix}/#\"]")
        )
    );
    let hub = start_hub(&config).await;
    wait_until("adapters up", TIMEOUT, || hub.snapshot().all_up()).await;
    let probe = hub.attach("probe", "test");
    let mut hub_sub = probe.subscribe([filter(&format!("{prefix}/#"))]).unwrap();
    let mut at_local = Sub::start(port, &format!("{prefix}/#"), &[]).await;
    let mut at_mosq = Sub::start(MOSQUITTO, &format!("{prefix}/#"), &[]).await;

    // Wait until the Mosquitto side's subscription is through.
    let ready = format!("{prefix}/ready");
    within("adapter subscribed at Mosquitto", async {
        loop {
            publish(MOSQUITTO, &ready, "?", &[]).await;
            let got =
                tokio::time::timeout(std::time::Duration::from_millis(300), hub_sub.recv()).await;
            if matches!(got, Ok(Some(ref e)) if e.topic.as_str() == ready) {
                return;
            }
        }
    })
    .await;
    at_local.until_topic(&ready).await;
    at_mosq.until_topic(&ready).await;

    // Mosquitto device → embedded-broker device, retained, QoS 1.
    let a = format!("{prefix}/from-mosq");
    publish(MOSQUITTO, &a, "A", &["-q", "1", "-r"]).await;
    let (mut local, got_a) = at_local.take_until(&a).await;
    assert_eq!((got_a.payload.as_str(), got_a.qos), ("A", 1));
    local.push(got_a);
    // Embedded-broker device → Mosquitto device.
    let b = format!("{prefix}/from-local");
    publish(port, &b, "B", &["-q", "1"]).await;
    let (mut mosq, got_b) = at_mosq.take_until(&b).await;
    assert_eq!(got_b.payload.as_str(), "B");
    mosq.push(got_b);

    // Sentinels that cross the hub the way an echo of `a` or `b` would.
    let end_m = format!("{prefix}/end-m");
    let end_l = format!("{prefix}/end-l");
    publish(MOSQUITTO, &end_m, "x", &["-q", "1"]).await;
    publish(port, &end_l, "x", &["-q", "1"]).await;
    local.extend(at_local.until_topic(&end_m).await);
    mosq.extend(at_mosq.until_topic(&end_l).await);
    for (side, msgs) in [("embedded", &local), ("mosquitto", &mosq)] {
        let count = |t: &str| msgs.iter().filter(|m| m.topic == t).count();
        assert_eq!(
            (count(&a), count(&b)),
            (1, 1),
            "once each at the {side} device: {msgs:?}"
        );
    }

    // The retained value reached the embedded broker: a late device there gets it.
    let mut late = Sub::start(port, &a, &[]).await;
    let m = late.next().await;
    assert_eq!((m.payload.as_str(), m.retain), ("A", true));

    // Clear the retained value on the shared broker.
    publish(MOSQUITTO, &a, "", &["-r"]).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn embedded_broker_survives_garbage_from_a_device() {
    let port = free_tcp_port();
    let hub = start_hub(&embedded("mqtt", port, "")).await;
    let probe = hub.attach("probe", "test");
    let mut hub_sub = probe.subscribe([filter("#")]).unwrap();
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // A CONNECT header with a bogus protocol name, then noise.
        s.write_all(&[
            0x10, 0x0c, 0x00, 0x04, b'X', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0,
        ])
        .unwrap();
        s.write_all(&[0xff; 64]).unwrap();
    }
    publish(port, "after/garbage", "ok", &["-q", "1"]).await;
    let env = within("envelope after garbage", hub_sub.recv())
        .await
        .unwrap();
    assert_eq!(env.topic.as_str(), "after/garbage");
    assert_eq!(
        hub.snapshot().adapters[0].state,
        polyhub_sdk::AdapterState::Up
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn embedded_broker_on_a_taken_port_says_so_and_suggests_url() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = within("hub start", polyhub::start_str(&embedded("mqtt", port, "")))
        .await
        .expect_err("the port is taken");
    let msg = format!("{err:#}");
    assert!(msg.contains("already in use"), "{msg}");
    assert!(
        msg.contains(&format!("url = \"mqtt://127.0.0.1:{port}\"")),
        "{msg}"
    );
}

#[tokio::test]
async fn embedded_broker_with_users_refuses_strangers() {
    let port = free_tcp_port();
    let hub = start_hub(&embedded("mqtt", port, "users = { dev = \"s3cret\" }")).await;
    let probe = hub.attach("probe", "test");
    let mut hub_sub = probe.subscribe([filter("#")]).unwrap();
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "x",
        "-m",
        "intruder",
    ])
    .args(["-u", "dev", "-P", "wrong"]);
    let out = within(
        "mosquitto_pub",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success(), "a wrong password is refused");
    publish(port, "y", "friend", &["-u", "dev", "-P", "s3cret"]).await;
    let env = within("envelope", hub_sub.recv()).await.unwrap();
    assert_eq!(
        (env.topic.as_str(), &env.payload[..]),
        ("y", &b"friend"[..])
    );
    hub.shutdown().await.unwrap();
}
