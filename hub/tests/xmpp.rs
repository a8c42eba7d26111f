//! The XMPP adapter against a real Prosody (the private instance of
//! `scripts/prosody/instance.sh`) with slixmpp devices
//! (`xmpp_devices/device.py`), and MQTT (`mosquitto_sub`/`mosquitto_pub`
//! on the embedded broker), HTTP (`curl`) and in-process clients on the
//! other side. Each test logs in with its own hub and device accounts, so
//! tests run in parallel on one server; the restart test runs its own server.
#![cfg(feature = "xmpp")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use polyhub_sdk::{AdapterState, Envelope, Subscription, Topic, TopicFilter};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const PASSWORD: &str = "polyhub-pw";
const SHARED_DIR: &str = "/tmp/polyhub-prosody";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts (or finds) the Prosody of `dir` and returns its port.
fn prosody(dir: &str) -> u16 {
    let out = std::process::Command::new(repo().join("scripts/prosody/instance.sh"))
        .arg(dir)
        .output()
        .expect("run scripts/prosody/instance.sh (is prosody installed? run scripts/test.sh)");
    assert!(
        out.status.success(),
        "instance.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("instance.sh prints the port")
}

fn shared_prosody() -> u16 {
    prosody(SHARED_DIR)
}

fn ca_file(dir: &str) -> String {
    format!("{dir}/certs/ca.crt")
}

fn xmpp_adapter(name: &str, user: &str, port: u16, extra: &str) -> String {
    format!(
        "[[adapters]]\nname = \"{name}\"\ntype = \"xmpp\"\n[adapters.config]\n\
         jid = \"{user}@localhost/polyhub\"\npassword = \"{PASSWORD}\"\nserver = \"127.0.0.1:{port}\"\n\
         tls = \"none\"\nreconnect_max_secs = 1\n{extra}\n"
    )
}

fn mqtt_adapter(port: u16) -> String {
    format!("[[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{port}\"\n")
}

fn coap_adapter(port: u16) -> String {
    format!("[[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n")
}

/// libcoap's `coap-client` (Debian names it `coap-client-notls` in some
/// builds) with `args`, bounded by `-B`; its stdout.
async fn coap_client(args: &[&str]) -> String {
    let name = ["coap-client", "coap-client-notls"]
        .into_iter()
        .find(|n| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {n}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .expect("coap-client (libcoap3-bin, installed by scripts/test.sh)");
    let mut cmd = Command::new(name);
    cmd.args(["-B", "8"]).args(args);
    let out = run_tool("coap-client", cmd).await;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_adapter(port: u16) -> String {
    format!("[[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n")
}

/// One event line of a device: its name and fields.
#[derive(Debug, Clone)]
struct Ev {
    name: String,
    fields: HashMap<String, String>,
}

impl Ev {
    fn parse(line: &str) -> Ev {
        let mut parts = line.split('\t');
        let name = parts.next().unwrap_or_default().to_owned();
        let fields = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), unescape(v)))
            .collect();
        Ev { name, fields }
    }

    fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }
}

fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON object of string values.
fn obj(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {}", js(k), js(v)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// A slixmpp device process; a thread forwards its event lines.
struct Device {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Messages that came before the device was online (the server's
    /// offline store), kept by [`Device::online_keeping`].
    early: std::collections::VecDeque<Ev>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Device {
    /// Starts `user@localhost` (STARTTLS with the instance's CA) and waits
    /// until it is online.
    async fn online(user: &str, port: u16, dir: &str) -> Device {
        Device::start(user, port, dir, false).await
    }

    /// Like [`Device::online`], but keeps the messages that arrive before
    /// the device is online (what the server kept while it was away) for
    /// [`Device::message`].
    async fn online_keeping(user: &str, port: u16, dir: &str) -> Device {
        Device::start(user, port, dir, true).await
    }

    async fn start(user: &str, port: u16, dir: &str, keep_early: bool) -> Device {
        let mut child = Command::new("python3")
            .arg(repo().join("hub/tests/xmpp_devices/device.py"))
            .arg(format!("{user}@localhost"))
            .arg(PASSWORD)
            .arg(port.to_string())
            .arg(ca_file(dir))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with slixmpp (run scripts/test.sh)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel(256);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Device {
            name: user.to_owned(),
            child,
            stdin,
            lines,
            early: Default::default(),
        };
        let early = std::sync::Mutex::new(Vec::new());
        d.expect("online", |e| {
            if keep_early && e.name == "message" {
                early.lock().unwrap().push(e.clone());
            }
            e.name == "online"
        })
        .await;
        d.early = early.into_inner().unwrap().into();
        d
    }

    async fn cmd(&mut self, json: String) {
        // One short line into a pipe the device drains: does not block.
        writeln!(self.stdin, "{json}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next event matching `pred` (others are skipped).
    async fn expect(&mut self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        let name = self.name.clone();
        within(&format!("{name}: {what}"), async {
            loop {
                let line = self
                    .lines
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("{name} exited while waiting for {what}"));
                let ev = Ev::parse(&line);
                if ev.name == "command_error" {
                    panic!("{name}: {line}");
                }
                if pred(&ev) {
                    return ev;
                }
            }
        })
        .await
    }

    /// The next message (skipping other events).
    async fn message(&mut self) -> Ev {
        if let Some(ev) = self.early.pop_front() {
            return ev;
        }
        self.expect("a message", |e| e.name == "message").await
    }

    async fn send(&mut self, to: &str, subject: Option<&str>, body: &str) {
        let json = match subject {
            Some(s) => obj(&[("op", "send"), ("to", to), ("subject", s), ("body", body)]),
            None => obj(&[("op", "send"), ("to", to), ("body", body)]),
        };
        self.cmd(json).await;
    }

    async fn quit(mut self) {
        self.cmd(obj(&[("op", "quit")])).await;
        self.expect("bye", |e| e.name == "bye").await;
    }
}

/// Runs a short-lived tool to completion off the runtime, bounded.
async fn run_tool(what: &str, mut cmd: Command) -> std::process::Output {
    let what = what.to_owned();
    let out = within(&what, tokio::task::spawn_blocking(move || cmd.output())).await;
    out.unwrap().unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

async fn next_env(sub: &mut Subscription, what: &str) -> std::sync::Arc<Envelope> {
    within(what, sub.recv()).await.expect("hub closed")
}

fn adapter_state(hub: &polyhub::Hub, name: &str) -> AdapterState {
    hub.snapshot()
        .adapters
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.state)
        .unwrap()
}

fn counter(hub: &polyhub::Hub, adapter: &str, key: &str) -> u64 {
    let snap = hub.snapshot();
    let a = snap.adapters.iter().find(|a| a.name == adapter).unwrap();
    match key {
        "reconnects" => a.metrics.reconnects,
        "dropped" => a.metrics.dropped,
        _ => a
            .metrics
            .named
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .unwrap_or(0),
    }
}

/// `mosquitto_sub -v` on the embedded broker: `count` messages, at most 10 s.
fn mosquitto_sub(port: u16, filter: &str, count: u32) -> tokio::task::JoinHandle<String> {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        filter,
        "-v",
        "-W",
        "10",
    ])
    .args(["-C", &count.to_string()]);
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().expect("mosquitto_sub");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

async fn mosquitto_pub(port: u16, topic: &str, payload: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payload).unwrap();
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-f",
    ])
    .arg(file.path());
    let out = run_tool("mosquitto_pub", cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The seed scenario: `alice` reports `firealarm` readings with XEP-0323;
/// `bob` (a static XMPP subscriber) and an MQTT subscriber both get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_firealarm_readings_reach_bob_and_an_mqtt_subscriber() {
    let port = shared_prosody();
    let mqtt = free_tcp_port();
    let mut bob = Device::online("bob", port, SHARED_DIR).await;
    let hub = start_hub(&format!(
        "{}{}",
        xmpp_adapter(
            "xmpp",
            "hub1",
            port,
            "subscribers = [{ jid = \"bob@localhost\", filter = \"xmpp/alice@localhost/#\" }]"
        ),
        mqtt_adapter(mqtt)
    ))
    .await;
    assert_eq!(adapter_state(&hub, "xmpp"), AdapterState::Up);
    let probe = hub.attach("probe", "test");
    let mut sub = probe.subscribe([filter("xmpp/alice@localhost/#")]).unwrap();
    let mqtt_sub = mosquitto_sub(mqtt, "xmpp/alice@localhost/temperature", 1);

    let mut alice = Device::online("alice", port, SHARED_DIR).await;
    alice
        .cmd(
            r#"{"op": "sensor", "to": "hub1@localhost", "node": "firealarm",
                "fields": [{"type": "numeric", "name": "temperature", "value": "23.5", "unit": "C"},
                           {"type": "boolean", "name": "alarm", "value": "false"}]}"#
                .replace('\n', " "),
        )
        .await;

    let t = next_env(&mut sub, "temperature envelope").await;
    assert_eq!(t.topic.as_str(), "xmpp/alice@localhost/temperature");
    assert_eq!(&t.payload[..], b"23.5");
    assert_eq!(t.header("unit"), Some("C"));
    assert_eq!(t.header("xmpp-node"), Some("firealarm"));
    assert!(t.retain);
    assert_eq!(t.origin.user.as_deref(), Some("alice@localhost"));
    let a = next_env(&mut sub, "alarm envelope").await;
    assert_eq!(a.topic.as_str(), "xmpp/alice@localhost/alarm");
    assert_eq!(&a.payload[..], b"false");

    // bob gets both as chat messages with the topic as subject.
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = bob.message().await;
        assert_eq!(m.get("from"), "hub1@localhost/polyhub");
        assert_eq!(m.get("type"), "chat");
        got.push((m.get("subject").to_owned(), m.get("body").to_owned()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("xmpp/alice@localhost/alarm".to_owned(), "false".to_owned()),
            (
                "xmpp/alice@localhost/temperature".to_owned(),
                "23.5".to_owned()
            ),
        ]
    );

    // The MQTT subscriber (live or from the retained value) gets it too.
    let printed = within_for(Duration::from_secs(15), "mosquitto_sub", mqtt_sub)
        .await
        .unwrap();
    assert_eq!(printed, "xmpp/alice@localhost/temperature 23.5");

    // XEP-0325 control, as a message and as an IQ (answered).
    let mut ctl = probe
        .subscribe([filter("xmpp/alice@localhost/control/#")])
        .unwrap();
    alice
        .cmd(obj(&[
            ("op", "control_msg"),
            ("to", "hub1@localhost"),
            ("name", "led"),
            ("type", "boolean"),
            ("value", "true"),
        ]))
        .await;
    let c = next_env(&mut ctl, "control envelope").await;
    assert_eq!(c.topic.as_str(), "xmpp/alice@localhost/control/led");
    assert_eq!(&c.payload[..], b"true");
    alice
        .cmd(obj(&[
            ("op", "control_iq"),
            ("to", "hub1@localhost/polyhub"),
            ("name", "fan"),
            ("type", "int"),
            ("value", "3"),
        ]))
        .await;
    let iq = alice.expect("control iq answer", |e| e.name == "iq").await;
    assert_eq!(iq.get("type"), "result", "{iq:?}");
    assert!(iq.get("xml").contains("setResponse"), "{iq:?}");
    let c = next_env(&mut ctl, "control iq envelope").await;
    assert_eq!(c.topic.as_str(), "xmpp/alice@localhost/control/fan");
    assert_eq!(&c.payload[..], b"3");

    alice.quit().await;
    bob.quit().await;
    within("shutdown", hub.shutdown()).await.unwrap();
}

