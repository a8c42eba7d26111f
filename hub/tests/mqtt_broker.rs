//! The embedded MQTT broker against real clients: paho-mqtt (Python) v3.1.1
//! and v5 through the cases of the Eclipse Paho interoperability suite
//! (`mqtt_broker/paho_cases.py`), `mosquitto_pub`/`mosquitto_sub` with
//! `-V 5` and `-V 311`, and the hub around it (device-to-device through the
//! router, one retained store for MQTT and HTTP).

mod common;
mod mqtt_devices;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use mqtt_devices::{publish, Sub};

fn embedded(port: u16, extra: &str) -> String {
    format!(
        "[[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n"
    )
}

fn cases_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt_broker/paho_cases.py")
}

/// Runs one paho case (`v311:basic`, `v5:topic_aliases`, ...) against a
/// fresh hub and fails the test with the script's output if it failed.
async fn paho(case: &str) {
    let port = free_tcp_port();
    let hub = start_hub(&embedded(port, "")).await;
    paho_on(case, port).await;
    hub.shutdown().await.unwrap();
}

async fn paho_on(case: &str, port: u16) {
    paho_with(case, port, &[]).await
}

async fn paho_with(case: &str, port: u16, extra: &[String]) {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(cases_script())
        .arg(case)
        .arg(port.to_string())
        .args(extra);
    let out = within_for(
        Duration::from_secs(60),
        case,
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap()
    .expect("python3 with paho-mqtt (run scripts/test.sh)");
    assert!(
        out.status.success(),
        "{case} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

macro_rules! paho_cases {
    ($($name:ident => $case:literal,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                paho($case).await;
            }
        )*
    };
}

paho_cases! {
    paho_v311_basic => "v311:basic",
    paho_v311_retained => "v311:retained",
    paho_v311_zero_length_clientid => "v311:zero_length_clientid",
    paho_v311_offline_queueing => "v311:offline_queueing",
    paho_v311_overlapping_subscriptions => "v311:overlapping_subscriptions",
    paho_v311_keepalive => "v311:keepalive",
    paho_v311_redelivery_on_reconnect => "v311:redelivery_on_reconnect",
    paho_v311_subscribe_failure => "v311:subscribe_failure",
    paho_v311_dollar_topics => "v311:dollar_topics",
    paho_v311_unsubscribe => "v311:unsubscribe",
    paho_v5_basic => "v5:basic",
    paho_v5_retained => "v5:retained",
    paho_v5_zero_length_clientid => "v5:zero_length_clientid",
    paho_v5_offline_queueing => "v5:offline_queueing",
    paho_v5_overlapping_subscriptions => "v5:overlapping_subscriptions",
    paho_v5_keepalive => "v5:keepalive",
    paho_v5_redelivery_on_reconnect => "v5:redelivery_on_reconnect",
    paho_v5_subscribe_failure => "v5:subscribe_failure",
    paho_v5_dollar_topics => "v5:dollar_topics",
    paho_v5_unsubscribe => "v5:unsubscribe",
    paho_v5_flow_control => "v5:flow_control",
    paho_v5_will_delay => "v5:will_delay",
    paho_v5_session_expiry => "v5:session_expiry",
    paho_v5_shared_subscriptions => "v5:shared_subscriptions",
    paho_v5_request_response => "v5:request_response",
    paho_v5_topic_aliases => "v5:topic_aliases",
    paho_v5_subscribe_options => "v5:subscribe_options",
}

#[tokio::test]
async fn mosquitto_clients_v5_and_v311_reach_each_other() {
    let port = free_tcp_port();
    let hub = start_hub(&embedded(port, "")).await;
    let mut v5 = Sub::start(port, "mix/#", &["-V", "5"]).await;
    let mut v311 = Sub::start(port, "mix/#", &["-V", "311"]).await;
    publish(port, "mix/a", "from5", &["-V", "5", "-q", "1"]).await;
    publish(port, "mix/b", "from311", &["-V", "311", "-q", "2"]).await;
    for sub in [&mut v5, &mut v311] {
        let a = sub.next().await;
        let b = sub.next().await;
        assert_eq!(
            (
                a.topic.as_str(),
                a.payload.as_str(),
                b.topic.as_str(),
                b.payload.as_str()
            ),
            ("mix/a", "from5", "mix/b", "from311")
        );
    }
    hub.shutdown().await.unwrap();
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        &format!("http://127.0.0.1:{port}{path}"),
    ])
    .args(["--max-time", "10"]);
    let out = within("curl", tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .unwrap()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn metric(text: &str, name: &str, adapter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("adapter=\"{adapter}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test]
async fn device_to_device_passes_the_router_and_retained_is_one_store() {
    let port = free_tcp_port();
    let http = free_tcp_port();
    let hub = start_hub(&format!(
        "{}[[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n",
        embedded(port, "")
    ))
    .await;
    let (_, before) = http_get(http, "/metrics").await;
    let out_before = metric(&before, "polyhub_messages_out_total", "mqtt");
    let mut dev = Sub::start(port, "d2d/#", &["-V", "5"]).await;
    publish(port, "d2d/x", "hello", &["-V", "311", "-q", "1"]).await;
    let m = dev.next().await;
    assert_eq!((m.topic.as_str(), m.payload.as_str()), ("d2d/x", "hello"));
    let (_, after) = http_get(http, "/metrics").await;
    let out_after = metric(&after, "polyhub_messages_out_total", "mqtt");
    assert!(
        out_after > out_before,
        "the device-to-device message is counted by the router: {out_before} -> {out_after}\n{after}"
    );

    // Retained over MQTT is what HTTP GET returns, and an HTTP PUT is what
    // a later MQTT subscriber gets retained.
    publish(port, "d2d/state", "on", &["-r", "-q", "1"]).await;
    let (code, body) = http_get(http, "/topics/d2d/state").await;
    assert_eq!((code, body.as_str()), (200, "on"));
    hub.shutdown().await.unwrap();
}

/// Paho's `websocket` case: a WebSocket device and a TCP device, each way.
async fn paho_ws(case: &str) {
    let (port, ws) = (free_tcp_port(), free_tcp_port());
    let hub = start_hub(&embedded(port, &format!("ws_listen = \"127.0.0.1:{ws}\""))).await;
    paho_with(case, port, &["paho".to_owned(), ws.to_string()]).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn paho_v311_over_websocket_reaches_tcp_devices_and_back() {
    paho_ws("v311:websocket").await;
}

#[tokio::test]
async fn paho_v5_over_websocket_reaches_tcp_devices_and_back() {
    paho_ws("v5:websocket").await;
}

mod raw_ws {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;

    pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    /// Opens `ws://127.0.0.1:port{path}` offering `protocols`; the answer's
    /// subprotocol, or the refusal.
    pub async fn open(
        port: u16,
        path: &str,
        protocols: &str,
    ) -> Result<(Ws, Option<String>), String> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = format!("ws://127.0.0.1:{port}{path}")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).unwrap(),
        );
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let proto = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((ws, proto))
    }

    pub async fn send(ws: &mut Ws, bytes: &[u8]) {
        ws.send(Message::binary(bytes.to_vec())).await.unwrap();
    }

    /// Sends a text message and waits for the broker to close the
    /// connection (MQTT over WebSocket is binary only).
    pub async fn text_closes(ws: &mut Ws) {
        ws.send(Message::text("not MQTT")).await.unwrap();
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads binary messages until `n` bytes arrived (as one stream).
    pub async fn read(ws: &mut Ws, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected binary MQTT bytes, got {other:?} after {got:?}"),
            }
        }
        got
    }
}

/// MQTT 3.1.1 packets, written out byte by byte.
fn v311_connect(id: &str) -> Vec<u8> {
    let mut p = vec![0x10, (12 + id.len()) as u8, 0, 4];
    p.extend_from_slice(b"MQTT");
    p.extend_from_slice(&[4, 0x02, 0, 60, 0, id.len() as u8]);
    p.extend_from_slice(id.as_bytes());
    p
}

fn v311_subscribe(topic: &str) -> Vec<u8> {
    let mut p = vec![0x82, (5 + topic.len()) as u8, 0, 1, 0, topic.len() as u8];
    p.extend_from_slice(topic.as_bytes());
    p.push(0);
    p
}

fn v311_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x30,
        (2 + topic.len() + payload.len()) as u8,
        0,
        topic.len() as u8,
    ];
    p.extend_from_slice(topic.as_bytes());
    p.extend_from_slice(payload);
    p
}

