//! The last value of every topic (what HTTP and CoAP `GET` return) and the
//! retained value (what a new subscriber gets first), with MQTT's retain
//! semantics: a retained message with an empty payload clears the topic.
//!
//! The store is bounded by `[hub] max_topics`: past it, the least recently
//! updated topic without a retained value is evicted; when only retained
//! values are left, a retained publish on a new topic is refused
//! ([`QuotaExceeded`]). Topics are also kept in order, so that listings
//! (CoAP discovery, the admin API) page through a range instead of scanning
//! and sorting every topic per request.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ahash::AHashMap;
use parking_lot::RwLock;
use polyhub_sdk::{Envelope, Topic, TopicFilter};

use crate::store::{Persist, StoredSlot, Ticket};

/// Default of `[hub] max_topics`.
pub const DEFAULT_MAX_TOPICS: usize = 100_000;

#[derive(Debug, Clone)]
struct Slot {
    last: Arc<Envelope>,
    retained: Option<Arc<Envelope>>,
    /// When the slot was last updated (the store's sequence).
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    slots: AHashMap<Topic, Slot>,
    /// Every topic of `slots`, in order, for paged listings.
    order: BTreeSet<Topic>,
    /// Updates in the order they happened, oldest first. An entry is
    /// current while its slot's `seq` equals its own; stale entries are
    /// skipped at eviction and removed when the queue is compacted, which
    /// happens once it holds twice as many entries as there are topics.
    updates: VecDeque<(u64, Topic)>,
    next_seq: u64,
}

impl Inner {
    fn remove(&mut self, topic: &Topic) -> bool {
        if self.slots.remove(topic).is_some() {
            self.order.remove(topic);
            true
        } else {
            false
        }
    }

    /// Evicts the least recently updated topic that has no retained value;
    /// `None` if every topic has one.
    fn evict_one(&mut self) -> Option<Topic> {
        while let Some((seq, topic)) = self.updates.pop_front() {
            match self.slots.get(&topic) {
                Some(slot) if slot.seq == seq && slot.retained.is_none() => {
                    self.remove(&topic);
                    return Some(topic);
                }
                // Stale, or retained (never evictable while it stays so:
                // a retained topic only leaves the store by being cleared).
                _ => continue,
            }
        }
        None
    }

    fn compact(&mut self) {
        let slots = &self.slots;
        self.updates
            .retain(|(seq, topic)| slots.get(topic).is_some_and(|s| s.seq == *seq));
    }
}

/// A retained publish was refused: the store holds `max_topics` topics and
/// every one of them has a retained value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded;

/// Last and retained values by topic.
#[derive(Debug)]
pub struct LastValueStore {
    inner: RwLock<Inner>,
    max_topics: usize,
    evictions: AtomicU64,
    refusals: AtomicU64,
    /// `[hub] data_dir`: where every change goes, when set.
    persist: Option<Arc<Persist>>,
}

impl Default for LastValueStore {
    fn default() -> Self {
        LastValueStore::new(DEFAULT_MAX_TOPICS)
    }
}

impl LastValueStore {
    /// A store that keeps at most `max_topics` topics (at least one).
    pub fn new(max_topics: usize) -> Self {
        LastValueStore {
            inner: RwLock::new(Inner::default()),
            max_topics: max_topics.max(1),
            evictions: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            persist: None,
        }
    }

