//! HTTP and MQTT devices reaching each other through the hub: the stock
//! `mosquitto_pub`/`mosquitto_sub` against the MQTT adapter's embedded
//! broker, reqwest and `curl` against the HTTP adapter.

mod support;

use std::time::Duration;

use support::*;

/// A hub with the HTTP adapter `web` and an MQTT adapter `mqtt` running its
/// embedded broker on `mqtt_port`.
async fn start_both() -> (Web, u16) {
    let http_port = free_tcp_port();
    let mqtt_port = free_tcp_port();
    let toml = format!(
        "[hub]\nname = \"test-hub\"\n\n\
         [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http_port}\"\n\n\
         [[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{mqtt_port}\"\n"
    );
    let hub = start_hub(&toml).await;
    wait_until("embedded broker listening", Duration::from_secs(10), || {
        service_up(mqtt_port)
    })
    .await;
    let web = Web {
        hub,
        port: http_port,
        base: format!("http://127.0.0.1:{http_port}"),
    };
    (web, mqtt_port)
}

async fn mosquitto(tool: &str, args: &[&str]) -> std::process::Output {
    within(
        tool,
        tokio::process::Command::new(tool)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|e| panic!("{tool} runs (apt install mosquitto-clients): {e}"))
}

#[tokio::test]
async fn sse_client_receives_what_an_mqtt_device_publishes() {
    let (web, mqtt_port) = start_both().await;
    let mut sse = SseReader::open(&web, "?filter=home%2F%23").await;
    let port = mqtt_port.to_string();
    let out = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            "home/door",
            "-m",
            "open",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = sse.next().await;
    assert_eq!(ev.event, "message");
    assert_eq!(ev.data["topic"], "home/door");
    assert_eq!(ev.data["payload"], "open");
    assert_eq!(ev.data["encoding"], "utf8");
    web.stop().await;
}

#[tokio::test]
async fn mqtt_device_receives_what_curl_posts() {
    let (web, mqtt_port) = start_both().await;
    // Retained, so the subscriber gets it whenever its SUBSCRIBE lands.
    let r = curl(&[
        "--data-binary",
        "on",
        &web.url("/topics/home/lamp?retain=true&qos=1"),
    ])
    .await;
    assert_eq!(r.status, 202);
    let port = mqtt_port.to_string();
    let out = mosquitto(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "home/lamp",
            "-C",
            "1",
            "-v",
            "-W",
            "8",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "home/lamp on");
    web.stop().await;
}
