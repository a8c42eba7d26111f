//! The hub's side of a running plugin adapter: the [`HostApi`] callbacks the
//! plugin calls (publish, subscribe, last values, state, metrics, log), and
//! the forwarders that push each subscription's envelopes into the plugin.
//!
//! Every callback runs inside `catch_unwind` and never blocks: a publish
//! that must wait for a full QoS 1 queue is finished on the hub's runtime and
//! reported through the plugin's completion. A forwarder takes one envelope
//! at a time from the hub's bounded queue and waits while the plugin's queue
//! is full, so the hub's drop-or-wait policy applies to loaded adapters as to
//! built-in ones.

use std::collections::HashMap;
use std::ffi::c_void;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use parking_lot::Mutex;
use polyhub_sdk::plugin::abi::{
    status, Completion, EnvelopeSink, EnvelopeView, HeaderView, HostApi, HostCtx, MetricsDelta,
    PluginRunning, SnapshotSink, StrView,
};
use polyhub_sdk::plugin::view::{
    copy_envelope_cached, envelope_view, state_from_u32, with_snapshot_view, OriginCache,
};
use polyhub_sdk::{
    AdapterContext, AdapterState, Envelope, PublishError, SubscribeOptions, Subscription, Topic,
    TopicFilter,
};
use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::handshake::LoadedPlugin;

/// How the plugin's run ended: a status and a message.
pub(crate) type Outcome = (i32, String);

/// Hands the plugin's `running` handle back once nobody on the hub's side
/// uses it.
pub(crate) struct RunningGuard {
    plugin: Arc<LoadedPlugin>,
    running: PluginRunning,
}

// SAFETY: the plugin's running handle may be used from any thread (the sdk
// keeps it behind an `Arc` of `Send + Sync` state).
unsafe impl Send for RunningGuard {}
// SAFETY: as above.
unsafe impl Sync for RunningGuard {}

impl RunningGuard {
    pub(crate) fn new(plugin: Arc<LoadedPlugin>, running: PluginRunning) -> Self {
        RunningGuard { plugin, running }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        // SAFETY: made by the plugin's `start`, released once.
        unsafe { (self.plugin.api.release)(self.running) };
    }
}

struct HostSub {
    sub: Arc<Mutex<Subscription>>,
    stop: CancellationToken,
}

/// Hub-side state of one running plugin adapter; the plugin holds one
/// reference (its `HostCtx`) until it calls `release`.
pub(crate) struct HostState {
    ctx: AdapterContext,
    plugin: Arc<LoadedPlugin>,
    handle: tokio::runtime::Handle,
    running: watch::Sender<Option<Arc<RunningGuard>>>,
    subs: Mutex<HashMap<u64, HostSub>>,
    /// Cancels every forwarder.
    stop: CancellationToken,
    finished: Mutex<Option<oneshot::Sender<Outcome>>>,
    failed: AtomicBool,
    /// Origin strings of what the plugin publishes (its own name, mostly).
    origins: Mutex<OriginCache>,
}

impl HostState {
    /// State for a plugin adapter running as `ctx`; the receiver yields how
    /// its run ended. Must be called on the hub's runtime.
    pub(crate) fn new(
        ctx: AdapterContext,
        plugin: Arc<LoadedPlugin>,
    ) -> (Arc<Self>, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(HostState {
            plugin,
            handle: tokio::runtime::Handle::current(),
            running: watch::Sender::new(None),
            subs: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            finished: Mutex::new(Some(tx)),
            failed: AtomicBool::new(false),
            origins: Mutex::new(OriginCache::seeded(&ctx.origin())),
            ctx,
        });
        (state, rx)
    }

    pub(crate) fn set_running(&self, running: Arc<RunningGuard>) {
        self.running.send_replace(Some(running));
    }

    /// Asks the plugin's adapter to stop.
    pub(crate) fn stop_plugin(&self) {
        if let Some(r) = self.running.borrow().as_ref() {
            // SAFETY: valid until the guard is dropped.
            unsafe { (self.plugin.api.stop)(r.running) };
        }
    }

    /// The run is over: stop forwarding and let go of the plugin's handle.
    pub(crate) fn end(&self) {
        self.stop.cancel();
        self.subs.lock().clear();
        self.running.send_replace(None);
    }

