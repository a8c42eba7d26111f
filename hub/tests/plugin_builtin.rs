//! A built-in adapter loaded as a plugin: `plugins/cdylib-http` exports the
//! very `polyhub-http` adapter the hub links for `type = "http"`. Driven
//! with curl, it serves REST and `/health`, where a panicked plugin shows as
//! failed while the hub runs on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_tcp_port, wait_until, within};
use polyhub::{Config, Hub, Registry};
use polyhub_sdk::{AdapterState, Envelope, Topic, TopicFilter};

#[path = "plugins/build.rs"]
mod plugin_build;

fn http_plugin() -> PathBuf {
    plugin_build::build(
        &plugin_build::manifest("plugins/cdylib-http"),
        "libpolyhub_cdylib_http.so",
        "",
        false,
    )
}

fn testbed() -> PathBuf {
    plugin_build::build(
        &plugin_build::manifest("hub/tests/plugins/testbed"),
        "libpolyhub_testbed_plugin.so",
        "",
        false,
    )
}

/// Runs curl; returns (status code, body).
async fn curl(args: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args);
    let out = within("curl", tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .unwrap()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn entry(name: &str, lib: &Path, config: &str) -> String {
    format!(
        "[[adapters]]\nname = \"{name}\"\nplugin = \"{}\"\n[adapters.config]\n{config}\n",
        lib.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_http_adapter_loaded_as_a_plugin_serves_rest_and_health() {
    let http = http_plugin();
    let bed = testbed();
    let port = free_tcp_port();
    let text = format!(
        "{}{}",
        entry("web", &http, &format!("bind = \"127.0.0.1:{port}\"")),
        entry(
            "fragile",
            &bed,
            "mode = \"panic-on-message\"\nsubscribe = \"boom/#\""
        ),
    );
    let config = Config::parse(&text, "test.toml", &Registry::new(), None)
        .unwrap_or_else(|e| panic!("config refused: {e}"));
    let hub = within("hub start", Hub::start(config)).await.unwrap();
    assert_eq!(hub.snapshot().adapters[0].kind, "http");
    let base = format!("http://127.0.0.1:{port}");

    let (code, body) = curl(&[&format!("{base}/health")]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""web":"up""#), "{body}");
    assert!(body.contains(r#""fragile":"up""#), "{body}");

    // REST through the loaded adapter reaches the hub, and back.
    let client = hub.attach("client", "test");
    let mut sub = client
        .subscribe([TopicFilter::new("sensors/#").unwrap()])
        .unwrap();
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        "21.5",
        &format!("{base}/topics/sensors/t1"),
    ])
    .await;
    assert_eq!(code, 202, "{body}");
    let e = within("envelope from curl", sub.recv()).await.unwrap();
    assert_eq!(e.topic.as_str(), "sensors/t1");
    assert_eq!(&e.payload[..], b"21.5");
    assert_eq!(e.content_type.as_deref(), Some("text/plain"));
    assert_eq!(&*e.origin.adapter, "web");

    within(
        "publish",
        client.publish(Envelope::new(Topic::new("actuators/led").unwrap(), "on")),
    )
    .await
    .unwrap();
    let (code, body) = curl(&[&format!("{base}/topics/actuators/led")]).await;
    assert_eq!((code, body.as_str()), (200, "on"));

    // A plugin that panics is failed on /health; the hub and HTTP run on.
    let (code, _) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        "x",
        &format!("{base}/topics/boom/now"),
    ])
    .await;
    assert_eq!(code, 202);
    wait_until("fragile marked failed", Duration::from_secs(5), || {
        hub.snapshot().adapters[1].state == AdapterState::Failed
    })
    .await;
    let (code, body) = curl(&[&format!("{base}/health")]).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""fragile":"failed""#), "{body}");
    assert!(body.contains(r#""web":"up""#), "{body}");
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "still here",
        &format!("{base}/topics/sensors/t2"),
    ])
    .await;
    assert_eq!(code, 202);
    let e = within("envelope after the panic", sub.recv())
        .await
        .unwrap();
    assert_eq!(&e.payload[..], b"still here");

    within("shutdown", hub.shutdown()).await.unwrap();
}
