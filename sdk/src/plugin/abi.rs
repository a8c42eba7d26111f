//! The C-shaped boundary between the hub and a plugin library: the header the
//! one exported symbol returns, and the `#[repr(C)]` function tables each side
//! hands the other.
//!
//! Rules that keep old plugins loadable:
//! - every struct here is `#[repr(C)]` and only grows at the end; tables and
//!   views carry their `size` so the reader can tell which fields exist;
//! - any layout change bumps [`ABI_MAJOR`]; new fields appended at the end
//!   bump [`ABI_MINOR`];
//! - nothing Rust-typed crosses: strings and bytes are [`StrView`]s, envelopes
//!   are borrowed [`EnvelopeView`]s the receiver copies, config is TOML text;
//! - the side that allocates frees ([`PluginApi::free_string`] for strings the
//!   plugin allocated; completions are freed by the side that created them).

use std::ffi::c_void;

/// Name of the one symbol a plugin library exports.
pub const HEADER_SYMBOL: &str = "polyhub_plugin_header";

/// Magic bytes at the start of every [`PluginHeader`].
pub const MAGIC: [u8; 8] = *b"PLYHUB\x00\x01";

/// Major version of this ABI: a plugin is loaded only by a hub with the same major.
pub const ABI_MAJOR: u32 = 1;

/// Minor version of this ABI: a hub loads plugins of its own or an older minor.
pub const ABI_MINOR: u32 = 1;

/// The target triple the sdk was compiled for (`x86_64-unknown-linux-gnu`).
pub const TARGET: &str = env!("POLYHUB_SDK_TARGET");

/// The `rustc --version` the sdk was compiled with (informational).
pub const RUSTC_VERSION: &str = env!("POLYHUB_SDK_RUSTC");

/// The sdk's crate version (informational).
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Status codes every boundary function returns.
pub mod status {
    /// Done.
    pub const OK: i32 = 0;
    /// Accepted; the given [`super::Completion`] will be called exactly once.
    pub const PENDING: i32 = 1;
    /// The other side is shutting down or the object is gone.
    pub const CLOSED: i32 = 2;
    /// The adapter is failed and may not publish.
    pub const FAILED: i32 = 3;
    /// An argument was not valid (bad topic or filter, bad UTF-8, null).
    pub const INVALID: i32 = 4;
    /// No such subscription.
    pub const UNKNOWN: i32 = 5;
    /// The call ended in an error; a message says which.
    pub const ERROR: i32 = 6;
    /// The callee panicked; the panic was caught at the boundary.
    pub const PANIC: i32 = 7;
}

/// Borrowed UTF-8 text or bytes: valid only during the call it is passed to.
/// A null `ptr` means "absent" (`None`); an empty value has a non-null `ptr`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StrView {
    /// First byte, or null for absent.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl StrView {
    /// The absent value.
    pub const NONE: StrView = StrView {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Borrows `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        StrView {
            ptr: if bytes.is_empty() {
                // A non-null dangling pointer tells "empty" from "absent".
                std::ptr::NonNull::<u8>::dangling().as_ptr()
            } else {
                bytes.as_ptr()
            },
            len: bytes.len(),
        }
    }

    /// Borrows `s`.
    // Not `FromStr`: the view borrows `s`, it does not parse it.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> Self {
        Self::new(s.as_bytes())
    }

    /// Borrows `s` if present.
    pub fn from_opt(s: Option<&str>) -> Self {
        s.map_or(Self::NONE, Self::from_str)
    }

    /// Whether this is the absent value.
    pub fn is_none(&self) -> bool {
        self.ptr.is_null()
    }

    /// The bytes.
    ///
    /// # Safety
    /// `ptr` must be null or point to `len` readable bytes for `'a`.
    pub unsafe fn bytes<'a>(&self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            None
        } else {
            // SAFETY: the caller guarantees `len` readable bytes.
            Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
        }
    }

    /// The text, `None` when absent or not UTF-8.
    ///
    /// # Safety
    /// As [`StrView::bytes`].
    pub unsafe fn str<'a>(&self) -> Option<&'a str> {
        // SAFETY: forwarded to the caller.
        unsafe { self.bytes() }.and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// A string the plugin allocated and the hub hands back to
/// [`PluginApi::free_string`].
#[repr(C)]
#[derive(Debug)]
pub struct OwnedStr {
    /// First byte, or null for none.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocated capacity (needed to free it).
    pub cap: usize,
}

impl OwnedStr {
    /// No string.
    pub const NONE: OwnedStr = OwnedStr {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };
}

/// One header of an envelope.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HeaderView {
    /// Header name.
    pub key: StrView,
    /// Header value.
    pub value: StrView,
}

