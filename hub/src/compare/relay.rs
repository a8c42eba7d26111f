//! Byte-counting relays between a protocol client and its server, for TCP
//! and UDP. They are what `polyhub compare` measures with: every byte and
//! datagram that passes is counted per direction, and for TCP the kernel's
//! own segment counters (`TCP_INFO`) of the client-facing socket are read.
//!
//! Both TCP legs run with `TCP_NODELAY`, and each read is written on at once,
//! so the relay adds no batching of its own; the client sees the same
//! segmentation it would see talking to the server directly, give or take
//! how the server's writes are split across reads.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Direction of the last chunk seen (0: none yet), for counting round trips.
const DIR_UP: u8 = 1;
const DIR_DOWN: u8 = 2;

/// Counters of one relay (one leg: one client ↔ its server).
#[derive(Debug, Default)]
pub struct Meter {
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
    up_datagrams: AtomicU64,
    down_datagrams: AtomicU64,
    round_trips: AtomicU64,
    connections: AtomicU64,
    last_dir: AtomicU8,
    /// Duplicated descriptors of the live client-facing TCP sockets.
    live: Mutex<Vec<OwnedFd>>,
    /// Segment counts of client-facing sockets already closed.
    closed_segs: Mutex<(u64, u64)>,
}

/// What a relay has counted so far (monotonic; subtract two for a phase).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterSnapshot {
    /// Application bytes client → server.
    pub up_bytes: u64,
    /// Application bytes server → client.
    pub down_bytes: u64,
    /// Packets client → server: TCP segments the kernel received from the
    /// client (data, pure ACKs, SYN, FIN), or UDP datagrams.
    pub up_packets: u64,
    /// Packets server → client, counted the same way.
    pub down_packets: u64,
    /// Times the traffic turned from client → server to server → client.
    pub round_trips: u64,
    /// TCP connections accepted (each adds a handshake round trip).
    pub connections: u64,
}

impl MeterSnapshot {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &MeterSnapshot) -> MeterSnapshot {
        MeterSnapshot {
            up_bytes: self.up_bytes.saturating_sub(earlier.up_bytes),
            down_bytes: self.down_bytes.saturating_sub(earlier.down_bytes),
            up_packets: self.up_packets.saturating_sub(earlier.up_packets),
            down_packets: self.down_packets.saturating_sub(earlier.down_packets),
            round_trips: self.round_trips.saturating_sub(earlier.round_trips),
            connections: self.connections.saturating_sub(earlier.connections),
        }
    }

    /// Field-by-field sum.
    pub fn plus(&self, other: &MeterSnapshot) -> MeterSnapshot {
        MeterSnapshot {
            up_bytes: self.up_bytes + other.up_bytes,
            down_bytes: self.down_bytes + other.down_bytes,
            up_packets: self.up_packets + other.up_packets,
            down_packets: self.down_packets + other.down_packets,
            round_trips: self.round_trips + other.round_trips,
            connections: self.connections + other.connections,
        }
    }

    /// Application bytes in both directions.
    pub fn bytes(&self) -> u64 {
        self.up_bytes + self.down_bytes
    }

    /// Packets in both directions.
    pub fn packets(&self) -> u64 {
        self.up_packets + self.down_packets
    }
}

