//! The CoAP adapter against real peers: libcoap's `coap-client` as the
//! device (publish, GET, Observe, block-wise, discovery), libcoap's
//! `coap-server` as a device receiving pushes, and raw UDP datagrams for
//! duplicates, garbage and lost packets.
#![cfg(feature = "coap")]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use polyhub_coap::coap_lite::{
    CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType,
};
use polyhub_sdk::{Envelope, QoS, Topic, TopicFilter};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

/// Runs coap-client with `args` (bounded by `-B`), returning its output.
async fn coap_client(args: &[&str]) -> Output {
    let mut cmd = Command::new(libcoap("coap-client"));
    cmd.args(["-B", "8"]).args(args);
    let what = format!("coap-client {args:?}");
    within(
        &what,
        tokio::task::spawn_blocking(move || cmd.output().expect("run coap-client")),
    )
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A hub with one CoAP adapter on a free port, plus extra config.
async fn coap_hub(extra: &str) -> (polyhub::Hub, String) {
    let port = free_udp_port();
    let hub = start_hub(&format!(
        "[[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n{extra}"
    ))
    .await;
    (hub, format!("coap://127.0.0.1:{port}"))
}

fn named(hub: &polyhub::Hub, adapter: &str, counter: &str) -> u64 {
    hub.snapshot()
        .adapters
        .iter()
        .find(|a| a.name == adapter)
        .and_then(|a| a.metrics.named.iter().find(|(k, _)| k == counter))
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// A `coap-client -s` observer whose notifications (one per line, `-w`)
/// arrive on a channel. Killed on drop.
struct Observer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Observer {
    async fn start(hub: &polyhub::Hub, url: &str) -> Observer {
        let before = hub.snapshot().subscriptions;
        let mut child = Command::new(libcoap("coap-client"))
            .args(["-w", "-s", "30", "-B", "30", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coap-client -s");
        let mut out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(1) = out.read(&mut byte) {
                if byte[0] == b'\n' {
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                    buf.clear();
                } else {
                    buf.push(byte[0]);
                }
            }
        });
        let o = Observer { child, lines };
        // Registered once the adapter subscribed the hub for it (filters
        // already observed add no subscription: then the 2.05 line tells).
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            wait_until("observer subscription", Duration::from_secs(5), || {
                hub.snapshot().subscriptions > before
            }),
        )
        .await;
        o
    }

    async fn next(&mut self) -> String {
        within("observe notification", self.lines.recv())
            .await
            .expect("coap-client observer ended")
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Encodes a request by hand (the test does not trust the adapter's codec).
fn raw_request(
    con: bool,
    code: u8,
    mid: u16,
    token: &[u8],
    path: &[&str],
    payload: &[u8],
) -> Vec<u8> {
    let t = if con { 0 } else { 1 };
    let mut b = vec![0x40 | t << 4 | token.len() as u8, code];
    b.extend_from_slice(&mid.to_be_bytes());
    b.extend_from_slice(token);
    let mut last = 0u16;
    for seg in path {
        let delta = 11 - last;
        assert!(seg.len() < 13);
        b.push((delta as u8) << 4 | seg.len() as u8);
        b.extend_from_slice(seg.as_bytes());
        last = 11;
    }
    if !payload.is_empty() {
        b.push(0xFF);
        b.extend_from_slice(payload);
    }
    b
}

async fn udp_client(url: &str) -> (UdpSocket, SocketAddr) {
    let addr: SocketAddr = url.trim_start_matches("coap://").parse().unwrap();
    (UdpSocket::bind("127.0.0.1:0").await.unwrap(), addr)
}

async fn recv_packet(sock: &UdpSocket) -> (Vec<u8>, Packet) {
    let mut buf = vec![0u8; 2048];
    let n = within("datagram", sock.recv(&mut buf)).await.unwrap();
    buf.truncate(n);
    let p = Packet::from_bytes(&buf).expect("well-formed reply");
    (buf, p)
}

#[tokio::test]
async fn coap_client_publishes_reads_and_deletes_through_the_hub() {
    let (hub, url) = coap_hub("").await;
    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([filter("sensors/#")]).unwrap();

    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "0",
        "-e",
        "21.5",
        &format!("{url}/ps/sensors/kitchen/temp"),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = within("published envelope", sub.recv()).await.unwrap();
    assert_eq!(got.topic.as_str(), "sensors/kitchen/temp");
    assert_eq!(&got.payload[..], b"21.5");
    assert_eq!(
        got.content_type.as_deref(),
        Some("text/plain;charset=utf-8")
    );
    assert_eq!(
        got.qos,
        QoS::AtLeastOnce,
        "a CON request publishes at QoS 1"
    );
    assert_eq!(&*got.origin.protocol, "coap");

    // NON PUT with JSON.
    let out = coap_client(&[
        "-N",
        "-m",
        "put",
        "-t",
        "50",
        "-e",
        "{\"on\":true}",
        &format!("{url}/ps/sensors/x"),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = within("NON envelope", sub.recv()).await.unwrap();
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.qos, QoS::AtMostOnce);

    // GET returns the last value, whoever published it.
    let out = coap_client(&[&format!("{url}/ps/sensors/kitchen/temp")]).await;
    assert_eq!(stdout(&out).trim_end(), "21.5");
    app.publish(Envelope::new(topic("lights/hall"), "off").with_content_type("text/plain"))
        .await
        .unwrap();
    let out = coap_client(&["-A", "0", &format!("{url}/ps/lights/hall")]).await;
    assert_eq!(stdout(&out).trim_end(), "off");
    let out = coap_client(&["-A", "50", &format!("{url}/ps/lights/hall")]).await;
    assert!(
        stderr(&out).contains("4.06"),
        "Accept mismatch: {}",
        stderr(&out)
    );

    // DELETE forgets it; GET is then 4.04.
    let out = coap_client(&["-m", "delete", &format!("{url}/ps/sensors/kitchen/temp")]).await;
    assert!(out.status.success());
    assert!(app.last_value(&topic("sensors/kitchen/temp")).is_none());
    let out = coap_client(&[&format!("{url}/ps/sensors/kitchen/temp")]).await;
    assert!(stderr(&out).contains("4.04"), "{}", stderr(&out));

    // Bad paths are client errors, not crashes.
    let out = coap_client(&["-m", "post", "-e", "x", &format!("{url}/ps/a/+")]).await;
    assert!(stderr(&out).contains("4.00"), "{}", stderr(&out));
    let out = coap_client(&[&format!("{url}/nothing/here")]).await;
    assert!(stderr(&out).contains("4.04"), "{}", stderr(&out));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn coap_observers_of_topics_and_filters_get_every_envelope_in_order() {
    let (hub, url) = coap_hub("").await;
    let app = hub.attach("app", "test");
    app.publish(Envelope::new(topic("sensors/a/temp"), "first"))
        .await
        .unwrap();

    let mut topic_obs = Observer::start(&hub, &format!("{url}/ps/sensors/a/temp")).await;
    assert_eq!(
        topic_obs.next().await,
        "first",
        "registration answers the last value"
    );
    let mut filter_obs = Observer::start(&hub, &format!("{url}/ps/sensors/%2B/temp")).await;
    let mut all_obs = Observer::start(&hub, &format!("{url}/ps/sensors/%23")).await;

    for (t, p) in [
        ("sensors/a/temp", "1"),
        ("sensors/b/temp", "2"),
        ("sensors/b/hum", "3"),
    ] {
        app.publish(Envelope::new(topic(t), p).with_qos(QoS::AtLeastOnce))
            .await
            .unwrap();
    }
    assert_eq!(topic_obs.next().await, "1");
    // (The empty 2.05 answering a filter registration prints no line.)
    assert_eq!(filter_obs.next().await, "1");
    assert_eq!(filter_obs.next().await, "2");
    for want in ["1", "2", "3"] {
        assert_eq!(all_obs.next().await, want);
    }

    // A CoAP client's publish reaches CoAP observers of the same adapter.
    let out = coap_client(&[
        "-m",
        "post",
        "-e",
        "from-coap",
        &format!("{url}/ps/sensors/c/temp"),
    ])
    .await;
    assert!(out.status.success());
    assert_eq!(filter_obs.next().await, "from-coap");
    assert_eq!(all_obs.next().await, "from-coap");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn observe_sequence_numbers_increase_and_rst_or_observe_1_deregister() {
    let (hub, url) = coap_hub("").await;
    let app = hub.attach("app", "test");
    let (sock, addr) = udp_client(&url).await;
    let subs_before = hub.snapshot().subscriptions;

    // GET /ps/dev/state with Observe: 0 (option 6, empty value), then Uri-Path.
    let mut reg = vec![0x42, 0x01, 0x00, 0x01, 0xBE, 0xEF, 0x60];
    reg.extend_from_slice(&[
        0x52, b'p', b's', 0x03, b'd', b'e', b'v', 0x05, b's', b't', b'a', b't', b'e',
    ]);
    sock.send_to(&reg, addr).await.unwrap();
    let (_, ack) = recv_packet(&sock).await;
    assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(
        ack.header.code,
        MessageClass::Response(ResponseType::Content)
    );
    assert_eq!(ack.get_token(), &[0xBE, 0xEF]);
    assert!(ack.payload.is_empty(), "no value yet: empty payload");
    assert_eq!(ack.get_observe_value().unwrap().unwrap(), 0);
    assert_eq!(hub.snapshot().subscriptions, subs_before + 1);

    let mut last_seq = 0;
    for i in 0..3 {
        app.publish(Envelope::new(topic("dev/state"), format!("v{i}")))
            .await
            .unwrap();
        let (_, n) = recv_packet(&sock).await;
        assert_eq!(n.get_token(), &[0xBE, 0xEF]);
        assert_eq!(n.payload, format!("v{i}").into_bytes());
        let seq = n.get_observe_value().unwrap().unwrap();
        assert!(seq > last_seq, "Observe {seq} after {last_seq}");
        last_seq = seq;
        if n.header.get_type() == MessageType::Confirmable {
            let mut ack = Packet::new();
            ack.header.set_type(MessageType::Acknowledgement);
            ack.header.message_id = n.header.message_id;
            sock.send_to(&ack.to_bytes().unwrap(), addr).await.unwrap();
        }
    }
    // QoS 1 envelopes are notified confirmably; a RST to one deregisters.
    app.publish(Envelope::new(topic("dev/state"), "last").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    let (_, n) = recv_packet(&sock).await;
    assert_eq!(n.header.get_type(), MessageType::Confirmable);
    let mut rst = Packet::new();
    rst.header.set_type(MessageType::Reset);
    rst.header.message_id = n.header.message_id;
    sock.send_to(&rst.to_bytes().unwrap(), addr).await.unwrap();
    wait_until("observer removed after RST", Duration::from_secs(5), || {
        hub.snapshot().subscriptions == subs_before
    })
    .await;

    // Register again, then deregister with a GET carrying Observe: 1.
    reg[3] = 2;
    sock.send_to(&reg, addr).await.unwrap();
    let (_, ack) = recv_packet(&sock).await;
    assert_eq!(ack.payload, b"last");
    assert_eq!(hub.snapshot().subscriptions, subs_before + 1);
    let mut dereg = reg.clone();
    dereg[3] = 3;
    dereg[6] = 0x61;
    dereg.insert(7, 1);
    sock.send_to(&dereg, addr).await.unwrap();
    let (_, ack) = recv_packet(&sock).await;
    assert_eq!(
        ack.header.code,
        MessageClass::Response(ResponseType::Content)
    );
    assert!(ack.get_observe_value().is_none());
    assert_eq!(hub.snapshot().subscriptions, subs_before);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn unacknowledged_confirmable_notifications_end_the_observation() {
    let (hub, url) = coap_hub("ack_timeout_ms = 50\nmax_retransmit = 1\n").await;
    let app = hub.attach("app", "test");
    let (sock, addr) = udp_client(&url).await;
    let before = hub.snapshot().subscriptions;
    let reg = [
        0x41, 0x01, 0x00, 0x09, 0x07, 0x60, 0x52, b'p', b's', 0x01, b'q',
    ];
    sock.send_to(&reg, addr).await.unwrap();
    recv_packet(&sock).await;
    app.publish(Envelope::new(topic("q"), "x").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    // The observer never acknowledges: the notification is sent twice
    // (one retransmission), then the observation is dropped.
    let (a, _) = recv_packet(&sock).await;
    let (b, _) = recv_packet(&sock).await;
    assert_eq!(a, b, "a retransmission repeats the message");
    wait_until("observer dropped", Duration::from_secs(5), || {
        hub.snapshot().subscriptions == before
    })
    .await;
    assert_eq!(named(&hub, "coap", "observers_lost"), 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn large_payloads_travel_block_wise_both_ways() {
    let (hub, url) = coap_hub("").await;
    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([filter("files/#")]).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Device → hub: a 3000-byte PUT in 256-byte Block1 blocks.
    let upload: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let up = dir.path().join("up.bin");
    std::fs::write(&up, &upload).unwrap();
    let out = coap_client(&[
        "-m",
        "put",
        "-b",
        "256",
        "-f",
        up.to_str().unwrap(),
        &format!("{url}/ps/files/up"),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = within("assembled upload", sub.recv()).await.unwrap();
    assert_eq!(got.payload.len(), 3000);
    assert_eq!(&got.payload[..], &upload[..]);
    assert!(sub.try_recv().is_none(), "published once, not per block");

    // Hub → device: a 5000-byte value read in Block2 blocks, default and 64-byte.
    let download: Vec<u8> = (0..5000u32).map(|i| b'A' + (i % 26) as u8).collect();
    app.publish(Envelope::new(topic("files/down"), download.clone()))
        .await
        .unwrap();
    for size in [None, Some("64")] {
        let down = dir.path().join("down.bin");
        let target = format!("{url}/ps/files/down");
        let mut args = vec!["-o", down.to_str().unwrap()];
        if let Some(s) = size {
            args.extend(["-b", s]);
        }
        args.push(&target);
        let out = coap_client(&args).await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            std::fs::read(&down).unwrap(),
            download,
            "block size {size:?}"
        );
    }

    // And an observer gets a large notification whole.
    let mut obs = Observer::start(&hub, &format!("{url}/ps/files/big")).await;
    let big: String = (0..2500)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    app.publish(Envelope::new(topic("files/big"), big.clone()))
        .await
        .unwrap();
    assert_eq!(obs.next().await, big);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn well_known_core_lists_topics_in_link_format() {
    let (hub, url) = coap_hub("").await;
    let app = hub.attach("app", "test");
    app.publish(Envelope::new(topic("sensors/temp"), "1").with_content_type("application/json"))
        .await
        .unwrap();
    app.publish(Envelope::new(topic("lights/a b"), "on"))
        .await
        .unwrap();
    let out = coap_client(&[&format!("{url}/.well-known/core")]).await;
    let doc = stdout(&out);
    assert!(
        doc.contains("</ps/sensors/temp>;rt=\"polyhub.topic\";obs;ct=50"),
        "{doc}"
    );
    assert!(
        doc.contains("</ps/lights/a%20b>;rt=\"polyhub.topic\";obs"),
        "{doc}"
    );
    let out = coap_client(&[&format!("{url}/.well-known/core?href=/ps/lights*")]).await;
    assert_eq!(
        stdout(&out).trim_end(),
        "</ps/lights/a%20b>;rt=\"polyhub.topic\";obs"
    );

    // Many topics: the document goes block-wise.
    for i in 0..60 {
        app.publish(Envelope::new(topic(&format!("many/topic-number-{i}")), "x"))
            .await
            .unwrap();
    }
    let out = coap_client(&[&format!("{url}/.well-known/core")]).await;
    let doc = stdout(&out);
    assert!(doc.len() > 2048, "{} bytes", doc.len());
    assert_eq!(doc.matches("rt=\"polyhub.topic\"").count(), 62);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_duplicated_con_request_is_answered_twice_and_published_once() {
    let (hub, url) = coap_hub("").await;
    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([filter("dup/#")]).unwrap();
    let (sock, addr) = udp_client(&url).await;

    let req = raw_request(true, 2, 0x1234, &[0xAA], &["ps", "dup", "x"], b"once");
    sock.send_to(&req, addr).await.unwrap();
    let (first, p) = recv_packet(&sock).await;
    assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(p.header.message_id, 0x1234);
    assert_eq!(p.header.code, MessageClass::Response(ResponseType::Changed));
    sock.send_to(&req, addr).await.unwrap();
    let (second, _) = recv_packet(&sock).await;
    assert_eq!(first, second, "the duplicate gets the cached response");

    // A new message id is a new request: it comes after exactly one "once".
    let marker = raw_request(true, 2, 0x1235, &[0xAB], &["ps", "dup", "x"], b"marker");
    sock.send_to(&marker, addr).await.unwrap();
    recv_packet(&sock).await;
    let a = within("first envelope", sub.recv()).await.unwrap();
    let b = within("second envelope", sub.recv()).await.unwrap();
    assert_eq!(
        (&a.payload[..], &b.payload[..]),
        (&b"once"[..], &b"marker"[..])
    );
    assert_eq!(named(&hub, "coap", "duplicates"), 1);

    // The same message id from another peer is another exchange.
    let (other, _) = udp_client(&url).await;
    other.send_to(&req, addr).await.unwrap();
    recv_packet(&other).await;
    let c = within("other peer's envelope", sub.recv()).await.unwrap();
    assert_eq!(&c.payload[..], b"once");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_datagrams_are_counted_and_the_server_keeps_answering() {
    let (hub, url) = coap_hub("").await;
    let (sock, addr) = udp_client(&url).await;
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x40],
        vec![0x40, 0x01, 0x00],
        vec![0x80, 0x01, 0x00, 0x01],             // version 2
        vec![0x4F, 0x01, 0x00, 0x01, 1, 2, 3],    // token length 15
        vec![0x48, 0x01, 0x00, 0x01, 1, 2],       // token longer than the datagram
        vec![0x40, 0x01, 0x00, 0x01, 0xF1, 0x00], // option delta 15
        vec![0x40, 0x01, 0x00, 0x01, 0x1F, 0x00], // option length 15
        vec![0x40, 0x01, 0x00, 0x01, 0xEE, 0xFF, 0xFF, 0xFF, 0xFF], // huge delta and length
        vec![0x40, 0x01, 0x00, 0x01, 0x1D],       // extended length missing
        vec![0x40, 0x01, 0x00, 0x01, 0xE1, 0xFF], // extended delta truncated
        vec![0x40, 0x00, 0x00, 0x01, 0xFF, 0x01], // empty message with payload
        vec![0x40, 0x25, 0x00, 0x01],             // reserved class 1
        vec![0x40, 0xE1, 0x00, 0x01],             // reserved class 7
    ];
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len % 40)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        garbage.push(bytes);
    }
    for g in &garbage {
        sock.send_to(g, addr).await.unwrap();
    }
    // A CON with a format error is answered with a RST for its message id.
    sock.send_to(&[0x40, 0x01, 0x77, 0x77, 0xF1, 0x00], addr)
        .await
        .unwrap();
    let rst = loop {
        let (_, p) = recv_packet(&sock).await;
        if p.header.message_id == 0x7777 {
            break p;
        }
    };
    assert_eq!(rst.header.get_type(), MessageType::Reset);

    // Still serving.
    let out = coap_client(&[
        "-m",
        "post",
        "-e",
        "alive",
        &format!("{url}/ps/health/check"),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = coap_client(&[&format!("{url}/ps/health/check")]).await;
    assert_eq!(stdout(&out).trim_end(), "alive");
    let snap = hub.snapshot();
    let coap = snap.adapters.iter().find(|a| a.name == "coap").unwrap();
    assert_eq!(coap.state, polyhub_sdk::AdapterState::Up);
    let malformed = coap
        .metrics
        .rejected
        .iter()
        .find(|(k, _)| k == "malformed_datagram")
        .map_or(0, |(_, v)| *v);
    assert!(malformed >= 14, "{:?}", coap.metrics.rejected);
    assert_eq!(coap.metrics.dropped, 0, "refusals are not queue drops");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn pushed_envelopes_reach_a_libcoap_coap_server() {
    let device_port = free_udp_port();
    let mut device = Command::new(libcoap("coap-server"))
        .args([
            "-A",
            "127.0.0.1",
            "-p",
            &device_port.to_string(),
            "-d",
            "10",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coap-server");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let device = Kill(&mut device);
    let (hub, url) = coap_hub(&format!(
        "push = [{{ filter = \"actuators/#\", url = \"coap://127.0.0.1:{device_port}/led\" }}]\nack_timeout_ms = 200\n"
    ))
    .await;
    let app = hub.attach("app", "test");
    let led = format!("coap://127.0.0.1:{device_port}/led");

    app.publish(Envelope::new(topic("actuators/led"), "on").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    wait_until("push delivered", Duration::from_secs(10), || {
        named(&hub, "coap", "push_delivered") >= 1
    })
    .await;
    let out = coap_client(&[&led]).await;
    assert_eq!(stdout(&out).trim_end(), "on");

    // A CoAP client's own publish is pushed too, and a large one block-wise.
    let big: String = (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big");
    std::fs::write(&f, &big).unwrap();
    let out = coap_client(&[
        "-m",
        "put",
        "-f",
        f.to_str().unwrap(),
        &format!("{url}/ps/actuators/led"),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("second push delivered", Duration::from_secs(10), || {
        named(&hub, "coap", "push_delivered") >= 2
    })
    .await;
    let out = coap_client(&[&led]).await;
    assert_eq!(stdout(&out).trim_end(), big);
    assert_eq!(named(&hub, "coap", "push_failures"), 0);
    drop(device);
    hub.shutdown().await.unwrap();
}

/// A device that ignores the first datagram, then acknowledges with 2.04.
#[tokio::test]
async fn a_push_is_retransmitted_after_a_lost_datagram_and_failures_are_counted() {
    let device = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let device_port = device.local_addr().unwrap().port();
    let dead_port = free_udp_port();
    let (hub, _url) = coap_hub(&format!(
        "push = [{{ filter = \"led/#\", url = \"coap://127.0.0.1:{device_port}/led/1?mode=fast\" }}, \
         {{ filter = \"dead/#\", url = \"coap://127.0.0.1:{dead_port}/x\" }}]\n\
         ack_timeout_ms = 100\nmax_retransmit = 2\n"
    ))
    .await;
    let app = hub.attach("app", "test");
    app.publish(Envelope::new(topic("led/1"), "blink").with_content_type("text/plain"))
        .await
        .unwrap();

    let (first, p) = recv_packet(&device).await;
    assert_eq!(p.header.get_type(), MessageType::Confirmable);
    assert_eq!(p.header.code, MessageClass::Request(RequestType::Put));
    assert_eq!(p.payload, b"blink");
    let path: Vec<&[u8]> = p
        .get_option(CoapOption::UriPath)
        .unwrap()
        .iter()
        .map(|v| &v[..])
        .collect();
    assert_eq!(path, vec![&b"led"[..], &b"1"[..]]);
    assert_eq!(
        p.get_first_option(CoapOption::UriQuery).unwrap(),
        b"mode=fast"
    );
    assert_eq!(
        p.get_first_option(CoapOption::ContentFormat)
            .map(|v| v.len()),
        Some(0),
        "Content-Format 0"
    );
    // Lost: no answer. The retransmission is the same message.
    let mut buf = vec![0u8; 2048];
    let (n, from) = within("retransmission", device.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], &first[..]);
    let mut ack = Packet::new();
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.message_id = p.header.message_id;
    ack.header.code = MessageClass::Response(ResponseType::Changed);
    ack.set_token(p.get_token().to_vec());
    device
        .send_to(&ack.to_bytes().unwrap(), from)
        .await
        .unwrap();
    wait_until("push delivered", Duration::from_secs(5), || {
        named(&hub, "coap", "push_delivered") == 1
    })
    .await;
    assert!(named(&hub, "coap", "push_retransmissions") >= 1);

    // Nobody listens on the dead port: counted as a failure after the retries.
    let errors_before = hub
        .snapshot()
        .adapters
        .iter()
        .find(|a| a.name == "coap")
        .unwrap()
        .metrics
        .errors;
    app.publish(Envelope::new(topic("dead/1"), "x"))
        .await
        .unwrap();
    wait_until("push failure counted", Duration::from_secs(10), || {
        named(&hub, "coap", "push_failures") == 1
    })
    .await;
    let snap = hub.snapshot();
    assert!(
        snap.adapters
            .iter()
            .find(|a| a.name == "coap")
            .unwrap()
            .metrics
            .errors
            > errors_before
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_coap_config_is_refused_with_the_key() {
    let err = polyhub::start_str(
        "[[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:0\"\nblock_size = 1000\n",
    )
    .await
    .expect_err("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("block_size"), "{msg}");
}

#[tokio::test]
async fn a_slow_hub_gets_an_empty_ack_then_a_separate_response() {
    // One-envelope queues: a QoS 1 publish waits while the subscriber is full.
    let port = free_udp_port();
    let hub = start_hub(&format!(
        "[hub]\nqueue_depth = 1\n[[adapters]]\nname = \"coap\"\ntype = \"coap\"\n\
         [adapters.config]\nbind = \"127.0.0.1:{port}\"\nack_timeout_ms = 200\n"
    ))
    .await;
    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([filter("slow/#")]).unwrap();
    let (sock, addr) = udp_client(&format!("coap://127.0.0.1:{port}")).await;

    let first = raw_request(true, 2, 0x0100, &[1], &["ps", "slow"], b"a");
    sock.send_to(&first, addr).await.unwrap();
    let (_, ack) = recv_packet(&sock).await;
    assert_eq!(
        ack.header.code,
        MessageClass::Response(ResponseType::Changed)
    );

    // The queue is full now: the second request is acknowledged empty...
    let second = raw_request(true, 2, 0x0101, &[2], &["ps", "slow"], b"b");
    sock.send_to(&second, addr).await.unwrap();
    let (_, ack) = recv_packet(&sock).await;
    assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(ack.header.code, MessageClass::Empty);
    assert_eq!(ack.header.message_id, 0x0101);
    // ...a retransmission of it gets the same empty ACK, not a second publish...
    sock.send_to(&second, addr).await.unwrap();
    let (_, again) = recv_packet(&sock).await;
    assert_eq!(again.header.code, MessageClass::Empty);

    // ...and once the subscriber reads, the 2.04 comes as a CON of its own.
    assert_eq!(&within("a", sub.recv()).await.unwrap().payload[..], b"a");
    assert_eq!(&within("b", sub.recv()).await.unwrap().payload[..], b"b");
    let (_, separate) = recv_packet(&sock).await;
    assert_eq!(separate.header.get_type(), MessageType::Confirmable);
    assert_eq!(
        separate.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(separate.get_token(), &[2]);
    let mut ack = Packet::new();
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.message_id = separate.header.message_id;
    sock.send_to(&ack.to_bytes().unwrap(), addr).await.unwrap();
    assert!(
        sub.try_recv().is_none(),
        "the retransmission was not published"
    );
    hub.shutdown().await.unwrap();
}

/// A topic prefix no other test run uses on the shared Mosquitto.
fn unique_prefix() -> String {
    format!(
        "coaptest-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[cfg(feature = "mqtt")]
#[tokio::test]
async fn coap_devices_and_mqtt_devices_reach_each_other() {
    assert!(
        service_up(1883),
        "Mosquitto must run on 1883 (scripts/test.sh starts it)"
    );
    let prefix = unique_prefix();
    let port = free_udp_port();
    let hub = start_hub(&format!(
        "[[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n\
         [[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nurl = \"mqtt://127.0.0.1:1883\"\n\
         subscribe = [\"{prefix}/#\"]\nforward = [\"{prefix}/#\"]\n"
    ))
    .await;
    wait_until("mqtt adapter up", Duration::from_secs(10), || {
        hub.snapshot().all_up()
    })
    .await;
    let url = format!("coap://127.0.0.1:{port}");

    // CoAP → hub → MQTT.
    let sub_topic = format!("{prefix}/from-coap");
    let mut mqtt_sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-C",
            "1",
            "-W",
            "10",
            "-t",
            &sub_topic,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    // mosquitto_sub has subscribed once a retained-less publish reaches it;
    // publish until it does.
    let mut got = String::new();
    for _ in 0..40 {
        let out =
            coap_client(&["-m", "post", "-e", "21.5", &format!("{url}/ps/{sub_topic}")]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(Some(_)) = mqtt_sub.try_wait() {
            let mut s = String::new();
            mqtt_sub
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            got = s;
            break;
        }
    }
    let _ = mqtt_sub.kill();
    let _ = mqtt_sub.wait();
    assert_eq!(got.trim_end(), "21.5");

    // MQTT → hub → CoAP observer.
    let obs_topic = format!("{prefix}/from-mqtt");
    let mut obs = Observer::start(&hub, &format!("{url}/ps/{obs_topic}")).await;
    let out = within(
        "mosquitto_pub",
        tokio::task::spawn_blocking(move || {
            Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    "1883",
                    "-q",
                    "1",
                    "-t",
                    &obs_topic,
                    "-m",
                    "hello",
                ])
                .output()
                .expect("mosquitto_pub")
        }),
    )
    .await
    .unwrap();
    assert!(out.status.success());
    assert_eq!(obs.next().await, "hello");
    hub.shutdown().await.unwrap();
}

#[cfg(feature = "http")]
#[tokio::test]
async fn coap_and_http_share_last_values() {
    let (coap_port, http_port) = (free_udp_port(), free_tcp_port());
    let hub = start_hub(&format!(
        "[[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{coap_port}\"\n\
         [[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http_port}\"\n"
    ))
    .await;
    let curl = |args: Vec<String>| async move {
        within(
            "curl",
            tokio::task::spawn_blocking(move || {
                Command::new("curl")
                    .args(["-s", "-m", "8"])
                    .args(&args)
                    .output()
                    .expect("curl")
            }),
        )
        .await
        .unwrap()
    };
    // HTTP POST → CoAP GET, content type carried.
    let out = curl(vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data".into(),
        "{\"t\":21}".into(),
        format!("http://127.0.0.1:{http_port}/topics/house/temp"),
    ])
    .await;
    assert!(out.status.success());
    let out = coap_client(&[
        "-A",
        "50",
        &format!("coap://127.0.0.1:{coap_port}/ps/house/temp"),
    ])
    .await;
    assert_eq!(stdout(&out).trim_end(), "{\"t\":21}");

    // CoAP POST → HTTP GET.
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "0",
        "-e",
        "on",
        &format!("coap://127.0.0.1:{coap_port}/ps/house/light"),
    ])
    .await;
    assert!(out.status.success());
    let out = curl(vec![
        "-i".into(),
        format!("http://127.0.0.1:{http_port}/topics/house/light"),
    ])
    .await;
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{text}"
    );
    assert!(text.ends_with("on"), "{text}");
    hub.shutdown().await.unwrap();
}
