//! The plugin side of the hub link: a [`HubLink`] implemented over the hub's
//! C callbacks ([`HostApi`]), so a loaded adapter gets the same
//! [`AdapterContext`](crate::AdapterContext) as a built-in one.
//!
//! Envelopes the hub pushes arrive through [`PluginLink::deliver`] and go
//! into a small bounded queue per subscription; when it is full the hub is
//! told to wait ([`status::PENDING`]), so the hub's own per-subscription
//! queue (and its drop-or-wait policy) stays the one that decides.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::abi::{
    status, Completion, CounterView, EnvelopeSink, EnvelopeView, HeaderView, HostApi, HostCtx,
    MetricsDelta, SnapshotSink, SnapshotView, StrView,
};
use super::view::{
    copy_envelope, copy_envelope_cached, copy_snapshot, envelope_view, state_to_u32, OriginCache,
    ViewError,
};
use crate::adapter::{
    AdapterState, HubLink, PublishError, SubscribeError, SubscribeOptions, SubscriptionId,
};
use crate::envelope::Envelope;
use crate::metrics::{AdapterMetrics, HubSnapshot, MetricsSnapshot, REJECTED_PREFIX};
use crate::topic::{Topic, TopicFilter};

/// Envelopes queued on the plugin side of each subscription, in front of
/// the hub's own queue of the configured depth.
pub(crate) const PLUGIN_QUEUE: usize = 32;

/// The hub's callbacks and its context pointer for one adapter instance.
/// Dropping the last reference tells the hub it may free the context.
pub(crate) struct HostHandle {
    api: HostApi,
    ctx: HostCtx,
}

// SAFETY: the hub promises that its callbacks may be called from any thread
// with this context until `release`; the pointer itself is never dereferenced
// on this side.
unsafe impl Send for HostHandle {}
// SAFETY: as above.
unsafe impl Sync for HostHandle {}

impl HostHandle {
    /// Takes the hub's table, reading only the fields both sides know; the
    /// optional fields an older hub's table lacks stay absent (null).
    ///
    /// # Safety
    /// `api` must point to a valid [`HostApi`] of `size` bytes, at least
    /// [`HOST_API_1_0_SIZE`](super::abi::HOST_API_1_0_SIZE) (checked by the
    /// caller), and `ctx` stay valid until `release`.
    pub(crate) unsafe fn new(api: *const HostApi, ctx: HostCtx) -> Self {
        let mut table = std::mem::MaybeUninit::<HostApi>::zeroed();
        // SAFETY: the caller guarantees `size` readable bytes.
        let len = unsafe { (*api).size }.min(std::mem::size_of::<HostApi>());
        // SAFETY: copies the hub's prefix into our table. Every field up to
        // HOST_API_1_0_SIZE is copied; the rest are `Option`s of function
        // pointers, for which zero is `None`.
        let api = unsafe {
            std::ptr::copy_nonoverlapping(api as *const u8, table.as_mut_ptr() as *mut u8, len);
            table.assume_init()
        };
        HostHandle { api, ctx }
    }

    pub(crate) fn finished(&self, code: i32, message: &str) {
        // SAFETY: valid until release, which only our Drop calls.
        unsafe { (self.api.finished)(self.ctx, code, StrView::from_str(message)) }
    }

    pub(crate) fn add_metrics(&self, delta: &MetricsSnapshot) {
        let named: Vec<CounterView> = delta
            .named
            .iter()
            .map(|(k, v)| CounterView {
                name: StrView::from_str(k),
                value: *v,
            })
            .collect();
        let view = MetricsDelta {
            size: std::mem::size_of::<MetricsDelta>(),
            dropped: delta.dropped,
            errors: delta.errors,
            reconnects: delta.reconnects,
            named: named.as_ptr(),
            named_len: named.len(),
        };
        // SAFETY: valid until release; the view lives for the call.
        unsafe { (self.api.add_metrics)(self.ctx, &view) }
    }
}

impl Drop for HostHandle {
    fn drop(&mut self) {
        // SAFETY: the last use of ctx.
        unsafe { (self.api.release)(self.ctx) }
    }
}

struct SubSlot {
    host_id: u64,
    tx: mpsc::Sender<Arc<Envelope>>,
    origins: OriginCache,
}

/// The [`HubLink`] of one loaded adapter instance.
pub(crate) struct PluginLink {
    host: Arc<HostHandle>,
    subs: Mutex<HashMap<u64, SubSlot>>,
    next_token: AtomicU64,
    metrics: Arc<AdapterMetrics>,
    reported: Mutex<MetricsSnapshot>,
}