/// A chat with a subject reaches MQTT and HTTP; `subscribe`/`unsubscribe`
/// are confirmed and manage what comes back from MQTT, binary included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carol_publishes_to_mqtt_http_coap_and_subscribes_to_mqtt_and_coap() {
    let port = shared_prosody();
    let (mqtt, http, coap) = (free_tcp_port(), free_tcp_port(), free_udp_port());
    let hub = start_hub(&format!(
        "{}{}{}{}",
        xmpp_adapter("xmpp", "hub2", port, ""),
        mqtt_adapter(mqtt),
        http_adapter(http),
        coap_adapter(coap)
    ))
    .await;
    let hub_jid = "hub2@localhost";
    let mut carol = Device::online("carol", port, SHARED_DIR).await;

    // XMPP → MQTT and HTTP.
    let mqtt_sub = mosquitto_sub(mqtt, "lab/#", 1);
    let probe = hub.attach("probe", "test");
    let mut sub = probe.subscribe([filter("lab/#")]).unwrap();
    carol.send(hub_jid, Some("lab/temp"), "21.5").await;
    let env = next_env(&mut sub, "lab/temp envelope").await;
    assert_eq!(env.topic.as_str(), "lab/temp");
    assert_eq!(&env.payload[..], b"21.5");
    assert_eq!(env.content_type.as_deref(), Some("text/plain"));
    // mosquitto_sub may subscribe after the (not retained) message went by:
    // then it prints nothing within its 10 s; what it prints must be this.
    let printed = within_for(Duration::from_secs(15), "mosquitto_sub", mqtt_sub)
        .await
        .unwrap();
    assert!(
        printed.is_empty() || printed == "lab/temp 21.5",
        "{printed}"
    );
    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-m",
        "10",
        &format!("http://127.0.0.1:{http}/topics/lab/temp"),
    ]);
    let curl = run_tool("curl", curl).await;
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "21.5");
    // XMPP → CoAP: the last value over GET /ps/{topic}.
    let got = coap_client(&["-m", "get", &format!("coap://127.0.0.1:{coap}/ps/lab/temp")]).await;
    assert_eq!(got.trim_end(), "21.5");

    // subscribe: confirmed, then MQTT → carol.
    carol.send(hub_jid, None, "subscribe lab/cmd/#").await;
    let m = carol.message().await;
    assert_eq!(m.get("body"), "polyhub: subscribed to lab/cmd/#");
    carol.send(hub_jid, None, "subscribe lab/other").await;
    assert_eq!(
        carol.message().await.get("body"),
        "polyhub: subscribed to lab/other"
    );
    mosquitto_pub(mqtt, "lab/cmd/fan", b"on").await;
    let m = carol.message().await;
    assert_eq!((m.get("subject"), m.get("body")), ("lab/cmd/fan", "on"));
    assert_eq!(m.get("type"), "chat");
    // CoAP → XMPP: a coap-client PUT to /ps/{topic}.
    coap_client(&[
        "-m",
        "put",
        "-e",
        "dim",
        &format!("coap://127.0.0.1:{coap}/ps/lab/cmd/light"),
    ])
    .await;
    let m = carol.message().await;
    assert_eq!((m.get("subject"), m.get("body")), ("lab/cmd/light", "dim"));

    // Binary payloads come base64 with a header line.
    mosquitto_pub(mqtt, "lab/cmd/blob", &[0xff, 0x00, 0xfe]).await;
    let m = carol.message().await;
    assert_eq!(m.get("subject"), "lab/cmd/blob");
    assert_eq!(m.get("body"), "Content-Transfer-Encoding: base64\n/wD+");

    // The listing, then unsubscribe: nothing more from lab/cmd/#.
    carol.send(hub_jid, None, "subscriptions").await;
    assert_eq!(
        carol.message().await.get("body"),
        "polyhub: subscribed to lab/cmd/# lab/other"
    );
    carol.send(hub_jid, None, "unsubscribe lab/cmd/#").await;
    assert_eq!(
        carol.message().await.get("body"),
        "polyhub: unsubscribed from lab/cmd/#"
    );
    carol.send(hub_jid, None, "unsubscribe lab/cmd/#").await;
    assert_eq!(
        carol.message().await.get("body"),
        "polyhub: you were not subscribed to lab/cmd/#"
    );
    mosquitto_pub(mqtt, "lab/cmd/fan", b"off").await;
    mosquitto_pub(mqtt, "lab/other", b"marker").await;
    let m = carol.message().await;
    assert_eq!((m.get("subject"), m.get("body")), ("lab/other", "marker"));

    // Anything else: a short help text; a bad filter is explained.
    carol.send(hub_jid, None, "hello?").await;
    assert!(carol
        .message()
        .await
        .get("body")
        .contains("subscribe FILTER"));
    carol.send(hub_jid, None, "subscribe lab/#/x").await;
    assert!(carol
        .message()
        .await
        .get("body")
        .contains("not a topic filter"));

    carol.quit().await;
    within("shutdown", hub.shutdown()).await.unwrap();
}

