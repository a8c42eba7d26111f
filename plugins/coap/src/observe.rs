//! Observers (RFC 7641): who observes which topic or filter, with which
//! token and sequence number, and a small trie from filters to the topics
//! they match, so that an envelope finds its observers without a scan.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use polyhub_sdk::{Topic, TopicFilter};

/// An observation is identified by the observer's endpoint and the resource
/// (RFC 7641 §4.1: a new registration for the same pair replaces the old).
pub type ObserverKey = (SocketAddr, TopicFilter);

/// One registered observer.
#[derive(Debug, Clone)]
pub struct Observer {
    /// The client's endpoint.
    pub peer: SocketAddr,
    /// The token of its registration, echoed in every notification.
    pub token: Vec<u8>,
    /// The observed topic or filter.
    pub filter: TopicFilter,
    /// Last Observe sequence number sent (24 bits, wraps).
    pub seq: u32,
    /// When the last confirmable notification was sent.
    pub last_con: Instant,
    /// Whether a confirmable notification awaits its ACK.
    pub con_in_flight: bool,
    /// Block size exponent the client asked for, if any.
    pub szx: Option<u8>,
    /// Who registered it: each notification is checked against its read
    /// rights.
    pub who: std::sync::Arc<crate::access::Requester>,
    /// Its entry in the hub's client registry (dropped with the observer).
    pub client: Option<std::sync::Arc<polyhub_sdk::ClientHandle>>,
}

impl Observer {
    /// The next Observe value (RFC 7641 §4.4: increasing, 24 bits).
    pub fn next_seq(&mut self) -> u32 {
        self.seq = (self.seq + 1) & 0x00FF_FFFF;
        self.seq
    }
}

/// Filters as a trie keyed by level, `+` and `#` as ordinary keys.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    filter: Option<TopicFilter>,
}

impl Node {
    fn insert(&mut self, filter: &TopicFilter) {
        let mut node = self;
        for level in filter.levels() {
            node = node.children.entry(level.to_owned()).or_default();
        }
        node.filter = Some(filter.clone());
    }

    /// Removes `levels`' filter; true when this node became empty.
    fn remove(&mut self, levels: &[&str]) -> bool {
        match levels.split_first() {
            None => self.filter = None,
            Some((first, rest)) => {
                if let Some(child) = self.children.get_mut(*first) {
                    if child.remove(rest) {
                        self.children.remove(*first);
                    }
                }
            }
        }
        self.filter.is_none() && self.children.is_empty()
    }

    fn collect(&self, levels: &[&str], root: bool, system: bool, out: &mut Vec<TopicFilter>) {
        let wild_ok = !(root && system);
        if wild_ok {
            if let Some(f) = self.children.get("#").and_then(|n| n.filter.as_ref()) {
                out.push(f.clone());
            }
        }
        match levels.split_first() {
            None => {
                if let Some(f) = &self.filter {
                    out.push(f.clone());
                }
            }
            Some((first, rest)) => {
                if let Some(n) = self.children.get(*first) {
                    n.collect(rest, false, system, out);
                }
                if wild_ok && *first != "+" {
                    if let Some(n) = self.children.get("+") {
                        n.collect(rest, false, system, out);
                    }
                }
            }
        }
    }
}

/// Every observer, indexed by key, by filter and by the message ids of
/// recent notifications (to find the observer a RST is about).
#[derive(Debug)]
pub struct Observers {
    observers: HashMap<ObserverKey, Observer>,
    by_filter: HashMap<TopicFilter, HashSet<ObserverKey>>,
    trie: Node,
    sent: HashMap<(SocketAddr, u16), ObserverKey>,
    sent_order: VecDeque<(SocketAddr, u16)>,
    per_peer: HashMap<SocketAddr, usize>,
    max: usize,
    max_per_peer: usize,
}

/// How many notification message ids are remembered for RST matching.
const SENT_MEMORY: usize = 8192;

/// What registering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new observer; `true` when its filter is new to the adapter.
    New(bool),
    /// Replaced an earlier registration of the same peer and resource.
    Replaced,
    /// Refused: too many observers.
    Full,
    /// Refused: this peer holds too many observers.
    PeerFull,
}

impl Observers {
    /// An empty registry holding at most `max` observers, `max_per_peer`
    /// of them from one peer.
    pub fn new(max: usize, max_per_peer: usize) -> Self {
        Observers {
            observers: HashMap::new(),
            by_filter: HashMap::new(),
            trie: Node::default(),
            sent: HashMap::new(),
            sent_order: VecDeque::new(),
            per_peer: HashMap::new(),
            max,
            max_per_peer,
        }
    }

    /// Registers (or re-registers) an observer.
    pub fn register(&mut self, observer: Observer) -> Registered {
        let key = (observer.peer, observer.filter.clone());
        if let Some(old) = self.observers.get_mut(&key) {
            old.token = observer.token;
            old.szx = observer.szx;
            return Registered::Replaced;
        }
        if self.observers.len() >= self.max {
            return Registered::Full;
        }
        let held = self.per_peer.entry(observer.peer).or_default();
        if *held >= self.max_per_peer {
            return Registered::PeerFull;
        }
        *held += 1;
        let set = self.by_filter.entry(observer.filter.clone()).or_default();
        let new_filter = set.is_empty();
        set.insert(key.clone());
        if new_filter {
            self.trie.insert(&observer.filter);
        }
        self.observers.insert(key, observer);
        Registered::New(new_filter)
    }