impl PluginLink {
    pub(crate) fn new(host: Arc<HostHandle>, metrics: Arc<AdapterMetrics>) -> Self {
        PluginLink {
            host,
            subs: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            metrics,
            reported: Mutex::new(MetricsSnapshot::default()),
        }
    }

    /// Copies a delivered envelope and returns it with the queue of
    /// subscription `token`; `None` when the subscription is gone.
    ///
    /// # Safety
    /// As [`copy_envelope_cached`].
    pub(crate) unsafe fn take_delivery(
        &self,
        token: u64,
        view: *const EnvelopeView,
    ) -> Option<Result<(mpsc::Sender<Arc<Envelope>>, Envelope), ViewError>> {
        let mut subs = self.subs.lock();
        let slot = subs.get_mut(&token)?;
        // SAFETY: forwarded.
        let copied = unsafe { copy_envelope_cached(view, &mut slot.origins) };
        Some(copied.map(|e| (slot.tx.clone(), e)))
    }

    /// Reports the counters recorded since the last report to the hub.
    pub(crate) fn flush_metrics(&self) {
        let now = self.metrics.snapshot();
        let delta = {
            let mut last = self.reported.lock();
            let named = now
                .named
                .iter()
                .filter_map(|(k, v)| {
                    let before = last
                        .named
                        .iter()
                        .find(|(lk, _)| lk == k)
                        .map_or(0, |(_, lv)| *lv);
                    (*v > before).then(|| (k.clone(), v - before))
                })
                .chain(now.rejected.iter().filter_map(|(k, v)| {
                    let before = last
                        .rejected
                        .iter()
                        .find(|(lk, _)| lk == k)
                        .map_or(0, |(_, lv)| *lv);
                    (*v > before).then(|| (format!("{REJECTED_PREFIX}{k}"), v - before))
                }))
                .collect();
            let delta = MetricsSnapshot {
                dropped: now.dropped.saturating_sub(last.dropped),
                errors: now.errors.saturating_sub(last.errors),
                reconnects: now.reconnects.saturating_sub(last.reconnects),
                named,
                ..MetricsSnapshot::default()
            };
            *last = now;
            delta
        };
        if delta.dropped + delta.errors + delta.reconnects > 0 || !delta.named.is_empty() {
            self.host.add_metrics(&delta);
        }
    }

    fn api(&self) -> &HostApi {
        &self.host.api
    }

    fn ctx(&self) -> HostCtx {
        self.host.ctx
    }

    fn collect(&self, call: impl FnOnce(EnvelopeSink) -> i32) -> Vec<Arc<Envelope>> {
        let mut out: Vec<Arc<Envelope>> = Vec::new();
        let sink = EnvelopeSink {
            ctx: &mut out as *mut Vec<Arc<Envelope>> as *mut c_void,
            call: collect_envelope,
        };
        call(sink);
        out
    }
}

unsafe extern "C" fn collect_envelope(ctx: *mut c_void, envelope: *const EnvelopeView) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: ctx is the Vec `collect` lent for this call.
        let out = unsafe { &mut *(ctx as *mut Vec<Arc<Envelope>>) };
        // SAFETY: the hub lends a valid view for this call.
        if let Ok(e) = unsafe { copy_envelope(envelope) } {
            out.push(Arc::new(e));
        }
    }));
}

unsafe extern "C" fn collect_snapshot(ctx: *mut c_void, snapshot: *const SnapshotView) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: ctx is the snapshot `snapshot()` lent for this call.
        let out = unsafe { &mut *(ctx as *mut HubSnapshot) };
        // SAFETY: the hub lends a valid view for this call.
        *out = unsafe { copy_snapshot(snapshot) };
    }));
}

/// Completion of a publish the hub parked: wakes the waiting adapter.
unsafe extern "C" fn publish_done(ctx: *mut c_void, code: i32) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: created by `Box::into_raw` in `publish`, called once.
        let tx = unsafe { Box::from_raw(ctx as *mut oneshot::Sender<i32>) };
        let _ = tx.send(code);
    }));
}

fn publish_result(code: i32) -> Result<(), PublishError> {
    match code {
        status::OK => Ok(()),
        status::FAILED => Err(PublishError::Failed),
        _ => Err(PublishError::Closed),
    }
}