/// Senders outside `allow` get a `forbidden` error and publish nothing;
/// disco#info and ping are answered; malformed stanzas are survived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_malformed_stanzas_are_survived() {
    let port = shared_prosody();
    let hub = start_hub(&xmpp_adapter(
        "xmpp",
        "hub3",
        port,
        "allow = [\"dave@localhost\"]",
    ))
    .await;
    let hub_jid = "hub3@localhost";
    let probe = hub.attach("probe", "test");
    let mut sub = probe.subscribe([filter("#")]).unwrap();
    let mut mallory = Device::online("mallory", port, SHARED_DIR).await;
    let mut dave = Device::online("dave", port, SHARED_DIR).await;

    mallory.send(hub_jid, Some("doors/front"), "open").await;
    let m = mallory.message().await;
    assert_eq!(
        (m.get("type"), m.get("error")),
        ("error", "forbidden"),
        "{m:?}"
    );
    mallory.send(hub_jid, None, "subscribe #").await;
    let m = mallory.message().await;
    assert_eq!(m.get("error"), "forbidden");

    // disco#info and ping.
    dave.cmd(obj(&[("op", "disco"), ("to", "hub3@localhost/polyhub")]))
        .await;
    let d = dave.expect("disco", |e| e.name == "disco").await;
    for f in [
        "urn:xmpp:iot:sensordata",
        "urn:xmpp:iot:control",
        "urn:xmpp:ping",
    ] {
        assert!(d.get("features").split(' ').any(|x| x == f), "{d:?}");
    }
    dave.cmd(obj(&[("op", "ping"), ("to", "hub3@localhost/polyhub")]))
        .await;
    dave.expect("pong", |e| e.name == "pong").await;
    dave.cmd(obj(&[
        ("op", "iq_get"),
        ("to", "hub3@localhost/polyhub"),
        ("xml", "<what xmlns='urn:example:nothing'/>"),
    ]))
    .await;
    let iq = dave.expect("iq error", |e| e.name == "iq").await;
    assert_eq!(
        (iq.get("type"), iq.get("error")),
        ("error", "service-unavailable")
    );

    // Malformed input.
    let raw = [
        "<message to='hub3@localhost'><subject>a/#</subject><body>x</body></message>",
        "<message to='hub3@localhost'><fields xmlns='urn:xmpp:iot:sensordata'><node><timestamp><numeric/><numeric name=''/></timestamp></node><junk/></fields></message>",
        "<message to='hub3@localhost'><set xmlns='urn:xmpp:iot:control'/></message>",
        "<message to='hub3@localhost' type='bogus'><body>subscribe #</body></message>",
        "<message to='hub3@localhost'><body>x</body><body>y</body></message>",
        "<iq type='set' id='m1' to='hub3@localhost/polyhub'><set xmlns='urn:xmpp:iot:control'><boolean/></set></iq>",
        "<iq type='get' id='m2' to='hub3@localhost/polyhub'/>",
    ];
    for xml in raw {
        dave.cmd(obj(&[("op", "raw"), ("xml", xml)])).await;
    }
    let m = dave.message().await;
    assert!(m.get("body").contains("not a topic"), "{m:?}");
    let m = dave.message().await;
    assert!(m.get("body").contains("holds no named value"), "{m:?}");

    // Still up; dave's envelope is the first the hub saw (none of mallory's).
    dave.send(hub_jid, Some("doors/back"), "closed").await;
    let env = next_env(&mut sub, "dave's envelope").await;
    assert_eq!(env.topic.as_str(), "doors/back");
    assert_eq!(env.origin.user.as_deref(), Some("dave@localhost"));
    assert_eq!(adapter_state(&hub, "xmpp"), AdapterState::Up);
    assert!(counter(&hub, "xmpp", "rejected_senders") >= 2);
    // Each malformed message is counted by reason (the rest are a help
    // text, an error-type message and iqs answered with an error).
    for reason in ["invalid_topic", "invalid_reading", "invalid_control"] {
        assert_eq!(rejected(&hub, "xmpp", reason), 1, "{reason}");
    }

    mallory.quit().await;
    dave.quit().await;
    within("shutdown", hub.shutdown()).await.unwrap();
}

