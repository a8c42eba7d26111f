//! Durable queues: one per durable subscriber (an MQTT persistent session,
//! an external broker or webhook forward), outliving the subscriber.
//!
//! The router pushes every matching envelope into the queue instead of a
//! channel, so a durable subscriber never makes a publisher wait: the queue
//! holds up to `max_queue_bytes` (waiting and in-flight envelopes together)
//! and drops its oldest past that, counted on the subscriber's `dropped`
//! and `queue_dropped` counters. With `[hub] data_dir`, each QoS 1/2
//! envelope is written to the store in the same group commit as its last
//! value, before its publisher is acknowledged, and removed once the
//! subscriber acknowledges it; a restart reads the queue back and hands it
//! out again first, in order (`redelivered`). QoS 0 envelopes stay in
//! memory (at most once).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use polyhub_sdk::{AdapterMetrics, DurableQueue, Envelope, MessageId};
use tokio::sync::Notify;

use crate::store::{Persist, Ticket};

/// Default of `[hub] max_queue_bytes`.
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 16 * 1024 * 1024;

/// What an envelope costs in a queue beyond its payload and topic.
const ENTRY_OVERHEAD: u64 = 96;

#[derive(Debug)]
struct Item {
    seq: u64,
    envelope: Arc<Envelope>,
    /// QoS 1/2: in flight until acknowledged.
    tracked: bool,
    /// Written to the store (QoS 1/2 with a data_dir).
    stored: bool,
    /// Read back from the store at start: handing it out is a redelivery.
    replayed: bool,
}

impl Item {
    fn size(&self) -> u64 {
        self.envelope.payload.len() as u64
            + self.envelope.topic.as_str().len() as u64
            + ENTRY_OVERHEAD
    }
}

#[derive(Debug, Default)]
struct State {
    waiting: VecDeque<Item>,
    /// Handed out, not acknowledged, by sequence.
    in_flight: BTreeMap<u64, Item>,
    by_id: HashMap<MessageId, u64>,
    bytes: u64,
    next_seq: u64,
}

/// One durable queue.
#[derive(Debug)]
pub struct Queue {
    name: Arc<str>,
    state: Mutex<State>,
    notify: Notify,
    closed: AtomicBool,
    max_bytes: Mutex<u64>,
    persist: Option<Arc<Persist>>,
    metrics: Mutex<Arc<AdapterMetrics>>,
}

impl Queue {
    /// An empty queue, or one holding what the store had for `name`.
    pub fn new(
        name: Arc<str>,
        persist: Option<Arc<Persist>>,
        restored: Vec<(u64, Arc<Envelope>)>,
    ) -> Queue {
        let mut state = State::default();
        for (seq, envelope) in restored {
            let item = Item {
                seq,
                envelope,
                tracked: true,
                stored: true,
                replayed: true,
            };
            state.bytes += item.size();
            state.next_seq = state.next_seq.max(seq + 1);
            state.waiting.push_back(item);
        }
        state.waiting.make_contiguous().sort_by_key(|i| i.seq);
        Queue {
            name,
            state: Mutex::new(state),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            max_bytes: Mutex::new(DEFAULT_MAX_QUEUE_BYTES),
            persist,
            metrics: Mutex::new(Arc::new(AdapterMetrics::default())),
        }
    }

    /// The queue's name (`{adapter}/{name}`).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Sets who counts for the queue and its size limit (at each subscribe).
    pub fn attach(&self, metrics: Arc<AdapterMetrics>, max_bytes: u64) {
        *self.metrics.lock() = metrics;
        *self.max_bytes.lock() = max_bytes.max(1);
        self.closed.store(false, Ordering::Release);
    }

    /// Queues `envelope`; the ticket (QoS 1/2 with a data_dir) is the batch
    /// that stores it.
    pub fn push(&self, envelope: Arc<Envelope>) -> Option<Ticket> {
        let tracked = envelope.qos.is_acknowledged();
        let store = tracked && self.persist.is_some();
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let ticket = match (&self.persist, store) {
            (Some(p), true) => Some(p.queue_put(&self.name, seq, envelope.clone())),
            _ => None,
        };
        let item = Item {
            seq,
            envelope,
            tracked,
            stored: store,
            replayed: false,
        };
        st.bytes += item.size();
        st.waiting.push_back(item);
        let max = *self.max_bytes.lock();
        let mut dropped = 0u64;
        while st.bytes > max && st.waiting.len() + st.in_flight.len() > 1 {
            // The oldest, waiting or in flight.
            let oldest_in_flight = st.in_flight.keys().next().copied();
            let oldest_waiting = st.waiting.front().map(|i| i.seq);
            let gone = match (oldest_in_flight, oldest_waiting) {
                (Some(f), Some(w)) if f < w => st.in_flight.remove(&f),
                (Some(f), None) => st.in_flight.remove(&f),
                _ => st.waiting.pop_front(),
            };
            let Some(gone) = gone else { break };
            st.by_id.remove(&gone.envelope.id);
            st.bytes -= gone.size();
            if gone.stored {
                if let Some(p) = &self.persist {
                    p.queue_delete(&self.name, gone.seq);
                }
            }
            dropped += 1;
        }
        drop(st);
        if dropped > 0 {
            let m = self.metrics.lock().clone();
            for _ in 0..dropped {
                m.record_drop();
            }
            m.add("queue_dropped", dropped);
            tracing::debug!(queue = %self.name, dropped, max_queue_bytes = max, "Durable queue full: dropped its oldest envelopes.");
        }
        self.metrics.lock().record_out();
        self.notify.notify_one();
        ticket
    }

