//! What hostile or heavy CoAP input gets (DESIGN.md "Limits"): discovery
//! over many topics by many real libcoap clients stays bounded in memory
//! and leaves other devices served; block-wise walks and `?href=` filters
//! list every topic exactly once; garbage datagrams and refused requests
//! are counted by reason on `polyhub_rejected_total`, never as queue drops.
#![cfg(feature = "coap")]

mod common;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use polyhub_sdk::{Envelope, MetricsSnapshot, Topic};
use tokio::net::UdpSocket;

/// Topics in the discovery test (the figures in the report use 200 000,
/// with `bench/coap/discovery.sh`).
const TOPICS: usize = 20_000;
/// Peers walking the listing at once.
const PEERS: usize = 80;

/// Runs coap-client with `args` (bounded by `-B`), returning its output.
async fn coap_client(args: &[String]) -> Output {
    coap_client_to(args, true).await
}

/// Runs coap-client, keeping its standard output or not (a walk of the
/// whole listing prints ~0.8 MB, which would count in this process's RSS).
async fn coap_client_to(args: &[String], keep_stdout: bool) -> Output {
    let mut cmd = Command::new(libcoap("coap-client"));
    cmd.args(["-B", "60"])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if !keep_stdout {
        cmd.stdout(Stdio::null());
    }
    let what = format!("coap-client {args:?}");
    within_for(
        Duration::from_secs(90),
        &what,
        tokio::task::spawn_blocking(move || cmd.output().expect("run coap-client")),
    )
    .await
    .unwrap()
}

async fn coap_hub(hub_extra: &str, extra: &str) -> (polyhub::Hub, String) {
    let port = free_udp_port();
    let hub = start_hub(&format!(
        "{hub_extra}\n[[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n{extra}"
    ))
    .await;
    (hub, format!("coap://127.0.0.1:{port}"))
}

fn metrics(hub: &polyhub::Hub) -> MetricsSnapshot {
    hub.snapshot()
        .adapters
        .into_iter()
        .find(|a| a.name == "coap")
        .map(|a| a.metrics)
        .unwrap()
}

