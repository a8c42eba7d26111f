//! The run loop of an XMPP adapter: one client session (tokio-xmpp's
//! `StanzaStream`, reconnected by [`reconnector`] with backoff), stanzas in,
//! subscribers' envelopes out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use polyhub_sdk::{
    Action, Adapter, AdapterContext, AdapterError, AdapterState, Envelope, Identity, QoS, Topic,
    TopicFilter,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::stanzastream::{Connection, Event, StanzaStream, StanzaToken, StreamEvent};
use tokio_xmpp::Stanza;
use tracing::{debug, info, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use polyhub_sdk::reconnect::{Next, Supervisor};

use crate::config::Settings;
use crate::connection::Connector;
use crate::convert::{self, Inbound};
use crate::stanza_guard::NS_REFUSED;
use crate::subscribers::{Change, Outgoing, Sent, Subscribers};

/// Depth of the stanza queues between the run loop and tokio-xmpp.
const STANZA_QUEUE: usize = 256;
/// Depth of the queue from the subscribers' forwarders to the run loop.
const OUTGOING_QUEUE: usize = 256;

/// A configured XMPP adapter.
#[derive(Debug)]
pub struct XmppAdapter {
    settings: Arc<Settings>,
}

impl XmppAdapter {
    /// An adapter for validated settings.
    pub fn new(settings: Settings) -> Self {
        XmppAdapter {
            settings: Arc::new(settings),
        }
    }
}

#[async_trait::async_trait]
impl Adapter for XmppAdapter {
    async fn run(self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError> {
        let connector = Connector::new(self.settings.clone(), Some(ctx.clone()))
            .map_err(AdapterError::protocol)?;
        let (fatal_tx, fatal_rx) = mpsc::channel(1);
        let supervisor = Supervisor::new(
            &ctx,
            connector.address().to_string(),
            self.settings.backoff.clone(),
        );
        let stream = StanzaStream::new(
            reconnector(connector, fatal_tx, supervisor, ctx.clone()),
            STANZA_QUEUE,
        );
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        let mut subscribers = Subscribers::new(ctx.clone(), out_tx, self.settings.queue_depth);
        subscribers.add_static_all(&self.settings.subscribers);
        let own = self.settings.jid.to_bare();
        let session = Session {
            ctx,
            settings: self.settings.clone(),
            own,
            stream,
            subscribers,
            online: false,
        };
        session.run(fatal_rx, out_rx).await
    }
}

/// Builds the closure tokio-xmpp calls for every (re)connection: it spawns a
/// task that retries under the [`Supervisor`] (backoff, state, counters,
/// logs) until a stream is authenticated. A refusal that retrying cannot
/// cure before the first success (a wrong password) is sent on `fatal`,
/// which stops the adapter.
fn reconnector(
    connector: Connector,
    fatal: mpsc::Sender<AdapterError>,
    supervisor: Supervisor,
    ctx: AdapterContext,
) -> Box<dyn FnMut(Option<String>, oneshot::Sender<Connection>) + Send + 'static> {
    // One attempt loop runs at a time; the lock only carries the
    // supervisor's state from one to the next.
    let supervisor = Arc::new(tokio::sync::Mutex::new(supervisor));
    Box::new(move |_location, slot| {
        let connector = connector.clone();
        let fatal = fatal.clone();
        let ctx = ctx.clone();
        let supervisor = supervisor.clone();
        ctx.clone().spawn(async move {
            let mut supervisor = supervisor.lock().await;
            let token: CancellationToken = ctx.shutdown().clone();
            loop {
                let attempt = tokio::select! {
                    r = connector.connect() => r,
                    _ = token.cancelled() => return park(slot),
                };
                match attempt {
                    Ok(conn) => {
                        supervisor.connected(&"");
                        let _ = slot.send(conn);
                        return;
                    }
                    Err(e) => match supervisor.lost(&e).await {
                        Ok(Next::Retry) => {}
                        Ok(Next::Shutdown) => return park(slot),
                        Err(stop) => {
                            let _ = fatal.try_send(stop);
                            return park(slot);
                        }
                    },
                }
            }
        });
    })
}

/// On shutdown while reconnecting: hold the slot until tokio-xmpp drops its
/// end (dropping ours would make its worker panic). Its worker may outlive
/// the adapter's run loop, so this holder is the one task not drained by
/// the hub: it does nothing but wait, and ends with the worker.
fn park(slot: oneshot::Sender<Connection>) {
    let mut slot = slot;
    tokio::spawn(async move { slot.closed().await });
}

struct Session {
    ctx: AdapterContext,
    settings: Arc<Settings>,
    own: BareJid,
    stream: StanzaStream,
    subscribers: Subscribers,
    online: bool,
}

impl Session {
    async fn run(
        mut self,
        mut fatal: mpsc::Receiver<AdapterError>,
        mut outgoing: mpsc::Receiver<Outgoing>,
    ) -> Result<(), AdapterError> {
        let token = self.ctx.shutdown().clone();
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                Some(stop) = fatal.recv() => return Err(stop),
                ev = self.stream.next() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => return Err(AdapterError::protocol("the XMPP stream ended")),
                },
                Some(out) = outgoing.recv(), if self.online => self.deliver(out).await,
            }
        }
        if self.online {
            let _ = tokio::time::timeout(Duration::from_secs(3), self.stream.close()).await;
        }
        Ok(())
    }

    async fn send(&mut self, stanza: impl Into<Stanza>) {
        self.send_tracked(stanza).await;
    }

    /// Sends a stanza and returns the token that tells whether tokio-xmpp
    /// wrote it out; `None` on shutdown.
    async fn send_tracked(&mut self, stanza: impl Into<Stanza>) -> Option<StanzaToken> {
        let stanza = Box::new(stanza.into());
        tokio::select! {
            token = self.stream.send(stanza) => Some(token),
            _ = self.ctx.shutdown().cancelled() => None,
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Stream(StreamEvent::Reset { bound_jid, .. }) => {
                info!(adapter = %self.ctx.name(), jid = %bound_jid, "XMPP session online.");
                self.online = true;
                self.ctx.set_state(AdapterState::Up, None);
                self.subscribers.reset_presence();
                self.send(Presence::available()).await;
                for jid in self.subscribers.jids() {
                    self.send(Presence::subscribe().with_to(jid)).await;
                }
            }
            Event::Stream(StreamEvent::Resumed) => {
                self.online = true;
                self.ctx.set_state(AdapterState::Up, None);
            }
            Event::Stream(StreamEvent::Suspended) => {
                self.online = false;
                self.ctx.set_state(
                    AdapterState::Down,
                    Some("connection to the XMPP server lost; reconnecting".into()),
                );
            }
            Event::Stanza(Stanza::Message(m)) => self.on_message(m).await,
            Event::Stanza(Stanza::Presence(p)) => self.on_presence(p).await,
            Event::Stanza(Stanza::Iq(iq)) => self.on_iq(iq).await,
        }
    }

    fn allowed(&self, jid: &BareJid) -> bool {
        convert::allowed(&self.settings.allow, jid)
    }

    /// Who `jid` is for `[auth]`: the user of its `users` entry or its
    /// local part (see [`convert::user_of`]), else anonymous; `None` when
    /// anonymous access is off.
    fn identity_of(&self, jid: &BareJid) -> Option<Identity> {
        if !self.ctx.auth_enabled() {
            return Some(Identity::anonymous());
        }
        match convert::user_of(&self.settings.users, self.own.domain().as_str(), jid) {
            Some(user) => Some(Identity::user(user)),
            None => self
                .ctx
                .authenticate(None, None, Some(&jid.to_string()))
                .ok(),
        }
    }

    /// Whether `[auth]` lets `jid` do `action` on `topic` (a filter for
    /// [`Action::Subscribe`]). The client id of `%c` patterns is the bare
    /// JID.
    fn may(&self, jid: &BareJid, topic: &str, action: Action) -> bool {
        if !self.ctx.auth_enabled() {
            return true;
        }
        match self.identity_of(jid) {
            Some(identity) => self
                .ctx
                .authorize(&identity, &jid.to_string(), topic, action),
            None => false,
        }
    }

    /// Whether an envelope on `topic` may go to subscriber `jid`: always
    /// for a static subscription of the config, else when `jid` may read it.
    fn may_receive(&self, jid: &BareJid, topic: &Topic) -> bool {
        self.subscribers.static_match(jid, topic) || self.may(jid, topic.as_str(), Action::Read)
    }

    async fn refuse(&mut self, to: Jid, id: Option<xmpp_parsers::message::Id>) {
        self.ctx.metrics().incr("rejected_senders");
        self.ctx.reject(
            "not_allowed",
            Some(&to.to_string()),
            &"sender not in `allow`",
        );
        let mut m = Message::new_with_type(MessageType::Error, Some(to));
        m.id = id;
        m.payloads.push(
            StanzaError::new(
                ErrorType::Auth,
                DefinedCondition::Forbidden,
                "en",
                "this hub does not accept messages from you",
            )
            .into(),
        );
        self.send(m).await;
    }

    async fn reply(&mut self, to: Jid, text: &str) {
        self.send(convert::text_message(to, text)).await;
    }

    async fn on_message(&mut self, msg: Message) {
        let Some(from) = msg.from.clone() else {
            return;
        };
        let bare = from.to_bare();
        if bare == self.own {
            return;
        }
        let action = convert::classify_message(&msg);
        if action == Inbound::Ignore {
            return;
        }
        if !self.allowed(&bare) {
            debug!(adapter = %self.ctx.name(), from = %from, "Refused message from a sender not in `allow`.");
            return self.refuse(from, msg.id.clone()).await;
        }
        match action {
            Inbound::Ignore => {}
            Inbound::Reply(text) => self.reply(from, &text).await,
            Inbound::Refused(reason, text) => {
                self.ctx.metrics().record_rejected(reason);
                debug!(adapter = %self.ctx.name(), from = %from, reason, "Refused a malformed message.");
                if let Some(text) = text {
                    self.reply(from, &text).await;
                }
            }
            Inbound::Publish { topic, payload } => {
                let env = convert::publish_envelope(topic, payload);
                let topic = env.topic.clone();
                if !self.publish(env, &from, false).await {
                    let text = format!("polyhub: you may not publish to {topic}");
                    self.reply(from, &text).await;
                }
            }
            Inbound::Readings(readings) => {
                for r in &readings {
                    match convert::reading_envelope(&bare, r, false) {
                        Some(env) => {
                            self.publish(env, &from, self.settings.retain_readings)
                                .await;
                        }
                        None => self.ctx.metrics().record_rejected("invalid_reading"),
                    }
                }
            }
            Inbound::Control(values) => self.publish_control(&from, &values).await,
            Inbound::Subscribe(filter) => self.subscribe(from, filter).await,
            Inbound::Unsubscribe(filter) => {
                let text = match self.subscribers.unsubscribe(&bare, &filter) {
                    Change::Done => format!("polyhub: unsubscribed from {filter}"),
                    Change::Static => format!(
                        "polyhub: {filter} is a subscription from the hub's config; it stays"
                    ),
                    _ => format!("polyhub: you were not subscribed to {filter}"),
                };
                self.reply(from, &text).await;
            }
            Inbound::List => {
                let filters = self.subscribers.filters(&bare);
                let text = if filters.is_empty() {
                    "polyhub: no subscriptions".to_owned()
                } else {
                    let list: Vec<&str> = filters.iter().map(|f| f.as_str()).collect();
                    format!("polyhub: subscribed to {}", list.join(" "))
                };
                self.reply(from, &text).await;
            }
        }
    }

    async fn subscribe(&mut self, from: Jid, filter: TopicFilter) {
        let bare = from.to_bare();
        if !self.may(&bare, filter.as_str(), Action::Subscribe) {
            let text = format!("polyhub: you may not subscribe to {filter}");
            return self.reply(from, &text).await;
        }
        let was_known = self.subscribers.contains(&bare);
        let text = match self.subscribers.subscribe(&bare, &filter) {
            Change::Done => format!("polyhub: subscribed to {filter}"),
            Change::Unchanged | Change::Static => {
                format!("polyhub: already subscribed to {filter}")
            }
            Change::Failed => "polyhub: the hub is shutting down".to_owned(),
        };
        self.reply(from, &text).await;
        if !was_known {
            // To learn when the subscriber goes offline.
            self.send(Presence::subscribe().with_to(bare.clone())).await;
        }
        // Like MQTT: a new subscription gets the retained values at once.
        for env in self.ctx.retained(&filter) {
            if self.may_receive(&bare, &env.topic) {
                self.send(convert::outbound_message(&bare, &env)).await;
            }
        }
    }

    async fn publish_control(&mut self, from: &Jid, values: &[convert::Reading]) {
        let bare = from.to_bare();
        for v in values {
            if let Some(env) = convert::reading_envelope(&bare, v, true) {
                self.publish(env, from, false).await;
            }
        }
    }

    /// Publishes into the hub, then hands the envelope to this adapter's own
    /// subscribers (the router never sends it back here). False when
    /// `[auth]` refused the sender `write` on the topic (dropped, counted).
    async fn publish(&mut self, env: Envelope, from: &Jid, retain: bool) -> bool {
        let bare = from.to_bare();
        if !self.may(&bare, env.topic.as_str(), Action::Write) {
            return false;
        }
        let origin = self
            .ctx
            .origin()
            .with_peer(from)
            .with_user(bare.to_string());
        let env = env
            .with_origin(origin)
            .with_retain(retain)
            .with_qos(QoS::AtMostOnce);
        let env = Arc::new(env);
        if let Err(e) = self.ctx.publish((*env).clone()).await {
            self.ctx.metrics().record_error();
            warn!(adapter = %self.ctx.name(), from = %from, error = %e, "Hub refused an envelope.");
            return true;
        }
        self.subscribers.record_in(&bare);
        for to in self.subscribers.local_targets(&env.topic, &bare) {
            self.deliver(Outgoing {
                to,
                envelope: env.clone(),
                done: None,
            })
            .await;
        }
        true
    }

    /// Sends `out` to its subscriber. A subscriber of the config (durable)
    /// gets it whatever its presence (the server keeps messages for an
    /// offline JID) and hears back through `out.done`; a dynamic one that
    /// went offline does not (dropped, counted).
    async fn deliver(&mut self, out: Outgoing) {
        let Outgoing { to, envelope, done } = out;
        let skip = |done: Option<oneshot::Sender<Sent>>| {
            if let Some(done) = done {
                let _ = done.send(Sent::Skipped);
            }
        };
        if !self.may_receive(&to, &envelope.topic) {
            return skip(done);
        }
        match self.subscribers.presence(&to) {
            None => return skip(done),
            Some(crate::subscribers::Presence::Offline) if !self.subscribers.is_durable(&to) => {
                self.ctx.metrics().record_drop();
                self.ctx.metrics().incr("offline_skipped");
                return skip(done);
            }
            Some(_) => {}
        }
        let msg = convert::outbound_message(&to, &envelope);
        let token = self.send_tracked(msg).await;
        if let (Some(done), Some(token)) = (done, token) {
            let _ = done.send(Sent::Queued(token));
        }
    }

    async fn on_presence(&mut self, p: Presence) {
        let Some(from) = p.from.clone() else {
            return;
        };
        let bare = from.to_bare();
        if bare == self.own {
            return;
        }
        let resource = from.resource().map(|r| r.to_string());
        match p.type_ {
            PresenceType::None => {
                let Some(filters) = self
                    .subscribers
                    .available(&bare, resource.as_deref().unwrap_or(""))
                else {
                    return;
                };
                debug!(adapter = %self.ctx.name(), subscriber = %bare, "Subscriber online.");
                let mut seen = HashSet::new();
                for f in &filters {
                    for env in self.ctx.retained(f) {
                        if seen.insert(env.topic.clone()) && self.may_receive(&bare, &env.topic) {
                            self.send(convert::outbound_message(&bare, &env)).await;
                        }
                    }
                }
            }
            PresenceType::Unavailable | PresenceType::Error => {
                if self.subscribers.unavailable(&bare, resource.as_deref()) {
                    debug!(adapter = %self.ctx.name(), subscriber = %bare, "Subscriber offline.");
                    self.ctx.metrics().incr("subscribers_gone_offline");
                }
            }
            PresenceType::Subscribe => {
                if self.allowed(&bare) {
                    self.send(Presence::subscribed().with_to(bare.clone()))
                        .await;
                    self.send(Presence::subscribe().with_to(bare)).await;
                } else {
                    self.ctx.metrics().incr("rejected_senders");
                    self.ctx.reject(
                        "not_allowed",
                        Some(&bare.to_string()),
                        &"presence subscription from a sender not in `allow`",
                    );
                    self.send(Presence::new(PresenceType::Unsubscribed).with_to(bare))
                        .await;
                }
            }
            PresenceType::Probe
            | PresenceType::Subscribed
            | PresenceType::Unsubscribe
            | PresenceType::Unsubscribed => {}
        }
    }

    async fn on_iq(&mut self, iq: Iq) {
        match iq {
            Iq::Get {
                from, id, payload, ..
            } => {
                let reply = if payload.is("refused", NS_REFUSED) {
                    refused_reply(from, id)
                } else if payload.is("ping", ns::PING) {
                    result(from, id, None)
                } else if payload.is("query", ns::DISCO_INFO) {
                    result(from, id, Some(convert::disco_info().into()))
                } else {
                    error(
                        from,
                        id,
                        ErrorType::Cancel,
                        DefinedCondition::ServiceUnavailable,
                    )
                };
                self.send(reply).await;
            }
            Iq::Set {
                from, id, payload, ..
            } => {
                let reply = if payload.is("refused", NS_REFUSED) {
                    refused_reply(from, id)
                } else if payload.is("set", convert::NS_CONTROL) {
                    match from.as_ref().map(|f| (f.clone(), f.to_bare())) {
                        Some((full, bare)) if self.allowed(&bare) => {
                            let values = convert::parse_control(&payload);
                            if values.is_empty() {
                                error(from, id, ErrorType::Modify, DefinedCondition::BadRequest)
                            } else {
                                self.publish_control(&full, &values).await;
                                result(from, id, Some(convert::control_response()))
                            }
                        }
                        _ => {
                            self.ctx.metrics().incr("rejected_senders");
                            self.ctx.reject(
                                "not_allowed",
                                from.as_ref().map(|f| f.to_string()).as_deref(),
                                &"control IQ from a sender not in `allow`",
                            );
                            error(from, id, ErrorType::Auth, DefinedCondition::Forbidden)
                        }
                    }
                } else {
                    error(
                        from,
                        id,
                        ErrorType::Cancel,
                        DefinedCondition::ServiceUnavailable,
                    )
                };
                self.send(reply).await;
            }
            Iq::Result { .. } | Iq::Error { .. } => {}
        }
    }
}

/// The answer to an `<iq>` the stanza guard refused (its placeholder): the
/// sender learns it was too deep or too large instead of waiting.
fn refused_reply(to: Option<Jid>, id: String) -> Iq {
    Iq::Error {
        from: None,
        to,
        id,
        error: StanzaError::new(
            ErrorType::Modify,
            DefinedCondition::PolicyViolation,
            "en",
            "the hub refused this stanza: nested too deep or too large",
        ),
        payload: None,
    }
}

fn result(to: Option<Jid>, id: String, payload: Option<Element>) -> Iq {
    Iq::Result {
        from: None,
        to,
        id,
        payload,
    }
}

fn error(to: Option<Jid>, id: String, type_: ErrorType, cond: DefinedCondition) -> Iq {
    Iq::Error {
        from: None,
        to,
        id,
        error: StanzaError::new(type_, cond, "en", "not supported by this hub"),
        payload: None,
    }
}
