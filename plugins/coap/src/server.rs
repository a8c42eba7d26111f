//! The CoAP server of the adapter: one UDP socket; datagrams parsed,
//! deduplicated and answered (piggybacked, or separately when the hub is
//! slow); `/ps` resources, Observe registrations and notifications,
//! block-wise transfers, `/.well-known/core`, and the confirmable messages
//! the server originates (notifications, separate responses) with their
//! retransmission.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use parking_lot::Mutex;
use polyhub_sdk::{
    AdapterContext, Envelope, PublishError, QoS, SubscribeOptions, Subscription, Topic, TopicFilter,
};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Settings;
use crate::convert::{self, Block, PathError, Resource};
use crate::dedup::{Exchange, ExchangeCache};
use crate::observe::{Observer, ObserverKey, Observers, Registered};
use crate::transmission::{self, MessageIds};

/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Options this server understands; an unknown critical (odd) option in a
/// request is answered 4.02 (RFC 7252 §5.4.1).
const KNOWN_OPTIONS: &[u16] = &[
    1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 17, 20, 23, 27, 28, 35, 39, 60, 258,
];

/// Most request bodies being assembled from Block1 transfers at once.
const MAX_ASSEMBLIES: usize = 1024;
/// Most response bodies kept for Block2 follow-up requests.
const MAX_BLOCK2_BODIES: usize = 1024;
/// How long a partial Block1 body or a Block2 body is kept.
const BLOCK_STATE_LIFETIME: Duration = Duration::from_secs(60);

/// What the peer answered to a confirmable message.
#[derive(Debug)]
enum Reply {
    Ack,
    Reset,
}

/// A request body being assembled from Block1 blocks.
#[derive(Debug)]
struct Assembly {
    body: Vec<u8>,
    updated: Instant,
}

/// A response body served block by block.
#[derive(Debug)]
struct Block2Body {
    body: Bytes,
    format: Option<u16>,
    etag: Vec<u8>,
    stored: Instant,
}

/// State behind one lock: short critical sections, never held across await.
#[derive(Debug)]
struct State {
    dedup: ExchangeCache,
    observers: Observers,
    assemblies: HashMap<(SocketAddr, Topic), Assembly>,
    block2: HashMap<(SocketAddr, TopicFilter), Block2Body>,
    /// One hub subscription and its forwarding task per observed filter.
    filters: HashMap<TopicFilter, CancellationToken>,
}

/// The server, shared by the receive loop and the tasks it spawns.
pub struct Server {
    ctx: AdapterContext,
    settings: Arc<Settings>,
    socket: Arc<UdpSocket>,
    ids: MessageIds,
    state: Mutex<State>,
    pending: Mutex<HashMap<(SocketAddr, u16), oneshot::Sender<Reply>>>,
    tasks: tokio_util::task::TaskTracker,
}

/// What handling a request produced.
enum Outcome {
    /// Answer now.
    Reply(Packet),
    /// Publish, then answer with this packet (2.04), unless the hub refuses.
    Publish(Box<Envelope>, Packet),
}

type PublishFuture = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

