//! Helpers for the HTTP adapter's integration tests: a hub with an HTTP
//! adapter on a free port, the real `curl` binary as a device, a
//! Server-Sent Events reader over reqwest, and a webhook receiver (the
//! device's own HTTP server).
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use tokio::sync::mpsc;

#[path = "../../../../hub/tests/common/mod.rs"]
pub mod common;
pub use common::*;

/// A hub whose HTTP adapter `web` listens on `base`.
pub struct Web {
    pub hub: polyhub::Hub,
    pub port: u16,
    pub base: String,
}

/// Starts a hub with one HTTP adapter named `web`; `extra` is appended to
/// its `[adapters.config]` table.
pub async fn start_web(extra: &str) -> Web {
    let port = free_tcp_port();
    let toml = format!(
        "[hub]\nname = \"test-hub\"\n\n[[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n{extra}\n"
    );
    let hub = start_hub(&toml).await;
    Web {
        hub,
        port,
        base: format!("http://127.0.0.1:{port}"),
    }
}

impl Web {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The `web` adapter's counters now.
    pub fn metrics(&self) -> polyhub_sdk::MetricsSnapshot {
        self.hub
            .snapshot()
            .adapters
            .into_iter()
            .find(|a| a.name == "web")
            .expect("the web adapter")
            .metrics
    }

    pub async fn stop(self) {
        within("hub shutdown", self.hub.shutdown())
            .await
            .expect("clean shutdown");
    }
}

/// What `curl` got back.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: String,
}

impl Curl {
    /// The value of the last header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .next_back()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs the real `curl` with `args`, bounded by a timeout.
pub async fn curl(args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let headers = dir.path().join("headers");
    let out = within(
        "curl",
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(&body)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "%{http_code}"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl runs (apt install curl)");
    let status: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "curl printed no status: {:?} {:?}",
                out.stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    Curl {
        status,
        body: std::fs::read(&body).unwrap_or_default(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: serde_json::Value,
}

/// Parses one event block (lines up to a blank line); `None` for a block
/// holding only comments (keep-alives).
pub fn parse_event(block: &str) -> Option<SseEvent> {
    let mut event = String::new();
    let mut id = String::new();
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim_start().to_owned();
        } else if let Some(v) = line.strip_prefix("id:") {
            id = v.trim_start().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() {
        return None;
    }
    let data =
        serde_json::from_str(&data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"));
    Some(SseEvent { event, id, data })
}

/// Reads events from a streaming `/events` response.
pub struct SseReader {
    pub resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// Opens `/events` with `query` and checks the response head.
    pub async fn open(web: &Web, query: &str) -> SseReader {
        let resp = within(
            "SSE response head",
            reqwest::Client::new()
                .get(web.url(&format!("/events{query}")))
                .send(),
        )
        .await
        .expect("SSE request");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event, skipping keep-alive comments.
    pub async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(ev) = parse_event(&block) {
                    return ev;
                }
                continue;
            }
            let chunk = within("SSE event", self.resp.chunk())
                .await
                .expect("SSE stream read")
                .expect("SSE stream ended early");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A webhook request as the receiving device saw it.
#[derive(Debug, Clone)]
pub struct Hook {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A webhook receiver: an axum server on a free port that answers `503`
/// to the first `fail_first` requests, `200` after, and reports every
/// request it answered `200`. Returns its URL, the deliveries and the
/// count of all requests.
pub async fn hook_server(fail_first: usize) -> (String, mpsc::Receiver<Hook>, Arc<AtomicUsize>) {
    let (tx, rx) = mpsc::channel(64);
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let _ = tx.send(Hook { headers, body }).await;
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, rx, hits)
}