impl Meter {
    fn count(&self, up: bool, n: usize) {
        let (bytes, dir) = if up {
            (&self.up_bytes, DIR_UP)
        } else {
            (&self.down_bytes, DIR_DOWN)
        };
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        let prev = self.last_dir.swap(dir, Ordering::Relaxed);
        if prev == DIR_UP && dir == DIR_DOWN {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now. For TCP, reads `TCP_INFO` of every live
    /// client-facing socket.
    pub fn snapshot(&self) -> MeterSnapshot {
        let (mut segs_in, mut segs_out) = *self.closed_segs.lock();
        for fd in self.live.lock().iter() {
            if let Some((i, o)) = tcp_segments(fd) {
                segs_in += i;
                segs_out += o;
            }
        }
        MeterSnapshot {
            up_bytes: self.up_bytes.load(Ordering::Relaxed),
            down_bytes: self.down_bytes.load(Ordering::Relaxed),
            up_packets: segs_in + self.up_datagrams.load(Ordering::Relaxed),
            down_packets: segs_out + self.down_datagrams.load(Ordering::Relaxed),
            round_trips: self.round_trips.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    fn forget_socket(&self, raw: i32) {
        let mut live = self.live.lock();
        if let Some(pos) = live.iter().position(|fd| fd.as_raw_fd() == raw) {
            let fd = live.swap_remove(pos);
            if let Some((i, o)) = tcp_segments(&fd) {
                let mut closed = self.closed_segs.lock();
                closed.0 += i;
                closed.1 += o;
            }
        }
    }
}

/// `(tcpi_segs_in, tcpi_segs_out)` of a TCP socket, from the kernel.
pub fn tcp_segments(fd: &impl AsRawFd) -> Option<(u64, u64)> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len`
    // bytes into it and reports how many it wrote.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if rc != 0 {
            return None;
        }
        Some((u64::from(info.tcpi_segs_in), u64::from(info.tcpi_segs_out)))
    }
}

/// A relay listening on a loopback port, forwarding to one server address.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect (or send datagrams) instead of the server.
    pub addr: SocketAddr,
    /// Its counters.
    pub meter: Arc<Meter>,
    token: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Relay {
    /// A TCP relay on `127.0.0.1:0` to `server`.
    pub async fn tcp(server: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let meter = Arc::new(Meter::default());
        let token = CancellationToken::new();
        let (m, t) = (meter.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = t.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((client, _)) => {
                        tokio::spawn(tcp_pipe(client, server, m.clone(), t.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(relay = %addr, error = %e, "Relay accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Relay { addr, meter, token })
    }

    /// A UDP relay on `127.0.0.1:0` to `server`: each client address gets
    /// its own upstream socket, so replies find their way back.
    pub async fn udp(server: SocketAddr) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let meter = Arc::new(Meter::default());
        let token = CancellationToken::new();
        let (m, t) = (meter.clone(), token.clone());
        tokio::spawn(async move {
            let mut upstreams: Vec<(SocketAddr, Arc<UdpSocket>)> = Vec::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let (n, from) = tokio::select! {
                    _ = t.cancelled() => return,
                    r = front.recv_from(&mut buf) => match r {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(relay = %addr, error = %e, "Relay receive failed.");
                            continue;
                        }
                    },
                };
                m.count(true, n);
                m.up_datagrams.fetch_add(1, Ordering::Relaxed);
                let up = match upstreams.iter().find(|(a, _)| *a == from) {
                    Some((_, s)) => s.clone(),
                    None => match udp_upstream(server, from, front.clone(), m.clone(), &t).await {
                        Ok(s) => {
                            upstreams.push((from, s.clone()));
                            s
                        }
                        Err(e) => {
                            tracing::warn!(relay = %addr, error = %e, "Relay cannot open upstream socket.");
                            continue;
                        }
                    },
                };
                if let Err(e) = up.send(&buf[..n]).await {
                    tracing::warn!(relay = %addr, error = %e, "Relay send upstream failed.");
                }
            }
        });
        Ok(Relay { addr, meter, token })
    }
}

async fn udp_upstream(
    server: SocketAddr,
    client: SocketAddr,
    front: Arc<UdpSocket>,
    meter: Arc<Meter>,
    token: &CancellationToken,
) -> std::io::Result<Arc<UdpSocket>> {
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    sock.connect(server).await?;
    let (s, t) = (sock.clone(), token.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = tokio::select! {
                _ = t.cancelled() => return,
                r = s.recv(&mut buf) => match r {
                    Ok(n) => n,
                    // ICMP port unreachable from a server not (yet) bound.
                    Err(_) => continue,
                },
            };
            meter.count(false, n);
            meter.down_datagrams.fetch_add(1, Ordering::Relaxed);
            let _ = front.send_to(&buf[..n], client).await;
        }
    });
    Ok(sock)
}

async fn tcp_pipe(
    client: TcpStream,
    server: SocketAddr,
    meter: Arc<Meter>,
    token: CancellationToken,
) {
    let upstream = match TcpStream::connect(server).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(server = %server, error = %e, "Relay cannot reach the server.");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    meter.connections.fetch_add(1, Ordering::Relaxed);
    let raw = client.as_raw_fd();
    if let Ok(dup) = client.as_fd().try_clone_to_owned() {
        meter.live.lock().push(dup);
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = upstream.into_split();
    let m_up = meter.clone();
    let up = async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            m_up.count(true, n);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let m_down = meter.clone();
    let down = async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            m_down.count(false, n);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = token.cancelled() => {}
        _ = futures::future::join(up, down) => {}
    }
    meter.forget_socket(raw);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_relay_counts_bytes_each_way_and_round_trips() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"pong!!!").await.unwrap();
        });
        let relay = Relay::tcp(server_addr).await.unwrap();
        let run = async {
            let mut c = TcpStream::connect(relay.addr).await.unwrap();
            c.write_all(b"ping!").await.unwrap();
            let mut buf = [0u8; 7];
            c.read_exact(&mut buf).await.unwrap();
            let s = relay.meter.snapshot();
            assert_eq!((s.up_bytes, s.down_bytes), (5, 7));
            assert_eq!(s.round_trips, 1);
            assert_eq!(s.connections, 1);
            // At least SYN + data from the client; SYN-ACK + data to it.
            assert!(s.up_packets >= 2 && s.down_packets >= 2, "{s:?}");
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn udp_relay_counts_datagrams_and_routes_replies_back() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            server.send_to(&buf[..n], from).await.unwrap();
        });
        let relay = Relay::udp(server_addr).await.unwrap();
        let run = async {
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.send_to(b"hello", relay.addr).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = c.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (&b"hello"[..], relay.addr));
            let s = relay.meter.snapshot();
            assert_eq!((s.up_bytes, s.down_bytes), (5, 5));
            assert_eq!((s.up_packets, s.down_packets), (1, 1));
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap();
    }
}