#[tokio::test]
async fn websocket_packets_may_span_messages_and_messages_may_hold_several_packets() {
    let (port, ws_port) = (free_tcp_port(), free_tcp_port());
    let hub = start_hub(&embedded(
        port,
        &format!("ws_listen = \"127.0.0.1:{ws_port}\""),
    ))
    .await;

    // Wrong path: 404; only foreign subprotocols: refused; both counted.
    let e = raw_ws::open(ws_port, "/other", "mqtt").await.err().unwrap();
    assert!(e.contains("404"), "{e}");
    let e = raw_ws::open(ws_port, "/mqtt", "chat, stomp")
        .await
        .err()
        .unwrap();
    assert!(e.contains("400"), "{e}");
    wait_until("refused upgrades counted", TIMEOUT, || {
        hub.snapshot()
            .adapters
            .iter()
            .find(|a| a.name == "mqtt")
            .map(|a| a.metrics.rejected("ws_handshake"))
            == Some(2)
    })
    .await;

    // The older subprotocol name is accepted and answered as offered.
    let (_old, proto) = raw_ws::open(ws_port, "/mqtt", "mqttv3.1").await.unwrap();
    assert_eq!(proto.as_deref(), Some("mqttv3.1"));

    let (mut ws, proto) = raw_ws::open(ws_port, "/mqtt", "mqtt").await.unwrap();
    assert_eq!(proto.as_deref(), Some("mqtt"));
    // CONNECT and SUBSCRIBE in one message: CONNACK and SUBACK come back.
    let mut both = v311_connect("raw-ws");
    both.extend(v311_subscribe("raw/t"));
    raw_ws::send(&mut ws, &both).await;
    let acks = within("CONNACK and SUBACK", raw_ws::read(&mut ws, 9)).await;
    assert_eq!(acks, [0x20, 2, 0, 0, 0x90, 3, 0, 1, 0]);

    // A PUBLISH cut in three messages (inside the fixed header, inside the
    // topic) reaches a TCP device and comes back to this one whole.
    let mut tcp = Sub::start(port, "raw/#", &["-V", "311"]).await;
    let split = v311_publish("raw/t", b"split across frames");
    for part in [&split[..1], &split[1..5], &split[5..]] {
        raw_ws::send(&mut ws, part).await;
    }
    let m = tcp.next().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("raw/t", "split across frames")
    );
    let echo = within("PUBLISH back", raw_ws::read(&mut ws, split.len())).await;
    assert_eq!(echo, split);

    // A TCP device's publish reaches the WebSocket device.
    publish(port, "raw/t", "from tcp", &["-V", "311"]).await;
    let back = v311_publish("raw/t", b"from tcp");
    let got = within(
        "TCP publish at the WebSocket device",
        raw_ws::read(&mut ws, back.len()),
    )
    .await;
    assert_eq!(got, back);

    // A text message closes the connection.
    within("closed after a text message", raw_ws::text_closes(&mut ws)).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn websocket_connections_count_against_max_connections() {
    let (port, ws_port) = (free_tcp_port(), free_tcp_port());
    let hub = start_hub(&embedded(
        port,
        &format!("ws_listen = \"127.0.0.1:{ws_port}\"\nmax_connections = 1"),
    ))
    .await;
    let (mut first, _) = raw_ws::open(ws_port, "/mqtt", "mqtt").await.unwrap();
    raw_ws::send(&mut first, &v311_connect("only-one")).await;
    let ack = within("CONNACK", raw_ws::read(&mut first, 4)).await;
    assert_eq!(ack, [0x20, 2, 0, 0]);
    // The second, over WebSocket or TCP, is closed at once and counted.
    assert!(raw_ws::open(ws_port, "/mqtt", "mqtt").await.is_err());
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "x",
        "-m",
        "y",
    ]);
    let out = within(
        "mosquitto_pub",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        !out.status.success(),
        "a TCP device past max_connections got in"
    );
    let rejected = hub
        .snapshot()
        .adapters
        .iter()
        .find(|a| a.name == "mqtt")
        .map(|a| a.metrics.rejected("max_connections"))
        .unwrap_or(0);
    assert_eq!(rejected, 2);
    hub.shutdown().await.unwrap();
}

