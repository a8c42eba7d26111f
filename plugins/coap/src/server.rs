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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use parking_lot::Mutex;
use polyhub_sdk::{
    Action, AdapterContext, Envelope, PublishError, SubscribeOptions, Subscription, Topic,
    TopicFilter,
};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::access::{self, QueryCredentials, Requester};
use crate::config::Settings;
use crate::convert::{self, Block, PathError, Resource};
use crate::dedup::{Exchange, ExchangeCache};
use crate::discovery::{BlockError, CursorCache, Scope, Viewer};
use crate::dtls::Sessions;
use crate::observe::{Observer, ObserverKey, Observers, Registered};
use crate::transmission::{self, MessageIds};

/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Options this server understands; an unknown critical (odd) option in a
/// request is answered 4.02 (RFC 7252 §5.4.1).
const KNOWN_OPTIONS: &[u16] = &[
    1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 17, 20, 23, 27, 28, 35, 39, 60, 258,
];

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
/// Every map is bounded by `Settings::limits`.
#[derive(Debug)]
struct State {
    dedup: ExchangeCache,
    observers: Observers,
    assemblies: HashMap<(SocketAddr, Topic), Assembly>,
    /// Bytes held by `assemblies`.
    assembly_bytes: usize,
    block2: HashMap<(SocketAddr, TopicFilter), Block2Body>,
    /// Bytes held by `block2`.
    block2_bytes: usize,
    /// One hub subscription and its forwarding task per observed filter.
    filters: HashMap<TopicFilter, CancellationToken>,
}

impl State {
    fn remove_assembly(&mut self, key: &(SocketAddr, Topic)) -> Option<Assembly> {
        let a = self.assemblies.remove(key)?;
        self.assembly_bytes -= a.body.len();
        Some(a)
    }

    fn expire_assemblies(&mut self, now: Instant, lifetime: Duration) {
        let old: Vec<(SocketAddr, Topic)> = self
            .assemblies
            .iter()
            .filter(|(_, a)| now.duration_since(a.updated) >= lifetime)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.remove_assembly(&k);
        }
    }

    fn remove_block2(&mut self, key: &(SocketAddr, TopicFilter)) {
        if let Some(b) = self.block2.remove(key) {
            self.block2_bytes -= b.body.len();
        }
    }

    /// Keeps a Block2 body within the limits: expired ones go, then the
    /// peer's oldest beyond its share, then the oldest of all.
    fn insert_block2(
        &mut self,
        key: (SocketAddr, TopicFilter),
        body: Block2Body,
        limits: &crate::config::Limits,
    ) {
        let now = body.stored;
        self.remove_block2(&key);
        if body.body.len() > limits.block2_bytes {
            return;
        }
        let old: Vec<(SocketAddr, TopicFilter)> = self
            .block2
            .iter()
            .filter(|(_, b)| now.duration_since(b.stored) >= limits.block_lifetime)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.remove_block2(&k);
        }
        let peer = key.0;
        loop {
            let mine = self.block2.iter().filter(|(k, _)| k.0 == peer);
            if mine.clone().count() < limits.block2_per_peer {
                break;
            }
            let Some(k) = mine.min_by_key(|(_, b)| b.stored).map(|(k, _)| k.clone()) else {
                break;
            };
            self.remove_block2(&k);
        }
        while self.block2.len() >= limits.block2_entries
            || self.block2_bytes + body.body.len() > limits.block2_bytes
        {
            let Some(k) = self
                .block2
                .iter()
                .min_by_key(|(_, b)| b.stored)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove_block2(&k);
        }
        self.block2_bytes += body.body.len();
        self.block2.insert(key, body);
    }
}

/// How the server's socket carries CoAP messages.
#[derive(Debug, Clone)]
pub enum Link {
    /// Plain CoAP: a message per datagram; `u`/`p` Uri-Query items say
    /// who sends it.
    Plain,
    /// CoAP over DTLS: a session per peer; its PSK identity is the user.
    Dtls(Arc<Sessions>),
}