/// This process's resident set (the hub runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The topics of a link-format document, with how often each is listed.
fn listed(doc: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for link in doc.trim_end().split(',').filter(|l| !l.is_empty()) {
        assert!(
            link.starts_with("</ps/") && link.contains(">;rt=\"polyhub.topic\";obs"),
            "not a topic link: {link:?}"
        );
        let uri = &link[1..link.find('>').unwrap()];
        *seen.entry(uri.to_owned()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighty_peers_walking_discovery_of_many_topics_stay_bounded_and_others_are_served() {
    let (hub, url) = coap_hub("", "").await;
    let app = hub.attach("app", "test");
    for i in 0..TOPICS {
        let t = Topic::new(&format!("fleet/{:02}/dev-{i:05}", i % 50)).unwrap();
        app.publish(Envelope::new(t, "1")).await.unwrap();
    }
    app.publish(Envelope::new(Topic::new("probe/x").unwrap(), "here"))
        .await
        .unwrap();
    let before = rss_kib();

    // 80 real clients walk the whole listing block by block, at once; the
    // output of four is kept and checked.
    let walks: Vec<_> = (0..PEERS)
        .map(|i| {
            let args = vec![format!("{url}/.well-known/core")];
            tokio::spawn(async move { coap_client_to(&args, i < 4).await })
        })
        .collect();
    // Meanwhile another device is answered.
    let get = coap_client(&[format!("{url}/ps/probe/x")]).await;
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim_end(), "here");
    let mut peak = rss_kib();
    let mut docs = Vec::new();
    for w in walks {
        let out = within_for(Duration::from_secs(120), "discovery walk", w)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        peak = peak.max(rss_kib());
        if !out.stdout.is_empty() {
            docs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
    }
    assert_eq!(docs.len(), 4);
    // Every walk lists every topic exactly once.
    for doc in &docs {
        let seen = listed(doc);
        assert_eq!(seen.len(), TOPICS + 1);
        assert!(seen.values().all(|n| *n == 1));
        assert!(seen.contains_key("/ps/fleet/07/dev-00007"));
    }
    // The old per-peer copies of the listing (~0.8 MB each here) would be
    // 64 MB; the cursors are bounded by `discovery_cache_bytes` (4 MiB).
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 48,
        "RSS grew {growth_mib} MiB ({before} KiB before)"
    );

    // `?href=` selects a prefix, walked block-wise too.
    let out = coap_client(&[format!("{url}/.well-known/core?href=/ps/fleet/07*")]).await;
    let seen = listed(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(seen.len(), TOPICS / 50);
    assert!(seen.keys().all(|k| k.starts_with("/ps/fleet/07/")));
    let out = coap_client(&[format!("{url}/.well-known/core?href=/ps/probe/x")]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "</ps/probe/x>;rt=\"polyhub.topic\";obs"
    );
    assert_eq!(metrics(&hub).dropped, 0);
    hub.shutdown().await.unwrap();
}

fn raw(kind: u8, code: u8, mid: u16, options: &[(u16, &[u8])], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x40 | kind << 4 | 1, code];
    b.extend_from_slice(&mid.to_be_bytes());
    b.push(0x77);
    let mut last = 0u16;
    for (n, v) in options {
        let delta = n - last;
        assert!(delta < 13 && v.len() < 13);
        b.push((delta as u8) << 4 | v.len() as u8);
        b.extend_from_slice(v);
        last = *n;
    }
    if !payload.is_empty() {
        b.push(0xFF);
        b.extend_from_slice(payload);
    }
    b
}

#[tokio::test]
async fn refused_datagrams_and_requests_are_counted_by_reason_not_as_drops() {
    let (hub, url) = coap_hub(
        "[hub]\nmax_topics = 2",
        "max_body = 64\nmax_observers_per_peer = 1",
    )
    .await;
    let addr: std::net::SocketAddr = url.trim_start_matches("coap://").parse().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // Garbage: short, bad version, bad token length, bad options, random.
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![0x40],
        vec![0x80, 0x01, 0x00, 0x01],
        vec![0x4F, 0x01, 0x00, 0x01, 1, 2, 3],
        vec![0x40, 0x01, 0x00, 0x01, 0xF1, 0x00],
        vec![0x40, 0x01, 0x00, 0x01, 0xE1, 0xFF],
        vec![0x40, 0xE1, 0x00, 0x01],
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for len in 0..100 {
        garbage.push(
            (0..len % 30)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect(),
        );
    }
    for g in &garbage {
        sock.send_to(g, addr).await.unwrap();
    }
    // A NON request with an unknown critical option (4.02), and two
    // observations from one peer allowed one (the second is refused).
    let mut buf = vec![0u8; 2048];
    let bad_option = raw(1, 1, 0x100, &[(11, b"ps"), (11, b"a"), (13, b"x")], b"");
    sock.send_to(&bad_option, addr).await.unwrap();
    for (mid, t) in [(0x101u16, &b"o1"[..]), (0x102, &b"o2"[..])] {
        let reg = raw(0, 1, mid, &[(6, b""), (11, b"ps"), (11, t)], b"");
        sock.send_to(&reg, addr).await.unwrap();
        loop {
            let n = within("observe answer", sock.recv(&mut buf)).await.unwrap();
            if n >= 4 && u16::from_be_bytes([buf[2], buf[3]]) == mid {
                break;
            }
        }
    }

    // Real clients: no such resource, a filter as topic, a body too large,
    // and a retained publish past the hub's quota.
    coap_client(&[format!("{url}/nope")]).await;
    coap_client(&[format!("{url}/ps/a/%23/b")]).await;
    coap_client(&[
        "-m".into(),
        "post".into(),
        "-e".into(),
        "x".repeat(65),
        format!("{url}/ps/big"),
    ])
    .await;
    for t in ["r1", "r2", "r3"] {
        coap_client(&[
            "-m".into(),
            "put".into(),
            "-e".into(),
            "v".into(),
            format!("{url}/ps/{t}?retain"),
        ])
        .await;
    }

    // Still serving.
    let out = coap_client(&[
        "-m".into(),
        "put".into(),
        "-e".into(),
        "ok".into(),
        format!("{url}/ps/r1"),
    ])
    .await;
    assert!(out.status.success());
    let m = metrics(&hub);
    assert!(m.rejected("malformed_datagram") >= 6, "{:?}", m.rejected);
    assert_eq!(m.rejected("bad_option"), 1, "{:?}", m.rejected);
    assert_eq!(m.rejected("too_many_observers"), 1, "{:?}", m.rejected);
    assert_eq!(m.rejected("bad_path"), 1, "{:?}", m.rejected);
    assert_eq!(m.rejected("invalid_topic"), 1, "{:?}", m.rejected);
    assert_eq!(m.rejected("too_large"), 1, "{:?}", m.rejected);
    assert_eq!(m.rejected("quota_exceeded"), 1, "{:?}", m.rejected);
    assert_eq!(m.dropped, 0, "refusals are not queue drops");
    hub.shutdown().await.unwrap();
}