impl Server {
    /// A server on a bound socket.
    pub fn new(
        ctx: AdapterContext,
        settings: Arc<Settings>,
        socket: Arc<UdpSocket>,
        tasks: tokio_util::task::TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Server {
            state: Mutex::new(State {
                dedup: ExchangeCache::new(settings.exchange_lifetime, settings.dedup_capacity),
                observers: Observers::new(settings.max_observers),
                assemblies: HashMap::new(),
                block2: HashMap::new(),
                filters: HashMap::new(),
            }),
            ctx,
            settings,
            socket,
            ids: MessageIds::default(),
            pending: Mutex::new(HashMap::new()),
            tasks,
        })
    }

    /// Receives and handles datagrams until shutdown.
    pub async fn serve(self: &Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let shutdown = self.ctx.shutdown().clone();
        loop {
            let (n, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP port unreachable from an earlier send shows up
                        // here on some systems; the socket stays usable.
                        self.ctx.metrics().record_error();
                        debug!(adapter = %self.ctx.name(), error = %e, "Receive failed.");
                        continue;
                    }
                },
            };
            self.on_datagram(&buf[..n], peer).await;
        }
        let filters: Vec<CancellationToken> =
            self.state.lock().filters.drain().map(|(_, t)| t).collect();
        for t in filters {
            t.cancel();
        }
    }

    fn malformed(&self, peer: SocketAddr, why: &str) {
        self.ctx.metrics().record_drop();
        self.ctx.metrics().incr("malformed_datagrams");
        debug!(adapter = %self.ctx.name(), peer = %peer, reason = why, "Dropped malformed datagram.");
    }

    async fn send(&self, packet: &Packet, peer: SocketAddr) -> Option<Vec<u8>> {
        let bytes = match packet.to_bytes_unlimited() {
            Ok(b) => b,
            Err(e) => {
                self.ctx.metrics().record_error();
                warn!(adapter = %self.ctx.name(), peer = %peer, error = ?e, "Cannot encode message.");
                return None;
            }
        };
        self.send_bytes(&bytes, peer).await;
        Some(bytes)
    }

    async fn send_bytes(&self, bytes: &[u8], peer: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, peer).await {
            self.ctx.metrics().record_error();
            debug!(adapter = %self.ctx.name(), peer = %peer, error = %e, "Send failed.");
        }
    }

    async fn on_datagram(self: &Arc<Self>, buf: &[u8], peer: SocketAddr) {
        if buf.len() < 4 {
            return self.malformed(peer, "shorter than the 4-byte header");
        }
        if buf[0] >> 6 != 1 {
            // RFC 7252 §3: unknown versions are silently ignored.
            return self.malformed(peer, "unknown CoAP version");
        }
        let kind = (buf[0] >> 4) & 0x3;
        let mid = u16::from_be_bytes([buf[2], buf[3]]);
        let packet = match Packet::from_bytes(buf) {
            Ok(p) if p.header.code == MessageClass::Empty && buf.len() != 4 => {
                Err("empty message with a token, options or payload")
            }
            Ok(p) if matches!(p.header.code, MessageClass::Reserved(_)) => {
                Err("reserved message code")
            }
            Ok(p) => Ok(p),
            Err(_) => Err("bad token length or options"),
        };
        let packet = match packet {
            Ok(p) => p,
            Err(why) => {
                self.malformed(peer, why);
                // A CON or NON message with a format error is rejected with a
                // RST (RFC 7252 §4.2, §4.3); ACK and RST are dropped.
                if kind <= 1 {
                    self.send(&convert::empty(MessageType::Reset, mid), peer)
                        .await;
                }
                return;
            }
        };
        match (packet.header.get_type(), packet.header.code) {
            (MessageType::Acknowledgement, _) => self.on_reply(peer, mid, Reply::Ack),
            (MessageType::Reset, _) => self.on_reply(peer, mid, Reply::Reset),
            (MessageType::Confirmable, MessageClass::Empty) => {
                // CoAP ping (RFC 7252 §4.3).
                self.send(&convert::empty(MessageType::Reset, mid), peer)
                    .await;
            }
            (MessageType::Confirmable, MessageClass::Request(_))
            | (MessageType::NonConfirmable, MessageClass::Request(_)) => {
                self.on_request(packet, peer).await
            }
            (MessageType::Confirmable, _) => {
                // A response we did not ask for.
                self.send(&convert::empty(MessageType::Reset, mid), peer)
                    .await;
            }
            _ => {}
        }
    }

    fn on_reply(&self, peer: SocketAddr, mid: u16, reply: Reply) {
        if let Some(tx) = self.pending.lock().remove(&(peer, mid)) {
            let _ = tx.send(reply);
            return;
        }
        if let Reply::Reset = reply {
            // RST to a NON notification cancels the observation (RFC 7641 §3.6).
            let mut st = self.state.lock();
            if let Some(key) = st.observers.by_notification(peer, mid) {
                self.deregister_locked(&mut st, &key);
            }
        }
    }

    async fn on_request(self: &Arc<Self>, packet: Packet, peer: SocketAddr) {
        let mid = packet.header.message_id;
        let con = packet.header.get_type() == MessageType::Confirmable;
        let dup = self.state.lock().dedup.check(peer, mid, Instant::now());
        if let Some(ex) = dup {
            self.ctx.metrics().incr("duplicates");
            match ex {
                Exchange::Answered(Some(bytes)) => self.send_bytes(&bytes, peer).await,
                Exchange::InProgress if con => {
                    self.send(&convert::empty(MessageType::Acknowledgement, mid), peer)
                        .await;
                }
                _ => {}
            }
            return;
        }
        let outcome = self.handle(&packet, peer);
        match outcome {
            Outcome::Reply(resp) => self.answer(&packet, resp, peer).await,
            Outcome::Publish(envelope, resp) => {
                let ctx = self.ctx.clone();
                let mut publish: PublishFuture =
                    Box::pin(async move { ctx.publish(*envelope).await });
                // Usually the hub takes it at once: answer without arming a
                // timer for the separate-response case.
                let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
                if let Poll::Ready(r) = first {
                    let resp = self.published(r, resp);
                    self.answer(&packet, resp, peer).await;
                    return;
                }
                let wait = self.settings.retransmission.ack_timeout / 2;
                tokio::select! {
                    r = &mut publish => {
                        let resp = self.published(r, resp);
                        self.answer(&packet, resp, peer).await;
                    }
                    _ = tokio::time::sleep(wait) => {
                        // The hub is applying back-pressure: acknowledge now,
                        // answer separately (RFC 7252 §5.2.2).
                        let me = self.clone();
                        if con {
                            let ack = convert::empty(MessageType::Acknowledgement, mid);
                            let bytes = self.send(&ack, peer).await;
                            self.state.lock().dedup.answer(peer, mid, bytes);
                        }
                        self.tasks.spawn(async move {
                            let r = publish.await;
                            let mut resp = me.published(r, resp);
                            resp.header.message_id = me.ids.next();
                            if con {
                                resp.header.set_type(MessageType::Confirmable);
                                me.confirm(resp, peer).await;
                            } else {
                                me.send(&resp, peer).await;
                            }
                        });
                    }
                }
            }
        }
    }

    /// The response after a publish: `resp` (2.04) or 5.03 when the hub refused.
    fn published(&self, r: Result<(), PublishError>, mut resp: Packet) -> Packet {
        match r {
            Ok(()) => resp,
            Err(e) => {
                self.ctx.metrics().record_error();
                warn!(adapter = %self.ctx.name(), error = %e, "Hub refused a publish.");
                resp.header.code = MessageClass::Response(ResponseType::ServiceUnavailable);
                resp.clear_all_options();
                convert::with_diagnostic(resp, &e.to_string())
            }
        }
    }

    /// Sends the response to a request (unless No-Response suppresses it)
    /// and caches it for duplicates.
    async fn answer(&self, request: &Packet, resp: Packet, peer: SocketAddr) {
        let mid = request.header.message_id;
        let suppressed = no_response(request, &resp);
        let resp = if suppressed {
            if request.header.get_type() == MessageType::Confirmable {
                convert::empty(MessageType::Acknowledgement, mid)
            } else {
                self.state.lock().dedup.answer(peer, mid, None);
                return;
            }
        } else {
            resp
        };
        let bytes = self.send(&resp, peer).await;
        self.state.lock().dedup.answer(peer, mid, bytes);
    }

    /// Handles a (non-duplicate) request: everything but the publish itself.
    fn handle(self: &Arc<Self>, req: &Packet, peer: SocketAddr) -> Outcome {
        let reply = |code| convert::response_to(req, code, self.ids.next());
        let error = |code, text: &str| Outcome::Reply(convert::with_diagnostic(reply(code), text));

        if let Some(n) = req
            .options()
            .map(|(n, _)| *n)
            .find(|n| n % 2 == 1 && !KNOWN_OPTIONS.contains(n))
        {
            return error(
                ResponseType::BadOption,
                &format!("unknown critical option {n}"),
            );
        }
        let (Some(path), Some(query)) = (convert::uri_path(req), convert::uri_query(req)) else {
            return error(
                ResponseType::BadRequest,
                "Uri-Path or Uri-Query is not UTF-8",
            );
        };
        let resource = match convert::resource_from_path(&path) {
            Ok(r) => r,
            Err(PathError::NotFound) => return error(ResponseType::NotFound, "no such resource"),
            Err(PathError::BadTopic(why)) => return error(ResponseType::BadRequest, &why),
        };
        let MessageClass::Request(method) = req.header.code else {
            return error(ResponseType::BadRequest, "not a request");
        };
        let Ok(block2) = Block::of(req, CoapOption::Block2) else {
            return error(ResponseType::BadOption, "malformed Block2 option");
        };
        match (resource, method) {
            (Resource::WellKnownCore, RequestType::Get) => {
                let all = TopicFilter::new("#").ok();
                let values = all.map(|f| self.ctx.last_values(&f)).unwrap_or_default();
                let doc = convert::link_format(
                    values
                        .iter()
                        .map(|e| (e.topic.as_str(), convert::envelope_content_format(e))),
                    &query,
                );
                let key = TopicFilter::new(".well-known/core").ok();
                Outcome::Reply(self.body_response(
                    reply(ResponseType::Content),
                    peer,
                    key,
                    Bytes::from(doc),
                    Some(40),
                    block2,
                ))
            }
            (Resource::WellKnownCore, _) => error(
                ResponseType::MethodNotAllowed,
                "/.well-known/core is read-only",
            ),
            (Resource::Topic(filter), RequestType::Get) => {
                self.get(req, peer, filter, block2, reply(ResponseType::Content))
            }
            (Resource::Topic(filter), RequestType::Post | RequestType::Put) => {
                let Some(topic) = filter.as_topic() else {
                    return error(
                        ResponseType::BadRequest,
                        "cannot publish to a filter (`+`, `#`)",
                    );
                };
                self.publish_request(req, peer, topic, &query, reply(ResponseType::Changed))
            }
            (Resource::Topic(filter), RequestType::Delete) => {
                let Some(topic) = filter.as_topic() else {
                    return error(
                        ResponseType::BadRequest,
                        "cannot delete a filter (`+`, `#`)",
                    );
                };
                self.ctx.clear_last_value(&topic);
                Outcome::Reply(reply(ResponseType::Deleted))
            }
            _ => error(
                ResponseType::MethodNotAllowed,
                "use GET, POST, PUT or DELETE",
            ),
        }
    }

    fn get(
        self: &Arc<Self>,
        req: &Packet,
        peer: SocketAddr,
        filter: TopicFilter,
        block2: Option<Block>,
        mut resp: Packet,
    ) -> Outcome {
        let observe = match req.get_first_option(CoapOption::Observe) {
            None => None,
            Some(v) => match convert::decode_uint(v, 3) {
                Some(n) => Some(n),
                None => {
                    return Outcome::Reply(convert::with_diagnostic(
                        {
                            resp.header.code = MessageClass::Response(ResponseType::BadOption);
                            resp
                        },
                        "malformed Observe option",
                    ))
                }
            },
        };
        // A follow-up block of a body already being served.
        if let Some(b) = block2.filter(|b| b.num > 0) {
            let cached = {
                let st = self.state.lock();
                st.block2
                    .get(&(peer, filter.clone()))
                    .map(|c| (c.body.clone(), c.format, c.etag.clone()))
            };
            if let Some((body, format, etag)) = cached {
                return Outcome::Reply(block_response(resp, &body, format, Some(etag), b));
            }
        }
        let mut registered = false;
        match observe {
            Some(0) => {
                let observer = Observer {
                    peer,
                    token: req.get_token().to_vec(),
                    filter: filter.clone(),
                    seq: 0,
                    last_con: Instant::now(),
                    con_in_flight: false,
                    szx: block2.map(|b| b.szx),
                    client: Some(std::sync::Arc::new(
                        self.ctx.client_connected(
                            polyhub_sdk::ClientInfo::new("coap-observe")
                                .with_client_id(filter.to_string())
                                .with_peer(peer.to_string()),
                        ),
                    )),
                };
                let mut st = self.state.lock();
                match st.observers.register(observer) {
                    Registered::New(new_filter) => {
                        registered = true;
                        if new_filter {
                            self.watch_filter(&mut st, filter.clone());
                        }
                    }
                    Registered::Replaced => registered = true,
                    Registered::Full => {
                        self.ctx.metrics().incr("observers_refused");
                        warn!(adapter = %self.ctx.name(), peer = %peer, "Too many observers; registration refused.");
                    }
                }
                if registered {
                    // The registration's own sequence number is 0.
                    if let Some(o) = st.observers.get_mut(&(peer, filter.clone())) {
                        o.seq = 0;
                    }
                }
            }
            Some(1) => {
                let mut st = self.state.lock();
                self.deregister_locked(&mut st, &(peer, filter.clone()));
                for f in st.observers.deregister_token(peer, req.get_token()) {
                    if let Some(t) = st.filters.remove(&f) {
                        t.cancel();
                    }
                }
            }
            _ => {}
        }
        let value = filter.as_topic().and_then(|t| self.ctx.last_value(&t));
        if let Some(accept) = req.get_first_option(CoapOption::Accept) {
            let want = convert::decode_uint(accept, 2).map(|n| n as u16);
            let have = value.as_deref().and_then(convert::envelope_content_format);
            if value.is_some() && want != have {
                resp.header.code = MessageClass::Response(ResponseType::NotAcceptable);
                return Outcome::Reply(resp);
            }
        }
        if registered {
            resp.set_observe_value(0);
        }
        match value {
            Some(v) => {
                let format = convert::envelope_content_format(&v);
                Outcome::Reply(self.body_response(
                    resp,
                    peer,
                    Some(filter),
                    v.payload.clone(),
                    format,
                    block2,
                ))
            }
            None if registered => Outcome::Reply(resp),
            None if filter.has_wildcards() => {
                resp.header.code = MessageClass::Response(ResponseType::BadRequest);
                Outcome::Reply(convert::with_diagnostic(
                    resp,
                    "a filter has no value; observe it (Observe: 0) instead",
                ))
            }
            None => {
                resp.header.code = MessageClass::Response(ResponseType::NotFound);
                Outcome::Reply(resp)
            }
        }
    }

    /// A 2.05 carrying `body`, block-wise when it is larger than a block.
    fn body_response(
        &self,
        resp: Packet,
        peer: SocketAddr,
        key: Option<TopicFilter>,
        body: Bytes,
        format: Option<u16>,
        block2: Option<Block>,
    ) -> Packet {
        let szx = self.szx_for(block2.map(|b| b.szx));
        let size = 1usize << (szx + 4);
        if body.len() <= size && block2.map_or(true, |b| b.num == 0) {
            let mut resp = resp;
            convert::set_content_format(&mut resp, format);
            resp.payload = body.to_vec();
            return resp;
        }
        let etag = convert::etag(&body);
        if let Some(key) = key {
            self.store_block2(peer, key, body.clone(), format, etag.clone());
        }
        let b = block2.map_or(
            Block {
                num: 0,
                more: false,
                szx,
            },
            |b| Block { szx, ..b },
        );
        block_response(resp, &body, format, Some(etag), b)
    }

    fn szx_for(&self, asked: Option<u8>) -> u8 {
        let ours = Block::szx_for(self.settings.block_size);
        asked.map_or(ours, |a| a.min(ours))
    }

    fn store_block2(
        &self,
        peer: SocketAddr,
        key: TopicFilter,
        body: Bytes,
        format: Option<u16>,
        etag: Vec<u8>,
    ) {
        let now = Instant::now();
        let mut st = self.state.lock();
        if st.block2.len() >= MAX_BLOCK2_BODIES {
            st.block2
                .retain(|_, b| now.duration_since(b.stored) < BLOCK_STATE_LIFETIME);
            if st.block2.len() >= MAX_BLOCK2_BODIES {
                let oldest = st
                    .block2
                    .iter()
                    .min_by_key(|(_, b)| b.stored)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    st.block2.remove(&k);
                }
            }
        }
        st.block2.insert(
            (peer, key),
            Block2Body {
                body,
                format,
                etag,
                stored: now,
            },
        );
    }

    fn publish_request(
        &self,
        req: &Packet,
        peer: SocketAddr,
        topic: Topic,
        query: &[String],
        mut resp: Packet,
    ) -> Outcome {
        let fail = |mut resp: Packet, code, text: &str| {
            resp.header.code = MessageClass::Response(code);
            Outcome::Reply(convert::with_diagnostic(resp, text))
        };
        let Ok(format) = convert::content_format(req) else {
            return fail(resp, ResponseType::BadOption, "malformed Content-Format");
        };
        let Ok(block1) = Block::of(req, CoapOption::Block1) else {
            return fail(resp, ResponseType::BadOption, "malformed Block1 option");
        };
        let max = self.settings.max_body;
        let too_large = |mut resp: Packet| {
            resp.add_option(CoapOption::Size1, convert::encode_uint(max as u32));
            fail(resp, ResponseType::RequestEntityTooLarge, "body too large")
        };
        let payload: Vec<u8> = match block1 {
            None => {
                if req.payload.len() > max {
                    return too_large(resp);
                }
                req.payload.clone()
            }
            Some(b) => {
                if let Some(size1) = req
                    .get_first_option(CoapOption::Size1)
                    .and_then(|v| convert::decode_uint(v, 4))
                {
                    if size1 as usize > max {
                        return too_large(resp);
                    }
                }
                let key = (peer, topic.clone());
                let now = Instant::now();
                let mut st = self.state.lock();
                if b.num == 0 {
                    if st.assemblies.len() >= MAX_ASSEMBLIES {
                        st.assemblies
                            .retain(|_, a| now.duration_since(a.updated) < BLOCK_STATE_LIFETIME);
                        if st.assemblies.len() >= MAX_ASSEMBLIES {
                            self.ctx.metrics().record_drop();
                            return fail(
                                resp,
                                ResponseType::ServiceUnavailable,
                                "too many block-wise transfers",
                            );
                        }
                    }
                    st.assemblies.insert(
                        key.clone(),
                        Assembly {
                            body: Vec::new(),
                            updated: now,
                        },
                    );
                }
                let Some(asm) = st.assemblies.get_mut(&key) else {
                    return fail(
                        resp,
                        ResponseType::RequestEntityIncomplete,
                        "block 0 missing",
                    );
                };
                if b.offset() != asm.body.len() || (b.more && req.payload.len() != b.size()) {
                    st.assemblies.remove(&key);
                    return fail(
                        resp,
                        ResponseType::RequestEntityIncomplete,
                        "block out of sequence",
                    );
                }
                if asm.body.len() + req.payload.len() > max {
                    st.assemblies.remove(&key);
                    return too_large(resp);
                }
                asm.body.extend_from_slice(&req.payload);
                asm.updated = now;
                let echo = Block {
                    num: b.num,
                    more: b.more,
                    szx: self.szx_for(Some(b.szx)),
                };
                resp.add_option(CoapOption::Block1, echo.encode());
                if b.more {
                    resp.header.code = MessageClass::Response(ResponseType::Continue);
                    return Outcome::Reply(resp);
                }
                match st.assemblies.remove(&key) {
                    Some(a) => a.body,
                    None => Vec::new(),
                }
            }
        };
        let con = req.header.get_type() == MessageType::Confirmable;
        let mut envelope = Envelope::new(topic, payload)
            .with_origin(self.ctx.origin().with_peer(peer))
            .with_qos(if con {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            });
        convert::apply_content_format(&mut envelope, format);
        for q in query {
            match q.split_once('=').unwrap_or((q.as_str(), "true")) {
                ("retain", v) => envelope.retain = matches!(v, "true" | "1" | ""),
                ("qos", "0") => envelope.qos = QoS::AtMostOnce,
                ("qos", "1") => envelope.qos = QoS::AtLeastOnce,
                _ => {}
            }
        }
        Outcome::Publish(Box::new(envelope), resp)
    }

    /// Subscribes the hub for `filter` (first observer of it) and forwards
    /// what arrives to its observers, including what this adapter's own
    /// clients publish (a publishing client that observes is notified too).
    fn watch_filter(self: &Arc<Self>, st: &mut State, filter: TopicFilter) {
        let options = SubscribeOptions {
            depth: None,
            include_own: true,
            ..SubscribeOptions::default()
        };
        let sub: Subscription = match self.ctx.subscribe_with([filter.clone()], options) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.metrics().record_error();
                warn!(adapter = %self.ctx.name(), filter = %filter, error = %e, "Cannot subscribe for observers.");
                return;
            }
        };
        let token = self.ctx.shutdown().child_token();
        st.filters.insert(filter.clone(), token.clone());
        let me = self.clone();
        self.tasks.spawn(async move {
            let mut sub = sub;
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    e = sub.recv() => match e {
                        Some(e) => me.notify(&e, &filter),
                        None => break,
                    },
                }
            }
        });
    }

    fn deregister_locked(&self, st: &mut State, key: &ObserverKey) {
        if let Some(freed) = st.observers.deregister(key) {
            if let Some(t) = st.filters.remove(&freed) {
                t.cancel();
            }
            st.block2.remove(key);
        }
    }

    /// Sends a notification for `envelope`, which came through the hub
    /// subscription of `filter`, to the observers of `filter`.
    pub fn notify(self: &Arc<Self>, envelope: &Arc<Envelope>, filter: &TopicFilter) {
        let now = Instant::now();
        let format = convert::envelope_content_format(envelope);
        let ours = Block::szx_for(self.settings.block_size);
        let mut out: Vec<(Packet, SocketAddr, ObserverKey, bool)> = Vec::new();
        {
            let mut st = self.state.lock();
            let keys: Vec<ObserverKey> = st
                .observers
                .matching(&envelope.topic)
                .into_iter()
                .filter(|k| &k.1 == filter)
                .collect();
            for key in keys {
                let Some(o) = st.observers.get_mut(&key) else {
                    continue;
                };
                let con = !o.con_in_flight
                    && (envelope.qos.is_acknowledged()
                        || now.duration_since(o.last_con) >= self.settings.observe_con_interval);
                let mut p = Packet::new();
                p.header.set_type(if con {
                    MessageType::Confirmable
                } else {
                    MessageType::NonConfirmable
                });
                p.header.code = MessageClass::Response(ResponseType::Content);
                p.header.message_id = self.ids.next();
                p.set_token(o.token.clone());
                p.set_observe_value(o.next_seq());
                if let Some(c) = &o.client {
                    c.record_out();
                }
                if con {
                    o.con_in_flight = true;
                    o.last_con = now;
                }
                let szx = o.szx.map_or(ours, |s| s.min(ours));
                let (peer, mid) = (o.peer, p.header.message_id);
                st.observers.sent(key.clone(), mid);
                let p = if envelope.payload.len() > 1 << (szx + 4) {
                    let etag = convert::etag(&envelope.payload);
                    st.block2.insert(
                        key.clone(),
                        Block2Body {
                            body: envelope.payload.clone(),
                            format,
                            etag: etag.clone(),
                            stored: now,
                        },
                    );
                    block_response(
                        p,
                        &envelope.payload,
                        format,
                        Some(etag),
                        Block {
                            num: 0,
                            more: true,
                            szx,
                        },
                    )
                } else {
                    convert::set_content_format(&mut p, format);
                    p.payload = envelope.payload.to_vec();
                    p
                };
                out.push((p, peer, key, con));
            }
        }
        // Sent here, in order (a spawned send could overtake another);
        // confirmable ones then wait for their ACK in a task of their own.
        for (p, peer, key, con) in out {
            let Ok(bytes) = p.to_bytes_unlimited() else {
                self.ctx.metrics().record_error();
                continue;
            };
            let mid = p.header.message_id;
            if !con {
                self.try_send(&bytes, peer);
                continue;
            }
            let rx = self.expect_reply(peer, mid);
            self.try_send(&bytes, peer);
            let me = self.clone();
            self.tasks.spawn(async move {
                let ok = me.retransmit(bytes, peer, mid, rx, true).await;
                let mut st = me.state.lock();
                if ok {
                    if let Some(o) = st.observers.get_mut(&key) {
                        o.con_in_flight = false;
                    }
                } else if st.observers.get_mut(&key).is_some() {
                    me.ctx.metrics().incr("observers_lost");
                    me.deregister_locked(&mut st, &key);
                }
            });
        }
    }

    /// Sends without waiting; a full socket buffer drops the datagram.
    fn try_send(&self, bytes: &[u8], peer: SocketAddr) {
        match self.socket.try_send_to(bytes, peer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.ctx.metrics().record_drop();
                self.ctx.metrics().incr("notifications_dropped");
            }
            Err(e) => {
                self.ctx.metrics().record_error();
                debug!(adapter = %self.ctx.name(), peer = %peer, error = %e, "Send failed.");
            }
        }
    }

    /// Registers interest in the ACK or RST for message `mid` to `peer`.
    fn expect_reply(&self, peer: SocketAddr, mid: u16) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert((peer, mid), tx);
        rx
    }

    /// Sends a confirmable message and retransmits it until acknowledged;
    /// false on RST, timeout or shutdown.
    async fn confirm(&self, packet: Packet, peer: SocketAddr) -> bool {
        let Ok(bytes) = packet.to_bytes_unlimited() else {
            self.ctx.metrics().record_error();
            return false;
        };
        let mid = packet.header.message_id;
        let rx = self.expect_reply(peer, mid);
        self.retransmit(bytes, peer, mid, rx, false).await
    }

    /// Transmits `bytes` (again, when `first_sent`) with the RFC 7252
    /// back-off until `rx` reports an ACK or RST.
    async fn retransmit(
        &self,
        bytes: Vec<u8>,
        peer: SocketAddr,
        mid: u16,
        mut rx: oneshot::Receiver<Reply>,
        first_sent: bool,
    ) -> bool {
        let mut attempts = 0;
        let mut outcome = None;
        for wait in transmission::timeouts(&self.settings.retransmission) {
            attempts += 1;
            if attempts > 1 {
                self.ctx.metrics().incr("retransmissions");
            }
            if attempts > 1 || !first_sent {
                self.send_bytes(&bytes, peer).await;
            }
            tokio::select! {
                _ = self.ctx.shutdown().cancelled() => break,
                r = &mut rx => { outcome = r.ok(); break; }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.pending.lock().remove(&(peer, mid));
        match outcome {
            Some(Reply::Ack) => true,
            Some(Reply::Reset) => false,
            None => {
                if !self.ctx.shutdown().is_cancelled() {
                    self.ctx.metrics().record_error();
                    warn!(adapter = %self.ctx.name(), peer = %peer, attempts, "Confirmable message not acknowledged.");
                }
                false
            }
        }
    }
}

/// Whether a No-Response option (RFC 7967) in `request` suppresses `resp`.
fn no_response(request: &Packet, resp: &Packet) -> bool {
    let Some(mask) = request
        .get_first_option(CoapOption::NoResponse)
        .and_then(|v| convert::decode_uint(v, 1))
    else {
        return false;
    };
    let class = u8::from(resp.header.code) >> 5;
    let bit = match class {
        2 => 0x02,
        4 => 0x08,
        5 => 0x10,
        _ => 0,
    };
    mask & bit != 0
}

/// `resp` carrying block `b` of `body` with Block2, Size2 and ETag options.
fn block_response(
    mut resp: Packet,
    body: &[u8],
    format: Option<u16>,
    etag: Option<Vec<u8>>,
    b: Block,
) -> Packet {
    convert::set_content_format(&mut resp, format);
    match convert::block_slice(body, b.num, b.szx) {
        Some((range, block)) => {
            resp.add_option(CoapOption::Block2, block.encode());
            resp.add_option(CoapOption::Size2, convert::encode_uint(body.len() as u32));
            if let Some(etag) = etag {
                resp.add_option(CoapOption::ETag, etag);
            }
            resp.payload = body[range].to_vec();
            resp
        }
        None => {
            resp.header.code = MessageClass::Response(ResponseType::BadOption);
            resp.clear_all_options();
            convert::with_diagnostic(resp, "block number past the end")
        }
    }
}
