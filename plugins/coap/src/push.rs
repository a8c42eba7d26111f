//! Push targets: envelopes matching a `push` filter are sent as CON `PUT` to
//! a device's CoAP server, block-wise when large, retransmitted with the RFC
//! 7252 back-off. Each target has its own durable queue (`push/{url}`, see
//! [`queue_names`]), socket and task, so a dead device delays no other.
//!
//! An envelope is acknowledged to its queue only once the device answered
//! it with a success (`2.xx`, piggybacked on the ACK or separate), so that
//! with `[hub] data_dir` a QoS 1/2 envelope survives a hub restart until
//! then. A failed exchange (no answer after the retransmissions, a RST, a
//! `5.xx`, a socket error) is counted (`push_failures`) and the same
//! envelope is tried again after a backoff (100 ms doubling to 5 s), in
//! order, for as long as it takes: nothing is dropped but what the queue's
//! `[hub] max_queue_bytes` bound drops. A `4.xx` refuses that one envelope
//! for good: counted (`push_refused`, `dropped`), logged, acknowledged.
//! (Pushes are always CON; a NON push would be acknowledged once sent.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use polyhub_sdk::reconnect::Backoff;
use polyhub_sdk::{AdapterContext, Envelope, Subscription};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::{PushEndpoint, Settings};
use crate::convert::{self, Block};
use crate::error::CoapError;
use crate::server::MAX_DATAGRAM;
use crate::transmission::{self, MessageIds};

/// First delay before a failed push is tried again.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest delay between two tries of a failed push.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The durable queue name of each push target, in config order:
/// `push/{url}`, and `push/{url}#{n}` for the `n`-th (from 2) target with
/// the same URL. Stable across restarts as long as the config keeps its
/// targets' URLs (and the order of those sharing one).
pub fn queue_names(endpoints: &[PushEndpoint]) -> Vec<String> {
    let mut names = Vec::with_capacity(endpoints.len());
    for (i, e) in endpoints.iter().enumerate() {
        let n = 1 + endpoints[..i].iter().filter(|o| o.url == e.url).count();
        names.push(if n == 1 {
            format!("push/{}", e.url)
        } else {
            format!("push/{}#{n}", e.url)
        });
    }
    names
}

/// Starts the task of one push target, which reads `sub` (its durable
/// queue) until shutdown.
pub fn start(
    ctx: &AdapterContext,
    settings: &Arc<Settings>,
    endpoint: PushEndpoint,
    sub: Subscription,
) {
    let pusher = Pusher {
        ctx: ctx.clone(),
        settings: settings.clone(),
        endpoint: Arc::new(endpoint),
        ids: MessageIds::default(),
        socket: None,
    };
    ctx.spawn(pusher.run(sub));
}

/// Whether a failed exchange refuses the envelope for good: a `4.xx`
/// answer (the code as `4.04`). Everything else (timeouts, RST, `5.xx`,
/// socket errors) is worth trying again.
fn refused_for_good(e: &CoapError) -> bool {
    matches!(e, CoapError::Rejected { code, .. } if code.starts_with("4."))
}

struct Pusher {
    ctx: AdapterContext,
    settings: Arc<Settings>,
    endpoint: Arc<PushEndpoint>,
    ids: MessageIds,
    socket: Option<(UdpSocket, SocketAddr)>,
}