/// Away from the server: a subscriber of the config (durable queue) is sent
/// to whatever its presence, so the server's offline store hands it what
/// came while it was away; a dynamic subscriber that went offline is skipped
/// (counted) and gets the retained values of its filters when it comes back.
/// A private Prosody, so that its offline store holds only this test's
/// messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_subscribers_static_ones_get_the_servers_offline_store_dynamic_ones_retained_values(
) {
    let (_dir, dir_s, port) = private_prosody("hub4 erin grace");
    let _stop = StopProsody(dir_s.clone());
    let erin = Device::online("erin", port, &dir_s).await;
    let hub = start_hub(&xmpp_adapter(
        "xmpp",
        "hub4",
        port,
        "subscribers = [{ jid = \"erin@localhost\", filter = \"home/#\" }]",
    ))
    .await;
    assert_eq!(adapter_state(&hub, "xmpp"), AdapterState::Up);
    let probe = hub.attach("probe", "test");
    let mut grace = Device::online("grace", port, &dir_s).await;
    grace.send("hub4@localhost", None, "subscribe home/#").await;
    assert_eq!(
        grace.message().await.get("body"),
        "polyhub: subscribed to home/#"
    );
    // The hub asks both for their presence (slixmpp authorizes it); once
    // they leave, the hub knows they are offline. Probes until the hub
    // skips grace (a dynamic subscriber) say it has seen her go.
    erin.quit().await;
    grace.quit().await;
    within("grace seen offline", async {
        while counter(&hub, "xmpp", "offline_skipped") == 0 {
            probe
                .publish(Envelope::new(Topic::new("home/probe").unwrap(), "p"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let skipped = counter(&hub, "xmpp", "offline_skipped");

    let door = Envelope::new(Topic::new("home/door").unwrap(), "open").with_retain(true);
    probe.publish(door).await.unwrap();
    probe
        .publish(Envelope::new(Topic::new("home/bell").unwrap(), "ring"))
        .await
        .unwrap();
    wait_until("grace skipped twice more", Duration::from_secs(10), || {
        counter(&hub, "xmpp", "offline_skipped") >= skipped + 2
    })
    .await;

    // erin: the server's offline store has both, in order; the retained door
    // may come once more when the hub sees her back online.
    let mut erin = Device::online_keeping("erin", port, &dir_s).await;
    let mut got: Vec<(String, String)> = Vec::new();
    let has = |got: &[(String, String)], topic: &str| got.iter().any(|(t, _)| t == topic);
    while !(has(&got, "home/door") && has(&got, "home/bell")) {
        let m = erin.message().await;
        got.push((m.get("subject").to_owned(), m.get("body").to_owned()));
    }
    probe
        .publish(Envelope::new(Topic::new("home/marker").unwrap(), "m"))
        .await
        .unwrap();
    while !has(&got, "home/marker") {
        let m = erin.message().await;
        got.push((m.get("subject").to_owned(), m.get("body").to_owned()));
    }
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    let bell = topics.iter().position(|t| *t == "home/bell").unwrap();
    assert!(
        topics[..bell].contains(&"home/door"),
        "the door before the bell: {got:?}"
    );
    assert!(
        topics
            .iter()
            .all(|t| ["home/probe", "home/door", "home/bell", "home/marker"].contains(t)),
        "{got:?}"
    );
    assert_eq!(
        topics.iter().filter(|t| **t == "home/bell").count(),
        1,
        "{got:?}"
    );
    assert!(got.contains(&("home/door".to_owned(), "open".to_owned())));
    assert!(got.contains(&("home/bell".to_owned(), "ring".to_owned())));

    // grace: only the retained door on her return (once per presence the
    // hub sees come online), not the bell.
    // (Probes sent before the hub saw her go are in the server's offline
    // store.)
    let mut grace = Device::online_keeping("grace", port, &dir_s).await;
    let mut door_seen = false;
    while !door_seen {
        let m = grace.message().await;
        match (m.get("subject"), m.get("body")) {
            ("home/door", "open") => door_seen = true,
            ("home/probe", _) => {}
            other => panic!("grace: {other:?} before the retained door"),
        }
    }
    probe
        .publish(Envelope::new(Topic::new("home/marker2").unwrap(), "m"))
        .await
        .unwrap();
    loop {
        let m = grace.message().await;
        match m.get("subject") {
            "home/marker2" => break,
            "home/door" | "home/probe" => {}
            other => panic!("the bell rang while grace was away: not sent; got {other}"),
        }
    }
    erin.quit().await;
    grace.quit().await;
    within("shutdown", hub.shutdown()).await.unwrap();
}

/// STARTTLS with a private CA in `ca_file`; without it the certificate is
/// refused (adapter down, retrying); a wrong password fails the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_trusts_ca_file_and_bad_credentials_fail_the_start() {
    let port = shared_prosody();
    let tls = |user: &str, extra: &str| {
        format!(
            "[[adapters]]\nname = \"xmpp\"\ntype = \"xmpp\"\n[adapters.config]\n\
             jid = \"{user}@localhost/polyhub\"\npassword = \"{PASSWORD}\"\n\
             server = \"127.0.0.1:{port}\"\nreconnect_max_secs = 1\n{extra}\n"
        )
    };
    let hub = start_hub(&tls(
        "hub6",
        &format!("ca_file = \"{}\"", ca_file(SHARED_DIR)),
    ))
    .await;
    assert_eq!(adapter_state(&hub, "xmpp"), AdapterState::Up);
    let probe = hub.attach("probe", "test");
    let mut sub = probe.subscribe([filter("tls/#")]).unwrap();
    let mut grace = Device::online("grace", port, SHARED_DIR).await;
    grace.send("hub6@localhost", Some("tls/ok"), "yes").await;
    assert_eq!(&next_env(&mut sub, "over TLS").await.payload[..], b"yes");
    grace.quit().await;
    within("shutdown", hub.shutdown()).await.unwrap();

    let hub = start_hub(&tls("hub7", "")).await;
    let snap = hub.snapshot();
    let a = snap.adapters.iter().find(|a| a.name == "xmpp").unwrap();
    assert_eq!(a.state, AdapterState::Down);
    let reason = a.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("TLS") || reason.contains("certificate"),
        "{reason}"
    );
    within("shutdown", hub.shutdown()).await.unwrap();

    let bad = format!(
        "[[adapters]]\nname = \"xmpp\"\ntype = \"xmpp\"\n[adapters.config]\njid = \"hub8@localhost\"\n\
         password = \"wrong\"\nserver = \"127.0.0.1:{port}\"\ntls = \"none\"\n"
    );
    let err = within("start", polyhub::start_str(&bad))
        .await
        .expect_err("refused");
    assert!(format!("{err:#}").contains("refused the login"), "{err:#}");
}

/// The server restarts: the adapter goes down, reconnects by itself, and
/// frank's dynamic subscription still delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_reconnects_after_prosody_restart_and_keeps_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_owned();
    let script = repo().join("scripts/prosody/instance.sh");
    let out = std::process::Command::new(&script)
        .arg(&dir_s)
        .env("PROSODY_ACCOUNTS", "hub frank")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let stop = || {
        std::process::Command::new(&script)
            .args(["--stop", &dir_s])
            .status()
            .unwrap()
    };

    let hub = start_hub(&xmpp_adapter("xmpp", "hub", port, "")).await;
    let probe = hub.attach("probe", "test");
    let mut frank = Device::online("frank", port, &dir_s).await;
    frank.send("hub@localhost", None, "subscribe plant/#").await;
    assert_eq!(
        frank.message().await.get("body"),
        "polyhub: subscribed to plant/#"
    );

    assert!(stop().success());
    wait_until("adapter down", Duration::from_secs(10), || {
        adapter_state(&hub, "xmpp") == AdapterState::Down
    })
    .await;
    frank
        .expect("frank disconnected", |e| e.name == "disconnected")
        .await;
    let started = std::process::Command::new(&script)
        .args(["--start", &dir_s])
        .output()
        .unwrap();
    assert!(started.status.success());
    wait_until("adapter up again", Duration::from_secs(20), || {
        adapter_state(&hub, "xmpp") == AdapterState::Up
    })
    .await;
    assert!(counter(&hub, "xmpp", "reconnects") >= 1);
    frank
        .expect("frank back online", |e| e.name == "online")
        .await;

    probe
        .publish(Envelope::new(Topic::new("plant/water").unwrap(), "low"))
        .await
        .unwrap();
    let m = frank.message().await;
    assert_eq!((m.get("subject"), m.get("body")), ("plant/water", "low"));

    frank.quit().await;
    within("shutdown", hub.shutdown()).await.unwrap();
    stop();
}

/// A private Prosody (its own accounts, so a hostile stanza left on a
/// server by a failing run cannot reach another test) in a temporary
/// folder: the folder, its path and port.
fn private_prosody(accounts: &str) -> (tempfile::TempDir, String, u16) {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_owned();
    let out = std::process::Command::new(repo().join("scripts/prosody/instance.sh"))
        .arg(&dir_s)
        .env("PROSODY_ACCOUNTS", accounts)
        .output()
        .expect("run scripts/prosody/instance.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (dir, dir_s, port)
}

/// Stops the private Prosody of `dir` (on drop of the test's guard).
struct StopProsody(String);

impl Drop for StopProsody {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/prosody/instance.sh"))
            .args(["--stop", &self.0])
            .status();
    }
}

fn rejected(hub: &polyhub::Hub, adapter: &str, reason: &str) -> u64 {
    let snap = hub.snapshot();
    let a = snap.adapters.iter().find(|a| a.name == adapter).unwrap();
    a.metrics.rejected(reason)
}

/// `GET /metrics` of the hub's HTTP adapter, by curl.
async fn metrics_text(http: u16) -> String {
    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-m",
        "10",
        &format!("http://127.0.0.1:{http}/metrics"),
    ]);
    String::from_utf8_lossy(&run_tool("curl", curl).await.stdout).into_owned()
}

