//! CoAP devices (coap-lite over tokio UDP): the publisher `POST`s to
//! `/ps/{topic}` (NON for at-most-once, CON for acknowledged), the
//! subscriber observes `/ps/{topic}` (RFC 7641) and ACKs confirmable
//! notifications. Payloads above 1024 bytes go block-wise (RFC 7959): Block1
//! CON requests up, and the rest of a Block2 notification fetched with GET.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use futures::FutureExt;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{Pair, Publisher, Received, RECEIVED_DEPTH};
use crate::compare::{client_err, CompareError};

const PROTOCOL: &str = "coap";
/// Block size used for payloads larger than one block (SZX 6 = 1024 B).
const BLOCK: usize = 1024;
const SZX: u32 = 6;
/// How long a CON request waits for its response (loopback: no loss).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

fn request(
    kind: MessageType,
    method: RequestType,
    mid: u16,
    token: &[u8],
    path: &[&str],
) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(kind);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    for seg in path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p
}

fn block_value(num: u32, more: bool) -> Vec<u8> {
    let v = (num << 4) | (u32::from(more) << 3) | SZX;
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count().min(3);
    b[skip..].to_vec()
}

/// `(num, more)` of a Block1/Block2 option value.
fn parse_block(raw: &[u8]) -> Option<(u32, bool)> {
    if raw.len() > 3 {
        return None;
    }
    let v = raw.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    Some((v >> 4, v & 0x8 != 0))
}

fn encode(p: &Packet) -> Result<Vec<u8>, CompareError> {
    p.to_bytes_unlimited()
        .map_err(|e| client_err(PROTOCOL, format!("{e:?}")))
}

/// A socket with a reader task that hands every parsed packet over.
struct Endpoint {
    sock: Arc<UdpSocket>,
    packets: mpsc::Receiver<Packet>,
    mid: u16,
}

impl Endpoint {
    async fn open(
        server: SocketAddr,
    ) -> Result<(Endpoint, tokio::task::JoinHandle<()>), CompareError> {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        sock.connect(server).await?;
        let (tx, packets) = mpsc::channel(RECEIVED_DEPTH);
        let s = sock.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let n = match s.recv(&mut buf).await {
                    Ok(n) => n,
                    Err(_) => continue,
                };
                match Packet::from_bytes(&buf[..n]) {
                    Ok(p) => {
                        if tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(protocol = PROTOCOL, error = ?e, "Malformed datagram from the hub.")
                    }
                }
            }
        });
        Ok((
            Endpoint {
                sock,
                packets,
                mid: rand_mid(),
            },
            task,
        ))
    }

    fn next_mid(&mut self) -> u16 {
        self.mid = self.mid.wrapping_add(1);
        self.mid
    }

    /// Sends a CON request and waits for its piggybacked response.
    async fn exchange(&mut self, p: &Packet) -> Result<Packet, CompareError> {
        self.sock.send(&encode(p)?).await?;
        let mid = p.header.message_id;
        let wait = async {
            while let Some(r) = self.packets.recv().await {
                if r.header.message_id == mid && r.header.get_type() == MessageType::Acknowledgement
                {
                    return Ok(r);
                }
            }
            Err(client_err(PROTOCOL, "socket closed"))
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, wait)
            .await
            .map_err(|_| client_err(PROTOCOL, format!("no response to message {mid}")))?
    }
}

fn rand_mid() -> u16 {
    (Instant::now().elapsed().subsec_nanos() as u16) ^ (std::process::id() as u16)
}

fn is_success(p: &Packet) -> bool {
    matches!(p.header.code, MessageClass::Response(_)) && p.header.get_code().starts_with("2.")
}

struct CoapPublisher {
    ep: Endpoint,
    path: Vec<String>,
    acked: bool,
    token: [u8; 2],
}

impl CoapPublisher {
    async fn publish_one(&mut self, payload: Vec<u8>) -> Result<(), CompareError> {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        if payload.len() <= BLOCK {
            let kind = if self.acked {
                MessageType::Confirmable
            } else {
                MessageType::NonConfirmable
            };
            let mid = self.ep.next_mid();
            let mut p = request(kind, RequestType::Post, mid, &self.token, &path);
            p.payload = payload;
            if self.acked {
                let r = self.ep.exchange(&p).await?;
                if !is_success(&r) {
                    return Err(client_err(
                        PROTOCOL,
                        format!("POST answered {}", r.header.get_code()),
                    ));
                }
            } else {
                self.ep.sock.send(&encode(&p)?).await?;
                // Responses to NON requests (if any) are read and dropped.
                while self.ep.packets.try_recv().is_ok() {}
            }
            return Ok(());
        }
        let blocks: Vec<&[u8]> = payload.chunks(BLOCK).collect();
        for (num, chunk) in blocks.iter().enumerate() {
            let more = num + 1 < blocks.len();
            let mid = self.ep.next_mid();
            let mut p = request(
                MessageType::Confirmable,
                RequestType::Post,
                mid,
                &self.token,
                &path,
            );
            p.add_option(CoapOption::Block1, block_value(num as u32, more));
            p.payload = chunk.to_vec();
            let r = self.ep.exchange(&p).await?;
            if !is_success(&r) {
                return Err(client_err(
                    PROTOCOL,
                    format!("block {num} answered {}", r.header.get_code()),
                ));
            }
        }
        Ok(())
    }
}

