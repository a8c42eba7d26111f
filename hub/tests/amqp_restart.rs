//! The AMQP adapter across a restart of the real RabbitMQ
//! (`rabbitmqctl stop_app` / `start_app`) during a QoS 1 stream. This
//! disturbs every client of the shared broker for a few seconds, so it is a
//! test binary of its own, with one short test that always starts the broker
//! again before it ends.

mod amqp_device;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use amqp_device::*;
use common::*;
use polyhub_sdk::{AdapterState, Envelope, QoS, Topic, TopicFilter};

/// Longest a `rabbitmqctl stop_app` / `start_app` may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(90);

fn rabbitmqctl(cmd: &str) -> bool {
    std::process::Command::new("rabbitmqctl")
        .arg(cmd)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the broker's app again if the test stopped it and did not get
/// to start it (a failed assertion), so other tests keep their broker.
struct BrokerGuard {
    stopped: bool,
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if self.stopped {
            rabbitmqctl("start_app");
        }
    }
}

#[cfg(feature = "http")]
fn health(port: u16) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/health"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn qos1_stream_survives_a_broker_restart_without_loss() {
    let (hub_name, ex, device_queue) = (unique("hub"), unique("ex"), unique("device"));
    pika(&[
        "declare",
        "--url",
        URL,
        "--exchange",
        &ex,
        "--queue",
        &device_queue,
        "--key",
        "stream.#",
    ])
    .await;

    let http_port = free_tcp_port();
    let http = if cfg!(feature = "http") {
        format!(
            "[[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http_port}\"\n"
        )
    } else {
        String::new()
    };
    let hub = start_hub(&format!(
        "[hub]\nname = \"{hub_name}\"\n\n[[adapters]]\nname = \"amqp\"\ntype = \"amqp\"\n\
         [adapters.config]\nurl = \"{URL}\"\nexchange = \"{ex}\"\nbindings = [\"in/#\"]\n\
         forward = [\"stream/#\"]\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n\n{http}"
    ))
    .await;
    let amqp_state = || {
        hub.snapshot()
            .adapters
            .iter()
            .find(|a| a.name == "amqp")
            .map(|a| (a.state, a.metrics.clone()))
            .unwrap()
    };

    // The stream runs from before the stop until 100 messages after the
    // adapter is up again: some are confirmed before the stop, some are in
    // flight when the connection breaks, some wait in the buffer.
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = hub.attach("app", "test");
    let mut inbox = app.subscribe([TopicFilter::new("in/#").unwrap()]).unwrap();
    let publisher = {
        let app = app.clone();
        let restarted = restarted.clone();
        tokio::spawn(async move {
            let mut after = 0;
            let mut i = 0;
            while after < 100 {
                let topic = Topic::new(&format!("stream/{i}")).unwrap();
                app.publish(Envelope::new(topic, i.to_string()).with_qos(QoS::AtLeastOnce))
                    .await
                    .unwrap();
                i += 1;
                if restarted.load(std::sync::atomic::Ordering::Relaxed) {
                    after += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i
        })
    };
    wait_until("the stream under way", TIMEOUT, || {
        amqp_state().1.messages_out >= 50
    })
    .await;

    let mut guard = BrokerGuard { stopped: true };
    let stopped = within_for(
        BROKER_TIMEOUT,
        "rabbitmqctl stop_app",
        tokio::task::spawn_blocking(|| rabbitmqctl("stop_app")),
    )
    .await
    .unwrap();
    assert!(stopped, "rabbitmqctl stop_app failed");
    wait_until("adapter down", TIMEOUT, || {
        amqp_state().0 == AdapterState::Down
    })
    .await;
    #[cfg(feature = "http")]
    {
        let (code, body) = within(
            "/health while down",
            tokio::task::spawn_blocking(move || health(http_port)),
        )
        .await
        .unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("\"amqp\":\"down\""), "{body}");
    }
    let started = within_for(
        BROKER_TIMEOUT,
        "rabbitmqctl start_app",
        tokio::task::spawn_blocking(|| rabbitmqctl("start_app")),
    )
    .await
    .unwrap();
    assert!(started, "rabbitmqctl start_app failed");
    guard.stopped = false;
    wait_until("adapter up again", BROKER_TIMEOUT, || {
        amqp_state().0 == AdapterState::Up
    })
    .await;
    #[cfg(feature = "http")]
    {
        let (code, body) = within(
            "/health after the restart",
            tokio::task::spawn_blocking(move || health(http_port)),
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"amqp\":\"up\""), "{body}");
    }
    restarted.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = within("the publisher", publisher).await.unwrap();
    assert!(amqp_state().1.reconnects >= 1);

    // AMQP → hub works again after the restart (topology re-declared).
    pika(&[
        "publish",
        "--url",
        URL,
        "--exchange",
        &ex,
        "--key",
        "in.x",
        "--count",
        "20",
        "--prefix",
        "in",
    ])
    .await;
    let mut inbound = BTreeSet::new();
    while inbound.len() < 20 {
        let e = within("AMQP message after the restart", inbox.recv())
            .await
            .unwrap();
        inbound.insert(String::from_utf8(e.payload.to_vec()).unwrap());
    }
    assert_eq!(inbound, (0..20).map(|i| format!("in{i}")).collect());

    // Hub → AMQP: every QoS 1 message of the stream is in the device's
    // durable queue; a resent one may appear twice, none is missing.
    let mut device = Consumer::start(&[
        "--exchange",
        &ex,
        "--queue",
        &device_queue,
        "--no-bind",
        "--count",
        "100000",
        "--timeout",
        "30",
    ])
    .await;
    let mut got = BTreeSet::new();
    let mut deliveries = 0;
    while got.len() < n {
        let m = device.next().await;
        deliveries += 1;
        got.insert(String::from_utf8(m.body).unwrap().parse::<usize>().unwrap());
    }
    assert_eq!(got, (0..n).collect());
    eprintln!(
        "{n} QoS 1 messages across the restart: {deliveries} deliveries ({} resent duplicates)",
        deliveries - n
    );
    drop(device);

    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp"), &device_queue]).await;
}