/// `GET /topics/{topic}` of the hub's HTTP adapter, by curl: the last value.
async fn last_value(http: u16, topic: &str) -> String {
    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-m",
        "10",
        &format!("http://127.0.0.1:{http}/topics/{topic}"),
    ]);
    String::from_utf8_lossy(&run_tool("curl", curl).await.stdout).into_owned()
}

/// The hostile-stanza setup: a private Prosody, a hub (XMPP allowing only
/// dave, HTTP for /metrics and last values), mallory (hostile) and dave
/// online.
struct Hostile {
    hub: polyhub::Hub,
    http: u16,
    mallory: Device,
    dave: Device,
    port: u16,
    _stop: StopProsody,
    _dir: tempfile::TempDir,
}

const HOSTILE_HUB_EXTRA: &str = "allow = [\"dave@localhost\"]";

async fn hostile_setup() -> Hostile {
    let (dir, dir_s, port) = private_prosody("hub mallory dave");
    let stop = StopProsody(dir_s.clone());
    let http = free_tcp_port();
    let hub = start_hub(&format!(
        "{}{}",
        xmpp_adapter("xmpp", "hub", port, HOSTILE_HUB_EXTRA),
        http_adapter(http)
    ))
    .await;
    assert_eq!(adapter_state(&hub, "xmpp"), AdapterState::Up);
    let mallory = Device::online("mallory", port, &dir_s).await;
    let dave = Device::online("dave", port, &dir_s).await;
    Hostile {
        hub,
        http,
        mallory,
        dave,
        port,
        _stop: stop,
        _dir: dir,
    }
}

