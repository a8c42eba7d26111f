//! The MQTT adapter under hostile or heavy load, with real peers: a flood of
//! QoS 0 device messages (`mosquitto_pub -l`) while an SSE client reads
//! nothing, the QoS a message enters with, and a burst of hub messages
//! forwarded to a private Mosquitto and to the embedded broker, which must
//! never come back in as echoes nor reach an SSE reader (`curl -N`) twice;
//! garbage from a device is counted by reason.

mod common;
mod mqtt_devices;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use mqtt_devices::{publish, unique_prefix, PrivateMosquitto, Sub};
use polyhub_sdk::{Envelope, QoS, Topic, TopicFilter};
use tokio::sync::mpsc;

/// Device messages in the flood.
const FLOOD: usize = 100_000;
/// HTTP posts in the echo burst: more than the 10 000 publishes the old echo
/// memory held.
const BURST: usize = 30_000;
/// Bound for waits on a whole flood or burst.
const LONG: Duration = Duration::from_secs(50);

fn hub_config(mqtt: &str, http_port: u16) -> String {
    format!(
        "[[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\n{mqtt}\n\
         [[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http_port}\"\n"
    )
}

fn counters(hub: &polyhub::Hub, adapter: &str) -> polyhub_sdk::MetricsSnapshot {
    hub.snapshot()
        .adapters
        .into_iter()
        .find(|a| a.name == adapter)
        .map(|a| a.metrics)
        .unwrap_or_default()
}