    /// Marks the adapter failed after a panic at the boundary: it receives
    /// nothing more and is asked to stop.
    fn fail(&self, reason: String) {
        if self.failed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.ctx.metrics().record_error();
        tracing::error!(adapter = %self.ctx.name(), plugin = %self.plugin.path, reason = %reason, "Plugin adapter failed; it receives no more envelopes.");
        self.ctx.set_state(AdapterState::Failed, Some(reason));
        self.stop.cancel();
        self.subs.lock().clear();
        self.stop_plugin();
    }

    fn subscribe(
        self: &Arc<Self>,
        filters: Vec<TopicFilter>,
        options: SubscribeOptions,
        token: u64,
    ) -> Result<u64, i32> {
        if self.failed.load(Ordering::Relaxed) || self.stop.is_cancelled() {
            return Err(status::CLOSED);
        }
        let sub = self
            .ctx
            .subscribe_with(filters, options)
            .map_err(|_| status::CLOSED)?;
        let id = sub.id().0;
        let sub = Arc::new(Mutex::new(sub));
        let stop = self.stop.child_token();
        self.subs.lock().insert(
            id,
            HostSub {
                sub: sub.clone(),
                stop: stop.clone(),
            },
        );
        let state = self.clone();
        self.handle
            .spawn(async move { state.forward(sub, token, stop).await });
        Ok(id)
    }

    /// Pushes one subscription's envelopes into the plugin, one at a time.
    async fn forward(
        self: Arc<Self>,
        sub: Arc<Mutex<Subscription>>,
        token: u64,
        stop: CancellationToken,
    ) {
        let mut running_rx = self.running.subscribe();
        let running = tokio::select! {
            _ = stop.cancelled() => return,
            r = running_rx.wait_for(Option::is_some) => match r {
                Ok(r) => r.clone(),
                Err(_) => return,
            },
        };
        let Some(running) = running else { return };
        drop(running_rx);
        let slot = Arc::new(DeliverSlot::default());
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                e = std::future::poll_fn(|cx| poll_subscription(&sub, cx)) => e,
            };
            let Some(envelope) = next else { break };
            let code = self.deliver_one(&running, token, &envelope, &slot);
            let code = if code == status::PENDING {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = slot.notify.notified() => slot.code.load(Ordering::Acquire),
                }
            } else {
                code
            };
            match code {
                status::OK => {}
                status::CLOSED => break,
                status::PANIC => {
                    self.fail("plugin panicked while receiving an envelope".to_owned());
                    break;
                }
                other => {
                    self.ctx.metrics().record_error();
                    tracing::warn!(adapter = %self.ctx.name(), topic = %envelope.topic, status = other, "Plugin refused an envelope.");
                }
            }
        }
    }
}

impl HostState {
    /// Hands one envelope to the plugin; on [`status::PENDING`] the plugin
    /// reports the outcome through `slot`.
    fn deliver_one(
        &self,
        running: &RunningGuard,
        token: u64,
        envelope: &Envelope,
        slot: &Arc<DeliverSlot>,
    ) -> i32 {
        // Stays empty (no allocation) for envelopes without headers.
        let mut headers: Vec<HeaderView> = Vec::new();
        let view = envelope_view(envelope, &mut headers);
        let done = Completion {
            ctx: Arc::into_raw(slot.clone()) as *mut c_void,
            call: deliver_done,
        };
        // SAFETY: the guard keeps `running` valid; the view lives for the call.
        let code = unsafe { (self.plugin.api.deliver)(running.running, token, &view, done) };
        if code != status::PENDING {
            // The plugin did not take the completion.
            // SAFETY: the reference made above, not handed over.
            drop(unsafe { Arc::from_raw(done.ctx as *const DeliverSlot) });
        }
        code
    }
}

/// Polls a shared subscription once (`recv` is cancel-safe: the waker stays
/// registered with the channel when the future is dropped).
fn poll_subscription(
    sub: &Mutex<Subscription>,
    cx: &mut Context<'_>,
) -> Poll<Option<Arc<Envelope>>> {
    let mut guard = sub.lock();
    let fut = guard.recv();
    futures::pin_mut!(fut);
    fut.poll(cx)
}

/// Where the plugin reports a delivery it had to park.
#[derive(Default)]
struct DeliverSlot {
    notify: Notify,
    code: AtomicI32,
}

