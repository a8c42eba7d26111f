//! The admin dashboard in a real browser: Debian's chromium, headless, driven
//! by playwright-core (`hub/tests/browser/dashboard.mjs`, installed by
//! `scripts/setup/60-browser.sh`). A hub with an embedded MQTT broker, an
//! HTTP adapter and `[admin]`; `mosquitto_pub` publishes, `curl -N` streams
//! `/events`, the page must show both live. The screenshot is kept in
//! `target/test-artifacts/dashboard.png`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_adapters_live_messages_and_publishes_to_an_sse_client() {
    let browser_dir = root().join("hub/tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core/package.json").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium or playwright-core missing: run `bash -c 'source scripts/test.sh'` or scripts/setup/60-browser.sh"
    );
    let mqtt = free_tcp_port();
    let http = free_tcp_port();
    let hub = start_hub(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{mqtt}\"\n\
         [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n"
    ))
    .await;
    let admin = hub.admin_addr().expect("admin listening");

    // A real SSE client of the HTTP adapter, for what the form publishes.
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "60"])
        .arg(format!("http://127.0.0.1:{http}/events?filter=form%2F%23"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("curl");
    let mut curl_out = curl.stdout.take().expect("curl stdout");
    wait_until("the SSE client is registered", TIMEOUT, || {
        hub.clients()
            .page(None, 10)
            .iter()
            .any(|c| c.info.protocol == "http-sse")
    })
    .await;

    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let node = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://{admin}/"))
        .arg(mqtt.to_string())
        .arg(&shot)
        .current_dir(&browser_dir)
        .kill_on_drop(true)
        .output();
    let out = within_for(Duration::from_secs(120), "the browser script", node)
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "browser checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shot.exists(), "no screenshot at {}", shot.display());

    // What the form published reached the curl client.
    let mut seen = Vec::new();
    within("the form's message on the SSE stream", async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("on from the dashboard") {
            let n = curl_out.read(&mut buf).await.expect("read curl");
            assert!(n > 0, "curl ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("\"topic\":\"form/led\""), "{text}");
    within("hub shutdown", hub.shutdown()).await.unwrap();
}

/// The dashboard under load, for the figures in the README: 100 000 topics,
/// an in-process publisher at about 2 000 messages/s over 1 000 of them, a
/// `mosquitto_sub` subscriber; prints the `/api/topics?limit=100` latency and
/// saves `target/test-artifacts/dashboard-load.png`. Not in the suite:
/// `cargo test -p polyhub --test admin_browser -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load run for the README's figures, ~1 min"]
async fn dashboard_under_load() {
    use polyhub_sdk::{Envelope, Topic};
    let mqtt = free_tcp_port();
    let http = free_tcp_port();
    let hub = start_hub(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{mqtt}\"\n\
         [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n"
    ))
    .await;
    let admin = hub.admin_addr().unwrap();
    let loader = hub.attach("loader", "load");
    for i in 0..100_000u32 {
        let t = Topic::new(&format!("site/{:02}/dev{:05}/temp", i % 50, i)).unwrap();
        loader
            .publish(Envelope::new(t, format!("{}.{}", 15 + i % 15, i % 10)))
            .await
            .unwrap();
    }
    let _sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-t", "site/#"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub");
    let _sse = Command::new("curl")
        .args([
            "-sN",
            &format!("http://127.0.0.1:{http}/events?filter=site%2F01%2F%23"),
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("curl");
    let publisher = {
        let ctx = loader.clone();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(Duration::from_millis(5));
            for n in 0u64..12_000 {
                timer.tick().await;
                for k in 0..10u64 {
                    let i = (n * 10 + k) % 1000;
                    let t = Topic::new(&format!("site/{:02}/dev{:05}/temp", i % 50, i)).unwrap();
                    let _ = ctx
                        .publish(Envelope::new(t, format!("{}", 20 + (n + k) % 7)))
                        .await;
                }
            }
        })
    };
    // Latency of one page of 100 with 100 000 topics, while publishing.
    let client = reqwest::Client::new();
    let mut ms = Vec::new();
    let mut after = String::new();
    for _ in 0..50 {
        let t0 = std::time::Instant::now();
        let r = client
            .get(format!("http://{admin}/api/topics?limit=100&after={after}"))
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        after = v["next"].as_str().unwrap_or("").to_owned();
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "/api/topics?limit=100 with {} topics: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms (50 requests, publisher running)",
        hub.router().store().len(),
        ms[25],
        ms[45],
        ms[49]
    );
    let shot = root().join("target/test-artifacts/dashboard-load.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let out = Command::new("node")
        .arg(root().join("hub/tests/browser/screenshot.mjs"))
        .arg(format!("http://{admin}/"))
        .arg(&shot)
        .arg("25")
        .current_dir(root().join("hub/tests/browser"))
        .output()
        .await
        .unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    publisher.abort();
    let _ = hub.shutdown().await;
}
