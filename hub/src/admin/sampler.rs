//! Once a second: the hub's totals, their rates over the last minutes, and
//! the `tick` every dashboard stream gets (built once, shared by all).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use polyhub_sdk::{AdapterContext, Envelope, HubSnapshot, SubscribeOptions};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ADMIN_ADAPTER;
use crate::hub::Shared;

/// Seconds of rate history kept (and drawn).
pub(crate) const HISTORY: usize = 300;
/// Latest messages kept for the dashboard's live feed.
const RECENT: usize = 20;

/// One second's hub-wide figures (the admin's own feed left out).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// Unix time in milliseconds.
    pub t_ms: u64,
    /// Envelopes published into the hub in that second.
    pub r#in: u64,
    /// Envelopes handed to adapters in that second.
    pub out: u64,
    /// Drops in that second.
    pub dropped: u64,
    /// Errors and refusals (`rejected`) in that second.
    pub errors: u64,
}

impl Sample {
    pub(crate) fn to_json(self) -> Value {
        json!({"t": self.t_ms, "in": self.r#in, "out": self.out, "dropped": self.dropped, "errors": self.errors})
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    r#in: u64,
    out: u64,
    dropped: u64,
    errors: u64,
}

fn totals(s: &HubSnapshot) -> Totals {
    let mut t = Totals::default();
    for a in s.adapters.iter().filter(|a| a.name != ADMIN_ADAPTER) {
        t.r#in += a.metrics.messages_in;
        t.out += a.metrics.messages_out;
        t.dropped += a.metrics.dropped;
        t.errors += a.metrics.errors + a.metrics.rejected.iter().map(|(_, n)| n).sum::<u64>();
    }
    t
}

/// The rate history, the latest messages and the tick channel.
pub(crate) struct Sampler {
    history: Mutex<VecDeque<Sample>>,
    recent: Mutex<VecDeque<Arc<Envelope>>>,
    ticks: broadcast::Sender<Arc<str>>,
}

impl Sampler {
    /// Starts the sampler and the live feed on `tracker`.
    pub(crate) fn start(
        hub: Arc<Shared>,
        ctx: &AdapterContext,
        tracker: &TaskTracker,
        token: CancellationToken,
    ) -> Arc<Sampler> {
        let (ticks, _) = broadcast::channel(8);
        let sampler = Arc::new(Sampler {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            ticks,
        });
        // The live feed: what arrives last, whichever adapter brought it.
        // QoS 0: a busy dashboard feed drops (counted), it never stalls a publisher.
        let options = SubscribeOptions {
            depth: Some(256),
            include_own: true,
            max_qos: Some(polyhub_sdk::QoS::AtMostOnce),
        };
        let all = polyhub_sdk::TopicFilter::new("#").map_err(|e| e.to_string());
        match all.and_then(|f| ctx.subscribe_with([f], options).map_err(|e| e.to_string())) {
            Ok(mut sub) => {
                let s = sampler.clone();
                let token = token.clone();
                tracker.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            e = sub.recv() => {
                                let Some(e) = e else { break };
                                let mut recent = s.recent.lock();
                                if recent.len() == RECENT {
                                    recent.pop_front();
                                }
                                recent.push_back(e);
                            }
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "Admin live feed unavailable."),
        }
        let s = sampler.clone();
        tracker.spawn(async move {
            let mut timer = tokio::time::interval(Duration::from_secs(1));
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last: Option<Totals> = None;
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = timer.tick() => {}
                }
                let snap = hub.snapshot();
                let now = totals(&snap);
                let prev = last.unwrap_or(now);
                last = Some(now);
                let sample = Sample {
                    t_ms: unix_ms(SystemTime::now()),
                    r#in: now.r#in.saturating_sub(prev.r#in),
                    out: now.out.saturating_sub(prev.out),
                    dropped: now.dropped.saturating_sub(prev.dropped),
                    errors: now.errors.saturating_sub(prev.errors),
                };
                {
                    let mut h = s.history.lock();
                    if h.len() == HISTORY {
                        h.pop_front();
                    }
                    h.push_back(sample);
                }
                if s.ticks.receiver_count() > 0 {
                    let tick = s.tick(&hub, &snap, sample);
                    let _ = s.ticks.send(Arc::from(tick.to_string()));
                }
            }
        });
        sampler
    }

    /// The rate history, oldest first.
    pub(crate) fn history(&self) -> Vec<Sample> {
        self.history.lock().iter().copied().collect()
    }

    /// A receiver of ticks (JSON text).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.ticks.subscribe()
    }

    /// The latest messages, newest first.
    pub(crate) fn recent(&self) -> Vec<Arc<Envelope>> {
        self.recent.lock().iter().rev().cloned().collect()
    }

    fn tick(&self, hub: &Shared, snap: &HubSnapshot, sample: Sample) -> Value {
        let clients = hub.clients.count_by_adapter();
        json!({
            "hub": snap.hub,
            "sample": sample.to_json(),
            "adapters": super::api::adapters_json(snap, &clients),
            "topics": snap.topics,
            "store": super::api::store_json(snap),
            "subscriptions": snap.subscriptions,
            "clients": hub.clients.len(),
            "recent": self.recent().iter().map(|e| super::api::envelope_json(e)).collect::<Vec<_>>(),
        })
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
