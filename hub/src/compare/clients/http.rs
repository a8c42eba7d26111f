//! HTTP/1.1 devices (reqwest, one kept-alive connection each): the
//! publisher `POST`s to `/topics/{topic}` and waits for `202`; the
//! subscriber holds `GET /events?filter={topic}` open and reads the
//! Server-Sent Events. HTTP has no unacknowledged mode: every POST is
//! answered, whatever the run's delivery level.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::mpsc;

use super::{Pair, Publisher, Received, RECEIVED_DEPTH};
use crate::compare::{client_err, CompareError};

const PROTOCOL: &str = "http";

struct HttpPublisher {
    client: reqwest::Client,
    url: String,
}

impl Publisher for HttpPublisher {
    fn publish(
        &mut self,
        payload: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<(), CompareError>> {
        async move {
            let r = self
                .client
                .post(&self.url)
                .body(payload)
                .send()
                .await
                .map_err(|e| client_err(PROTOCOL, e))?;
            let status = r.status();
            // Read the (empty) body so the connection is reused.
            let _ = r.bytes().await;
            if !status.is_success() {
                return Err(client_err(PROTOCOL, format!("POST answered {status}")));
            }
            Ok(())
        }
        .boxed()
    }
}

/// The `data:` payloads of the complete events at the front of `buf`
/// (removed from it); a partial event stays.
pub fn take_events(buf: &mut Vec<u8>) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let event: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&event);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        if data.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
            continue;
        };
        if let Some(p) = v.get("payload").and_then(|p| p.as_str()) {
            out.push(Bytes::copy_from_slice(p.as_bytes()));
        }
    }
    out
}

/// Connects a publisher (to `pub_addr`) and an SSE subscriber (to `sub_addr`).
pub async fn connect(
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    topic: &str,
) -> Result<Pair, CompareError> {
    let (tx, received) = mpsc::channel(RECEIVED_DEPTH);
    let sub = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| client_err(PROTOCOL, e))?;
    let filter = percent_encoding::utf8_percent_encode(topic, percent_encoding::NON_ALPHANUMERIC);
    let mut resp = sub
        .get(format!("http://{sub_addr}/events?filter={filter}"))
        .send()
        .await
        .map_err(|e| client_err(PROTOCOL, e))?;
    if !resp.status().is_success() {
        return Err(client_err(
            PROTOCOL,
            format!("GET /events answered {}", resp.status()),
        ));
    }
    let sub_task = tokio::spawn(async move {
        let _keep = sub;
        let mut buf = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let at = Instant::now();
                    buf.extend_from_slice(&chunk);
                    for payload in take_events(&mut buf) {
                        if tx.send(Received { at, payload }).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(protocol = PROTOCOL, error = %e, "Event stream failed.");
                    return;
                }
            }
        }
    });
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| client_err(PROTOCOL, e))?;
    Ok(Pair {
        publisher: Box::new(HttpPublisher {
            client,
            url: format!("http://{pub_addr}/topics/{topic}"),
        }),
        received,
        tasks: vec![sub_task],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_events_are_taken_and_partial_ones_kept() {
        let mut buf = b"event: message\nid: 01H\ndata: {\"topic\":\"a/b\",\"payload\":\"hi\",\"encoding\":\"utf8\"}\n\n: keep-alive\n\nevent: message\ndata: {\"pay".to_vec();
        assert_eq!(take_events(&mut buf), vec![Bytes::from_static(b"hi")]);
        assert_eq!(buf, b"event: message\ndata: {\"pay");
    }
}
