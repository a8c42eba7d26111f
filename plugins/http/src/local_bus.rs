//! Delivery between the HTTP clients of one adapter instance.
//!
//! The hub never hands an envelope back to the adapter it came from, so what
//! one HTTP client `POST`s would never reach this adapter's own `/events`
//! streams and webhooks through the router. The adapter delivers it to them
//! itself through this bus, with the same queue rules as the hub: a full
//! queue drops (and counts) QoS 0 envelopes and makes QoS 1 ones wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use polyhub_sdk::{AdapterMetrics, Envelope, TopicFilter};
use tokio::sync::mpsc;

struct Local {
    id: u64,
    filters: Vec<TopicFilter>,
    tx: mpsc::Sender<Arc<Envelope>>,
}

/// The local subscribers (SSE streams, webhooks) of one adapter.
#[derive(Default)]
pub struct LocalBus {
    subs: RwLock<Vec<Local>>,
    next: AtomicU64,
}

/// A registration on the bus; dropping it unregisters.
pub struct LocalSubscription {
    bus: Arc<LocalBus>,
    id: u64,
    /// Envelopes published by this adapter's own clients.
    pub rx: mpsc::Receiver<Arc<Envelope>>,
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.bus.subs.write().retain(|s| s.id != self.id);
    }
}

impl LocalBus {
    /// Registers a subscriber to `filters` with a queue of `depth`.
    pub fn subscribe(
        self: &Arc<Self>,
        filters: Vec<TopicFilter>,
        depth: usize,
    ) -> LocalSubscription {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.subs.write().push(Local { id, filters, tx });
        LocalSubscription {
            bus: self.clone(),
            id,
            rx,
        }
    }

    /// Number of registered subscribers.
    pub fn len(&self) -> usize {
        self.subs.read().len()
    }

    /// Whether nobody is registered.
    pub fn is_empty(&self) -> bool {
        self.subs.read().is_empty()
    }

    /// Delivers `envelope` to every matching subscriber.
    pub async fn deliver(&self, envelope: Arc<Envelope>, metrics: &AdapterMetrics) {
        let mut waiting = Vec::new();
        {
            let subs = self.subs.read();
            for s in subs.iter() {
                if !s.filters.iter().any(|f| f.matches(&envelope.topic)) {
                    continue;
                }
                match s.tx.try_send(envelope.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if envelope.qos.is_acknowledged() {
                            waiting.push(s.tx.clone());
                        } else {
                            metrics.record_drop();
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        for tx in waiting {
            let _ = tx.send(envelope.clone()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyhub_sdk::{QoS, Topic};

    fn env(topic: &str, qos: QoS) -> Arc<Envelope> {
        Arc::new(Envelope::new(Topic::new(topic).unwrap(), "x").with_qos(qos))
    }

    #[tokio::test]
    async fn matching_subscribers_get_envelopes_and_full_queues_drop_qos0() {
        let bus = Arc::new(LocalBus::default());
        let metrics = AdapterMetrics::default();
        let mut a = bus.subscribe(vec![TopicFilter::new("s/#").unwrap()], 1);
        let mut b = bus.subscribe(vec![TopicFilter::new("t/+").unwrap()], 4);
        bus.deliver(env("s/1", QoS::AtMostOnce), &metrics).await;
        bus.deliver(env("s/2", QoS::AtMostOnce), &metrics).await;
        assert_eq!(a.rx.try_recv().unwrap().topic.as_str(), "s/1");
        assert!(a.rx.try_recv().is_err());
        assert!(b.rx.try_recv().is_err());
        assert_eq!(metrics.snapshot().dropped, 1);
        drop(b);
        assert_eq!(bus.len(), 1);
    }

    #[tokio::test]
    async fn qos1_waits_for_room_instead_of_dropping() {
        let bus = Arc::new(LocalBus::default());
        let metrics = AdapterMetrics::default();
        let mut a = bus.subscribe(vec![TopicFilter::new("#").unwrap()], 1);
        bus.deliver(env("s/1", QoS::AtLeastOnce), &metrics).await;
        let bus2 = bus.clone();
        let pending = tokio::spawn(async move {
            let m = AdapterMetrics::default();
            bus2.deliver(env("s/2", QoS::AtLeastOnce), &m).await;
        });
        assert_eq!(a.rx.recv().await.unwrap().topic.as_str(), "s/1");
        assert_eq!(a.rx.recv().await.unwrap().topic.as_str(), "s/2");
        tokio::time::timeout(std::time::Duration::from_secs(5), pending)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(metrics.snapshot().dropped, 0);
    }
}
