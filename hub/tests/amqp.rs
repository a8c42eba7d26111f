//! The AMQP adapter against the real RabbitMQ (127.0.0.1:5672, guest/guest)
//! with third-party AMQP devices: amqp-tools' `amqp-publish` and a pika
//! consumer. Each test uses its own exchange and queues and deletes them.

mod amqp_device;
mod common;

use amqp_device::*;
use common::*;
use polyhub_sdk::{Envelope, QoS, Topic, TopicFilter};

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

/// A hub named `hub` with one AMQP adapter named `amqp` on `exchange`.
fn config(hub: &str, exchange: &str, extra: &str) -> String {
    format!(
        "[hub]\nname = \"{hub}\"\n\n[[adapters]]\nname = \"amqp\"\ntype = \"amqp\"\n\
         [adapters.config]\nurl = \"{URL}\"\nexchange = \"{exchange}\"\n{extra}\n"
    )
}

fn all_bytes() -> Vec<u8> {
    (0..=255u8).chain((0..=255u8).rev()).collect()
}

#[tokio::test]
async fn amqp_device_publishes_reach_the_hub_byte_exact_by_routing_key() {
    let (hub_name, ex) = (unique("hub"), unique("ex"));
    let hub = start_hub(&config(
        &hub_name,
        &ex,
        "bindings = [\"sensors/+/temp\", \"raw/#\"]\nforward = []",
    ))
    .await;
    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([filter("#")]).unwrap();

    let body = all_bytes();
    amqp_publish(
        &ex,
        "raw.dev/1.blob",
        &body,
        &[
            "-C",
            "application/octet-stream",
            "-H",
            "unit: bytes",
            "-t",
            "replies.dev/1",
        ],
    )
    .await;
    let got = within("binary message in the hub", sub.recv())
        .await
        .unwrap();
    assert_eq!(
        got.topic.as_str(),
        "raw/dev.1/blob",
        "`.` and `/` swap places"
    );
    assert_eq!(&got.payload[..], &body[..], "payload byte-exact");
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(got.header("unit"), Some("bytes"));
    assert_eq!(got.reply_to.as_deref(), Some("replies/dev.1"));
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(&*got.origin.protocol, "amqp");

    // `+` binds as `*`: one level only; unbound keys never reach the hub.
    amqp_publish(&ex, "sensors.a.b.temp", b"two levels", &[]).await;
    amqp_publish(&ex, "other.x", b"unbound", &[]).await;
    amqp_publish(&ex, "sensors.kitchen.temp", b"21.5", &["-C", "text/plain"]).await;
    let got = within("single-level match", sub.recv()).await.unwrap();
    assert_eq!(got.topic.as_str(), "sensors/kitchen/temp");
    assert_eq!(&got.payload[..], b"21.5");
    assert!(sub.try_recv().is_none(), "one delivery each, no duplicates");
    assert_eq!(
        app.last_value(&topic("sensors/kitchen/temp"))
            .map(|e| e.payload.clone()),
        Some(bytes::Bytes::from_static(b"21.5"))
    );

    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp")]).await;
}