unsafe extern "C" fn deliver_done(ctx: *mut c_void, code: i32) {
    let _ = catch_unwind(|| {
        // SAFETY: one reference made by `forward` for this delivery.
        let slot = unsafe { Arc::from_raw(ctx as *const DeliverSlot) };
        slot.code.store(code, Ordering::Release);
        slot.notify.notify_one();
    });
}

/// The callbacks every loaded adapter gets.
pub(crate) fn host_api() -> *const HostApi {
    &HOST_API
}

static HOST_API: HostApi = HostApi {
    size: std::mem::size_of::<HostApi>(),
    publish: host_publish,
    subscribe: host_subscribe,
    add_filter: host_add_filter,
    remove_filter: host_remove_filter,
    unsubscribe: host_unsubscribe,
    last_value: host_last_value,
    clear_last_value: host_clear_last_value,
    last_values: host_last_values,
    retained: host_retained,
    set_state: host_set_state,
    snapshot: host_snapshot,
    add_metrics: host_add_metrics,
    finished: host_finished,
    release: host_release,
    subscribe_with_options: Some(host_subscribe_with_options),
};

/// Runs a callback body on the state behind `ctx`, inside `catch_unwind`.
fn with_state<R>(ctx: HostCtx, on_panic: R, f: impl FnOnce(&Arc<HostState>) -> R) -> R {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `Arc::into_raw` made in `run`, alive until
        // `host_release`; borrow it without taking the reference.
        let state = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(ctx as *const HostState) });
        f(&state)
    }))
    .unwrap_or_else(|p| {
        tracing::error!(panic = %polyhub_sdk::plugin::panic_message(&*p), "Hub callback panicked; caught at the plugin boundary.");
        on_panic
    })
}

fn publish_code(r: Result<(), PublishError>) -> i32 {
    match r {
        Ok(()) => status::OK,
        Err(PublishError::Failed) => status::FAILED,
        Err(_) => status::CLOSED,
    }
}

/// A completion that may travel to the hub's threads.
struct SendCompletion(Completion);
// SAFETY: the sdk's completions may be called from any thread.
unsafe impl Send for SendCompletion {}

unsafe extern "C" fn host_publish(
    ctx: HostCtx,
    envelope: *const EnvelopeView,
    done: Completion,
) -> i32 {
    with_state(ctx, status::PANIC, |state| {
        if state.failed.load(Ordering::Relaxed) {
            return status::FAILED;
        }
        // SAFETY: lent for this call; copied here.
        let copied = unsafe { copy_envelope_cached(envelope, &mut state.origins.lock()) };
        let envelope = match copied {
            Ok(e) => e,
            Err(e) => {
                state.ctx.metrics().record_error();
                tracing::warn!(adapter = %state.ctx.name(), error = %e, "Plugin published an invalid envelope.");
                return status::INVALID;
            }
        };
        let owner = state.clone();
        let mut fut = async move { owner.ctx.publish(envelope).await }.boxed();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => publish_code(r),
            Poll::Pending => {
                let done = SendCompletion(done);
                state.handle.spawn(async move {
                    let code = publish_code(fut.await);
                    let done = done;
                    // SAFETY: called once, as the contract says.
                    unsafe { (done.0.call)(done.0.ctx, code) };
                });
                status::PENDING
            }
        }
    })
}

unsafe fn parse<T: std::str::FromStr>(view: StrView) -> Option<T> {
    // SAFETY: lent for the call.
    unsafe { view.str() }.and_then(|s| s.parse().ok())
}

unsafe extern "C" fn host_subscribe(
    ctx: HostCtx,
    filters: *const StrView,
    filters_len: usize,
    depth: usize,
    token: u64,
    out_id: *mut u64,
) -> i32 {
    // SAFETY: forwarded.
    unsafe { host_subscribe_with_options(ctx, filters, filters_len, depth, 0, token, out_id) }
}