impl HubLink for PluginLink {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), PublishError>> {
        let (tx, rx) = oneshot::channel::<i32>();
        let done = Completion {
            ctx: Box::into_raw(Box::new(tx)) as *mut c_void,
            call: publish_done,
        };
        let mut headers: Vec<HeaderView> = Vec::new();
        let view = envelope_view(&envelope, &mut headers);
        // SAFETY: the view and its buffers live for the call.
        let code = unsafe { (self.api().publish)(self.ctx(), &view, done) };
        if code == status::PENDING {
            async move { publish_result(rx.await.unwrap_or(status::CLOSED)) }.boxed()
        } else {
            // The hub did not take the completion: free it here.
            // SAFETY: created above, not handed over.
            drop(unsafe { Box::from_raw(done.ctx as *mut oneshot::Sender<i32>) });
            if code == status::INVALID {
                tracing::warn!(topic = %envelope.topic, "The hub refused an envelope as invalid.");
            }
            futures::future::ready(publish_result(code)).boxed()
        }
    }

    fn subscribe(
        &self,
        filters: &[TopicFilter],
        depth: Option<usize>,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        self.subscribe_with_options(
            filters,
            SubscribeOptions {
                depth,
                ..SubscribeOptions::default()
            },
        )
    }

    fn subscribe_with_options(
        &self,
        filters: &[TopicFilter],
        options: SubscribeOptions,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        let with_options = match self.api().subscribe_with_options {
            Some(call) if options.include_own => Some(call),
            None if options.include_own => {
                return Err(SubscribeError::Unsupported("include_own subscriptions"))
            }
            _ => None,
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(PLUGIN_QUEUE);
        self.subs.lock().insert(
            token,
            SubSlot {
                host_id: 0,
                tx,
                origins: OriginCache::default(),
            },
        );
        let views: Vec<StrView> = filters
            .iter()
            .map(|f| StrView::from_str(f.as_str()))
            .collect();
        let (filters, len, depth) = (views.as_ptr(), views.len(), options.depth.unwrap_or(0));
        let mut host_id = 0u64;
        // SAFETY: the views live for the call; out pointer is valid.
        let code = unsafe {
            match with_options {
                Some(call) => call(self.ctx(), filters, len, depth, 1, token, &mut host_id),
                None => {
                    (self.api().subscribe)(self.ctx(), filters, len, depth, token, &mut host_id)
                }
            }
        };
        if code != status::OK {
            self.subs.lock().remove(&token);
            return Err(SubscribeError::Closed);
        }
        if let Some(slot) = self.subs.lock().get_mut(&token) {
            slot.host_id = host_id;
        }
        Ok((SubscriptionId(token), rx))
    }

    fn add_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> Result<(), SubscribeError> {
        let host_id = self
            .subs
            .lock()
            .get(&id.0)
            .map(|s| s.host_id)
            .ok_or(SubscribeError::Unknown)?;
        // SAFETY: the view lives for the call.
        let code = unsafe {
            (self.api().add_filter)(self.ctx(), host_id, StrView::from_str(filter.as_str()))
        };
        match code {
            status::OK => Ok(()),
            status::UNKNOWN => Err(SubscribeError::Unknown),
            _ => Err(SubscribeError::Closed),
        }
    }

    fn remove_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> bool {
        let Some(host_id) = self.subs.lock().get(&id.0).map(|s| s.host_id) else {
            return false;
        };
        // SAFETY: the view lives for the call.
        unsafe {
            (self.api().remove_filter)(self.ctx(), host_id, StrView::from_str(filter.as_str())) != 0
        }
    }

    fn unsubscribe(&self, id: SubscriptionId) {
        let slot = self.subs.lock().remove(&id.0);
        if let Some(slot) = slot {
            // SAFETY: plain call with a valid ctx.
            unsafe { (self.api().unsubscribe)(self.ctx(), slot.host_id) }
        }
    }

    fn last_value(&self, topic: &Topic) -> Option<Arc<Envelope>> {
        self.collect(|sink| {
            // SAFETY: the view and sink live for the call.
            unsafe { (self.api().last_value)(self.ctx(), StrView::from_str(topic.as_str()), sink) }
        })
        .pop()
    }

    fn clear_last_value(&self, topic: &Topic) -> bool {
        // SAFETY: the view lives for the call.
        unsafe { (self.api().clear_last_value)(self.ctx(), StrView::from_str(topic.as_str())) != 0 }
    }

    fn last_values(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        self.collect(|sink| {
            // SAFETY: the view and sink live for the call.
            unsafe {
                (self.api().last_values)(self.ctx(), StrView::from_str(filter.as_str()), sink)
            }
        })
    }

    fn retained(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        self.collect(|sink| {
            // SAFETY: the view and sink live for the call.
            unsafe { (self.api().retained)(self.ctx(), StrView::from_str(filter.as_str()), sink) }
        })
    }

    fn set_state(&self, state: AdapterState, reason: Option<String>) {
        // SAFETY: the view lives for the call.
        unsafe {
            (self.api().set_state)(
                self.ctx(),
                state_to_u32(state),
                StrView::from_opt(reason.as_deref()),
            )
        }
    }

    fn snapshot(&self) -> HubSnapshot {
        let mut out = HubSnapshot::default();
        let sink = SnapshotSink {
            ctx: &mut out as *mut HubSnapshot as *mut c_void,
            call: collect_snapshot,
        };
        // SAFETY: the sink lives for the call.
        unsafe { (self.api().snapshot)(self.ctx(), sink) };
        out
    }
}