/// Paho's `server_keep_alive` case on a broker with `max_keep_alive_secs = 2`.
async fn paho_capped(case: &str) {
    let port = free_tcp_port();
    let hub = start_hub(&embedded(port, "max_keep_alive_secs = 2")).await;
    paho_on(case, port).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn paho_v5_server_keep_alive_caps_the_devices_keepalive() {
    paho_capped("v5:server_keep_alive").await;
}

#[tokio::test]
async fn paho_v311_keepalive_over_the_maximum_is_refused() {
    paho_capped("v311:server_keep_alive").await;
}

/// With `[hub] data_dir`, a persistent session (MQTT 5 with a session
/// expiry, MQTT 3.1.1 with clean session off) keeps its subscriptions and
/// the QoS 1 messages queued while its device was away across a hub
/// restart; what the device acknowledged is not sent again after the next
/// one; a clean session leaves nothing behind.
#[tokio::test]
async fn persistent_sessions_outlive_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let config = format!(
        "[hub]\ndata_dir = \"{}\"\n{}",
        dir.path().join("data").display(),
        embedded(port, "")
    );
    let v5: &[&str] = &["-V", "5", "-c", "-i", "ps-v5", "-x", "3600"];
    let v311: &[&str] = &["-V", "311", "-c", "-i", "ps-v311"];
    let clean: &[&str] = &["-V", "5", "-i", "ps-clean"];

    let hub = start_hub(&config).await;
    for args in [v5, v311, clean] {
        // Subscribes, then the device is gone (killed: no DISCONNECT).
        drop(Sub::start(port, "ps/#", args).await);
    }
    for i in 0..5 {
        publish(port, &format!("ps/{i}"), &format!("m{i}"), &["-q", "1"]).await;
    }
    let queues: Vec<String> = hub
        .router()
        .durable_queues()
        .into_iter()
        .map(|(name, ..)| name)
        .collect();
    assert_eq!(queues, ["mqtt/session/ps-v311", "mqtt/session/ps-v5"]);
    hub.shutdown().await.unwrap();

    let hub = start_hub(&config).await;
    for (args, id) in [(v5, "ps-v5"), (v311, "ps-v311")] {
        // Its own subscription is in the restored session: it gets the
        // queue before (and without) subscribing again.
        let mut sub = Sub::spawn(port, "none/none", args);
        let got: Vec<String> = {
            let mut got = Vec::new();
            for _ in 0..5 {
                let m = sub.next().await;
                assert_eq!(m.qos, 1, "{id}: {m:?}");
                got.push(format!("{} {}", m.topic, m.payload));
            }
            got
        };
        let want: Vec<String> = (0..5).map(|i| format!("ps/{i} m{i}")).collect();
        assert_eq!(got, want, "{id} after the restart");
        // Acknowledged by now (mosquitto_sub sends PUBACK as it prints);
        // the session leaves cleanly so that nothing is in flight.
        drop(sub);
    }
    wait_until("both queues acknowledged", Duration::from_secs(10), || {
        hub.router()
            .durable_queues()
            .iter()
            .all(|(_, waiting, in_flight, _)| *waiting == 0 && *in_flight == 0)
    })
    .await;
    hub.shutdown().await.unwrap();

    // A second restart sends nothing of the first five again.
    let hub = start_hub(&config).await;
    let mut sub = Sub::spawn(port, "ps/#", v5);
    sub.wait_subscribed().await;
    publish(port, "ps/end", "end", &["-q", "1"]).await;
    let m = sub.next().await;
    assert_eq!((m.topic.as_str(), m.payload.as_str()), ("ps/end", "end"));
    drop(sub);
    hub.shutdown().await.unwrap();
}
