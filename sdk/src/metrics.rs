//! Counters an adapter keeps, and the snapshot of the whole hub that `/health`
//! and `/metrics` are rendered from.
//!
//! The hub counts messages in and out of every adapter itself; adapters count
//! what only they can see (errors, drops, reconnects, malformed input) with
//! [`AdapterMetrics`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::adapter::AdapterState;

/// Live counters of one adapter instance. All methods are cheap and lock-free
/// except [`AdapterMetrics::incr`], meant for rare events.
#[derive(Debug, Default)]
pub struct AdapterMetrics {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    named: Mutex<BTreeMap<String, u64>>,
    rejected: Mutex<BTreeMap<String, u64>>,
    denied: Mutex<BTreeMap<&'static str, u64>>,
    /// Refusals not logged yet, and when the last refusal log line was
    /// written (milliseconds since the Unix epoch), for
    /// [`AdapterMetrics::should_log_rejection`].
    unlogged_rejections: AtomicU64,
    last_rejection_log_ms: AtomicU64,
}

/// Refusal log lines an adapter writes at most, one per this many
/// milliseconds: a flood of garbage must not become a flood of log lines.
pub const REJECTION_LOG_INTERVAL_MS: u64 = 1_000;

/// Prefix under which a plugin's rejections cross the C boundary as named
/// counters (the ABI's counter list has no reason field of its own).
pub const REJECTED_PREFIX: &str = "rejected:";

impl AdapterMetrics {
    /// One envelope published into the hub by this adapter (the hub calls this).
    pub fn record_in(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// One envelope handed to this adapter for sending (the hub calls this).
    pub fn record_out(&self) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// One message dropped (queue full, buffer overflow, undeliverable).
    pub fn record_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// One error (protocol error, failed send, malformed input).
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// One reconnect to a server.
    pub fn record_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// One request, packet, datagram or stanza refused from a peer, by reason
    /// (`malformed_datagram`, `body_too_large`, `xml_too_deep`, ...): shown as
    /// `polyhub_rejected_total{adapter,reason}`. Use a short snake_case
    /// reason from a fixed set, never text a peer controls.
    pub fn record_rejected(&self, reason: &str) {
        self.add_rejected(reason, 1);
    }

    /// Whether a refusal just recorded should be logged: true at most once
    /// per [`REJECTION_LOG_INTERVAL_MS`], with the number of refusals since
    /// the last line that was written (those were counted, not logged).
    pub fn should_log_rejection(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_rejection_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < REJECTION_LOG_INTERVAL_MS
            || self
                .last_rejection_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged_rejections.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.unlogged_rejections.swap(0, Ordering::Relaxed))
    }

    /// Adds `n` refusals for `reason` (see [`AdapterMetrics::record_rejected`]).
    pub fn add_rejected(&self, reason: &str, n: u64) {
        let mut rejected = self.rejected.lock();
        match rejected.get_mut(reason) {
            Some(v) => *v += n,
            None => {
                rejected.insert(reason.to_owned(), n);
            }
        }
    }

    /// One peer refused by `[auth]`, by action (`connect` for a failed
    /// authentication, else [`crate::Action::as_str`]): shown as
    /// `polyhub_auth_denied_total{adapter,action}`.
    pub fn record_denied(&self, action: &'static str) {
        *self.denied.lock().entry(action).or_insert(0) += 1;
    }

    /// Bumps an adapter-specific counter (`malformed_datagrams`, `webhook_retries`).
    /// Takes a lock: for rare events, not per message.
    pub fn incr(&self, name: &str) {
        self.add(name, 1);
    }

    /// Adds `n` to an adapter-specific counter.
    pub fn add(&self, name: &str, n: u64) {
        let mut named = self.named.lock();
        match named.get_mut(name) {
            Some(v) => *v += n,
            None => {
                named.insert(name.to_owned(), n);
            }
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            named: self
                .named
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            rejected: self
                .rejected
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            denied: self
                .denied
                .lock()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }
    }
}

/// Counter values of one adapter at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Envelopes the adapter published into the hub.
    pub messages_in: u64,
    /// Envelopes the hub handed to the adapter.
    pub messages_out: u64,
    /// Messages dropped (by the hub's queues or by the adapter).
    pub dropped: u64,
    /// Errors the adapter recorded.
    pub errors: u64,
    /// Reconnects the adapter made.
    pub reconnects: u64,
    /// Adapter-specific counters, by name.
    pub named: Vec<(String, u64)>,
    /// Refused peer input, by reason.
    pub rejected: Vec<(String, u64)>,
    /// Peers refused by `[auth]`, by action (`connect`, `read`, `write`,
    /// `subscribe`).
    pub denied: Vec<(String, u64)>,
}

impl MetricsSnapshot {
    /// Refusals for `reason` (0 if none).
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected
            .iter()
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Denials by `[auth]` for `action` (0 if none).
    pub fn denied(&self, action: &str) -> u64 {
        self.denied
            .iter()
            .find(|(a, _)| a == action)
            .map_or(0, |(_, n)| *n)
    }

    /// Refusals of every reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }
}

/// State and counters of one adapter instance.
#[derive(Debug, Clone)]
pub struct AdapterSnapshot {
    /// Instance name.
    pub name: String,
    /// Adapter kind (`mqtt`, or the plugin's kind).
    pub kind: String,
    /// Current state.
    pub state: AdapterState,
    /// Why the adapter is in that state, when it is not up.
    pub reason: Option<String>,
    /// Counter values.
    pub metrics: MetricsSnapshot,
}

/// A cumulative histogram, in the shape Prometheus wants.
#[derive(Debug, Clone, Default)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets, in seconds, ascending (`+Inf` implied).
    pub bounds: Vec<f64>,
    /// Cumulative count of observations `<=` each bound.
    pub cumulative: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of all observations, in seconds.
    pub sum: f64,
}

/// The state of the whole hub, for `/health` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct HubSnapshot {
    /// The hub's name (`[hub] name`).
    pub hub: String,
    /// Every adapter, in config order.
    pub adapters: Vec<AdapterSnapshot>,
    /// Time the router took to accept one envelope and queue it to every
    /// subscriber.
    pub routing_latency: HistogramSnapshot,
    /// Number of topics with a last value.
    pub topics: usize,
    /// Number of live subscriptions.
    pub subscriptions: usize,
    /// Last values evicted because the store held `max_topics` topics.
    pub last_value_evictions: u64,
    /// Retained publishes refused because only retained values were left
    /// in a full store.
    pub retained_quota_refusals: u64,
    /// The `[hub] data_dir` store's figures, when there is one.
    pub store: Option<StoreSnapshot>,
}

/// The `[hub] data_dir` store's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreSnapshot {
    /// Commits (batches) written.
    pub commits: u64,
    /// Topic changes written.
    pub writes: u64,
    /// Commits that failed (retried).
    pub errors: u64,
}

impl HubSnapshot {
    /// Whether every adapter is up.
    pub fn all_up(&self) -> bool {
        self.adapters.iter().all(|a| a.state == AdapterState::Up)
    }
}