impl Publisher for CoapPublisher {
    fn publish(
        &mut self,
        payload: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<(), CompareError>> {
        self.publish_one(payload).boxed()
    }
}

/// Observes `/ps/{topic}` and delivers notifications (whole bodies).
async fn observe(
    mut ep: Endpoint,
    path: Vec<String>,
    tx: mpsc::Sender<Received>,
) -> Result<(), CompareError> {
    let token = [0xAB, 0xCD];
    let mid = ep.next_mid();
    let segs: Vec<&str> = path.iter().map(String::as_str).collect();
    let mut reg = request(
        MessageType::Confirmable,
        RequestType::Get,
        mid,
        &token,
        &segs,
    );
    reg.set_observe_value(0);
    let r = ep.exchange(&reg).await?;
    if !is_success(&r) {
        return Err(client_err(
            PROTOCOL,
            format!("observe answered {}", r.header.get_code()),
        ));
    }
    let _ = tx
        .send(Received {
            at: Instant::now(),
            payload: Bytes::new(),
        })
        .await;
    tokio::spawn(async move {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        while let Some(n) = ep.packets.recv().await {
            let at = Instant::now();
            if n.header.get_type() == MessageType::Confirmable {
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.code = MessageClass::Empty;
                ack.header.message_id = n.header.message_id;
                if let Ok(b) = encode(&ack) {
                    let _ = ep.sock.send(&b).await;
                }
            }
            if n.get_token() != token || !is_success(&n) {
                continue;
            }
            let mut body = n.payload.clone();
            let mut more = n
                .get_first_option(CoapOption::Block2)
                .and_then(|b| parse_block(b))
                .is_some_and(|(_, m)| m);
            let mut num = 1;
            while more {
                let mid = ep.next_mid();
                let mut get = request(
                    MessageType::Confirmable,
                    RequestType::Get,
                    mid,
                    &[0xAB, 0xCE],
                    &p,
                );
                get.add_option(CoapOption::Block2, block_value(num, false));
                match ep.exchange(&get).await {
                    Ok(r) if is_success(&r) => {
                        body.extend_from_slice(&r.payload);
                        more = r
                            .get_first_option(CoapOption::Block2)
                            .and_then(|b| parse_block(b))
                            .is_some_and(|(_, m)| m);
                        num += 1;
                    }
                    Ok(r) => {
                        tracing::warn!(protocol = PROTOCOL, code = %r.header.get_code(), "Block2 fetch refused.");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(protocol = PROTOCOL, error = %e, "Block2 fetch failed.");
                        break;
                    }
                }
            }
            if body.is_empty() {
                continue;
            }
            if tx
                .send(Received {
                    at,
                    payload: Bytes::from(body),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(())
}

/// Connects a publisher (to `pub_addr`) and an observer (to `sub_addr`).
pub async fn connect(
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    topic: &str,
    acked: bool,
) -> Result<Pair, CompareError> {
    let mut path = vec!["ps".to_owned()];
    path.extend(topic.split('/').map(str::to_owned));
    let (tx, mut received) = mpsc::channel(RECEIVED_DEPTH);
    let (sub_ep, sub_reader) = Endpoint::open(sub_addr).await?;
    observe(sub_ep, path.clone(), tx).await?;
    // The registration's own (empty) 2.05 is not a message.
    let _ = received.try_recv();
    let (ep, pub_reader) = Endpoint::open(pub_addr).await?;
    Ok(Pair {
        publisher: Box::new(CoapPublisher {
            ep,
            path,
            acked,
            token: [0x12, 0x34],
        }),
        received,
        tasks: vec![sub_reader, pub_reader],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_options_round_trip() {
        assert_eq!(block_value(0, true), vec![0x0E]);
        assert_eq!(parse_block(&block_value(3, true)), Some((3, true)));
        assert_eq!(parse_block(&block_value(20, false)), Some((20, false)));
        assert_eq!(parse_block(&[1, 2, 3, 4]), None);
    }
}
