//! The XMPP subscribers of one adapter: their filters (static from the
//! config, dynamic from `subscribe` messages), their presence, and one hub
//! subscription per subscriber whose envelopes a forwarder task hands to the
//! run loop. The hub's trie router does the matching; the local scan in
//! [`Subscribers::local_targets`] only serves envelopes that came in through
//! this same adapter, which the router never hands back to it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use polyhub_sdk::{AdapterContext, Envelope, Topic, TopicFilter};
use tokio::sync::mpsc;
use xmpp_parsers::jid::BareJid;

/// An envelope to send to one subscriber.
#[derive(Debug)]
pub struct Outgoing {
    /// Who gets it.
    pub to: BareJid,
    /// What.
    pub envelope: Arc<Envelope>,
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
            let (control, rx) = mpsc::channel(64);
            let info = polyhub_sdk::ClientInfo::new("xmpp").with_client_id(jid.to_string());
            let client = std::sync::Arc::new(self.ctx.client_connected(info));
            let fwd = forward(sub, rx, jid.clone(), self.out.clone(), client.clone());
            self.ctx.spawn(fwd);
            self.map.insert(
                jid.clone(),
                Entry {
                    static_filters: Vec::new(),
                    dynamic: Vec::new(),
                    resources: HashSet::new(),
                    presence: Presence::Unknown,
                    control,
                    client,
                },
            );
        }
        self.map.get_mut(jid)
    }

    /// Adds a subscription from the config.
    pub fn add_static(&mut self, jid: &BareJid, filter: &TopicFilter) -> Change {
        let Some(e) = self.entry(jid) else {
            return Change::Failed;
        };
        if e.static_filters.contains(filter) {
            return Change::Unchanged;
        }
        e.static_filters.push(filter.clone());
        let _ = e.control.try_send(Control::Add(filter.clone()));
        Change::Done
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
        if e.dynamic.is_empty() && e.static_filters.is_empty() {
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
                    if out.send(Outgoing { to, envelope }).await.is_err() {
                        return;
                    }
                    client.record_out();
                }
                None => return,
            },
        }
    }
}