/// Issue 14, defect 1: a `<message>` nested 6 000 levels deep (~40 KB)
/// overflowed a worker's stack and aborted the whole hub (the tree builder
/// recurses per level). Now it is refused before parsing and counted, and
/// the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_stanza_is_refused_and_counted_and_the_hub_serves_on() {
    let mut h = hostile_setup().await;
    let n = 6000;
    let deep = format!(
        "<message to='hub@localhost'><subject>lab/deep</subject>{}{}</message>",
        "<a>".repeat(n),
        "</a>".repeat(n)
    );
    h.mallory.cmd(obj(&[("op", "raw"), ("xml", &deep)])).await;
    wait_until("xml_too_deep counted", Duration::from_secs(10), || {
        rejected(&h.hub, "xmpp", "xml_too_deep") >= 1
    })
    .await;
    assert!(
        metrics_text(h.http).await.contains(
            "polyhub_rejected_total{hub=\"polyhub\",adapter=\"xmpp\",reason=\"xml_too_deep\"} 1"
        ),
        "{}",
        metrics_text(h.http).await
    );

    // The hub (this process) is alive, the session never dropped, and an
    // ordinary message after the hostile one gets through to HTTP.
    let probe = h.hub.attach("probe", "test");
    let mut sub = probe.subscribe([filter("lab/#")]).unwrap();
    h.dave.send("hub@localhost", Some("lab/after"), "ok2").await;
    let env = next_env(&mut sub, "dave's message after the hostile one").await;
    assert_eq!(&env.payload[..], b"ok2");
    assert_eq!(last_value(h.http, "lab/after").await, "ok2");
    assert_eq!(adapter_state(&h.hub, "xmpp"), AdapterState::Up);
    assert_eq!(counter(&h.hub, "xmpp", "reconnects"), 0);
    assert_eq!(rejected(&h.hub, "xmpp", "xml_too_deep"), 1);

    h.mallory.quit().await;
    h.dave.quit().await;
    within("shutdown", h.hub.shutdown()).await.unwrap();
}