/// An envelope lent across the boundary for the duration of one call; the
/// receiver copies what it keeps.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeView {
    /// `size_of::<EnvelopeView>()` of the writer.
    pub size: usize,
    /// High 64 bits of the message id.
    pub id_hi: u64,
    /// Low 64 bits of the message id.
    pub id_lo: u64,
    /// Topic name.
    pub topic: StrView,
    /// Payload bytes.
    pub payload: StrView,
    /// Content type, or absent.
    pub content_type: StrView,
    /// QoS: 0, 1 or 2.
    pub qos: u8,
    /// 1 when retained.
    pub retain: u8,
    /// Origin: adapter instance name.
    pub origin_adapter: StrView,
    /// Origin: protocol.
    pub origin_protocol: StrView,
    /// Origin: peer address, or absent.
    pub origin_peer: StrView,
    /// Origin: authenticated user, or absent.
    pub origin_user: StrView,
    /// Receive time: seconds since the Unix epoch.
    pub timestamp_secs: u64,
    /// Receive time: nanoseconds within the second.
    pub timestamp_nanos: u32,
    /// Headers: first element.
    pub headers: *const HeaderView,
    /// Headers: count.
    pub headers_len: usize,
    /// Reply-to, or absent.
    pub reply_to: StrView,
    /// Correlation data, or absent.
    pub correlation: StrView,
}

/// A one-shot callback for a call that answered [`status::PENDING`]: the
/// callee calls `call(ctx, status)` exactly once; `call` frees `ctx`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// Owned by the caller, freed by `call`.
    pub ctx: *mut c_void,
    /// Reports the final status.
    pub call: unsafe extern "C" fn(ctx: *mut c_void, status: i32),
}

/// Receives envelopes during one call (`last_value`, `retained`); the
/// receiver copies each view.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeSink {
    /// Receiver state.
    pub ctx: *mut c_void,
    /// Called once per envelope.
    pub call: unsafe extern "C" fn(ctx: *mut c_void, envelope: *const EnvelopeView),
}

/// A named counter.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CounterView {
    /// Counter name.
    pub name: StrView,
    /// Value.
    pub value: u64,
}

/// Counters the plugin recorded since its last report, added by the hub to
/// the adapter's own counters.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MetricsDelta {
    /// `size_of::<MetricsDelta>()` of the writer.
    pub size: usize,
    /// Messages dropped.
    pub dropped: u64,
    /// Errors.
    pub errors: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// Adapter-specific counters: first element.
    pub named: *const CounterView,
    /// Adapter-specific counters: count.
    pub named_len: usize,
}

/// One adapter in a [`SnapshotView`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AdapterSnapshotView {
    /// Instance name.
    pub name: StrView,
    /// Kind.
    pub kind: StrView,
    /// State, as [`state_to_u32`](super::view::state_to_u32) encodes it.
    pub state: u32,
    /// Reason, or absent.
    pub reason: StrView,
    /// Envelopes in.
    pub messages_in: u64,
    /// Envelopes out.
    pub messages_out: u64,
    /// Drops.
    pub dropped: u64,
    /// Errors.
    pub errors: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// Adapter-specific counters: first element.
    pub named: *const CounterView,
    /// Adapter-specific counters: count.
    pub named_len: usize,
}

/// The hub's state, lent for one call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnapshotView {
    /// `size_of::<SnapshotView>()` of the writer.
    pub size: usize,
    /// Hub name.
    pub hub: StrView,
    /// Adapters: first element.
    pub adapters: *const AdapterSnapshotView,
    /// Adapters: count.
    pub adapters_len: usize,
    /// Topics with a last value.
    pub topics: u64,
    /// Live subscriptions.
    pub subscriptions: u64,
    /// Routing latency: bucket bounds (seconds).
    pub latency_bounds: *const f64,
    /// Routing latency: cumulative counts, one per bound.
    pub latency_cumulative: *const u64,
    /// Routing latency: number of buckets.
    pub latency_len: usize,
    /// Routing latency: observations.
    pub latency_count: u64,
    /// Routing latency: sum of observations (seconds).
    pub latency_sum: f64,
}