impl Drop for PluginLink {
    fn drop(&mut self) {
        let subs: Vec<u64> = self.subs.lock().drain().map(|(_, s)| s.host_id).collect();
        for host_id in subs {
            // SAFETY: ctx is still valid: `host` is released after this.
            unsafe { (self.api().unsubscribe)(self.ctx(), host_id) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::abi::HOST_API_1_0_SIZE;

    unsafe extern "C" fn publish(_: HostCtx, _: *const EnvelopeView, _: Completion) -> i32 {
        status::CLOSED
    }
    unsafe extern "C" fn subscribe(
        _: HostCtx,
        _: *const StrView,
        _: usize,
        _: usize,
        _: u64,
        _: *mut u64,
    ) -> i32 {
        status::OK
    }
    unsafe extern "C" fn subscribe_own(
        _: HostCtx,
        _: *const StrView,
        _: usize,
        _: usize,
        include_own: u8,
        _: u64,
        out_id: *mut u64,
    ) -> i32 {
        // SAFETY: the link passes a valid out pointer.
        unsafe { *out_id = 7 + u64::from(include_own) };
        status::OK
    }
    unsafe extern "C" fn filter(_: HostCtx, _: u64, _: StrView) -> i32 {
        status::OK
    }
    unsafe extern "C" fn remove(_: HostCtx, _: u64, _: StrView) -> u8 {
        0
    }
    unsafe extern "C" fn id(_: HostCtx, _: u64) {}
    unsafe extern "C" fn values(_: HostCtx, _: StrView, _: EnvelopeSink) -> i32 {
        status::OK
    }
    unsafe extern "C" fn clear(_: HostCtx, _: StrView) -> u8 {
        0
    }
    unsafe extern "C" fn state(_: HostCtx, _: u32, _: StrView) {}
    unsafe extern "C" fn snapshot(_: HostCtx, _: SnapshotSink) -> i32 {
        status::OK
    }
    unsafe extern "C" fn metrics(_: HostCtx, _: *const MetricsDelta) {}
    unsafe extern "C" fn finished(_: HostCtx, _: i32, _: StrView) {}
    unsafe extern "C" fn release(_: HostCtx) {}

    fn link(size: usize) -> PluginLink {
        let api = HostApi {
            size,
            publish,
            subscribe,
            add_filter: filter,
            remove_filter: remove,
            unsubscribe: id,
            last_value: values,
            clear_last_value: clear,
            last_values: values,
            retained: values,
            set_state: state,
            snapshot,
            add_metrics: metrics,
            finished,
            release,
            subscribe_with_options: Some(subscribe_own),
        };
        // SAFETY: a full table whose callbacks ignore the null ctx.
        let host = unsafe { HostHandle::new(&api, std::ptr::null()) };
        PluginLink::new(Arc::new(host), Arc::default())
    }

    fn own() -> SubscribeOptions {
        SubscribeOptions {
            depth: None,
            include_own: true,
            ..SubscribeOptions::default()
        }
    }

    #[test]
    fn include_own_goes_through_the_hubs_1_1_callback() {
        let link = link(std::mem::size_of::<HostApi>());
        let filters = [TopicFilter::new("a/#").unwrap()];
        let (id, _rx) = link.subscribe_with_options(&filters, own()).unwrap();
        assert_eq!(link.subs.lock()[&id.0].host_id, 8);
    }

    #[test]
    fn a_1_0_hubs_table_is_read_up_to_its_size_and_include_own_refused() {
        let link = link(HOST_API_1_0_SIZE);
        assert!(link.api().subscribe_with_options.is_none());
        let filters = [TopicFilter::new("a/#").unwrap()];
        assert!(matches!(
            link.subscribe_with_options(&filters, own()),
            Err(SubscribeError::Unsupported(_))
        ));
        assert!(link.subscribe(&filters, None).is_ok());
    }
}