    fn pop(&self) -> Option<Arc<Envelope>> {
        let mut st = self.state.lock();
        let item = st.waiting.pop_front()?;
        let envelope = item.envelope.clone();
        if item.replayed {
            self.metrics.lock().add("redelivered", 1);
        }
        if item.tracked {
            st.by_id.insert(envelope.id, item.seq);
            st.in_flight.insert(item.seq, item);
        } else {
            // At most once: nothing to acknowledge.
            st.bytes -= item.size();
        }
        Some(envelope)
    }

    /// Stops handing out (hub shutdown): `next` returns `None`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// The subscriber went away: what it had not acknowledged waits for the
    /// next one.
    pub fn detach(&self) {
        self.redeliver_all();
    }

    fn redeliver_all(&self) {
        let mut st = self.state.lock();
        if st.in_flight.is_empty() {
            return;
        }
        let in_flight = std::mem::take(&mut st.in_flight);
        st.by_id.clear();
        for (_, mut item) in in_flight.into_iter().rev() {
            item.replayed = true;
            st.waiting.push_front(item);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Removes every entry from the store (the queue is forgotten).
    pub fn clear(&self) {
        let mut st = self.state.lock();
        let in_flight = std::mem::take(&mut st.in_flight);
        let items: Vec<Item> = st
            .waiting
            .drain(..)
            .chain(in_flight.into_values())
            .collect();
        st.by_id.clear();
        st.bytes = 0;
        drop(st);
        if let Some(p) = &self.persist {
            for item in items.iter().filter(|i| i.stored) {
                p.queue_delete(&self.name, item.seq);
            }
        }
    }

    /// Envelopes waiting and in flight.
    pub fn depth(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.waiting.len(), st.in_flight.len())
    }
}

/// How a [`Handle`] asks the router to drop its queue.
pub(crate) type Forget = Box<dyn Fn(&Arc<str>) + Send + Sync>;

/// What a subscriber holds: the queue, and the router to forget it through.
pub struct Handle {
    pub(crate) queue: Arc<Queue>,
    pub(crate) forget: Forget,
}

impl DurableQueue for Handle {
    fn next(&self) -> BoxFuture<'_, Option<Arc<Envelope>>> {
        Box::pin(async move {
            loop {
                if let Some(e) = self.queue.pop() {
                    return Some(e);
                }
                if self.queue.closed.load(Ordering::Acquire) {
                    return None;
                }
                self.queue.notify.notified().await;
            }
        })
    }

    fn try_next(&self) -> Option<Arc<Envelope>> {
        self.queue.pop()
    }

    fn ack(&self, id: MessageId) {
        let mut st = self.queue.state.lock();
        let Some(seq) = st.by_id.remove(&id) else {
            return;
        };
        if let Some(item) = st.in_flight.remove(&seq) {
            st.bytes -= item.size();
            drop(st);
            if let Some(p) = &self.queue.persist {
                p.queue_delete(&self.queue.name, seq);
            }
        }
    }

    fn redeliver(&self) {
        self.queue.redeliver_all();
    }

    fn forget(&self) {
        (self.forget)(&self.queue.name);
    }