    /// This store, writing every change to `persist` (`[hub] data_dir`),
    /// holding the slots read back from it. When more were stored than
    /// `max_topics` allows, the least recently updated plain ones are
    /// evicted (and deleted from the store).
    pub fn with_persist(
        mut self,
        persist: Arc<Persist>,
        mut slots: Vec<(Topic, StoredSlot)>,
    ) -> Self {
        slots.sort_by_key(|(_, s)| s.seq);
        {
            let inner = self.inner.get_mut();
            for (topic, slot) in slots {
                inner.next_seq = inner.next_seq.max(slot.seq + 1);
                if inner.slots.len() >= self.max_topics {
                    match inner.evict_one() {
                        Some(gone) => {
                            persist.delete(&gone);
                        }
                        None if slot.retained.is_some() => {
                            // Only retained values left: this one is
                            // refused as a new retained publish would be.
                            persist.delete(&topic);
                            continue;
                        }
                        None => {
                            persist.delete(&topic);
                            continue;
                        }
                    }
                }
                inner.updates.push_back((slot.seq, topic.clone()));
                inner.order.insert(topic.clone());
                inner.slots.insert(
                    topic,
                    Slot {
                        last: slot.last,
                        retained: slot.retained,
                        seq: slot.seq,
                    },
                );
            }
        }
        self.persist = Some(persist);
        self
    }

    /// Records `envelope` as its topic's last value (and retained value if
    /// its retain flag is set; a retained empty payload clears the topic).
    ///
    /// A new topic in a full store evicts the least recently updated topic
    /// without a retained value. When there is none, a retained envelope is
    /// refused with [`QuotaExceeded`] and a plain one is routed without being
    /// kept (it would be the first to go).
    pub fn update(&self, envelope: &Arc<Envelope>) -> Result<(), QuotaExceeded> {
        self.update_persisted(envelope).map(|_| ())
    }

    /// [`Self::update`], and with `[hub] data_dir` the ticket of the batch
    /// that writes the change to disk (`None`: nothing to write).
    pub fn update_persisted(
        &self,
        envelope: &Arc<Envelope>,
    ) -> Result<Option<Ticket>, QuotaExceeded> {
        let mut inner = self.inner.write();
        if envelope.retain && envelope.payload.is_empty() {
            // Written under the lock, so the store sees changes of one
            // topic in the order they were made.
            let removed = inner.remove(&envelope.topic);
            return Ok(match &self.persist {
                Some(p) if removed => Some(p.delete(&envelope.topic)),
                _ => None,
            });
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let retained = envelope.retain.then(|| envelope.clone());
        let mut evicted = None;
        let stored = if let Some(slot) = inner.slots.get_mut(&envelope.topic) {
            slot.last = envelope.clone();
            slot.seq = seq;
            if retained.is_some() {
                slot.retained = retained;
            }
            // What the store writes; nothing to clone without one.
            if self.persist.is_some() {
                slot.retained.clone()
            } else {
                None
            }
        } else {
            if inner.slots.len() >= self.max_topics {
                if let Some(gone) = inner.evict_one() {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    evicted = Some(gone);
                } else if envelope.retain {
                    self.refusals.fetch_add(1, Ordering::Relaxed);
                    return Err(QuotaExceeded);
                } else {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
            }
            inner.slots.insert(
                envelope.topic.clone(),
                Slot {
                    last: envelope.clone(),
                    retained: retained.clone(),
                    seq,
                },
            );
            inner.order.insert(envelope.topic.clone());
            retained
        };
        inner.updates.push_back((seq, envelope.topic.clone()));
        if inner.updates.len() > 2 * inner.slots.len() + 1024 {
            inner.compact();
        }
        let Some(persist) = &self.persist else {
            return Ok(None);
        };
        if let Some(gone) = evicted {
            persist.delete(&gone);
        }
        Ok(Some(persist.put(
            &envelope.topic,
            StoredSlot {
                seq,
                last: envelope.clone(),
                retained: stored,
            },
        )))
    }

    /// Where changes are written, with `[hub] data_dir`.
    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.persist.as_ref()
    }

    /// The last value of `topic`.
    pub fn get(&self, topic: &Topic) -> Option<Arc<Envelope>> {
        self.inner.read().slots.get(topic).map(|s| s.last.clone())
    }

    /// Forgets `topic`; false if it had no value.
    pub fn clear(&self, topic: &Topic) -> bool {
        let mut inner = self.inner.write();
        let removed = inner.remove(topic);
        if removed {
            if let Some(p) = &self.persist {
                p.delete(topic);
            }
        }
        removed
    }

    /// Last values of the topics matching `filter`, sorted by topic.
    pub fn matching(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        if let Some(topic) = filter.as_topic() {
            return self.get(&topic).into_iter().collect();
        }
        self.collect_matching(filter, |s| Some(s.last.clone()))
    }

    /// Retained values of the topics matching `filter`, sorted by topic.
    pub fn retained(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        if let Some(topic) = filter.as_topic() {
            let inner = self.inner.read();
            return inner
                .slots
                .get(&topic)
                .and_then(|s| s.retained.clone())
                .into_iter()
                .collect();
        }
        self.collect_matching(filter, |s| s.retained.clone())
    }

    /// Walks only the topics that share the filter's literal prefix (the
    /// levels before its first wildcard), in order.
    fn collect_matching(
        &self,
        filter: &TopicFilter,
        pick: impl Fn(&Slot) -> Option<Arc<Envelope>>,
    ) -> Vec<Arc<Envelope>> {
        let prefix = literal_prefix(filter);
        let inner = self.inner.read();
        inner
            .order
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|t| t.as_str().starts_with(prefix.as_str()))
            .filter(|t| filter.matches(t))
            .filter_map(|t| inner.slots.get(t).and_then(&pick))
            .collect()
    }

