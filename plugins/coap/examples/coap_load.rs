//! Load generator for `bench/coap/run.sh`: sends NON POST requests to a CoAP
//! server as fast as it answers them (a window of requests in flight per
//! socket) for a fixed time, and prints the answered requests per second.
//!
//! ```text
//! cargo run --release -p polyhub-coap --example coap_load -- 127.0.0.1:5683 ps/bench/t 5
//! ```
//! Arguments: server address, Uri-Path (`/`-separated), seconds, sockets
//! (default 4), requests in flight per socket (default 32), method
//! (`post` or `put`, default `post`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// Requests per socket before it is replaced by a fresh one, so message ids
/// never wrap within a peer (the server would rightly take them as duplicates).
const PER_SOCKET: u32 = 60_000;

fn encode(method: u8, mid: u16, token: u32, path: &[String], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x50 | 4, method];
    b.extend_from_slice(&mid.to_be_bytes());
    b.extend_from_slice(&token.to_be_bytes());
    let mut last = 0u16;
    for seg in path {
        let delta = 11 - last;
        last = 11;
        let len = seg.len();
        let (lnib, ext): (u8, Vec<u8>) = if len < 13 {
            (len as u8, vec![])
        } else {
            (13, vec![(len - 13) as u8])
        };
        b.push((delta as u8) << 4 | lnib);
        b.extend_from_slice(&ext);
        b.extend_from_slice(seg.as_bytes());
    }
    b.push(0xFF);
    b.extend_from_slice(payload);
    b
}

async fn worker(
    server: SocketAddr,
    path: Arc<Vec<String>>,
    method: u8,
    window: usize,
    until: Instant,
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let payload = b"{\"t\":21.5,\"n\":1}";
    let mut buf = vec![0u8; 2048];
    while Instant::now() < until {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        sock.connect(server).await?;
        let mut next: u32 = 0;
        let mut in_flight = 0usize;
        let mut last_answer = Instant::now();
        while Instant::now() < until && next < PER_SOCKET {
            while in_flight < window && next < PER_SOCKET {
                let pkt = encode(method, next as u16, next, &path, payload);
                sock.send(&pkt).await?;
                sent.fetch_add(1, Ordering::Relaxed);
                next += 1;
                in_flight += 1;
            }
            match tokio::time::timeout(Duration::from_millis(50), sock.recv(&mut buf)).await {
                Ok(Ok(n)) if n >= 4 && buf[1] >> 5 == 2 => {
                    answered.fetch_add(1, Ordering::Relaxed);
                    in_flight = in_flight.saturating_sub(1);
                    last_answer = Instant::now();
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => {
                    // NON messages may be lost: reopen the window.
                    if last_answer.elapsed() > Duration::from_millis(50) {
                        in_flight = 0;
                    }
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: coap_load ADDR PATH SECONDS [SOCKETS] [WINDOW] [post|put]");
        std::process::exit(2);
    }
    let server: SocketAddr = args[0].parse()?;
    let path: Arc<Vec<String>> = Arc::new(
        args[1]
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    );
    let secs: f64 = args[2].parse()?;
    let sockets: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let window: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let method = match args.get(5).map(String::as_str) {
        None | Some("post") => 2,
        Some("put") => 3,
        Some(other) => return Err(format!("unknown method {other}").into()),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..sockets)
        .map(|_| {
            tokio::spawn(worker(
                server,
                path.clone(),
                method,
                window,
                until,
                sent.clone(),
                answered.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (s, a) = (
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    println!(
        "sent={s} answered={a} seconds={elapsed:.2} rate={:.0}",
        a as f64 / elapsed
    );
    Ok(())
}