unsafe extern "C" fn host_subscribe_with_options(
    ctx: HostCtx,
    filters: *const StrView,
    filters_len: usize,
    depth: usize,
    include_own: u8,
    token: u64,
    out_id: *mut u64,
) -> i32 {
    with_state(ctx, status::PANIC, |state| {
        if out_id.is_null() || (filters.is_null() && filters_len > 0) {
            return status::INVALID;
        }
        let views = if filters_len == 0 {
            &[][..]
        } else {
            // SAFETY: `filters_len` views lent for the call.
            unsafe { std::slice::from_raw_parts(filters, filters_len) }
        };
        let mut parsed = Vec::with_capacity(views.len());
        for v in views {
            // SAFETY: lent for the call.
            match unsafe { parse::<TopicFilter>(*v) } {
                Some(f) => parsed.push(f),
                None => return status::INVALID,
            }
        }
        let options = SubscribeOptions {
            depth: (depth > 0).then_some(depth),
            include_own: include_own != 0,
            ..SubscribeOptions::default()
        };
        match state.subscribe(parsed, options, token) {
            Ok(id) => {
                // SAFETY: checked non-null.
                unsafe { *out_id = id };
                status::OK
            }
            Err(code) => code,
        }
    })
}

unsafe extern "C" fn host_add_filter(ctx: HostCtx, id: u64, filter: StrView) -> i32 {
    with_state(ctx, status::PANIC, |state| {
        // SAFETY: lent for the call.
        let Some(filter) = (unsafe { parse::<TopicFilter>(filter) }) else {
            return status::INVALID;
        };
        let sub = state.subs.lock().get(&id).map(|s| s.sub.clone());
        match sub.map(|s| s.lock().add(&filter)) {
            Some(Ok(())) => status::OK,
            Some(Err(_)) => status::CLOSED,
            None => status::UNKNOWN,
        }
    })
}

unsafe extern "C" fn host_remove_filter(ctx: HostCtx, id: u64, filter: StrView) -> u8 {
    with_state(ctx, 0, |state| {
        // SAFETY: lent for the call.
        let Some(filter) = (unsafe { parse::<TopicFilter>(filter) }) else {
            return 0;
        };
        let sub = state.subs.lock().get(&id).map(|s| s.sub.clone());
        sub.map_or(0, |s| u8::from(s.lock().remove(&filter)))
    })
}

unsafe extern "C" fn host_unsubscribe(ctx: HostCtx, id: u64) {
    with_state(ctx, (), |state| {
        if let Some(sub) = state.subs.lock().remove(&id) {
            sub.stop.cancel();
        }
    })
}

fn send_all(envelopes: &[Arc<Envelope>], sink: EnvelopeSink) {
    let mut headers = Vec::new();
    for e in envelopes {
        let view = envelope_view(e, &mut headers);
        // SAFETY: the sink is the plugin's, valid for this call; the view
        // lives for its call.
        unsafe { (sink.call)(sink.ctx, &view) };
    }
}

unsafe extern "C" fn host_last_value(ctx: HostCtx, topic: StrView, sink: EnvelopeSink) -> i32 {
    with_state(ctx, status::PANIC, |state| {
        // SAFETY: lent for the call.
        let Some(topic) = (unsafe { parse::<Topic>(topic) }) else {
            return status::INVALID;
        };
        if let Some(e) = state.ctx.last_value(&topic) {
            send_all(&[e], sink);
        }
        status::OK
    })
}

unsafe extern "C" fn host_clear_last_value(ctx: HostCtx, topic: StrView) -> u8 {
    with_state(ctx, 0, |state| {
        // SAFETY: lent for the call.
        let Some(topic) = (unsafe { parse::<Topic>(topic) }) else {
            return 0;
        };
        u8::from(state.ctx.clear_last_value(&topic))
    })
}

unsafe extern "C" fn host_last_values(ctx: HostCtx, filter: StrView, sink: EnvelopeSink) -> i32 {
    with_state(ctx, status::PANIC, |state| {
        // SAFETY: lent for the call.
        let Some(filter) = (unsafe { parse::<TopicFilter>(filter) }) else {
            return status::INVALID;
        };
        send_all(&state.ctx.last_values(&filter), sink);
        status::OK
    })
}

unsafe extern "C" fn host_retained(ctx: HostCtx, filter: StrView, sink: EnvelopeSink) -> i32 {
    with_state(ctx, status::PANIC, |state| {
        // SAFETY: lent for the call.
        let Some(filter) = (unsafe { parse::<TopicFilter>(filter) }) else {
            return status::INVALID;
        };
        send_all(&state.ctx.retained(&filter), sink);
        status::OK
    })
}

