//! The XMPP subscribers of one adapter: their filters (static from the
//! config, dynamic from `subscribe` messages), their presence, and one hub
//! subscription per subscriber whose envelopes a forwarder task hands to the
//! run loop. The hub's trie router does the matching; the local scan in
//! [`Subscribers::local_targets`] only serves envelopes that came in through
//! this same adapter, which the router never hands back to it.
//!
//! A subscriber of the config (static, trusted) reads a durable queue
//! (`xmpp/{jid}`): its forwarder hands out one envelope at a time and
//! acknowledges it once the run loop put the stanza on the XMPP connection
//! and tokio-xmpp wrote it out ([`StanzaStage::Sent`]; the server stores
//! messages for offline JIDs itself); a stanza that failed or was dropped
//! with the connection is handed out again ([`Subscription::redeliver`]).
//! Subscribers made at run time by a `subscribe` message stay in memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use polyhub_sdk::{AdapterContext, DurableOptions, Envelope, Subscription, Topic, TopicFilter};
use tokio::sync::{mpsc, oneshot};
use tokio_xmpp::stanzastream::{StanzaStage, StanzaState, StanzaToken};
use xmpp_parsers::jid::BareJid;

/// Pause before a stanza that could not be sent is handed out again.
const RESEND_PAUSE: Duration = Duration::from_millis(200);

/// An envelope to send to one subscriber.
#[derive(Debug)]
pub struct Outgoing {
    /// Who gets it.
    pub to: BareJid,
    /// What.
    pub envelope: Arc<Envelope>,
    /// For a durable subscriber: what became of it ([`Sent`]).
    pub done: Option<oneshot::Sender<Sent>>,
}

/// What the run loop did with an [`Outgoing`] of a durable subscriber.
pub enum Sent {
    /// Handed to the connection: the token says whether it was written.
    Queued(StanzaToken),
    /// Not to be sent (not a subscriber any more, `[auth]` refused it):
    /// done with it.
    Skipped,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sent::Queued(token) => write!(f, "Queued({:?})", token.state()),
            Sent::Skipped => f.write_str("Skipped"),
        }
    }
}

/// The durable queue name of a static subscriber.
pub fn queue_name(jid: &BareJid) -> String {
    format!("xmpp/{jid}")
}

/// What the hub knows of a subscriber's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Nothing heard yet (no presence subscription, or a new session): sent to.
    Unknown,
    /// At least one available resource.
    Online,
    /// Every resource went unavailable: not sent to.
    Offline,
}

enum Control {
    Add(TopicFilter),
    Remove(TopicFilter),
}

struct Entry {
    static_filters: Vec<TopicFilter>,
    dynamic: Vec<TopicFilter>,
    resources: HashSet<String>,
    presence: Presence,
    control: mpsc::Sender<Control>,
    client: std::sync::Arc<polyhub_sdk::ClientHandle>,
    /// Reads a durable queue (a subscriber of the config).
    durable: bool,
}

impl Entry {
    fn filters(&self) -> impl Iterator<Item = &TopicFilter> {
        self.static_filters.iter().chain(
            self.dynamic
                .iter()
                .filter(|f| !self.static_filters.contains(f)),
        )
    }
}

/// Result of a `subscribe` or `unsubscribe` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Done.
    Done,
    /// Nothing to do (already subscribed / not subscribed).
    Unchanged,
    /// A static subscription from the config: not removable.
    Static,
    /// The hub refused (shutting down).
    Failed,
}

/// Every subscriber of one adapter.
pub struct Subscribers {
    ctx: AdapterContext,
    out: mpsc::Sender<Outgoing>,
    depth: Option<usize>,
    map: HashMap<BareJid, Entry>,
}

impl Subscribers {
    /// An empty table whose forwarders send into `out`.
    pub fn new(ctx: AdapterContext, out: mpsc::Sender<Outgoing>, depth: Option<usize>) -> Self {
        Subscribers {
            ctx,
            out,
            depth,
            map: HashMap::new(),
        }
    }

    fn entry(&mut self, jid: &BareJid) -> Option<&mut Entry> {
        if !self.map.contains_key(jid) {
            let sub = self
                .ctx
                .subscribe_with_depth(Vec::<TopicFilter>::new(), self.depth)
                .ok()?;
            self.insert(jid, sub, false);
        }
        self.map.get_mut(jid)
    }