/// Receives a [`SnapshotView`] during one call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnapshotSink {
    /// Receiver state.
    pub ctx: *mut c_void,
    /// Called once.
    pub call: unsafe extern "C" fn(ctx: *mut c_void, snapshot: *const SnapshotView),
}

/// Opaque hub-side state of one running adapter instance.
pub type HostCtx = *const c_void;

/// What the hub offers a plugin's running adapter: the hub link as C
/// callbacks. Every callback runs inside `catch_unwind` on the hub's side.
/// The plugin calls [`HostApi::release`] once, when it holds `ctx` no more.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostApi {
    /// `size_of::<HostApi>()` of the hub.
    pub size: usize,
    /// Routes an envelope. [`status::OK`], or [`status::PENDING`] when the
    /// hub waits for a full QoS 1 queue (then `done` is called), or an error.
    pub publish:
        unsafe extern "C" fn(ctx: HostCtx, envelope: *const EnvelopeView, done: Completion) -> i32,
    /// Subscribes to `filters`; the hub then calls [`PluginApi::deliver`]
    /// with `token` for every matching envelope. `depth` 0 = the default.
    pub subscribe: unsafe extern "C" fn(
        ctx: HostCtx,
        filters: *const StrView,
        filters_len: usize,
        depth: usize,
        token: u64,
        out_id: *mut u64,
    ) -> i32,
    /// Adds a filter to a subscription.
    pub add_filter: unsafe extern "C" fn(ctx: HostCtx, id: u64, filter: StrView) -> i32,
    /// Removes a filter from a subscription: 1 if it was there.
    pub remove_filter: unsafe extern "C" fn(ctx: HostCtx, id: u64, filter: StrView) -> u8,
    /// Drops a subscription.
    pub unsubscribe: unsafe extern "C" fn(ctx: HostCtx, id: u64),
    /// Sends the last value of `topic` (if any) to `sink`.
    pub last_value: unsafe extern "C" fn(ctx: HostCtx, topic: StrView, sink: EnvelopeSink) -> i32,
    /// Forgets the last value of a topic: 1 if it had one.
    pub clear_last_value: unsafe extern "C" fn(ctx: HostCtx, topic: StrView) -> u8,
    /// Sends the last value of every topic matching `filter` to `sink`.
    pub last_values: unsafe extern "C" fn(ctx: HostCtx, filter: StrView, sink: EnvelopeSink) -> i32,
    /// Sends the retained value of every topic matching `filter` to `sink`.
    pub retained: unsafe extern "C" fn(ctx: HostCtx, filter: StrView, sink: EnvelopeSink) -> i32,
    /// Reports the adapter's state, with a reason or absent.
    pub set_state: unsafe extern "C" fn(ctx: HostCtx, state: u32, reason: StrView),
    /// Sends the hub's snapshot to `sink`.
    pub snapshot: unsafe extern "C" fn(ctx: HostCtx, sink: SnapshotSink) -> i32,
    /// Adds the plugin's counters to the adapter's.
    pub add_metrics: unsafe extern "C" fn(ctx: HostCtx, delta: *const MetricsDelta),
    /// The adapter's run ended: [`status::OK`], [`status::ERROR`] or
    /// [`status::PANIC`] with a message. Called once.
    pub finished: unsafe extern "C" fn(ctx: HostCtx, status: i32, message: StrView),
    /// The plugin holds `ctx` no more; the hub frees it.
    pub release: unsafe extern "C" fn(ctx: HostCtx),
    /// ABI 1.1: as `subscribe`, and with `include_own` 1 the subscription
    /// also gets the envelopes this adapter published
    /// ([`SubscribeOptions::include_own`](crate::SubscribeOptions)).
    /// Absent (null) in a 1.0 hub's table, which ends before it.
    pub subscribe_with_options: Option<
        unsafe extern "C" fn(
            ctx: HostCtx,
            filters: *const StrView,
            filters_len: usize,
            depth: usize,
            include_own: u8,
            token: u64,
            out_id: *mut u64,
        ) -> i32,
    >,
}