/// The server, shared by the receive loop and the tasks it spawns.
pub struct Server {
    ctx: AdapterContext,
    settings: Arc<Settings>,
    socket: Arc<UdpSocket>,
    link: Link,
    ids: MessageIds,
    state: Mutex<State>,
    /// The shared cursors of `/.well-known/core` listings.
    discovery: Mutex<CursorCache>,
    pending: Mutex<HashMap<(SocketAddr, u16), oneshot::Sender<Reply>>>,
    /// Requests whose publish waits for the hub off the receive loop.
    waiting: AtomicUsize,
}

/// Releases a place among the waiting requests when dropped.
struct WaitSlot(Arc<Server>);

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
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
        link: Link,
    ) -> Arc<Self> {
        let limits = settings.limits;
        Arc::new(Server {
            state: Mutex::new(State {
                dedup: ExchangeCache::new(
                    settings.exchange_lifetime,
                    settings.dedup_capacity,
                    limits.dedup_bytes,
                ),
                observers: Observers::new(settings.max_observers, limits.observers_per_peer),
                assemblies: HashMap::new(),
                assembly_bytes: 0,
                block2: HashMap::new(),
                block2_bytes: 0,
                filters: HashMap::new(),
            }),
            // A cursor outlives the exchange that made it: a client that
            // lost (or ignored) a block's response asks for it again with
            // the same request for up to MAX_TRANSMIT_WAIT (93 s), and when
            // the duplicate cache has already forgotten the first answer
            // (it is bounded in bytes, and a busy listing churns it), the
            // block is rendered again from this cursor. libcoap's
            // coap-client did that 61 s after the first request in about a
            // third of 80 concurrent walks over 200 000 topics; with the
            // 60 s block lifetime those walks were refused after 1 379
            // links.
            discovery: Mutex::new(CursorCache::new(
                limits.discovery_entries,
                limits.discovery_bytes,
                limits.block_lifetime.max(settings.exchange_lifetime),
            )),
            waiting: AtomicUsize::new(0),
            ctx,
            settings,
            socket,
            link,
            ids: MessageIds::default(),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Receives and handles datagrams until shutdown.
    pub async fn serve(self: &Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let shutdown = self.ctx.shutdown().clone();
        // DTLS: handshakes and idle sessions time out.
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let dtls = matches!(self.link, Link::Dtls(_));
        loop {
            let (n, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sweep.tick(), if dtls => {
                    if let Link::Dtls(sessions) = &self.link {
                        sessions.expire(Instant::now());
                    }
                    continue;
                }
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
            match &self.link {
                Link::Plain => self.on_datagram(&buf[..n], peer).await,
                Link::Dtls(sessions) => {
                    let opened = sessions.open(peer, &buf[..n], Instant::now());
                    for record in &opened.replies {
                        self.send_datagram(record, peer).await;
                    }
                    for message in &opened.messages {
                        self.on_datagram(message, peer).await;
                    }
                }
            }
        }
        let filters: Vec<CancellationToken> =
            self.state.lock().filters.drain().map(|(_, t)| t).collect();
        for t in filters {
            t.cancel();
        }
    }

    fn malformed(&self, peer: SocketAddr, why: &str) {
        self.ctx.metrics().record_rejected("malformed_datagram");
        debug!(adapter = %self.ctx.name(), peer = %peer, reason = why, "Dropped malformed datagram.");
    }

    /// Counts a refused request by `reason` (a fixed snake_case name).
    fn reject(&self, reason: &'static str) {
        self.ctx.metrics().record_rejected(reason);
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

    /// Sends a CoAP message (over the peer's DTLS session on `coaps`).
    async fn send_bytes(&self, bytes: &[u8], peer: SocketAddr) {
        match &self.link {
            Link::Plain => self.send_datagram(bytes, peer).await,
            Link::Dtls(sessions) => {
                for record in sessions.seal(peer, bytes) {
                    self.send_datagram(&record, peer).await;
                }
            }
        }
    }

    async fn send_datagram(&self, bytes: &[u8], peer: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, peer).await {
            self.ctx.metrics().record_error();
            debug!(adapter = %self.ctx.name(), peer = %peer, error = %e, "Send failed.");
        }
    }

    async fn on_datagram(self: &Arc<Self>, buf: &[u8], peer: SocketAddr) {
        let packet = match convert::parse_datagram(buf) {
            Ok(p) => p,
            Err(m) => {
                self.malformed(peer, m.why);
                if let Some(mid) = m.reset {
                    self.send(&convert::empty(MessageType::Reset, mid), peer)
                        .await;
                }
                return;
            }
        };
        let mid = packet.header.message_id;
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
                self.reject("unexpected_message");
                self.send(&convert::empty(MessageType::Reset, mid), peer)
                    .await;
            }
            _ => self.reject("unexpected_message"),
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
        let dup = self.state.lock().dedup.check(peer, mid, Instant::now());
        if let Some(ex) = dup {
            self.ctx.metrics().incr("duplicates");
            // A duplicate of an exchange still in progress is ignored: its
            // request waits for the hub (at most ACK_TIMEOUT / 2), and is
            // then answered or acknowledged; the client retransmits later.
            if let Exchange::Answered(Some(bytes)) = ex {
                self.send_bytes(&bytes, peer).await;
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
                // The hub is applying back-pressure (a QoS 1 subscriber is
                // full): wait off the receive loop, in a bounded number of
                // tasks, so that other devices are still served.
                let limit = self.settings.limits.pending_responses;
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= limit {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    drop(publish);
                    self.reject("too_many_pending");
                    let mut resp = resp;
                    resp.header.code = MessageClass::Response(ResponseType::ServiceUnavailable);
                    resp.clear_all_options();
                    let resp =
                        convert::with_diagnostic(resp, "too many requests waiting for the hub");
                    self.answer(&packet, resp, peer).await;
                    return;
                }
                let slot = WaitSlot(self.clone());
                let me = self.clone();
                self.ctx.spawn(async move {
                    let _slot = slot;
                    me.answer_when_published(packet, publish, resp, peer).await;
                });
            }
        }
    }

    /// Answers a request whose publish the hub did not take at once:
    /// piggybacked if it does within ACK_TIMEOUT / 2, else an empty ACK now
    /// and a separate response later (RFC 7252 §5.2.2).
    async fn answer_when_published(
        self: Arc<Self>,
        packet: Packet,
        mut publish: PublishFuture,
        resp: Packet,
        peer: SocketAddr,
    ) {
        let mid = packet.header.message_id;
        let con = packet.header.get_type() == MessageType::Confirmable;
        let wait = self.settings.retransmission.ack_timeout / 2;
        tokio::select! {
            r = &mut publish => {
                let resp = self.published(r, resp);
                self.answer(&packet, resp, peer).await;
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        if con {
            let ack = convert::empty(MessageType::Acknowledgement, mid);
            let bytes = self.send(&ack, peer).await;
            self.state.lock().dedup.answer(peer, mid, bytes);
        }
        let r = publish.await;
        let mut resp = self.published(r, resp);
        resp.header.message_id = self.ids.next();
        if con {
            resp.header.set_type(MessageType::Confirmable);
            self.confirm(resp, peer).await;
        } else {
            self.send(&resp, peer).await;
        }
    }

    /// The response after a publish: `resp` (2.04) or 5.03 when the hub refused.
    fn published(&self, r: Result<(), PublishError>, mut resp: Packet) -> Packet {
        match r {
            Ok(()) => resp,
            Err(e) => {
                if e == PublishError::Quota {
                    self.reject("quota_exceeded");
                } else {
                    self.ctx.metrics().record_error();
                }
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
        let error = |reason: &'static str, code, text: &str| {
            self.reject(reason);
            Outcome::Reply(convert::with_diagnostic(reply(code), text))
        };

        if let Some(n) = req
            .options()
            .map(|(n, _)| *n)
            .find(|n| n % 2 == 1 && !KNOWN_OPTIONS.contains(n))
        {
            return error(
                "bad_option",
                ResponseType::BadOption,
                &format!("unknown critical option {n}"),
            );
        }
        let (Some(path), Some(query)) = (convert::uri_path(req), convert::uri_query(req)) else {
            return error(
                "bad_path",
                ResponseType::BadRequest,
                "Uri-Path or Uri-Query is not UTF-8",
            );
        };
        let (creds, query) = access::split_query(&query);
        let who = match self.requester(&creds, peer) {
            Ok(who) => who,
            Err((code, text)) => {
                // A 4.01 is counted by `authenticate` (`polyhub_auth_denied_total`).
                return Outcome::Reply(convert::with_diagnostic(reply(code), text));
            }
        };
        // A refusal by the ACL, counted by `authorize`.
        let forbidden = |what: &str| {
            Outcome::Reply(convert::with_diagnostic(
                reply(ResponseType::Forbidden),
                &format!("not authorized to {what}"),
            ))
        };
        let resource = match convert::resource_from_path(&path) {
            Ok(r) => r,
            Err(PathError::NotFound) => {
                return error("bad_path", ResponseType::NotFound, "no such resource")
            }
            Err(PathError::BadTopic(why)) => {
                return error("invalid_topic", ResponseType::BadRequest, &why)
            }
        };
        let MessageClass::Request(method) = req.header.code else {
            return error(
                "unexpected_message",
                ResponseType::BadRequest,
                "not a request",
            );
        };
        let Ok(block2) = Block::of(req, CoapOption::Block2) else {
            return error(
                "bad_option",
                ResponseType::BadOption,
                "malformed Block2 option",
            );
        };
        match (resource, method) {
            (Resource::WellKnownCore, RequestType::Get) => {
                self.discovery(&who, &query, block2, reply(ResponseType::Content))
            }
            (Resource::WellKnownCore, _) => error(
                "bad_method",
                ResponseType::MethodNotAllowed,
                "/.well-known/core is read-only",
            ),
            (Resource::Topic(filter), RequestType::Get) => self.get(
                req,
                peer,
                &who,
                filter,
                block2,
                reply(ResponseType::Content),
            ),
            (Resource::Topic(filter), RequestType::Post | RequestType::Put) => {
                let Some(topic) = filter.as_topic() else {
                    return error(
                        "invalid_topic",
                        ResponseType::BadRequest,
                        "cannot publish to a filter (`+`, `#`)",
                    );
                };
                if !self.authorized(&who, topic.as_str(), Action::Write) {
                    return forbidden("publish here");
                }
                self.publish_request(req, peer, &who, topic, &query, reply(ResponseType::Changed))
            }
            (Resource::Topic(filter), RequestType::Delete) => {
                let Some(topic) = filter.as_topic() else {
                    return error(
                        "invalid_topic",
                        ResponseType::BadRequest,
                        "cannot delete a filter (`+`, `#`)",
                    );
                };
                if !self.authorized(&who, topic.as_str(), Action::Write) {
                    return forbidden("delete here");
                }
                self.ctx.clear_last_value(&topic);
                Outcome::Reply(reply(ResponseType::Deleted))
            }
            _ => error(
                "bad_method",
                ResponseType::MethodNotAllowed,
                "use GET, POST, PUT or DELETE",
            ),
        }
    }

    /// One block of the `/.well-known/core` listing, from a page of the
    /// hub's topic index (see [`crate::discovery`]).
    fn discovery(
        &self,
        who: &Requester,
        query: &[String],
        block2: Option<Block>,
        mut resp: Packet,
    ) -> Outcome {
        let scope = Scope::of_query(query);
        let szx = self.szx_for(block2.map(|b| b.szx));
        let size = 1usize << (szx + 4);
        let num = block2.map_or(0, |b| b.num);
        let ctx = &self.ctx;
        let pages =
            |prefix: &str, after: Option<&str>, limit: usize| ctx.topics_page(prefix, after, limit);
        // With `[auth]`, a peer's listing holds what it may read, checked
        // quietly: a topic left out of a listing is not a denial.
        let viewer: Viewer = ctx.auth_enabled().then(|| {
            (
                who.identity.username().map(str::to_owned),
                who.client_id.clone(),
            )
        });
        let readable = |topic: &str| {
            viewer.is_none() || ctx.may(&who.identity, &who.client_id, topic, Action::Read)
        };
        let block = self.discovery.lock().block_for(
            &pages,
            &viewer,
            &readable,
            &scope,
            num as usize * size,
            size,
            Instant::now(),
        );
        let refuse = |mut resp: Packet, code, text: &str| {
            self.reject("bad_block");
            resp.header.code = MessageClass::Response(code);
            Outcome::Reply(convert::with_diagnostic(resp, text))
        };
        match block {
            Ok(b) => {
                convert::set_content_format(&mut resp, Some(40));
                if block2.is_some() || b.more {
                    let opt = Block {
                        num,
                        more: b.more,
                        szx,
                    };
                    resp.add_option(CoapOption::Block2, opt.encode());
                }
                resp.payload = b.payload;
                Outcome::Reply(resp)
            }
            Err(BlockError::PastTheEnd) => {
                refuse(resp, ResponseType::BadOption, "block number past the end")
            }
            Err(BlockError::OutOfOrder) => refuse(
                resp,
                ResponseType::BadRequest,
                "ask for the blocks of /.well-known/core in order",
            ),
        }
    }

    fn get(
        self: &Arc<Self>,
        req: &Packet,
        peer: SocketAddr,
        who: &Requester,
        filter: TopicFilter,
        block2: Option<Block>,
        mut resp: Packet,
    ) -> Outcome {
        let observe = match req.get_first_option(CoapOption::Observe) {
            None => None,
            Some(v) => match convert::decode_uint(v, 3) {
                Some(n) => Some(n),
                None => {
                    self.reject("bad_option");
                    return Outcome::Reply(convert::with_diagnostic(
                        {
                            resp.header.code = MessageClass::Response(ResponseType::BadOption);
                            resp
                        },
                        "malformed Observe option",
                    ));
                }
            },
        };
        // Observing a topic or filter asks to subscribe to it; reading a
        // value (and each notification, see `notify`) asks to read it. A
        // deregistration (`Observe: 1`) needs no right.
        let asked = match observe {
            Some(0) => Some(Action::Subscribe),
            Some(1) => None,
            _ => filter.as_topic().map(|_| Action::Read),
        };
        if let Some(action) = asked {
            if !self.authorized(who, filter.as_str(), action) {
                resp.header.code = MessageClass::Response(ResponseType::Forbidden);
                return Outcome::Reply(convert::with_diagnostic(
                    resp,
                    match action {
                        Action::Subscribe => "not authorized to observe this",
                        _ => "not authorized to read this",
                    },
                ));
            }
        }
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
                    who: Arc::new(who.clone()),
                    client: Some(std::sync::Arc::new(
                        self.ctx.client_connected(
                            polyhub_sdk::ClientInfo::new("coap-observe")
                                .with_client_id(filter.to_string())
                                .with_peer(peer.to_string()),
                        ),
                    )),
                };
                registered = self.register_observer(observer);
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
        // An observer of a topic it may subscribe to but not read gets no
        // value (as an MQTT subscriber gets no retained message).
        let value = filter
            .as_topic()
            .filter(|t| observe != Some(0) || self.authorized(who, t.as_str(), Action::Read))
            .and_then(|t| self.ctx.last_value(&t));
        if let Some(accept) = req.get_first_option(CoapOption::Accept) {
            let want = convert::decode_uint(accept, 2).map(|n| n as u16);
            let have = value.as_deref().and_then(convert::envelope_content_format);
            if value.is_some() && want != have {
                self.reject("not_acceptable");
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
                self.reject("invalid_topic");
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

    /// Who sent a request: on `coaps`, its session's PSK identity; on
    /// plain CoAP, with `[auth]`, the user its `u`/`p` items authenticate
    /// (anonymous without them). `Err` with the code and diagnostic of the
    /// refusal: 4.01 when they do not authenticate (or anonymous access is
    /// off), 4.00 for `u`/`p` on `coaps`.
    fn requester(
        &self,
        creds: &QueryCredentials,
        peer: SocketAddr,
    ) -> Result<Requester, (ResponseType, &'static str)> {
        let client_id = access::client_id(creds, peer);
        if let Link::Dtls(sessions) = &self.link {
            if creds.any() {
                self.reject("bad_option");
                return Err((
                    ResponseType::BadRequest,
                    "on coaps the user is the PSK identity: no u=, p=",
                ));
            }
            // Messages come only out of established sessions.
            let identity = sessions
                .identity(peer)
                .ok_or((ResponseType::Unauthorized, "no DTLS session"))?;
            return Ok(Requester {
                identity,
                client_id,
            });
        }
        let peer_name = peer.to_string();
        let identity = self
            .ctx
            .authenticate(
                creds.user.as_deref(),
                creds.password.as_deref().map(str::as_bytes),
                Some(&peer_name),
            )
            .map_err(|_| {
                let text = if creds.any() {
                    "wrong user name or password (u=, p=)"
                } else {
                    "authentication required: u=USER&p=PASSWORD"
                };
                (ResponseType::Unauthorized, text)
            })?;
        Ok(Requester {
            identity,
            client_id,
        })
    }

    /// Whether `who` may do `action` on `topic` (counted and logged when not).
    fn authorized(&self, who: &Requester, topic: &str, action: Action) -> bool {
        self.ctx
            .authorize(&who.identity, &who.client_id, topic, action)
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
        let entry = Block2Body {
            body,
            format,
            etag,
            stored: Instant::now(),
        };
        self.state
            .lock()
            .insert_block2((peer, key), entry, &self.settings.limits);
    }

    fn publish_request(
        &self,
        req: &Packet,
        peer: SocketAddr,
        who: &Requester,
        topic: Topic,
        query: &[String],
        mut resp: Packet,
    ) -> Outcome {
        let fail = |reason: &'static str, mut resp: Packet, code, text: &str| {
            self.reject(reason);
            resp.header.code = MessageClass::Response(code);
            Outcome::Reply(convert::with_diagnostic(resp, text))
        };
        let Ok(format) = convert::content_format(req) else {
            return fail(
                "bad_option",
                resp,
                ResponseType::BadOption,
                "malformed Content-Format",
            );
        };
        let Ok(block1) = Block::of(req, CoapOption::Block1) else {
            return fail(
                "bad_option",
                resp,
                ResponseType::BadOption,
                "malformed Block1 option",
            );
        };
        let max = self.settings.max_body;
        let limits = self.settings.limits;
        let too_large = |mut resp: Packet| {
            resp.add_option(CoapOption::Size1, convert::encode_uint(max as u32));
            fail(
                "too_large",
                resp,
                ResponseType::RequestEntityTooLarge,
                "body too large",
            )
        };
        let busy = |resp: Packet| {
            fail(
                "too_many_transfers",
                resp,
                ResponseType::ServiceUnavailable,
                "too many block-wise transfers",
            )
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
                    st.remove_assembly(&key);
                    st.expire_assemblies(now, limits.block_lifetime);
                    let mine = st.assemblies.keys().filter(|k| k.0 == peer).count();
                    if st.assemblies.len() >= limits.assemblies
                        || mine >= limits.assemblies_per_peer
                    {
                        return busy(resp);
                    }
                    st.assemblies.insert(
                        key.clone(),
                        Assembly {
                            body: Vec::new(),
                            updated: now,
                        },
                    );
                }
                let held = st.assembly_bytes;
                let Some(asm) = st.assemblies.get_mut(&key) else {
                    return fail(
                        "bad_block",
                        resp,
                        ResponseType::RequestEntityIncomplete,
                        "block 0 missing",
                    );
                };
                if b.offset() != asm.body.len() || (b.more && req.payload.len() != b.size()) {
                    st.remove_assembly(&key);
                    return fail(
                        "bad_block",
                        resp,
                        ResponseType::RequestEntityIncomplete,
                        "block out of sequence",
                    );
                }
                if asm.body.len() + req.payload.len() > max {
                    st.remove_assembly(&key);
                    return too_large(resp);
                }
                if held + req.payload.len() > limits.assembly_bytes {
                    st.remove_assembly(&key);
                    return busy(resp);
                }
                asm.body.extend_from_slice(&req.payload);
                asm.updated = now;
                st.assembly_bytes += req.payload.len();
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
                match st.remove_assembly(&key) {
                    Some(a) => a.body,
                    None => Vec::new(),
                }
            }
        };
        let mut origin = self.ctx.origin().with_peer(peer);
        if let Some(user) = who.identity.username() {
            origin = origin.with_user(user);
        }
        let envelope = convert::request_envelope(req, topic, query, payload, format, origin);
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
        self.ctx.spawn(async move {
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

    /// Registers an observer (the one place observations begin; see
    /// `deregister_locked` for where they end); false when refused.
    fn register_observer(self: &Arc<Self>, observer: Observer) -> bool {
        let (peer, filter) = (observer.peer, observer.filter.clone());
        let mut st = self.state.lock();
        match st.observers.register(observer) {
            Registered::New(new_filter) => {
                if new_filter {
                    self.watch_filter(&mut st, filter.clone());
                }
            }
            Registered::Replaced => {}
            Registered::Full | Registered::PeerFull => {
                self.reject("too_many_observers");
                warn!(adapter = %self.ctx.name(), peer = %peer, "Too many observers; registration refused.");
                return false;
            }
        }
        // The registration's own sequence number is 0.
        if let Some(o) = st.observers.get_mut(&(peer, filter)) {
            o.seq = 0;
        }
        true
    }

    fn deregister_locked(&self, st: &mut State, key: &ObserverKey) {
        if let Some(freed) = st.observers.deregister(key) {
            if let Some(t) = st.filters.remove(&freed) {
                t.cancel();
            }
            st.remove_block2(key);
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
                // Each notification is a read: one the observer may not
                // read is not sent (counted by `authorize`).
                let who = &o.who;
                if !self.ctx.authorize(
                    &who.identity,
                    &who.client_id,
                    envelope.topic.as_str(),
                    Action::Read,
                ) {
                    continue;
                }
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
                    st.insert_block2(
                        key.clone(),
                        Block2Body {
                            body: envelope.payload.clone(),
                            format,
                            etag: etag.clone(),
                            stored: now,
                        },
                        &self.settings.limits,
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
            self.ctx.spawn(async move {
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
        match &self.link {
            Link::Plain => self.try_send_datagram(bytes, peer),
            Link::Dtls(sessions) => {
                for record in sessions.seal(peer, bytes) {
                    self.try_send_datagram(&record, peer);
                }
            }
        }
    }

    fn try_send_datagram(&self, bytes: &[u8], peer: SocketAddr) {
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
