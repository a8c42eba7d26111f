//! One page of the last-value store in topic order, for `/api/topics`, the
//! HTTP adapter's `GET /topics` and every other paged listing.

use std::sync::Arc;

use polyhub_sdk::Envelope;

use crate::router::Router;

/// Up to `limit` last values whose topic starts with `prefix` and sorts
/// after `after`, in topic order.
pub fn page(
    router: &Router,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<Arc<Envelope>> {
    if limit == 0 {
        return Vec::new();
    }
    // Keeps the `limit` smallest matching topics (a bounded max-heap), so a
    // page costs one pass over the store and no sort of all of it.
    let mut heap: std::collections::BinaryHeap<ByTopic> = std::collections::BinaryHeap::new();
    router.store().for_each_last(|e| {
        let t = e.topic.as_str();
        if !t.starts_with(prefix) || after.is_some_and(|a| t <= a) {
            return;
        }
        if heap.len() < limit {
            heap.push(ByTopic(e.clone()));
        } else if heap.peek().is_some_and(|top| t < top.0.topic.as_str()) {
            heap.pop();
            heap.push(ByTopic(e.clone()));
        }
    });
    let mut out: Vec<Arc<Envelope>> = heap.into_iter().map(|b| b.0).collect();
    out.sort_by(|a, b| a.topic.cmp(&b.topic));
    out
}

struct ByTopic(Arc<Envelope>);

impl PartialEq for ByTopic {
    fn eq(&self, other: &Self) -> bool {
        self.0.topic == other.0.topic
    }
}
impl Eq for ByTopic {}
impl PartialOrd for ByTopic {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByTopic {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.topic.cmp(&other.0.topic)
    }
}