/// Size of an ABI 1.0 [`HostApi`]: every field up to `release`.
pub const HOST_API_1_0_SIZE: usize = std::mem::offset_of!(HostApi, subscribe_with_options);

/// What the hub passes to [`PluginHeader::init`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostInit {
    /// `size_of::<HostInit>()` of the hub.
    pub size: usize,
    /// The hub's ABI major.
    pub abi_major: u32,
    /// The hub's ABI minor.
    pub abi_minor: u32,
    /// Worker threads of the plugin's own tokio runtime; 0 = the sdk default.
    pub worker_threads: usize,
    /// The most verbose level the hub logs (1 = error … 5 = trace, 0 = off).
    pub max_log_level: u32,
    /// Hub-side state of [`HostInit::log`], kept for the life of the process.
    pub log_ctx: *const c_void,
    /// Emits a log event of the plugin's (level 1 = error … 5 = trace) in
    /// the hub's log. Callable from any thread, at any time.
    pub log:
        unsafe extern "C" fn(log_ctx: *const c_void, level: u32, target: StrView, message: StrView),
}

/// Opaque plugin-side adapter (created, not yet running).
pub type PluginAdapter = *mut c_void;
/// Opaque plugin-side running adapter.
pub type PluginRunning = *mut c_void;

/// What a plugin library offers the hub, returned by [`PluginHeader::init`].
/// Every function runs inside `catch_unwind` and inside the plugin's runtime.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginApi {
    /// `size_of::<PluginApi>()` of the plugin.
    pub size: usize,
    /// Frees a string the plugin allocated.
    pub free_string: unsafe extern "C" fn(s: OwnedStr),
    /// Validates the TOML config of instance `name` and builds an adapter.
    /// On error, `out_error` receives a message (a `ConfigError` as
    /// `key\nmessage`, the key line empty when the error is about the table).
    pub create: unsafe extern "C" fn(
        name: StrView,
        config_toml: StrView,
        out_adapter: *mut PluginAdapter,
        out_error: *mut OwnedStr,
    ) -> i32,
    /// Drops an adapter that was never started.
    pub drop_adapter: unsafe extern "C" fn(adapter: PluginAdapter),
    /// Starts `adapter` (consumed) on the plugin's runtime, with the hub
    /// callbacks `host` for instance `name` of `kind`. The plugin calls
    /// [`HostApi::finished`] once the run ends.
    pub start: unsafe extern "C" fn(
        adapter: PluginAdapter,
        name: StrView,
        kind: StrView,
        host: *const HostApi,
        host_ctx: HostCtx,
        out_running: *mut PluginRunning,
    ) -> i32,
    /// Hands an envelope of subscription `token` to the adapter:
    /// [`status::OK`], or [`status::PENDING`] while its queue is full (then
    /// `done` is called), or [`status::CLOSED`].
    pub deliver: unsafe extern "C" fn(
        running: PluginRunning,
        token: u64,
        envelope: *const EnvelopeView,
        done: Completion,
    ) -> i32,
    /// Asks the adapter to stop (cancels its shutdown token).
    pub stop: unsafe extern "C" fn(running: PluginRunning),
    /// The hub holds `running` no more.
    pub release: unsafe extern "C" fn(running: PluginRunning),
}

/// The header the one exported symbol returns. Its first four fields keep
/// their place in every ABI version, so any hub can read and refuse it.
#[repr(C)]
#[derive(Debug)]
pub struct PluginHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// `size_of::<PluginHeader>()` of the plugin.
    pub header_size: u32,
    /// The plugin's [`ABI_MAJOR`].
    pub abi_major: u32,
    /// The plugin's [`ABI_MINOR`].
    pub abi_minor: u32,
    /// The plugin's target triple.
    pub target: StrView,
    /// The `rustc --version` that built the plugin.
    pub rustc: StrView,
    /// The polyhub-sdk version the plugin was built with.
    pub sdk_version: StrView,
    /// The adapter kind the plugin provides.
    pub kind: StrView,
    /// Starts the library (its runtime) and returns its function table.
    pub init: unsafe extern "C" fn(init: *const HostInit, out_api: *mut *const PluginApi) -> i32,
}

/// The type of the exported symbol.
pub type HeaderFn = unsafe extern "C" fn() -> *const PluginHeader;