#[tokio::test]
async fn hub_envelopes_reach_an_amqp_consumer_with_their_properties() {
    let (hub_name, ex) = (unique("hub"), unique("ex"));
    let hub = start_hub(&config(
        &hub_name,
        &ex,
        "bindings = [\"nothing/here\"]\nforward = [\"actuators/#\"]",
    ))
    .await;
    let mut device =
        Consumer::start(&["--exchange", &ex, "--key", "actuators.#", "--count", "3"]).await;
    let app = hub.attach("app", "test");

    let body = all_bytes();
    let mut first = Envelope::new(topic("actuators/lamp.1/set"), body.clone())
        .with_qos(QoS::AtLeastOnce)
        .with_content_type("application/octet-stream")
        .with_header("x-request", "42");
    first.correlation = Some(bytes::Bytes::from_static(b"corr-7"));
    first.reply_to = Some("replies/app".into());
    app.publish(first).await.unwrap();
    app.publish(Envelope::new(topic("elsewhere/x"), "not forwarded"))
        .await
        .unwrap();
    app.publish(Envelope::new(topic("actuators/2"), "qos0"))
        .await
        .unwrap();
    app.publish(Envelope::new(topic("actuators/3"), "last").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();

    let m = device.next().await;
    assert_eq!(m.routing_key, "actuators.lamp/1.set");
    assert_eq!(m.body, body, "payload byte-exact");
    assert_eq!(m.content_type, "application/octet-stream");
    assert_eq!(m.header("x-request"), Some("42"));
    assert_eq!(
        m.header("x-polyhub-origin"),
        Some(format!("{hub_name}.amqp").as_str())
    );
    assert_eq!(m.correlation_id, "corr-7");
    assert_eq!(m.reply_to, "replies.app");
    assert_eq!(m.delivery_mode, 2, "QoS 1 is persistent");
    let m = device.next().await;
    assert_eq!(
        (m.routing_key.as_str(), &m.body[..]),
        ("actuators.2", &b"qos0"[..])
    );
    assert_eq!(m.delivery_mode, 1, "QoS 0 is transient");
    let m = device.next().await;
    assert_eq!(
        (m.routing_key.as_str(), &m.body[..]),
        ("actuators.3", &b"last"[..])
    );
    device.finish().await;

    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp")]).await;
}

#[tokio::test]
async fn the_hub_does_not_take_its_own_amqp_messages_back() {
    let (hub_name, ex) = (unique("hub"), unique("ex"));
    // Binds and forwards everything: what the hub publishes lands in its
    // own queue, and must be skipped there.
    let hub = start_hub(&config(&hub_name, &ex, "")).await;
    let mut witness =
        Consumer::start(&["--exchange", &ex, "--key", "loop.#", "--count", "6"]).await;
    let app = hub.attach("app", "test");
    let observer = hub.attach("observer", "test");
    let mut seen = observer.subscribe([filter("loop/#")]).unwrap();

    for i in 0..5 {
        app.publish(
            Envelope::new(topic(&format!("loop/out{i}")), "from the hub")
                .with_qos(QoS::AtLeastOnce),
        )
        .await
        .unwrap();
    }
    // Once the witness queue has them, so has the hub's own queue, ahead
    // of anything published later.
    for i in 0..5 {
        assert_eq!(witness.next().await.routing_key, format!("loop.out{i}"));
    }
    amqp_publish(&ex, "loop.in", b"from a device", &[]).await;
    for i in 0..5 {
        let got = within("direct delivery", seen.recv()).await.unwrap();
        assert_eq!(got.topic.as_str(), format!("loop/out{i}"));
    }
    // The device's message comes after the hub's own messages went through
    // the same queue; none of those came back in.
    let got = within("device message", seen.recv()).await.unwrap();
    assert_eq!(got.topic.as_str(), "loop/in");
    assert_eq!(&*got.origin.adapter, "amqp");
    assert!(seen.try_recv().is_none(), "no echo, no duplicate");
    assert_eq!(witness.next().await.routing_key, "loop.in");
    witness.finish().await;

    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp")]).await;
}

#[tokio::test]
async fn unroutable_messages_are_counted() {
    let (hub_name, ex) = (unique("hub"), unique("ex"));
    let hub = start_hub(&config(
        &hub_name,
        &ex,
        "bindings = [\"bound/#\"]\nforward = [\"nowhere/#\"]",
    ))
    .await;
    let app = hub.attach("app", "test");
    for i in 0..3 {
        app.publish(Envelope::new(topic(&format!("nowhere/{i}")), "x").with_qos(QoS::AtLeastOnce))
            .await
            .unwrap();
    }
    let unroutable = || {
        hub.snapshot()
            .adapters
            .iter()
            .find(|a| a.name == "amqp")
            .and_then(|a| a.metrics.named.iter().find(|(k, _)| k == "unroutable"))
            .map(|(_, v)| *v)
            .unwrap_or(0)
    };
    wait_until("3 unroutable messages counted", TIMEOUT, || {
        unroutable() == 3
    })
    .await;
    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp")]).await;
}

#[tokio::test]
async fn a_routing_key_that_maps_to_no_topic_is_refused_counted_and_the_rest_flows() {
    let (hub_name, ex) = (unique("hub"), unique("ex"));
    let hub = start_hub(&config(&hub_name, &ex, "bindings = [\"#\"]\nforward = []")).await;
    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([filter("#")]).unwrap();
    // `+` and `#` are wildcards in a topic, so these keys name no topic.
    amqp_publish(&ex, "sensors.+", b"bad", &[]).await;
    amqp_publish(&ex, "sensors.#.x", b"bad", &[]).await;
    amqp_publish(&ex, "sensors.ok", b"good", &[]).await;
    let got = within("the good message after the bad ones", sub.recv())
        .await
        .unwrap();
    assert_eq!(got.topic.as_str(), "sensors/ok");
    let amqp = || {
        hub.snapshot()
            .adapters
            .into_iter()
            .find(|a| a.name == "amqp")
            .unwrap()
    };
    wait_until("both refusals counted", TIMEOUT, || {
        amqp().metrics.rejected("invalid_routing_key") == 2
    })
    .await;
    assert_eq!(amqp().metrics.dropped, 0, "refusals are not queue drops");
    assert_eq!(amqp().state, polyhub_sdk::AdapterState::Up);
    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp")]).await;
}

#[tokio::test]
async fn bad_amqp_config_and_refused_credentials_fail_the_start() {
    let e = polyhub::start_str(&config("h", "ex", "qos = 5"))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("qos"), "{e:#}");
    let e = polyhub::start_str(&config("h", "ex", "exchnage = \"x\""))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("exchnage"), "{e:#}");

    let bad = "[[adapters]]\nname = \"amqp\"\ntype = \"amqp\"\n[adapters.config]\n\
               url = \"amqp://guest:wrong-password@127.0.0.1:5672/%2f\"\n";
    let e = within("refused start", polyhub::start_str(bad))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("\"amqp\"") && msg.contains("ACCESS_REFUSED"),
        "{msg}"
    );
}