    /// Up to `limit` last values of topics that start with `prefix` (as a
    /// string) and sort after `after`, in topic order: one page of a
    /// listing. Costs the page, not the store.
    pub fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<Arc<Envelope>> {
        let inner = self.inner.read();
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        inner
            .order
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|t| t.as_str().starts_with(prefix))
            .take(limit)
            .filter_map(|t| inner.slots.get(t).map(|s| s.last.clone()))
            .collect()
    }

    /// Number of topics with a value.
    pub fn len(&self) -> usize {
        self.inner.read().slots.len()
    }

    /// Whether no topic has a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most topics the store keeps.
    pub fn max_topics(&self) -> usize {
        self.max_topics
    }

    /// Topics evicted so far to stay within `max_topics`.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Retained publishes refused so far because the store was full of
    /// retained values.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

/// The levels of `filter` before its first wildcard, as a string prefix of
/// every topic it can match (`a/b/+/c` → `a/b/`, `#` → ``).
fn literal_prefix(filter: &TopicFilter) -> String {
    let mut prefix = String::new();
    for level in filter.levels() {
        if level == "+" || level == "#" {
            return prefix;
        }
        prefix.push_str(level);
        prefix.push('/');
    }
    // No wildcard at all: the whole filter is the topic.
    prefix.pop();
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(topic: &str, payload: &'static str, retain: bool) -> Arc<Envelope> {
        Arc::new(Envelope::new(Topic::new(topic).unwrap(), payload).with_retain(retain))
    }

    fn topics(v: &[Arc<Envelope>]) -> Vec<&str> {
        v.iter().map(|e| e.topic.as_str()).collect()
    }

    #[test]
    fn last_value_follows_every_message_and_retained_only_retained_ones() {
        let s = LastValueStore::default();
        let t = Topic::new("a/b").unwrap();
        s.update(&env("a/b", "1", true)).unwrap();
        s.update(&env("a/b", "2", false)).unwrap();
        assert_eq!(&s.get(&t).unwrap().payload[..], b"2");
        let r = s.retained(&TopicFilter::new("a/#").unwrap());
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0].payload[..], b"1");
        let r = s.retained(&TopicFilter::new("a/b").unwrap());
        assert_eq!(&r[0].payload[..], b"1");
    }

    #[test]
    fn retained_empty_payload_clears_the_topic() {
        let s = LastValueStore::default();
        s.update(&env("a", "1", true)).unwrap();
        s.update(&env("a", "", true)).unwrap();
        assert!(s.get(&Topic::new("a").unwrap()).is_none());
        assert!(s.is_empty());
        assert!(s.page("", None, 10).is_empty());
    }

    #[test]
    fn matching_and_clear() {
        let s = LastValueStore::default();
        s.update(&env("x/1", "1", false)).unwrap();
        s.update(&env("x/2", "2", false)).unwrap();
        s.update(&env("xy/1", "2", false)).unwrap();
        s.update(&env("y/1", "3", false)).unwrap();
        let m = s.matching(&TopicFilter::new("x/+").unwrap());
        assert_eq!(topics(&m), vec!["x/1", "x/2"]);
        let m = s.matching(&TopicFilter::new("+/1").unwrap());
        assert_eq!(topics(&m), vec!["x/1", "xy/1", "y/1"]);
        let m = s.matching(&TopicFilter::new("x/#").unwrap());
        assert_eq!(topics(&m), vec!["x/1", "x/2"]);
        assert!(s.clear(&Topic::new("x/1").unwrap()));
        assert!(!s.clear(&Topic::new("x/1").unwrap()));
        assert!(s.retained(&TopicFilter::new("#").unwrap()).is_empty());
    }

    #[test]
    fn a_full_store_evicts_the_least_recently_updated_plain_topic() {
        let s = LastValueStore::new(3);
        s.update(&env("a", "1", false)).unwrap();
        s.update(&env("b", "1", true)).unwrap();
        s.update(&env("c", "1", false)).unwrap();
        // `a` is refreshed, so `c` is now the oldest plain topic.
        s.update(&env("a", "2", false)).unwrap();
        s.update(&env("d", "1", false)).unwrap();
        assert_eq!(topics(&s.page("", None, 10)), vec!["a", "b", "d"]);
        assert_eq!(s.evictions(), 1);
        // The retained `b` is never evicted; `a` goes next, then `d`.
        s.update(&env("e", "1", false)).unwrap();
        s.update(&env("f", "1", false)).unwrap();
        assert_eq!(topics(&s.page("", None, 10)), vec!["b", "e", "f"]);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_store_full_of_retained_values_refuses_a_new_retained_topic() {
        let s = LastValueStore::new(2);
        s.update(&env("a", "1", true)).unwrap();
        s.update(&env("b", "1", true)).unwrap();
        assert_eq!(s.update(&env("c", "1", true)), Err(QuotaExceeded));
        assert_eq!(s.refusals(), 1);
        // A plain publish is routed but not kept; existing topics still update.
        s.update(&env("d", "1", false)).unwrap();
        assert!(s.get(&Topic::new("d").unwrap()).is_none());
        s.update(&env("a", "2", true)).unwrap();
        assert_eq!(&s.get(&Topic::new("a").unwrap()).unwrap().payload[..], b"2");
        // Clearing one makes room again.
        s.update(&env("b", "", true)).unwrap();
        s.update(&env("c", "1", true)).unwrap();
        assert_eq!(topics(&s.page("", None, 10)), vec!["a", "c"]);
    }

    #[test]
    fn the_update_queue_stays_bounded_under_repeated_updates() {
        let s = LastValueStore::new(10);
        for i in 0..100_000 {
            let topic = format!("t/{}", i % 5);
            s.update(&Arc::new(Envelope::new(Topic::new(&topic).unwrap(), "x")))
                .unwrap();
        }
        assert!(s.inner.read().updates.len() <= 2 * 5 + 1024 + 1);
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn pages_walk_a_prefix_in_order() {
        let s = LastValueStore::default();
        for t in ["s/3", "s/1", "s/2", "t/1", "r/1"] {
            s.update(&env(t, "v", false)).unwrap();
        }
        assert_eq!(topics(&s.page("s/", None, 2)), vec!["s/1", "s/2"]);
        assert_eq!(topics(&s.page("s/", Some("s/2"), 2)), vec!["s/3"]);
        assert_eq!(topics(&s.page("", Some("s/3"), 5)), vec!["t/1"]);
        assert_eq!(topics(&s.page("", Some("a"), 1)), vec!["r/1"]);
    }
}