    fn insert(&mut self, jid: &BareJid, sub: Subscription, durable: bool) {
        let (control, rx) = mpsc::channel(64);
        let info = polyhub_sdk::ClientInfo::new("xmpp").with_client_id(jid.to_string());
        let client = std::sync::Arc::new(self.ctx.client_connected(info));
        let out = self.out.clone();
        if durable {
            self.ctx
                .spawn(forward_durable(sub, rx, jid.clone(), out, client.clone()));
        } else {
            self.ctx
                .spawn(forward(sub, rx, jid.clone(), out, client.clone()));
        }
        self.map.insert(
            jid.clone(),
            Entry {
                static_filters: Vec::new(),
                dynamic: Vec::new(),
                resources: HashSet::new(),
                presence: Presence::Unknown,
                control,
                client,
                durable,
            },
        );
    }

    /// Adds the subscriptions from the config: one durable queue per JID
    /// (`xmpp/{jid}`), which finds what an earlier run left in it.
    pub fn add_static_all(&mut self, subscribers: &[(BareJid, TopicFilter)]) {
        let mut jids: Vec<&BareJid> = Vec::new();
        for (jid, _) in subscribers {
            if !jids.contains(&jid) {
                jids.push(jid);
            }
        }
        for jid in jids {
            let filters: Vec<TopicFilter> = subscribers
                .iter()
                .filter(|(j, _)| j == jid)
                .map(|(_, f)| f.clone())
                .collect();
            let queue = queue_name(jid);
            match self
                .ctx
                .subscribe_durable(&queue, filters.clone(), DurableOptions::default())
            {
                Ok(sub) => {
                    self.insert(jid, sub, true);
                    if let Some(e) = self.map.get_mut(jid) {
                        for f in filters {
                            if !e.static_filters.contains(&f) {
                                e.static_filters.push(f);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(adapter = %self.ctx.name(), subscriber = %jid, queue, error = %e, "Could not subscribe a static subscriber.");
                }
            }
        }
    }

    /// Whether `jid` is a subscriber of the config, whose envelopes go to
    /// the server whatever its presence (the server keeps them for it).
    pub fn is_durable(&self, jid: &BareJid) -> bool {
        self.map.get(jid).is_some_and(|e| e.durable)
    }

    /// A `subscribe FILTER` from `jid`.
    pub fn subscribe(&mut self, jid: &BareJid, filter: &TopicFilter) -> Change {
        let Some(e) = self.entry(jid) else {
            return Change::Failed;
        };
        if e.dynamic.contains(filter) || e.static_filters.contains(filter) {
            return Change::Unchanged;
        }
        e.dynamic.push(filter.clone());
        match e.control.try_send(Control::Add(filter.clone())) {
            Ok(()) => Change::Done,
            Err(_) => Change::Failed,
        }
    }

    /// An `unsubscribe FILTER` from `jid`.
    pub fn unsubscribe(&mut self, jid: &BareJid, filter: &TopicFilter) -> Change {
        let Some(e) = self.map.get_mut(jid) else {
            return Change::Unchanged;
        };
        if e.static_filters.contains(filter) {
            return Change::Static;
        }
        let Some(pos) = e.dynamic.iter().position(|f| f == filter) else {
            return Change::Unchanged;
        };
        e.dynamic.remove(pos);
        let _ = e.control.try_send(Control::Remove(filter.clone()));
        if e.dynamic.is_empty() && e.static_filters.is_empty() && !e.durable {
            // Dropping the control sender ends the forwarder and its hub
            // subscription.
            self.map.remove(jid);
        }
        Change::Done
    }

    /// The filters of `jid`, static first.
    pub fn filters(&self, jid: &BareJid) -> Vec<TopicFilter> {
        self.map
            .get(jid)
            .map(|e| e.filters().cloned().collect())
            .unwrap_or_default()
    }

    /// Every subscriber.
    pub fn jids(&self) -> Vec<BareJid> {
        self.map.keys().cloned().collect()
    }

    /// Counts a message from `jid` on its client entry, if it is a subscriber.
    pub fn record_in(&self, jid: &BareJid) {
        if let Some(e) = self.map.get(jid) {
            e.client.record_in();
        }
    }

    /// Whether one of `jid`'s static filters (from the config, trusted)
    /// matches `topic`: then no `[auth]` read check applies.
    pub fn static_match(&self, jid: &BareJid, topic: &Topic) -> bool {
        self.map
            .get(jid)
            .is_some_and(|e| e.static_filters.iter().any(|f| f.matches(topic)))
    }

    /// Whether `jid` has any subscription.
    pub fn contains(&self, jid: &BareJid) -> bool {
        self.map.contains_key(jid)
    }

    /// Subscribers other than `except` with a filter matching `topic`, for
    /// envelopes that came in through this adapter.
    pub fn local_targets(&self, topic: &Topic, except: &BareJid) -> Vec<BareJid> {
        self.map
            .iter()
            .filter(|(jid, e)| *jid != except && e.filters().any(|f| f.matches(topic)))
            .map(|(jid, _)| jid.clone())
            .collect()
    }

    /// The presence state of `jid`.
    pub fn presence(&self, jid: &BareJid) -> Option<Presence> {
        self.map.get(jid).map(|e| e.presence)
    }

    /// An available presence from `jid`/`resource`. Returns the subscriber's
    /// filters when it has just come online (it gets their retained values).
    pub fn available(&mut self, jid: &BareJid, resource: &str) -> Option<Vec<TopicFilter>> {
        let e = self.map.get_mut(jid)?;
        e.resources.insert(resource.to_owned());
        let was = e.presence;
        e.presence = Presence::Online;
        (was != Presence::Online).then(|| e.filters().cloned().collect())
    }

    /// An unavailable presence from `jid`/`resource`; true when the
    /// subscriber has just gone offline.
    pub fn unavailable(&mut self, jid: &BareJid, resource: Option<&str>) -> bool {
        let Some(e) = self.map.get_mut(jid) else {
            return false;
        };
        match resource {
            Some(r) => {
                e.resources.remove(r);
            }
            None => e.resources.clear(),
        }
        if e.resources.is_empty() && e.presence != Presence::Offline {
            e.presence = Presence::Offline;
            return true;
        }
        false
    }

    /// Forgets presence (new session: the server sends it again).
    pub fn reset_presence(&mut self) {
        for e in self.map.values_mut() {
            e.resources.clear();
            e.presence = Presence::Unknown;
        }
    }
}

/// Hands a subscriber's envelopes to the run loop; applies filter changes.
/// Ends when the control sender is dropped or the hub shuts down.
async fn forward(
    mut sub: polyhub_sdk::Subscription,
    mut control: mpsc::Receiver<Control>,
    jid: BareJid,
    out: mpsc::Sender<Outgoing>,
    client: std::sync::Arc<polyhub_sdk::ClientHandle>,
) {
    loop {
        tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(Control::Add(f)) => {
                    if let Err(e) = sub.add(&f) {
                        tracing::warn!(subscriber = %jid, filter = %f, error = %e, "Could not subscribe.");
                    }
                }
                Some(Control::Remove(f)) => {
                    sub.remove(&f);
                }
                None => return,
            },
            env = sub.recv() => match env {
                Some(envelope) => {
                    let to = jid.clone();
                    if out.send(Outgoing { to, envelope, done: None }).await.is_err() {
                        return;
                    }
                    client.record_out();
                }
                None => return,
            },
        }
    }
}

/// Applies a filter change to `sub`; false when the control sender is gone.
fn apply(sub: &Subscription, c: Option<Control>, jid: &BareJid) -> bool {
    match c {
        Some(Control::Add(f)) => {
            if let Err(e) = sub.add(&f) {
                tracing::warn!(subscriber = %jid, filter = %f, error = %e, "Could not subscribe.");
            }
            true
        }
        Some(Control::Remove(f)) => {
            sub.remove(&f);
            true
        }
        None => false,
    }
}

/// The forwarder of a static subscriber's durable queue: one envelope at a
/// time to the run loop, acknowledged once its stanza was written to the
/// connection, handed out again (after [`RESEND_PAUSE`]) when it was not.
/// Ends when the control sender is dropped or the hub shuts down; what is
/// not acknowledged then stays in the queue.
async fn forward_durable(
    mut sub: Subscription,
    mut control: mpsc::Receiver<Control>,
    jid: BareJid,
    out: mpsc::Sender<Outgoing>,
    client: std::sync::Arc<polyhub_sdk::ClientHandle>,
) {
    loop {
        let envelope = tokio::select! {
            biased;
            c = control.recv() => {
                if !apply(&sub, c, &jid) {
                    return;
                }
                continue;
            }
            env = sub.recv() => match env {
                Some(envelope) => envelope,
                None => return,
            },
        };
        let (done, result) = oneshot::channel();
        let outgoing = Outgoing {
            to: jid.clone(),
            envelope: envelope.clone(),
            done: Some(done),
        };
        if out.send(outgoing).await.is_err() {
            return;
        }
        // The run loop takes it once the session is online.
        let sent = match result.await {
            Ok(Sent::Skipped) => true,
            Ok(Sent::Queued(mut token)) => match token.wait_for(StanzaStage::Sent).await {
                Some(StanzaState::Sent { .. } | StanzaState::Acked { .. }) => {
                    client.record_out();
                    true
                }
                _ => false,
            },
            // The run loop is gone (shutdown).
            Err(_) => false,
        };
        if sent {
            sub.ack(&envelope);
        } else {
            tracing::debug!(subscriber = %jid, topic = %envelope.topic, "Stanza not written to the connection; it goes again.");
            sub.redeliver();
            tokio::time::sleep(RESEND_PAUSE).await;
        }
    }
}
