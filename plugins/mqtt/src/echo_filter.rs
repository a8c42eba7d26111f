//! Recognises the embedded broker's echo of the adapter's own publishes.
//!
//! rumqttd implements neither MQTT 5 no-local nor properties towards
//! MQTT 3.1.1 devices (it panics writing them), so the adapter cannot mark its
//! publishes. Instead it remembers the fingerprint (topic + payload hash) of
//! each publish that its own subscription will see again, and skips the first
//! forwarded publish with that fingerprint. The broker forwards in order, so
//! an echo is always matched; should a device publish the very same topic and
//! payload at the same moment, one of the two identical messages enters the
//! hub, which is what the hub would see anyway.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use polyhub_sdk::{Topic, TopicFilter};

type Fingerprint = (Topic, u64);

/// Bounded set of publishes whose echo is still to come.
#[derive(Debug)]
pub struct EchoFilter {
    subscribe: Vec<TopicFilter>,
    pending: HashMap<Fingerprint, u32>,
    order: VecDeque<Fingerprint>,
    capacity: usize,
}

fn fingerprint(topic: &Topic, payload: &[u8]) -> Fingerprint {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    (topic.clone(), h.finish())
}

impl EchoFilter {
    /// A filter for an adapter subscribed to `subscribe`, remembering at most
    /// `capacity` publishes (the oldest are forgotten first).
    pub fn new(subscribe: Vec<TopicFilter>, capacity: usize) -> Self {
        EchoFilter {
            subscribe,
            pending: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Notes a publish the adapter is about to make.
    pub fn sent(&mut self, topic: &Topic, payload: &[u8]) {
        if !self.subscribe.iter().any(|f| f.matches(topic)) {
            return; // it will not come back
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.forget(&old);
            }
        }
        let fp = fingerprint(topic, payload);
        *self.pending.entry(fp.clone()).or_insert(0) += 1;
        self.order.push_back(fp);
    }

    /// Whether a forwarded publish is the echo of one the adapter made
    /// (consuming that record).
    pub fn is_echo(&mut self, topic: &Topic, payload: &[u8]) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let fp = fingerprint(topic, payload);
        if !self.pending.contains_key(&fp) {
            return false;
        }
        self.forget(&fp);
        if let Some(i) = self.order.iter().position(|o| *o == fp) {
            self.order.remove(i);
        }
        true
    }

    fn forget(&mut self, fp: &Fingerprint) {
        if let Some(n) = self.pending.get_mut(fp) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(fp);
            }
        }
    }

    /// Publishes whose echo is still expected.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no echo is expected.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn each_sent_publish_swallows_exactly_one_echo() {
        let mut f = EchoFilter::new(vec![TopicFilter::new("a/#").unwrap()], 10);
        f.sent(&t("a/1"), b"x");
        f.sent(&t("a/1"), b"x");
        assert!(!f.is_echo(&t("a/1"), b"y"));
        assert!(f.is_echo(&t("a/1"), b"x"));
        assert!(f.is_echo(&t("a/1"), b"x"));
        assert!(!f.is_echo(&t("a/1"), b"x"), "a third one is a device's");
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn publishes_outside_the_subscription_are_not_remembered() {
        let mut f = EchoFilter::new(vec![TopicFilter::new("a/+").unwrap()], 10);
        f.sent(&t("b/1"), b"x");
        assert_eq!(f.len(), 0);
        assert!(!f.is_echo(&t("b/1"), b"x"));
    }

    #[test]
    fn memory_is_bounded_oldest_forgotten_first() {
        let mut f = EchoFilter::new(vec![TopicFilter::new("#").unwrap()], 2);
        f.sent(&t("a"), b"1");
        f.sent(&t("a"), b"2");
        f.sent(&t("a"), b"3");
        assert_eq!(f.len(), 2);
        assert!(!f.is_echo(&t("a"), b"1"));
        assert!(f.is_echo(&t("a"), b"2"));
        assert!(f.is_echo(&t("a"), b"3"));
    }
}
