//! The streaming side of the HTTP adapter against real clients: Server-Sent
//! Events read by reqwest and by `curl -N`, webhooks received by the
//! device's own HTTP server, and streams ending cleanly when the client
//! leaves or the hub stops.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use polyhub_sdk::{Envelope, QoS, Topic};
use support::*;
use tokio::io::AsyncBufReadExt;

fn env(topic: &str, payload: impl Into<bytes::Bytes>) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), payload)
}

async fn post(web: &Web, path: &str, body: &'static [u8]) {
    let resp = within(
        "POST",
        reqwest::Client::new()
            .post(web.url(path))
            .header("content-type", "text/plain")
            .body(body)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn sse_streams_messages_published_over_http_and_by_other_adapters() {
    let web = start_web("").await;
    let mut sse = SseReader::open(&web, "?filter=sensors%2F%2B%2Ftemp").await;

    // Another HTTP client of the same adapter.
    post(&web, "/topics/sensors/kitchen/temp", b"21.5").await;
    let ev = sse.next().await;
    assert_eq!(ev.event, "message");
    assert_eq!(ev.id.len(), 26, "a ULID: {}", ev.id);
    assert_eq!(ev.data["topic"], "sensors/kitchen/temp");
    assert_eq!(ev.data["payload"], "21.5");
    assert_eq!(ev.data["encoding"], "utf8");
    assert_eq!(ev.data["content_type"], "text/plain");
    let ts = ev.data["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );

    // A device on another adapter (an in-process client of the hub), with
    // a binary payload; a non-matching topic is not streamed.
    let device = web.hub.attach("mqtt-device", "mqtt");
    device
        .publish(env("sensors/hall/humidity", "no"))
        .await
        .unwrap();
    device
        .publish(env("sensors/hall/temp", vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    let ev = sse.next().await;
    assert_eq!(ev.data["topic"], "sensors/hall/temp");
    assert_eq!(ev.data["encoding"], "base64");
    assert_eq!(ev.data["payload"], "AJ+Slg==");
    assert_eq!(ev.data["content_type"], serde_json::Value::Null);
    web.stop().await;
}

#[tokio::test]
async fn curl_follows_an_event_stream() {
    let web = start_web("").await;
    let mut child = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "20"])
        .arg(web.url("/events?filter=alerts%2F%23"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let base = web.hub.snapshot().subscriptions;
    // Publish until curl's subscription is in place and the event arrives.
    wait_until("curl subscribed", Duration::from_secs(10), || {
        web.hub.snapshot().subscriptions > base
    })
    .await;
    post(&web, "/topics/alerts/fire", b"kitchen").await;
    let mut block = String::new();
    loop {
        let line = within("curl SSE line", lines.next_line())
            .await
            .unwrap()
            .expect("curl output ended");
        if line.is_empty() {
            if let Some(ev) = parse_event(&block) {
                assert_eq!(ev.event, "message");
                assert_eq!(ev.data["topic"], "alerts/fire");
                assert_eq!(ev.data["payload"], "kitchen");
                break;
            }
            block.clear();
        } else {
            block.push_str(&line);
            block.push('\n');
        }
    }
    let _ = child.kill().await;
    web.stop().await;
}

#[tokio::test]
async fn sse_sends_retained_values_first_when_asked() {
    let web = start_web("").await;
    let r = curl(&[
        "--data-binary",
        "on",
        &web.url("/topics/lamp/1?retain=true"),
    ])
    .await;
    assert_eq!(r.status, 202);
    let mut sse = SseReader::open(&web, "?filter=lamp%2F%23&retained=true").await;
    let ev = sse.next().await;
    assert_eq!(
        (ev.data["topic"].as_str(), ev.data["payload"].as_str()),
        (Some("lamp/1"), Some("on"))
    );
    web.stop().await;
}

#[tokio::test]
async fn a_client_leaving_mid_stream_ends_its_subscription() {
    let web = start_web("sse_keep_alive_secs = 1").await;
    let base = web.hub.snapshot().subscriptions;
    let mut sse = SseReader::open(&web, "?filter=%23").await;
    assert_eq!(web.hub.snapshot().subscriptions, base + 1);
    post(&web, "/topics/x/1", b"a").await;
    assert_eq!(sse.next().await.data["payload"], "a");
    drop(sse);
    // The server notices at its next write (a message or a keep-alive).
    let device = web.hub.attach("device", "test");
    let publisher = tokio::spawn(async move {
        loop {
            if device.publish(env("x/2", "b")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    wait_until("subscription dropped", Duration::from_secs(10), || {
        web.hub.snapshot().subscriptions == base
    })
    .await;
    publisher.abort();
    // The server is still fine.
    assert_eq!(curl(&[&web.url("/health")]).await.status, 200);
    web.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_completes() {
    let web = start_web("").await;
    let mut sse = SseReader::open(&web, "").await;
    post(&web, "/topics/a", b"1").await;
    sse.next().await;
    within("hub shutdown with an open stream", web.hub.shutdown())
        .await
        .unwrap();
    // The stream ends rather than hanging.
    while let Ok(Some(_)) = within("stream end", sse.resp.chunk()).await {}
}

#[tokio::test]
async fn webhooks_receive_matching_envelopes_from_http_and_other_adapters() {
    let (url, mut hooks, _) = hook_server(0).await;
    let web = start_web(&format!(
        "webhooks = [{{ filter = \"alerts/#\", url = \"{url}\" }}]"
    ))
    .await;
    let r = curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        "X-Site: north",
        "--data-binary",
        "{\"level\":3}",
        &web.url("/topics/alerts/fire/kitchen"),
    ])
    .await;
    assert_eq!(r.status, 202);
    let h = within("webhook from HTTP", hooks.recv()).await.unwrap();
    assert_eq!(h.headers["x-polyhub-topic"], "alerts/fire/kitchen");
    assert_eq!(h.headers["content-type"], "application/json");
    assert_eq!(h.headers["x-site"], "north");
    assert_eq!(h.headers["x-polyhub-id"].len(), 26);
    assert_eq!(&h.body[..], b"{\"level\":3}");

    let device = web.hub.attach("device", "mqtt");
    device
        .publish(env("sensors/t", "not an alert"))
        .await
        .unwrap();
    let binary: Vec<u8> = (0..=255u8).collect();
    device
        .publish(env("alerts/smoke", binary.clone()))
        .await
        .unwrap();
    let h = within("webhook from another adapter", hooks.recv())
        .await
        .unwrap();
    assert_eq!(h.headers["x-polyhub-topic"], "alerts/smoke");
    assert_eq!(h.headers["content-type"], "application/octet-stream");
    assert_eq!(&h.body[..], &binary[..], "byte-exact");
    web.stop().await;
}

#[tokio::test]
async fn qos1_webhooks_are_retried_until_delivered_and_counted() {
    let (url, mut hooks, hits) = hook_server(2).await;
    let web = start_web(&format!(
        "webhooks = [{{ filter = \"cmd/#\", url = \"{url}\", reconnect_min_ms = 20 }}]"
    ))
    .await;
    let device = web.hub.attach("device", "mqtt");
    device
        .publish(env("cmd/reboot", "now").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    let h = within("retried webhook", hooks.recv()).await.unwrap();
    assert_eq!(&h.body[..], b"now");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "two 503s then 200");
    let web_metrics = web.metrics();
    assert_eq!(web_metrics.errors, 2);
    assert_eq!(web_metrics.dropped, 0);
    assert!(web_metrics
        .named
        .contains(&("webhook_retries".to_owned(), 2)));
    web.stop().await;
}

#[tokio::test]
async fn failing_webhooks_keep_retrying_past_retries_and_deliver_everything_in_order() {
    // The receiver fails the first seven POSTs: far more than `retries = 2`
    // allows. A webhook reads a durable queue, so nothing is dropped after
    // the retries, QoS 0 included; both messages arrive, in order.
    let (url, mut hooks, hits) = hook_server(7).await;
    let web = start_web(&format!(
        "webhooks = [{{ filter = \"#\", url = \"{url}\", retries = 2, reconnect_min_ms = 10, reconnect_max_ms = 40 }}]"
    ))
    .await;
    let device = web.hub.attach("device", "mqtt");
    device.publish(env("a", "qos0")).await.unwrap();
    device
        .publish(env("b", "qos1").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    let first = within("first message after the failures", hooks.recv())
        .await
        .unwrap();
    assert_eq!(first.headers["x-polyhub-topic"], "a");
    assert_eq!(&first.body[..], b"qos0");
    let second = within("second message", hooks.recv()).await.unwrap();
    assert_eq!(second.headers["x-polyhub-topic"], "b");
    assert_eq!(&second.body[..], b"qos1");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        7 + 2,
        "7 failures, then one POST each"
    );
    assert_eq!(web.metrics().dropped, 0, "nothing dropped");
    let metrics = curl(&[&web.url("/metrics")]).await.text();
    assert!(
        metrics.lines().any(|l| l == "polyhub_dropped_total{hub=\"test-hub\",adapter=\"web\",kind=\"http\"} 0"),
        "{metrics}"
    );
    assert!(hooks.try_recv().is_err(), "each message once");
    web.stop().await;
}

#[tokio::test]
async fn an_unreachable_webhook_does_not_hold_up_the_api() {
    let port = free_tcp_port();
    let web = start_web(&format!(
        "webhooks = [{{ filter = \"#\", url = \"http://127.0.0.1:{port}/nobody\", retry_backoff_ms = 10, retries = 1 }}]"
    ))
    .await;
    post(&web, "/topics/a", b"1").await;
    assert_eq!(curl(&[&web.url("/topics/a")]).await.status, 200);
    wait_until("connection error counted", Duration::from_secs(10), || {
        web.metrics().errors >= 1
    })
    .await;
    web.stop().await;
}