/// A CA and a certificate for `localhost` signed by it, made with openssl.
async fn make_ca(dir: &std::path::Path) {
    let d = dir.display().to_string();
    let sh = format!(
        "cd {d} && \
         openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
           -subj '/CN=polyhub test CA' -addext 'basicConstraints=critical,CA:TRUE' \
           -addext 'keyUsage=critical,keyCertSign,cRLSign' && \
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost && \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf"
    );
    run("sh", vec!["-c".into(), sh], None).await;
}

/// A TLS terminator (socat) in front of RabbitMQ, killed on drop.
struct TlsFront(std::process::Child);

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn amqps_with_a_private_ca_file_connects_and_carries_messages() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path()).await;
    let port = free_tcp_port();
    let d = dir.path().display();
    let _front = TlsFront(
        std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={d}/server.pem,key={d}/server.key,verify=0"
            ))
            .arg("TCP:127.0.0.1:5672")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("socat listening", TIMEOUT, || service_up(port)).await;

    let (hub_name, ex) = (unique("hub"), unique("ex"));
    let tls_url = format!("amqps://guest:guest@localhost:{port}/%2f");
    let adapter = |name: &str, ca: &str| {
        format!(
            "[[adapters]]\nname = \"{name}\"\ntype = \"amqp\"\n[adapters.config]\n\
             url = \"{tls_url}\"\nexchange = \"{ex}\"\nbindings = [\"tls/#\"]\n\
             forward = []\nreconnect_min_ms = 1000\n{ca}\n"
        )
    };
    let hub = start_hub(&format!(
        "[hub]\nname = \"{hub_name}\"\n{}{}",
        adapter("trusted", &format!("ca_file = \"{d}/ca.pem\"")),
        adapter("untrusted", "")
    ))
    .await;
    let state = |name: &str| {
        hub.snapshot()
            .adapters
            .iter()
            .find(|a| a.name == name)
            .map(|a| (a.state, a.reason.clone()))
            .unwrap()
    };
    assert_eq!(
        state("trusted").0,
        polyhub_sdk::AdapterState::Up,
        "{:?}",
        state("trusted")
    );
    let (s, reason) = state("untrusted");
    assert_eq!(
        s,
        polyhub_sdk::AdapterState::Down,
        "an unknown CA is refused"
    );
    assert!(reason.is_some());

    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([filter("tls/#")]).unwrap();
    amqp_publish(&ex, "tls.secure", b"over tls", &[]).await;
    let got = within("message through the TLS adapter", sub.recv())
        .await
        .unwrap();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("tls/secure", &b"over tls"[..])
    );
    assert_eq!(&*got.origin.adapter, "trusted");

    hub.shutdown().await.unwrap();
    cleanup(
        &ex,
        &[
            &format!("{hub_name}.trusted"),
            &format!("{hub_name}.untrusted"),
        ],
    )
    .await;
}
