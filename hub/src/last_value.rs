//! The last value of every topic (what HTTP and CoAP `GET` return) and the
//! retained value (what a new subscriber gets first), with MQTT's retain
//! semantics: a retained message with an empty payload clears the topic.

use std::sync::Arc;

use ahash::AHashMap;
use parking_lot::RwLock;
use polyhub_sdk::{Envelope, Topic, TopicFilter};

#[derive(Debug, Clone)]
struct Slot {
    last: Arc<Envelope>,
    retained: Option<Arc<Envelope>>,
}

/// Last and retained values by topic.
#[derive(Debug, Default)]
pub struct LastValueStore {
    slots: RwLock<AHashMap<Topic, Slot>>,
}

impl LastValueStore {
    /// Records `envelope` as its topic's last value (and retained value if
    /// its retain flag is set; a retained empty payload clears the topic).
    pub fn update(&self, envelope: &Arc<Envelope>) {
        let mut slots = self.slots.write();
        if envelope.retain && envelope.payload.is_empty() {
            slots.remove(&envelope.topic);
            return;
        }
        let retained = envelope.retain.then(|| envelope.clone());
        match slots.get_mut(&envelope.topic) {
            Some(slot) => {
                slot.last = envelope.clone();
                if retained.is_some() {
                    slot.retained = retained;
                }
            }
            None => {
                slots.insert(
                    envelope.topic.clone(),
                    Slot {
                        last: envelope.clone(),
                        retained,
                    },
                );
            }
        }
    }

    /// The last value of `topic`.
    pub fn get(&self, topic: &Topic) -> Option<Arc<Envelope>> {
        self.slots.read().get(topic).map(|s| s.last.clone())
    }

    /// Forgets `topic`; false if it had no value.
    pub fn clear(&self, topic: &Topic) -> bool {
        self.slots.write().remove(topic).is_some()
    }

    /// Last values of the topics matching `filter`, sorted by topic.
    pub fn matching(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        if let Some(topic) = filter.as_topic() {
            return self.get(&topic).into_iter().collect();
        }
        let mut out: Vec<_> = self
            .slots
            .read()
            .iter()
            .filter(|(t, _)| filter.matches(t))
            .map(|(_, s)| s.last.clone())
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Retained values of the topics matching `filter`, sorted by topic.
    pub fn retained(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        let mut out: Vec<_> = self
            .slots
            .read()
            .iter()
            .filter(|(t, _)| filter.matches(t))
            .filter_map(|(_, s)| s.retained.clone())
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Number of topics with a value.
    pub fn len(&self) -> usize {
        self.slots.read().len()
    }

    /// Whether no topic has a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with every topic's last value, in no order, under the
    /// store's read lock (keep `f` short).
    pub fn for_each_last(&self, mut f: impl FnMut(&Arc<Envelope>)) {
        for s in self.slots.read().values() {
            f(&s.last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(topic: &str, payload: &'static str, retain: bool) -> Arc<Envelope> {
        Arc::new(Envelope::new(Topic::new(topic).unwrap(), payload).with_retain(retain))
    }

    #[test]
    fn last_value_follows_every_message_and_retained_only_retained_ones() {
        let s = LastValueStore::default();
        let t = Topic::new("a/b").unwrap();
        s.update(&env("a/b", "1", true));
        s.update(&env("a/b", "2", false));
        assert_eq!(&s.get(&t).unwrap().payload[..], b"2");
        let r = s.retained(&TopicFilter::new("a/#").unwrap());
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0].payload[..], b"1");
    }

    #[test]
    fn retained_empty_payload_clears_the_topic() {
        let s = LastValueStore::default();
        s.update(&env("a", "1", true));
        s.update(&env("a", "", true));
        assert!(s.get(&Topic::new("a").unwrap()).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn matching_and_clear() {
        let s = LastValueStore::default();
        s.update(&env("x/1", "1", false));
        s.update(&env("x/2", "2", false));
        s.update(&env("y/1", "3", false));
        let m = s.matching(&TopicFilter::new("x/+").unwrap());
        assert_eq!(
            m.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
            vec!["x/1", "x/2"]
        );
        assert!(s.clear(&Topic::new("x/1").unwrap()));
        assert!(!s.clear(&Topic::new("x/1").unwrap()));
        assert!(s.retained(&TopicFilter::new("#").unwrap()).is_empty());
    }
}
