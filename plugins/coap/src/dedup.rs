//! The duplicate-detection cache of RFC 7252 §4.5: requests are remembered
//! per (peer, message id) for EXCHANGE_LIFETIME, so a retransmitted request
//! is answered with the response already sent instead of being processed
//! (and published) twice.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What is known about an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// Being processed; the answer (or a separate response) is not ready.
    InProgress,
    /// Answered with these bytes (`None`: nothing was sent, e.g. a NON
    /// request with No-Response).
    Answered(Option<Vec<u8>>),
}

type Key = (SocketAddr, u16);

/// Bounded cache of recent exchanges (in number and in bytes of the
/// responses kept), oldest forgotten first.
#[derive(Debug)]
pub struct ExchangeCache {
    lifetime: Duration,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<Key, (Exchange, u64)>,
    order: VecDeque<(Key, Instant, u64)>,
    generation: u64,
}

impl ExchangeCache {
    /// A cache remembering exchanges for `lifetime`, at most `capacity` of
    /// them and about `max_bytes` of their responses.
    pub fn new(lifetime: Duration, capacity: usize, max_bytes: usize) -> Self {
        ExchangeCache {
            lifetime,
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    /// The exchange `mid` from `peer` if it is a duplicate; otherwise
    /// records it as in progress and returns `None`.
    pub fn check(&mut self, peer: SocketAddr, mid: u16, now: Instant) -> Option<Exchange> {
        self.expire(now);
        let key = (peer, mid);
        if let Some((e, _)) = self.entries.get(&key) {
            return Some(e.clone());
        }
        self.generation += 1;
        self.entries
            .insert(key, (Exchange::InProgress, self.generation));
        self.order
            .push_back((key, now + self.lifetime, self.generation));
        while self.entries.len() > self.capacity {
            self.pop_oldest();
        }
        None
    }

    /// Records the answer to an exchange (if it is still remembered).
    pub fn answer(&mut self, peer: SocketAddr, mid: u16, response: Option<Vec<u8>>) {
        if let Some((e, _)) = self.entries.get_mut(&(peer, mid)) {
            self.bytes -= cost(e);
            *e = Exchange::Answered(response);
            self.bytes += cost(e);
        }
        while self.bytes > self.max_bytes && !self.order.is_empty() {
            self.pop_oldest();
        }
    }

    /// Bytes of responses kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of remembered exchanges.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, deadline, _)) = self.order.front() {
            if *deadline > now {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((key, _, generation)) = self.order.pop_front() {
            if self.entries.get(&key).map(|(_, g)| *g) == Some(generation) {
                if let Some((e, _)) = self.entries.remove(&key) {
                    self.bytes -= cost(&e);
                }
            }
        }
    }
}

/// Bytes a remembered exchange holds.
fn cost(e: &Exchange) -> usize {
    match e {
        Exchange::Answered(Some(b)) => b.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_repeated_message_id_from_the_same_peer_is_a_duplicate() {
        let mut c = ExchangeCache::new(Duration::from_secs(247), 100, 1 << 20);
        let t = Instant::now();
        assert_eq!(c.check(peer(1), 7, t), None);
        assert_eq!(c.check(peer(1), 7, t), Some(Exchange::InProgress));
        c.answer(peer(1), 7, Some(vec![1, 2]));
        assert_eq!(
            c.check(peer(1), 7, t),
            Some(Exchange::Answered(Some(vec![1, 2])))
        );
        assert_eq!(
            c.check(peer(2), 7, t),
            None,
            "another peer, another exchange"
        );
        assert_eq!(c.check(peer(1), 8, t), None);
    }

    #[test]
    fn exchanges_are_forgotten_after_their_lifetime() {
        let mut c = ExchangeCache::new(Duration::from_secs(10), 100, 1 << 20);
        let t = Instant::now();
        assert_eq!(c.check(peer(1), 7, t), None);
        assert!(c.check(peer(1), 7, t + Duration::from_secs(9)).is_some());
        assert_eq!(c.check(peer(1), 7, t + Duration::from_secs(10)), None);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_oldest_exchanges_go_first_when_full() {
        let mut c = ExchangeCache::new(Duration::from_secs(10), 2, 1 << 20);
        let t = Instant::now();
        for mid in 0..3 {
            assert_eq!(c.check(peer(1), mid, t), None);
        }
        assert_eq!(c.len(), 2);
        assert!(c.check(peer(1), 2, t).is_some());
        assert_eq!(c.check(peer(1), 0, t), None, "forgotten");
    }

    #[test]
    fn the_oldest_exchanges_go_first_past_the_byte_bound() {
        let mut c = ExchangeCache::new(Duration::from_secs(10), 100, 10);
        let t = Instant::now();
        for mid in 0..3 {
            assert_eq!(c.check(peer(1), mid, t), None);
            c.answer(peer(1), mid, Some(vec![0; 4]));
        }
        assert_eq!((c.len(), c.bytes()), (2, 8));
        assert_eq!(c.check(peer(1), 0, t), None, "forgotten");
    }
}