    fn len(&self) -> usize {
        self.queue.state.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use polyhub_sdk::{DurableOptions, Origin, QoS, Topic, TopicFilter};

    use crate::last_value::LastValueStore;
    use crate::router::Router;
    use crate::store::{Fsync, Store};

    use super::*;

    fn env(topic: &str, payload: &str, qos: QoS) -> polyhub_sdk::Envelope {
        polyhub_sdk::Envelope::new(Topic::new(topic).unwrap(), payload.to_owned())
            .with_qos(qos)
            .with_origin(Origin {
                adapter: Arc::from("device"),
                ..Default::default()
            })
    }

    fn durable(
        r: &Arc<Router>,
        name: &str,
        max: Option<u64>,
    ) -> (
        Arc<dyn DurableQueue>,
        polyhub_sdk::SubscriptionId,
        Arc<AdapterMetrics>,
    ) {
        let m = Arc::new(AdapterMetrics::default());
        let (id, q) = r
            .subscribe_durable(
                name,
                Arc::from("fwd"),
                m.clone(),
                &[TopicFilter::new("a/#").unwrap()],
                DurableOptions {
                    max_queue_bytes: max,
                    ..DurableOptions::default()
                },
            )
            .unwrap();
        (q, id, m)
    }

    fn named(m: &AdapterMetrics, name: &str) -> Option<u64> {
        m.snapshot()
            .named
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }

    fn payloads(q: &dyn DurableQueue) -> Vec<String> {
        std::iter::from_fn(|| q.try_next())
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn unacknowledged_envelopes_come_again_in_order_and_a_new_subscriber_takes_over() {
        let r = Arc::new(Router::new(4));
        let publisher = AdapterMetrics::default();
        let (q, id, m) = durable(&r, "fwd/out", None);
        // More than the channel depth: a durable queue never makes the
        // publisher wait.
        for i in 0..10 {
            r.publish(env("a/b", &i.to_string(), QoS::AtLeastOnce), &publisher)
                .await
                .unwrap();
        }
        r.publish(env("a/b", "q0", QoS::AtMostOnce), &publisher)
            .await
            .unwrap();
        let first: Vec<_> = (0..3).map(|_| q.try_next().unwrap()).collect();
        q.ack(first[1].id);
        q.redeliver();
        assert_eq!(
            payloads(&*q),
            ["0", "2", "3", "4", "5", "6", "7", "8", "9", "q0"]
        );
        assert_eq!(named(&m, "redelivered"), Some(2));
        // The subscriber goes; what it had not acknowledged waits for the
        // next one of the same name, and a second live one is refused.
        r.unsubscribe(id);
        r.publish(env("a/b", "offline", QoS::AtLeastOnce), &publisher)
            .await
            .unwrap();
        let (q2, _, _) = durable(&r, "fwd/out", None);
        assert!(matches!(
            r.subscribe_durable(
                "fwd/out",
                Arc::from("fwd"),
                m.clone(),
                &[],
                DurableOptions::default()
            ),
            Err(polyhub_sdk::SubscribeError::QueueInUse(_))
        ));
        // Detached, it took no new envelope ("offline" was published with
        // no subscriber on the filter).
        assert_eq!(
            payloads(&*q2),
            ["0", "2", "3", "4", "5", "6", "7", "8", "9"]
        );
        q2.forget();
        assert!(r.durable_queues().is_empty());
    }

    #[tokio::test]
    async fn past_max_queue_bytes_the_oldest_are_dropped_and_counted() {
        let r = Arc::new(Router::new(4));
        let publisher = AdapterMetrics::default();
        let size = 1_000 + 3 + ENTRY_OVERHEAD;
        let (q, _, m) = durable(&r, "fwd/small", Some(5 * size));
        for i in 0..8 {
            let mut e = env("a/b", "", QoS::AtLeastOnce);
            e.payload = format!("{i:0>1000}").into_bytes().into();
            r.publish(e, &publisher).await.unwrap();
        }
        let left: Vec<_> = std::iter::from_fn(|| q.try_next())
            .map(|e| e.payload[999] - b'0')
            .collect();
        assert_eq!(left, [3, 4, 5, 6, 7]);
        let s = m.snapshot();
        assert_eq!((s.dropped, named(&m, "queue_dropped")), (3, Some(3)));
    }

    #[tokio::test]
    async fn a_restart_hands_out_what_was_not_acknowledged_and_nothing_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let (store, loaded) =
                Store::open(dir.path(), Fsync::Batch, Duration::from_millis(1)).unwrap();
            let values =
                LastValueStore::new(100).with_persist(store.persist().clone(), loaded.slots);
            let r = Router::with_store(4, values);
            r.restore(loaded.queues, loaded.state);
            (store, Arc::new(r))
        };
        let publisher = AdapterMetrics::default();
        {
            let (store, r) = open();
            let (q, _, _) = durable(&r, "fwd/out", None);
            for i in 0..5 {
                r.publish(env("a/b", &i.to_string(), QoS::AtLeastOnce), &publisher)
                    .await
                    .unwrap();
            }
            r.publish(env("a/b", "q0", QoS::AtMostOnce), &publisher)
                .await
                .unwrap();
            r.state_put("mqtt/session/c1", Some(b"filters".to_vec()));
            let delivered: Vec<_> = (0..2).map(|_| q.try_next().unwrap()).collect();
            for e in &delivered {
                q.ack(e.id);
            }
            // One handed out but not acknowledged: it comes again.
            q.try_next().unwrap();
            store.close();
        }
        let (_store, r) = open();
        assert_eq!(
            r.state_get("mqtt/session/c1").as_deref(),
            Some(&b"filters"[..])
        );
        assert_eq!(r.durable_queues(), [("fwd/out".to_owned(), 3, 0, false)]);
        let (q, _, m) = durable(&r, "fwd/out", None);
        // QoS 0 was memory only.
        assert_eq!(payloads(&*q), ["2", "3", "4"]);
        assert_eq!(named(&m, "redelivered"), Some(3));
    }
}