/// `/metrics` as the HTTP adapter serves it, fetched with curl.
async fn metrics_text(http_port: u16) -> String {
    let url = format!("http://127.0.0.1:{http_port}/metrics");
    let out = within(
        "curl /metrics",
        tokio::task::spawn_blocking(move || Command::new("curl").args(["-sf", &url]).output()),
    )
    .await
    .expect("join")
    .expect("curl runs");
    assert!(out.status.success(), "GET /metrics failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `name{...adapter="adapter"...}` in a `/metrics` text.
fn metric(text: &str, name: &str, adapter: &str, extra: &str) -> u64 {
    let adapter = format!("adapter=\"{adapter}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(&adapter) && l.contains(extra))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// An SSE client of `/events?filter=...` that never reads its socket.
fn stalled_sse_client(http_port: u16, filter: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http_port)).expect("connect");
    write!(
        s,
        "GET /events?filter={filter} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send request");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_client_never_stalls_qos0_device_messages_on_the_embedded_broker() {
    let (mqtt_port, http_port) = (free_tcp_port(), free_tcp_port());
    let hub = start_hub(&hub_config(
        &format!("listen = \"127.0.0.1:{mqtt_port}\""),
        http_port,
    ))
    .await;
    let probe = hub.attach("probe", "test");
    let mut other = probe
        .subscribe([TopicFilter::new("other/#").unwrap()])
        .unwrap();

    let subs_before = hub.snapshot().subscriptions;
    let stalled = stalled_sse_client(http_port, "flood/%23");
    wait_until("SSE subscription", TIMEOUT, || {
        hub.snapshot().subscriptions > subs_before
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("flood.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&lines).unwrap());
    // About 19 MB of SSE events in all: far more than socket buffers hold.
    for i in 0..FLOOD {
        writeln!(f, "{i:06} {:050}", 0).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string()])
        .args(["-t", "flood/x", "-q", "0", "-l"])
        .stdin(std::fs::File::open(&lines).unwrap());
    let out = within_for(LONG, "mosquitto_pub -l", async {
        tokio::task::spawn_blocking(move || cmd.output()).await
    })
    .await
    .expect("join")
    .expect("mosquitto_pub runs");
    assert!(out.status.success(), "mosquitto_pub -l failed");

    // Every device message enters the hub although one subscriber reads nothing.
    wait_until("the whole flood in the hub", LONG, || {
        counters(&hub, "mqtt").messages_in >= FLOOD as u64
    })
    .await;

    // A topic the stalled client does not match still reaches its subscriber.
    publish(mqtt_port, "other/t", "still here", &["-q", "0"]).await;
    let env = within("message on an unmatched topic", other.recv())
        .await
        .expect("hub open");
    assert_eq!(&env.payload[..], b"still here");
    assert_eq!(env.qos, QoS::AtMostOnce);

    // Every message is accounted for on /metrics: it entered the hub, and
    // each was queued to the stalled stream or dropped and counted there.
    let text = metrics_text(http_port).await;
    let mqtt_in = metric(&text, "polyhub_messages_in_total", "mqtt", "");
    assert_eq!(mqtt_in, FLOOD as u64 + 1, "{text}");
    let http_out = metric(&text, "polyhub_messages_out_total", "http", "");
    let http_dropped = metric(&text, "polyhub_dropped_total", "http", "");
    assert_eq!(http_out + http_dropped, FLOOD as u64, "{text}");
    assert!(
        http_dropped > 0,
        "the stalled client's queue overflowed: {text}"
    );
    assert_eq!(counters(&hub, "mqtt").dropped, 0);
    assert!(hub.snapshot().all_up());
    // (A stream that reads nothing also holds up the HTTP adapter's drain.)
    drop(stalled);
    drop((other, probe));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn device_messages_enter_the_hub_at_the_qos_they_were_published_with() {
    let (mqtt_port, http_port) = (free_tcp_port(), free_tcp_port());
    let prefix = unique_prefix("qos");
    let hub = start_hub(&format!(
        "{}[[adapters]]\nname = \"mosq\"\ntype = \"mqtt\"\n[adapters.config]\n\
         url = \"mqtt://127.0.0.1:1883\"\nclient_id = \"{prefix}-mosq\"\n\
         subscribe = [\"{prefix}/#\"]\nforward = [\"{prefix}/out/#\"]\n",
        hub_config(
            &format!("listen = \"127.0.0.1:{mqtt_port}\"\nforward = []"),
            http_port
        ),
    ))
    .await;
    let probe = hub.attach("probe", "test");
    let mut embedded = probe.subscribe([TopicFilter::new("q/#").unwrap()]).unwrap();
    let mut external = probe
        .subscribe([TopicFilter::new(&format!("{prefix}/q/#")).unwrap()])
        .unwrap();
    wait_until("adapters up", TIMEOUT, || hub.snapshot().all_up()).await;

    for (port, sub, base) in [
        (mqtt_port, &mut embedded, "q".to_owned()),
        (1883, &mut external, format!("{prefix}/q")),
    ] {
        let mut got = HashMap::new();
        for q in ["0", "1", "2"] {
            publish(port, &format!("{base}/{q}"), "x", &["-q", q]).await;
            let env = within("device message", sub.recv())
                .await
                .expect("hub open");
            got.insert(env.topic.as_str().to_owned(), env.qos);
        }
        assert_eq!(
            got[&format!("{base}/0")],
            QoS::AtMostOnce,
            "{base}: {got:?}"
        );
        assert_eq!(
            got[&format!("{base}/1")],
            QoS::AtLeastOnce,
            "{base}: {got:?}"
        );
        assert_eq!(
            got[&format!("{base}/2")],
            QoS::ExactlyOnce,
            "{base}: {got:?}"
        );
    }

    // Hub → external broker: a QoS 0 envelope is a QoS 0 publish.
    let mut device = Sub::start(1883, &format!("{prefix}/out/#"), &[]).await;
    for (q, qos) in [(0u8, QoS::AtMostOnce), (1, QoS::AtLeastOnce)] {
        let t = Topic::new(&format!("{prefix}/out/{q}")).unwrap();
        probe
            .publish(Envelope::new(t, "y").with_qos(qos))
            .await
            .unwrap();
        let m = device.next().await;
        assert_eq!((m.topic, m.qos), (format!("{prefix}/out/{q}"), q));
    }
    hub.shutdown().await.unwrap();
}

/// `curl -N` reading `/events`: the topics of the events it received.
struct SseReader {
    child: Child,
    rx: mpsc::UnboundedReceiver<String>,
}

impl SseReader {
    fn start(http_port: u16, filter: &str) -> SseReader {
        let mut child = Command::new("curl")
            .args([
                "-sN",
                &format!("http://127.0.0.1:{http_port}/events?filter={filter}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                // {"topic":"...","payload":...}
                let topic = data
                    .split("\"topic\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_default()
                    .to_owned();
                if tx.send(topic).is_err() {
                    break;
                }
            }
        });
        SseReader { child, rx }
    }

    /// Topics received until (and excluding) `end`.
    async fn until(&mut self, end: &str) -> Vec<String> {
        within_for(LONG, "the SSE stream up to the sentinel", async {
            let mut seen = Vec::new();
            loop {
                match self.rx.recv().await {
                    Some(t) if t == end => return seen,
                    Some(t) => seen.push(t),
                    None => panic!("curl -N exited"),
                }
            }
        })
        .await
    }
}

impl Drop for SseReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A burst of hub messages forwarded to MQTT with `subscribe = forward =
/// ["#"]`: none comes back in, and an SSE reader gets each exactly once. The
/// burst comes from an in-process hub client rather than `curl` posts: the
/// same envelopes, but fast enough (as a release build's HTTP is) that more
/// than the old 10 000-entry echo memory are in flight at once.
async fn burst_without_echo(mqtt: &str, mqtt_port: u16) {
    let http_port = free_tcp_port();
    let hub = start_hub(&hub_config(mqtt, http_port)).await;
    wait_until("adapters up", TIMEOUT, || hub.snapshot().all_up()).await;
    let mut device = Sub::start(mqtt_port, "burst/#", &[]).await;
    let mut sse = SseReader::start(http_port, "burst/%23");
    let subs = hub.snapshot().subscriptions;
    wait_until("SSE subscription", TIMEOUT, || {
        hub.snapshot().subscriptions >= subs + 1
    })
    .await;
    // The SSE subscription may predate the snapshot; make sure it is live.
    let probe_topic = "burst/probe";
    let sent = Command::new("curl")
        .args([
            "-sf",
            "-d",
            "p",
            &format!("http://127.0.0.1:{http_port}/topics/{probe_topic}"),
        ])
        .status()
        .expect("curl");
    assert!(sent.success());
    sse.until(probe_topic).await;

    let probe = hub.attach("probe", "test");
    within_for(LONG, "the burst into the hub", async {
        for i in 0..BURST {
            let t = Topic::new(&format!("burst/{i}")).unwrap();
            let env = Envelope::new(t, i.to_string()).with_qos(QoS::AtLeastOnce);
            probe.publish(env).await.unwrap();
        }
    })
    .await;
    // Every post reached the broker (the device saw it), so any echo of
    // them is on its way to the adapter before a later device publish.
    within_for(LONG, "the burst at the MQTT device", async {
        let mut n = 0;
        while n < BURST {
            if device.next_within(LONG).await.topic.starts_with("burst/") {
                n += 1;
            }
        }
    })
    .await;
    publish(mqtt_port, "burst/end", "x", &["-q", "1"]).await;

    let seen = sse.until("burst/end").await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &seen {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} topics twice: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(
        counts.len(),
        BURST,
        "every post reached the SSE reader once"
    );
    // Only the sentinel came in through MQTT: no echo.
    let text = metrics_text(http_port).await;
    assert_eq!(
        metric(&text, "polyhub_messages_in_total", "mqtt", ""),
        1,
        "{text}"
    );
    assert!(hub.snapshot().all_up());
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_forwarded_to_mosquitto_never_comes_back_as_echoes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let _mosquitto = PrivateMosquitto::start(dir.path(), port).await;
    burst_without_echo(
        &format!("url = \"mqtt://127.0.0.1:{port}\"\nsubscribe = [\"#\"]\nforward = [\"#\"]"),
        port,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_forwarded_to_the_embedded_broker_never_comes_back_as_echoes() {
    let port = free_tcp_port();
    burst_without_echo(
        &format!("listen = \"127.0.0.1:{port}\"\nsubscribe = [\"#\"]\nforward = [\"#\"]"),
        port,
    )
    .await;
}

#[tokio::test]
async fn malformed_packets_are_counted_by_reason_and_the_broker_keeps_serving() {
    let mqtt_port = free_tcp_port();
    let http_port = free_tcp_port();
    let hub = start_hub(&hub_config(
        &format!("listen = \"127.0.0.1:{mqtt_port}\""),
        http_port,
    ))
    .await;
    // A CONNECT with a bad protocol level, then garbage.
    for bytes in [
        &b"\x10\x0c\x00\x04MQTT\x09\x02\x00\x3c\x00\x00"[..],
        &b"\xf0\x00\xff\xff\xff\xff\xff"[..],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", mqtt_port)).unwrap();
        s.write_all(bytes).unwrap();
    }
    wait_until("malformed packets counted", TIMEOUT, || {
        counters(&hub, "mqtt").rejected("malformed_packet") >= 2
    })
    .await;
    // The broker still serves devices.
    let probe = hub.attach("probe", "test");
    let mut sub = probe
        .subscribe([TopicFilter::new("ok/#").unwrap()])
        .unwrap();
    publish(mqtt_port, "ok/1", "fine", &["-q", "1"]).await;
    let env = within("message after garbage", sub.recv())
        .await
        .expect("hub open");
    assert_eq!(&env.payload[..], b"fine");
    let text = metrics_text(http_port).await;
    assert!(
        metric(
            &text,
            "polyhub_rejected_total",
            "mqtt",
            "reason=\"malformed_packet\""
        ) >= 2,
        "{text}"
    );
    hub.shutdown().await.unwrap();
}
