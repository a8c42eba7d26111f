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
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(cases_script()).arg(case).arg(port.to_string());
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
