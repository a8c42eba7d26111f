//! `[hub] data_dir`: last and retained values survive a restart and a
//! `kill -9` (HTTP `GET` and libcoap's `coap-client` `GET` find them), a
//! QoS 1 `POST` answered 202 is on disk, a second hub cannot open the same
//! directory, a damaged store is an error naming the file, and `polyhub
//! check` says what the directory holds.
#![cfg(unix)]

mod common;
mod hub_process;

use std::path::Path;
use std::process::Command;

use common::*;
use hub_process::{spawn_hub, wait_http};

fn config(dir: &Path, http: u16, coap: u16) -> String {
    format!(
        "[hub]\ndata_dir = \"{}\"\n\
         [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n\
         [[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{coap}\"\n",
        dir.join("data").display()
    )
}

async fn get(client: &reqwest::Client, http: u16, topic: &str) -> (u16, String) {
    let r = within(
        "GET",
        client
            .get(format!("http://127.0.0.1:{http}/topics/{topic}"))
            .send(),
    )
    .await
    .unwrap();
    let code = r.status().as_u16();
    (code, within("body", r.text()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_and_retained_values_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (http, coap) = (free_tcp_port(), free_udp_port());
    let text = config(dir.path(), http, coap);
    let client = reqwest::Client::new();

    let hub = start_hub(&text).await;
    for (path, body) in [
        ("sensors/kitchen/temp?retain=true", "21.5"),
        ("sensors/hall/temp?qos=1", "19.0"),
        ("doors/front", "open"),
        ("doors/back", "closed"),
    ] {
        let r = within(
            "POST",
            client
                .post(format!("http://127.0.0.1:{http}/topics/{path}"))
                .header("content-type", "text/plain")
                .body(body)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{path}");
    }
    let r = within(
        "DELETE",
        client
            .delete(format!("http://127.0.0.1:{http}/topics/doors/back"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    within("shutdown", hub.shutdown()).await.unwrap();

    let hub = start_hub(&text).await;
    assert_eq!(
        get(&client, http, "sensors/kitchen/temp").await,
        (200, "21.5".into())
    );
    assert_eq!(
        get(&client, http, "sensors/hall/temp").await,
        (200, "19.0".into())
    );
    assert_eq!(
        get(&client, http, "doors/front").await,
        (200, "open".into())
    );
    assert_eq!(
        get(&client, http, "doors/back").await.0,
        404,
        "a deleted value came back"
    );
    // CoAP GET reads the same store.
    let out = within(
        "coap-client GET",
        tokio::process::Command::new(libcoap("coap-client"))
            .args(["-m", "get", "-B", "5"])
            .arg(format!("coap://127.0.0.1:{coap}/ps/sensors/kitchen/temp"))
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "21.5");
    // The retained value is still retained (what a new subscriber gets
    // first), and only that one.
    let retained = hub
        .router()
        .store()
        .retained(&polyhub_sdk::TopicFilter::new("#").unwrap());
    assert_eq!(retained.len(), 1);
    assert_eq!(retained[0].topic.as_str(), "sensors/kitchen/temp");
    assert_eq!(retained[0].content_type.as_deref(), Some("text/plain"));
    let snap = hub.snapshot();
    assert_eq!(snap.topics, 3);
    let store = snap.store.expect("store figures");
    assert_eq!(store.errors, 0);
    within("shutdown", hub.shutdown()).await.unwrap();
}

/// `kill -9` while QoS 1 POSTs stream in: every POST answered 202 before the
/// kill is found after the restart (each on a topic of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_no_acknowledged_qos_1_value() {
    let dir = tempfile::tempdir().unwrap();
    let (http, coap) = (free_tcp_port(), free_udp_port());
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, config(dir.path(), http, coap)).unwrap();
    let client = reqwest::Client::new();
    let mut acknowledged: Vec<usize> = Vec::new();
    let mut next = 0usize;
    for round in 0..3 {
        let mut hub = spawn_hub(&file, &dir.path().join(format!("hub-{round}.log")));
        wait_http(http).await;
        // Everything acknowledged so far is there.
        for &i in &acknowledged {
            let (code, body) = get(&client, http, &format!("crash/{i}")).await;
            assert_eq!(
                (code, body.as_str()),
                (200, format!("v{i}").as_str()),
                "crash/{i} after kill {round}"
            );
        }
        // Publish from 4 connections at once, then kill -9 mid-stream.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..4 {
            let (client, tx, stop) = (client.clone(), tx.clone(), stop.clone());
            let base = next + w * 100_000;
            tasks.push(tokio::spawn(async move {
                for k in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let i = base + k;
                    let r = client
                        .post(format!("http://127.0.0.1:{http}/topics/crash/{i}?qos=1"))
                        .body(format!("v{i}"))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 202 => {
                            let _ = tx.send(i);
                        }
                        _ => break,
                    }
                }
            }));
        }
        drop(tx);
        // Let a few hundred through, then kill.
        let mut seen = 0;
        while seen < 300 + round * 200 {
            match within("acknowledged POSTs", rx.recv()).await {
                Some(i) => {
                    acknowledged.push(i);
                    seen += 1;
                }
                None => panic!("the publishers stopped early"),
            }
        }
        hub.kill().unwrap();
        let _ = hub.wait();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        while let Ok(i) = rx.try_recv() {
            acknowledged.push(i);
        }
        next += 1_000_000;
    }
    let mut hub = spawn_hub(&file, &dir.path().join("hub-last.log"));
    wait_http(http).await;
    let mut lost = Vec::new();
    for &i in &acknowledged {
        let (code, body) = get(&client, http, &format!("crash/{i}")).await;
        if code != 200 || body != format!("v{i}") {
            lost.push(i);
        }
    }
    let _ = hub.kill();
    let _ = hub.wait();
    println!(
        "3 kills, {} QoS 1 POSTs acknowledged, {} lost",
        acknowledged.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hub_on_the_same_data_dir_and_a_damaged_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_hub(&config(dir.path(), free_tcp_port(), free_udp_port())).await;
    let e = polyhub::start_str(&config(dir.path(), free_tcp_port(), free_udp_port()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("polyhub.redb is in use by another polyhub process"),
        "{e}"
    );
    within("shutdown", first.shutdown()).await.unwrap();

    // `polyhub check` says what is there.
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, config(dir.path(), free_tcp_port(), free_udp_port())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("0 topics stored"), "{said}");

    // A damaged file: an error naming it, and the file left alone.
    let store = dir.path().join("data/polyhub.redb");
    std::fs::write(&store, b"this is not a redb file, it is a text file").unwrap();
    let e = polyhub::start_str(&config(dir.path(), free_tcp_port(), free_udp_port()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("polyhub.redb is not a polyhub store or is damaged"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        b"this is not a redb file, it is a text file"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("polyhub.redb"));
}