unsafe extern "C" fn host_set_state(ctx: HostCtx, value: u32, reason: StrView) {
    with_state(ctx, (), |state| {
        if state.failed.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: lent for the call.
        let reason = unsafe { reason.bytes() }.map(|b| String::from_utf8_lossy(b).into_owned());
        state.ctx.set_state(state_from_u32(value), reason);
    })
}

unsafe extern "C" fn host_snapshot(ctx: HostCtx, sink: SnapshotSink) -> i32 {
    with_state(ctx, status::PANIC, |state| {
        let snapshot = state.ctx.snapshot();
        // SAFETY: the plugin's sink, valid for this call.
        with_snapshot_view(&snapshot, |view| unsafe { (sink.call)(sink.ctx, view) });
        status::OK
    })
}

/// Most of one counter a single report may add (a guard against garbage).
const MAX_DELTA: u64 = 1 << 20;

unsafe extern "C" fn host_add_metrics(ctx: HostCtx, delta: *const MetricsDelta) {
    with_state(ctx, (), |state| {
        if delta.is_null() {
            return;
        }
        // SAFETY: lent for the call.
        let d = unsafe { &*delta };
        let m = state.ctx.metrics();
        for _ in 0..d.dropped.min(MAX_DELTA) {
            m.record_drop();
        }
        for _ in 0..d.errors.min(MAX_DELTA) {
            m.record_error();
        }
        for _ in 0..d.reconnects.min(MAX_DELTA) {
            m.record_reconnect();
        }
        if !d.named.is_null() {
            // SAFETY: `named_len` counters lent for the call.
            for c in unsafe { std::slice::from_raw_parts(d.named, d.named_len) } {
                // SAFETY: lent for the call.
                match unsafe { c.name.str() } {
                    Some(name) => match name.strip_prefix(polyhub_sdk::REJECTED_PREFIX) {
                        Some(reason) => m.add_rejected(reason, c.value.min(MAX_DELTA)),
                        None => m.add(name, c.value),
                    },
                    None => {}
                }
            }
        }
    })
}

unsafe extern "C" fn host_finished(ctx: HostCtx, code: i32, message: StrView) {
    with_state(ctx, (), |state| {
        // SAFETY: lent for the call.
        let message = unsafe { message.bytes() }
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        if let Some(tx) = state.finished.lock().take() {
            let _ = tx.send((code, message));
        }
    })
}

unsafe extern "C" fn host_release(ctx: HostCtx) {
    let _ = catch_unwind(|| {
        // SAFETY: the plugin's reference, given back once.
        drop(unsafe { Arc::from_raw(ctx as *const HostState) });
    });
}

/// What the hub's log callback knows about a library: kept for the life of
/// the process, like the library.
pub(crate) struct LogContext {
    path: String,
    kind: String,
}

/// A log context for the library at `path` (leaked on purpose: the library
/// may log until the process ends).
pub(crate) fn log_context(path: &str, kind: &str) -> *const LogContext {
    Box::leak(Box::new(LogContext {
        path: path.to_owned(),
        kind: kind.to_owned(),
    }))
}

/// Re-emits a plugin's log event in the hub's log.
pub(crate) unsafe extern "C" fn plugin_log(
    ctx: *const c_void,
    level: u32,
    target: StrView,
    message: StrView,
) {
    let _ = catch_unwind(|| {
        if ctx.is_null() {
            return;
        }
        // SAFETY: made by `log_context`, never freed.
        let lc = unsafe { &*(ctx as *const LogContext) };
        // SAFETY: lent for the call.
        let (target, message) = unsafe {
            (
                target.str().unwrap_or_default(),
                message
                    .bytes()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
            )
        };
        match level {
            1 => {
                tracing::error!(plugin = %lc.kind, library = %lc.path, source = %target, "{message}")
            }
            2 => {
                tracing::warn!(plugin = %lc.kind, library = %lc.path, source = %target, "{message}")
            }
            3 => {
                tracing::info!(plugin = %lc.kind, library = %lc.path, source = %target, "{message}")
            }
            4 => {
                tracing::debug!(plugin = %lc.kind, library = %lc.path, source = %target, "{message}")
            }
            _ => {
                tracing::trace!(plugin = %lc.kind, library = %lc.path, source = %target, "{message}")
            }
        }
    });
}
