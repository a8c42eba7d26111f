//! AMQP ↔ MQTT through the hub with third-party clients on both sides:
//! mosquitto_pub/mosquitto_sub on polyhub's embedded MQTT broker, pika and
//! amqp-publish on the real RabbitMQ.
#![cfg(feature = "mqtt")]

mod amqp_device;
mod common;

use std::time::Duration;

use amqp_device::*;
use common::*;

#[tokio::test]
async fn mqtt_devices_and_amqp_devices_reach_each_other_byte_exact() {
    let (hub_name, ex) = (unique("hub"), unique("ex"));
    let port = free_tcp_port();
    let hub = start_hub(&format!(
        "[hub]\nname = \"{hub_name}\"\n\n[[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n\
         [adapters.config]\nlisten = \"127.0.0.1:{port}\"\n\n[[adapters]]\nname = \"amqp\"\n\
         type = \"amqp\"\n[adapters.config]\nurl = \"{URL}\"\nexchange = \"{ex}\"\n\
         bindings = [\"cmd/#\"]\nforward = [\"tele/#\"]\n"
    ))
    .await;
    let body: Vec<u8> = (0..=255u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.bin");
    std::fs::write(&file, &body).unwrap();

    // MQTT → AMQP.
    let mut device = Consumer::start(&["--exchange", &ex, "--key", "tele.#", "--count", "1"]).await;
    let p = port.to_string();
    let f = file.display().to_string();
    run(
        "mosquitto_pub",
        [
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-q",
            "1",
            "-t",
            "tele/dev.1/raw",
            "-f",
            &f,
        ]
        .map(String::from)
        .to_vec(),
        None,
    )
    .await;
    let m = device.next().await;
    assert_eq!(m.routing_key, "tele.dev/1.raw");
    assert_eq!(m.body, body);
    device.finish().await;

    // AMQP → MQTT: mosquitto_sub has no readiness signal, so the AMQP device
    // publishes until the subscriber got one message.
    let sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-q",
            "1",
            "-t",
            "cmd/#",
            "-C",
            "1",
            "-W",
            "10",
            "-v",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waiter = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap());
    within("mosquitto_sub gets the AMQP message", async {
        while !waiter.is_finished() {
            amqp_publish(&ex, "cmd.lamp/1", b"on\x00\xff", &[]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let out = waiter.await.unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"cmd/lamp.1 on\x00\xff\n");

    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp")]).await;
}
