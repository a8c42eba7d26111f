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