    /// Removes an observer; returns its filter when no observer is left on it.
    pub fn deregister(&mut self, key: &ObserverKey) -> Option<TopicFilter> {
        self.observers.remove(key)?;
        if let Some(n) = self.per_peer.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&key.0);
            }
        }
        let set = self.by_filter.get_mut(&key.1)?;
        set.remove(key);
        if set.is_empty() {
            self.by_filter.remove(&key.1);
            let levels: Vec<&str> = key.1.levels().collect();
            self.trie.remove(&levels);
            return Some(key.1.clone());
        }
        None
    }

    /// Removes the observer with this peer and token (a GET with Observe: 1
    /// may name the resource; the token identifies it too).
    pub fn deregister_token(&mut self, peer: SocketAddr, token: &[u8]) -> Vec<TopicFilter> {
        let keys: Vec<ObserverKey> = self
            .observers
            .iter()
            .filter(|(k, o)| k.0 == peer && o.token == token)
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| self.deregister(k)).collect()
    }

    /// The observer a notification with message id `mid` to `peer` went to.
    pub fn by_notification(&self, peer: SocketAddr, mid: u16) -> Option<ObserverKey> {
        self.sent.get(&(peer, mid)).cloned()
    }

    /// Remembers that a notification with `mid` went to `key`.
    pub fn sent(&mut self, key: ObserverKey, mid: u16) {
        let id = (key.0, mid);
        self.sent.insert(id, key);
        self.sent_order.push_back(id);
        while self.sent_order.len() > SENT_MEMORY {
            if let Some(old) = self.sent_order.pop_front() {
                self.sent.remove(&old);
            }
        }
    }

    /// The observers whose filter matches `topic`.
    pub fn matching(&self, topic: &Topic) -> Vec<ObserverKey> {
        let levels: Vec<&str> = topic.levels().collect();
        let mut filters = Vec::new();
        self.trie
            .collect(&levels, true, topic.is_system(), &mut filters);
        filters
            .iter()
            .filter_map(|f| self.by_filter.get(f))
            .flatten()
            .cloned()
            .collect()
    }

    /// An observer by key.
    pub fn get_mut(&mut self, key: &ObserverKey) -> Option<&mut Observer> {
        self.observers.get_mut(key)
    }

    /// Number of observers.
    pub fn len(&self) -> usize {
        self.observers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.observers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(port: u16, filter: &str) -> Observer {
        Observer {
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            token: vec![port as u8],
            filter: TopicFilter::new(filter).unwrap(),
            seq: 0,
            last_con: Instant::now(),
            con_in_flight: false,
            szx: None,
            who: std::sync::Arc::new(crate::access::Requester {
                identity: polyhub_sdk::Identity::anonymous(),
                client_id: String::new(),
            }),
            client: None,
        }
    }

    fn names(o: &Observers, topic: &str) -> Vec<String> {
        let mut v: Vec<String> = o
            .matching(&Topic::new(topic).unwrap())
            .into_iter()
            .map(|(p, f)| format!("{}:{}", p.port(), f))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn envelopes_find_observers_of_topics_and_filters() {
        let mut o = Observers::new(100, 100);
        assert_eq!(o.register(obs(1, "a/b")), Registered::New(true));
        assert_eq!(o.register(obs(2, "a/b")), Registered::New(false));
        assert_eq!(o.register(obs(3, "a/+")), Registered::New(true));
        assert_eq!(o.register(obs(4, "a/#")), Registered::New(true));
        assert_eq!(o.register(obs(5, "#")), Registered::New(true));
        assert_eq!(o.register(obs(6, "+/+/c")), Registered::New(true));
        assert_eq!(
            names(&o, "a/b"),
            vec!["1:a/b", "2:a/b", "3:a/+", "4:a/#", "5:#"]
        );
        assert_eq!(names(&o, "a"), vec!["4:a/#", "5:#"]);
        assert_eq!(names(&o, "a/x/c"), vec!["4:a/#", "5:#", "6:+/+/c"]);
        assert_eq!(names(&o, "$SYS/x"), Vec::<String>::new());
    }

    #[test]
    fn deregistering_the_last_observer_frees_the_filter() {
        let mut o = Observers::new(100, 100);
        o.register(obs(1, "a/+"));
        o.register(obs(2, "a/+"));
        let k1 = (obs(1, "a/+").peer, TopicFilter::new("a/+").unwrap());
        assert_eq!(o.deregister(&k1), None);
        assert_eq!(names(&o, "a/b"), vec!["2:a/+"]);
        assert_eq!(
            o.deregister_token(obs(2, "a/+").peer, &[2]),
            vec![TopicFilter::new("a/+").unwrap()]
        );
        assert!(names(&o, "a/b").is_empty());
        assert!(o.is_empty());
    }

    #[test]
    fn re_registration_replaces_and_the_limit_holds() {
        let mut o = Observers::new(1, 1);
        assert_eq!(o.register(obs(1, "a")), Registered::New(true));
        let mut again = obs(1, "a");
        again.token = vec![9];
        assert_eq!(o.register(again), Registered::Replaced);
        assert_eq!(o.len(), 1);
        assert_eq!(o.register(obs(2, "a")), Registered::Full);
        let mut o = Observers::new(10, 2);
        assert_eq!(o.register(obs(1, "a")), Registered::New(true));
        assert_eq!(o.register(obs(1, "b")), Registered::New(true));
        assert_eq!(o.register(obs(1, "c")), Registered::PeerFull);
        assert_eq!(o.register(obs(2, "c")), Registered::New(true));
        o.deregister(&(obs(1, "a").peer, TopicFilter::new("a").unwrap()));
        assert_eq!(o.register(obs(1, "c")), Registered::New(false));
    }

    #[test]
    fn sequence_numbers_increase_and_wrap_at_24_bits() {
        let mut x = obs(1, "a");
        assert_eq!(x.next_seq(), 1);
        x.seq = 0x00FF_FFFF;
        assert_eq!(x.next_seq(), 0);
    }
}