/// Well-formed XML that is not valid XMPP (a message `type` RFC 6121 does
/// not define) was dropped inside tokio-xmpp with only a log line. The
/// stanza guard now reads each stanza as tokio-xmpp will and refuses it
/// itself: counted as `invalid_stanza`, the stream stays up, and the next
/// message gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_stanza_is_refused_and_counted_and_the_stream_stays_up() {
    let mut h = hostile_setup().await;
    let bogus = "<message to='hub@localhost' type='bogus'><subject>lab/bogus</subject><body>x</body></message>";
    h.mallory.cmd(obj(&[("op", "raw"), ("xml", bogus)])).await;
    wait_until("invalid_stanza counted", Duration::from_secs(10), || {
        rejected(&h.hub, "xmpp", "invalid_stanza") >= 1
    })
    .await;
    let probe = h.hub.attach("probe", "test");
    let mut sub = probe.subscribe([filter("lab/#")]).unwrap();
    h.dave.send("hub@localhost", Some("lab/after"), "ok3").await;
    let env = next_env(&mut sub, "dave's message after the invalid one").await;
    assert_eq!(env.topic.as_str(), "lab/after");
    assert_eq!(&env.payload[..], b"ok3");
    assert!(metrics_text(h.http).await.contains(
        "polyhub_rejected_total{hub=\"polyhub\",adapter=\"xmpp\",reason=\"invalid_stanza\"} 1"
    ));
    assert_ne!(last_value(h.http, "lab/bogus").await, "x");
    assert_eq!(adapter_state(&h.hub, "xmpp"), AdapterState::Up);
    assert_eq!(counter(&h.hub, "xmpp", "reconnects"), 0);

    h.mallory.quit().await;
    h.dave.quit().await;
    within("shutdown", h.hub.shutdown()).await.unwrap();
}

/// Issue 14, defect 2: an attribute value over the XML tokenizer's 8 192
/// bytes tore the stream down, and the server's stream management
/// redelivered the stanza on every login (about 9 reconnects a second,
/// surviving hub restarts). Now it is refused and acknowledged: the stream
/// stays up, and a hub started again on the account is not sent it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_attribute_is_refused_without_a_reconnect_loop() {
    let mut h = hostile_setup().await;
    let big = format!(
        "<message to='hub@localhost'><subject>lab/big</subject><body>b</body>\
         <x xmlns='urn:example:big' v='{}'/></message>",
        "A".repeat(9000)
    );
    h.mallory.cmd(obj(&[("op", "raw"), ("xml", &big)])).await;
    wait_until("xml_too_large counted", Duration::from_secs(10), || {
        rejected(&h.hub, "xmpp", "xml_too_large") >= 1
    })
    .await;
    let probe = h.hub.attach("probe", "test");
    let mut sub = probe.subscribe([filter("lab/#")]).unwrap();
    h.dave.send("hub@localhost", Some("lab/after"), "ok").await;
    let env = next_env(&mut sub, "dave's message after the hostile one").await;
    assert_eq!(&env.payload[..], b"ok");
    assert_eq!(last_value(h.http, "lab/after").await, "ok");
    assert!(metrics_text(h.http).await.contains(
        "polyhub_rejected_total{hub=\"polyhub\",adapter=\"xmpp\",reason=\"xml_too_large\"} 1"
    ));
    assert_eq!(adapter_state(&h.hub, "xmpp"), AdapterState::Up);
    assert!(counter(&h.hub, "xmpp", "reconnects") <= 2);

    // A new hub on the same account: the server does not redeliver the
    // refused stanza (it was acknowledged), so no refusal and no reconnect.
    within("shutdown", h.hub.shutdown()).await.unwrap();
    let http = free_tcp_port();
    let hub = start_hub(&format!(
        "{}{}",
        xmpp_adapter("xmpp", "hub", h.port, HOSTILE_HUB_EXTRA),
        http_adapter(http)
    ))
    .await;
    assert_eq!(adapter_state(&hub, "xmpp"), AdapterState::Up);
    let probe = hub.attach("probe", "test");
    let mut sub = probe.subscribe([filter("lab/#")]).unwrap();
    h.dave.send("hub@localhost", Some("lab/again"), "ok").await;
    let env = next_env(&mut sub, "dave's message to the new hub").await;
    assert_eq!(env.topic.as_str(), "lab/again");
    assert_eq!(rejected(&hub, "xmpp", "xml_too_large"), 0);
    assert!(counter(&hub, "xmpp", "reconnects") <= 2);

    h.mallory.quit().await;
    h.dave.quit().await;
    within("shutdown", hub.shutdown()).await.unwrap();
}