impl Pusher {
    /// Delivers the queue's envelopes in order; on shutdown the one being
    /// delivered stays unacknowledged (dropping `sub` puts it back first).
    async fn run(mut self, mut sub: Subscription) {
        let shutdown = self.ctx.shutdown().clone();
        loop {
            let envelope = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = sub.recv() => match e { Some(e) => e, None => break },
            };
            let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
            let mut failures = 0u32;
            loop {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.deliver(&envelope) => r,
                };
                match result {
                    Ok(()) => {
                        self.ctx.metrics().incr("push_delivered");
                        if failures > 0 {
                            debug!(adapter = %self.ctx.name(), url = %self.endpoint.url, failures, "Push delivered after failures.");
                        }
                        break;
                    }
                    Err(e) if refused_for_good(&e) => {
                        self.ctx.metrics().record_error();
                        self.ctx.metrics().record_drop();
                        self.ctx.metrics().incr("push_refused");
                        warn!(adapter = %self.ctx.name(), url = %self.endpoint.url, topic = %envelope.topic, error = %e, "Device refused the push for good; skipped it.");
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        self.ctx.metrics().record_error();
                        self.ctx.metrics().incr("push_failures");
                        if matches!(e, CoapError::Io(_) | CoapError::Resolve { .. }) {
                            // Resolve and bind again for the next try.
                            self.socket = None;
                        }
                        let delay = backoff.next_delay();
                        if failures == 1 {
                            warn!(adapter = %self.ctx.name(), url = %self.endpoint.url, topic = %envelope.topic, error = %e, retry_in = ?delay, "Push to device failed; retrying until it answers.");
                        } else {
                            debug!(adapter = %self.ctx.name(), url = %self.endpoint.url, failures, error = %e, retry_in = ?delay, "Push to device failed again.");
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            sub.ack(&envelope);
        }
    }

    async fn connect(&mut self) -> Result<(), CoapError> {
        if self.socket.is_some() {
            return Ok(());
        }
        let host = (self.endpoint.host.as_str(), self.endpoint.port);
        let peer = tokio::net::lookup_host(host)
            .await
            .map_err(|e| CoapError::Resolve {
                host: self.endpoint.host.clone(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| CoapError::Resolve {
                host: self.endpoint.host.clone(),
                reason: "no address".to_owned(),
            })?;
        let local: SocketAddr = if peer.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(peer).await?;
        self.socket = Some((socket, peer));
        Ok(())
    }

    /// Sends one envelope as a PUT (block-wise when larger than a block).
    async fn deliver(&mut self, envelope: &Envelope) -> Result<(), CoapError> {
        self.connect().await?;
        let body = &envelope.payload[..];
        let size = self.settings.block_size;
        let format = convert::envelope_content_format(envelope);
        let token = transmission::token();
        let mut szx = Block::szx_for(size);
        let mut offset = 0usize;
        loop {
            let mut p = Packet::new();
            p.header.set_type(MessageType::Confirmable);
            p.header.code = MessageClass::Request(RequestType::Put);
            p.header.message_id = self.ids.next();
            p.set_token(token.clone());
            for seg in &self.endpoint.path {
                p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
            }
            for q in &self.endpoint.query {
                p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
            }
            convert::set_content_format(&mut p, format);
            let block_size = 1usize << (szx + 4);
            let blockwise = body.len() > size;
            let end = if blockwise {
                (offset + block_size).min(body.len())
            } else {
                body.len()
            };
            if blockwise {
                let b = Block {
                    num: (offset / block_size) as u32,
                    more: end < body.len(),
                    szx,
                };
                p.add_option(CoapOption::Block1, b.encode());
                if offset == 0 {
                    p.add_option(CoapOption::Size1, convert::encode_uint(body.len() as u32));
                }
            }
            p.payload = body[offset..end].to_vec();
            let resp = self.exchange(&p).await?;
            let code = resp.header.code;
            let peer = self.peer();
            match code {
                MessageClass::Response(ResponseType::Continue) if blockwise && end < body.len() => {
                    // The device may ask for smaller blocks (RFC 7959 §2.3).
                    if let Ok(Some(b)) = Block::of(&resp, CoapOption::Block1) {
                        szx = szx.min(b.szx);
                    }
                    offset = end;
                }
                MessageClass::Response(r) if !r.is_error() && end >= body.len() => return Ok(()),
                MessageClass::Response(r) if !r.is_error() && blockwise => {
                    // A device that takes a whole block answers 2.04 early.
                    offset = end;
                }
                other => {
                    return Err(CoapError::Rejected {
                        peer,
                        code: other.to_string(),
                    });
                }
            }
        }
    }

    fn peer(&self) -> SocketAddr {
        self.socket
            .as_ref()
            .map(|(_, p)| *p)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// One confirmable request/response exchange with retransmission: a
    /// piggybacked response, or an empty ACK then a separate response.
    async fn exchange(&mut self, request: &Packet) -> Result<Packet, CoapError> {
        let bytes = request.to_bytes_unlimited().map_err(CoapError::Encode)?;
        let mid = request.header.message_id;
        let token = request.get_token().to_vec();
        let peer = self.peer();
        let Some((socket, _)) = self.socket.as_ref() else {
            return Err(CoapError::Io(std::io::Error::other("not connected")));
        };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut acked = false;
        let mut attempts = 0;
        let r = &self.settings.retransmission;
        let give_up = Instant::now() + transmission::max_transmit_wait(r) + Duration::from_secs(1);
        let mut waits = transmission::timeouts(r);
        let mut deadline = Instant::now();
        loop {
            if !acked && Instant::now() >= deadline {
                let Some(wait) = waits.next() else {
                    return Err(CoapError::Timeout { peer, attempts });
                };
                attempts += 1;
                if attempts > 1 {
                    self.ctx.metrics().incr("push_retransmissions");
                }
                // A send error (ICMP port unreachable) is retried like a loss.
                if let Err(e) = socket.send(&bytes).await {
                    debug!(adapter = %self.ctx.name(), peer = %peer, error = %e, "Push send failed.");
                }
                deadline = Instant::now() + wait;
            }
            let until = if acked {
                give_up
            } else {
                deadline.min(give_up)
            };
            let n = match tokio::time::timeout_at(until, socket.recv(&mut buf)).await {
                Err(_) if acked || Instant::now() >= give_up => {
                    return Err(CoapError::Timeout { peer, attempts })
                }
                Err(_) => continue,
                Ok(Err(e)) => {
                    // ECONNREFUSED from an earlier send: the device is not
                    // listening (yet); keep retransmitting.
                    debug!(adapter = %self.ctx.name(), peer = %peer, error = %e, "Push receive failed.");
                    tokio::time::sleep_until(deadline.min(give_up)).await;
                    continue;
                }
                Ok(Ok(n)) => n,
            };
            let Ok(reply) = Packet::from_bytes(&buf[..n]) else {
                self.ctx.metrics().incr("malformed_datagrams");
                continue;
            };
            match reply.header.get_type() {
                MessageType::Reset if reply.header.message_id == mid => {
                    return Err(CoapError::Reset(peer));
                }
                MessageType::Acknowledgement if reply.header.message_id == mid => {
                    if reply.header.code == MessageClass::Empty {
                        acked = true; // separate response follows
                    } else if reply.get_token() == token {
                        return Ok(reply);
                    }
                }
                MessageType::Confirmable | MessageType::NonConfirmable
                    if matches!(reply.header.code, MessageClass::Response(_))
                        && reply.get_token() == token =>
                {
                    if reply.header.get_type() == MessageType::Confirmable {
                        let ack =
                            convert::empty(MessageType::Acknowledgement, reply.header.message_id);
                        if let Ok(b) = ack.to_bytes() {
                            let _ = socket.send(&b).await;
                        }
                    }
                    return Ok(reply);
                }
                MessageType::Confirmable => {
                    let rst = convert::empty(MessageType::Reset, reply.header.message_id);
                    if let Ok(b) = rst.to_bytes() {
                        let _ = socket.send(&b).await;
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_4_xx_refuses_a_push_for_good() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 5683));
        let rejected = |class| CoapError::Rejected {
            peer,
            code: MessageClass::Response(class).to_string(),
        };
        assert!(refused_for_good(&rejected(ResponseType::NotFound)));
        assert!(refused_for_good(&rejected(ResponseType::BadRequest)));
        assert!(!refused_for_good(&rejected(
            ResponseType::InternalServerError
        )));
        assert!(!refused_for_good(&rejected(
            ResponseType::ServiceUnavailable
        )));
        assert!(!refused_for_good(&CoapError::Reset(peer)));
        assert!(!refused_for_good(&CoapError::Timeout { peer, attempts: 5 }));
    }
}
