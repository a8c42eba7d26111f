//! The plugin library's side of the boundary: the header that
//! [`declare_plugin!`](crate::declare_plugin) exports, the library's own tokio
//! runtime, and the `extern "C"` functions of its [`PluginApi`].
//!
//! Every function here runs its body inside `catch_unwind` and inside the
//! library's runtime, so adapter code may use `tokio::spawn` and friends as
//! in a built-in adapter, and a panic becomes [`status::PANIC`] instead of
//! unwinding into the hub.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::abi::{
    self, status, Completion, EnvelopeView, HostApi, HostCtx, HostInit, OwnedStr, PluginAdapter,
    PluginApi, PluginHeader, PluginRunning, StrView,
};
use super::link::{HostHandle, PluginLink};
use super::log_forward;
use crate::adapter::{Adapter, AdapterContext, AdapterFactory};
use crate::config::AdapterConfig;
use crate::metrics::AdapterMetrics;

/// Worker threads of the library's runtime when the hub does not say.
pub const DEFAULT_WORKER_THREADS: usize = 2;

/// How often a running adapter's counters are reported to the hub.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

struct Header(PluginHeader);
// SAFETY: the header only points to 'static data and is never written after
// it is built.
unsafe impl Sync for Header {}
// SAFETY: as above.
unsafe impl Send for Header {}

static HEADER: OnceLock<Header> = OnceLock::new();
static FACTORY: OnceLock<Box<dyn AdapterFactory>> = OnceLock::new();
static FACTORY_PANIC: OnceLock<String> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

static API: PluginApi = PluginApi {
    size: std::mem::size_of::<PluginApi>(),
    free_string,
    create,
    drop_adapter,
    start,
    deliver,
    stop,
    release,
};

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

fn owned(s: String) -> OwnedStr {
    let mut bytes = std::mem::ManuallyDrop::new(s.into_bytes());
    OwnedStr {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    }
}

/// Builds (once) and returns this library's header. Called by the symbol
/// [`declare_plugin!`](crate::declare_plugin) exports; `make` builds the
/// factory.
#[doc(hidden)]
pub fn header(make: fn() -> Box<dyn AdapterFactory>) -> *const PluginHeader {
    let header = HEADER.get_or_init(|| {
        match catch_unwind(make) {
            Ok(factory) => {
                let _ = FACTORY.set(factory);
            }
            Err(p) => {
                let _ = FACTORY_PANIC.set(panic_message(&*p));
            }
        }
        let kind: &'static str = FACTORY.get().map_or("", |f| f.kind());
        Header(PluginHeader {
            magic: if cfg!(feature = "abi-test-wrong-magic") {
                *b"NOTPLUGN"
            } else {
                abi::MAGIC
            },
            header_size: std::mem::size_of::<PluginHeader>() as u32,
            abi_major: if cfg!(feature = "abi-test-wrong-major") {
                999
            } else {
                abi::ABI_MAJOR
            },
            abi_minor: abi::ABI_MINOR,
            target: StrView::from_str(abi::TARGET),
            rustc: StrView::from_str(abi::RUSTC_VERSION),
            sdk_version: StrView::from_str(abi::SDK_VERSION),
            kind: StrView::from_str(kind),
            init,
        })
    });
    &header.0
}

fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    RUNTIME.get()
}

/// Runs `f` inside the library's runtime and `catch_unwind`.
fn guarded(f: impl FnOnce() -> i32) -> i32 {
    let _enter = runtime().map(|rt| rt.enter());
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(status::PANIC)
}

unsafe extern "C" fn init(host: *const HostInit, out_api: *mut *const PluginApi) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        if host.is_null() || out_api.is_null() {
            return status::INVALID;
        }
        // SAFETY: the hub passes a valid HostInit; fields past `size` are
        // not read (every field up to `log` exists since ABI 1.0).
        let host = unsafe { &*host };
        if host.size < std::mem::size_of::<HostInit>() {
            return status::INVALID;
        }
        if FACTORY.get().is_none() {
            return status::ERROR;
        }
        if RUNTIME.get().is_none() {
            let threads = match host.worker_threads {
                0 => DEFAULT_WORKER_THREADS,
                n => n,
            };
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("polyhub-plugin")
                .enable_all()
                .build();
            match built {
                Ok(rt) => {
                    let _ = RUNTIME.set(rt);
                }
                Err(_) => return status::ERROR,
            }
        }
        log_forward::install(host);
        // SAFETY: out_api checked non-null.
        unsafe { *out_api = &API };
        status::OK
    }))
    .unwrap_or(status::PANIC)
}

unsafe extern "C" fn free_string(s: OwnedStr) {
    let _ = catch_unwind(|| {
        if !s.ptr.is_null() {
            // SAFETY: built by `owned` from a Vec of this library.
            drop(unsafe { Vec::from_raw_parts(s.ptr, s.len, s.cap) });
        }
    });
}

unsafe extern "C" fn create(
    name: StrView,
    config_toml: StrView,
    out_adapter: *mut PluginAdapter,
    out_error: *mut OwnedStr,
) -> i32 {
    let mut error = None;
    let code = guarded(|| {
        if out_adapter.is_null() {
            return status::INVALID;
        }
        let Some(factory) = FACTORY.get() else {
            error = Some(format!(
                "\nthe plugin's factory panicked: {}",
                FACTORY_PANIC.get().map_or("", String::as_str)
            ));
            return status::ERROR;
        };
        // SAFETY: the hub lends both views for this call.
        let (name, text) = unsafe { (name.str(), config_toml.str()) };
        let (Some(name), Some(text)) = (name, text) else {
            return status::INVALID;
        };
        let result = AdapterConfig::from_toml_str(name, text).and_then(|c| factory.create(&c));
        match result {
            Ok(adapter) => {
                let boxed: Box<Box<dyn Adapter>> = Box::new(adapter);
                // SAFETY: checked non-null.
                unsafe { *out_adapter = Box::into_raw(boxed) as PluginAdapter };
                status::OK
            }
            Err(e) => {
                error = Some(format!(
                    "{}\n{}",
                    e.key.as_deref().unwrap_or_default(),
                    e.message
                ));
                status::ERROR
            }
        }
    });
    if code == status::PANIC {
        error = Some("\nthe plugin panicked in create()".to_owned());
    }
    if let (Some(e), false) = (error, out_error.is_null()) {
        // SAFETY: checked non-null; the hub frees it with `free_string`.
        unsafe { *out_error = owned(e) };
    }
    code
}

unsafe extern "C" fn drop_adapter(adapter: PluginAdapter) {
    guarded(|| {
        if !adapter.is_null() {
            // SAFETY: made by `create`, handed back once.
            drop(unsafe { Box::from_raw(adapter as *mut Box<dyn Adapter>) });
        }
        status::OK
    });
}

/// A running adapter instance, as the hub holds it.
struct Running {
    link: Arc<PluginLink>,
    token: CancellationToken,
}

unsafe extern "C" fn start(
    adapter: PluginAdapter,
    name: StrView,
    kind: StrView,
    host: *const HostApi,
    host_ctx: HostCtx,
    out_running: *mut PluginRunning,
) -> i32 {
    guarded(|| {
        if adapter.is_null() || host.is_null() || out_running.is_null() {
            return status::INVALID;
        }
        // SAFETY: made by `create`, handed over once by the hub.
        let adapter = unsafe { Box::from_raw(adapter as *mut Box<dyn Adapter>) };
        // SAFETY: checked non-null; the hub's table is at least `size` long.
        // Fields added after ABI 1.0 are read only when `size` covers them.
        if unsafe { (*host).size } < abi::HOST_API_1_0_SIZE {
            return status::INVALID;
        }
        let Some(rt) = runtime() else {
            return status::ERROR;
        };
        // SAFETY: lent for this call.
        let (Some(name), Some(kind)) = (unsafe { name.str() }, unsafe { kind.str() }) else {
            return status::INVALID;
        };
        // SAFETY: checked above; ctx stays valid until we release it.
        let host = Arc::new(unsafe { HostHandle::new(host, host_ctx) });
        let metrics = Arc::new(AdapterMetrics::default());
        let link = Arc::new(PluginLink::new(host.clone(), metrics.clone()));
        let token = CancellationToken::new();
        let ctx = AdapterContext::new(name, kind, link.clone(), token.clone(), metrics);
        let span = ctx.span().clone();

        let ticker_link = link.clone();
        let ticking = CancellationToken::new();
        let stop_ticking = ticking.clone();
        rt.spawn(async move {
            let mut every = tokio::time::interval(METRICS_INTERVAL);
            loop {
                tokio::select! {
                    _ = ticking.cancelled() => break,
                    _ = every.tick() => ticker_link.flush_metrics(),
                }
            }
        });

        let final_link = link.clone();
        let tasks = ctx.clone();
        rt.spawn(async move {
            let outcome = AssertUnwindSafe(adapter.run(ctx).instrument(span))
                .catch_unwind()
                .await;
            tasks.drain_tasks().await;
            stop_ticking.cancel();
            final_link.flush_metrics();
            drop(final_link);
            match outcome {
                Ok(Ok(())) => host.finished(status::OK, ""),
                Ok(Err(e)) => host.finished(status::ERROR, &e.to_string()),
                Err(p) => host.finished(status::PANIC, &panic_message(&*p)),
            }
        });

        let running = Arc::new(Running { link, token });
        // SAFETY: checked non-null.
        unsafe { *out_running = Arc::into_raw(running) as PluginRunning };
        status::OK
    })
}

/// A completion that may travel to the runtime's threads.
struct SendCompletion(Completion);
// SAFETY: the hub promises its completions may be called from any thread.
unsafe impl Send for SendCompletion {}

impl SendCompletion {
    fn call(self, code: i32) {
        // SAFETY: called exactly once, as the contract says.
        unsafe { (self.0.call)(self.0.ctx, code) }
    }
}

unsafe extern "C" fn deliver(
    running: PluginRunning,
    token: u64,
    envelope: *const EnvelopeView,
    done: Completion,
) -> i32 {
    guarded(|| {
        if running.is_null() {
            return status::INVALID;
        }
        // SAFETY: made by `start`, valid until `release`.
        let running = unsafe { &*(running as *const Running) };
        // SAFETY: lent for this call; copied here.
        let (tx, envelope) = match unsafe { running.link.take_delivery(token, envelope) } {
            None => return status::CLOSED,
            Some(Err(_)) => return status::INVALID,
            Some(Ok((tx, e))) => (tx, Arc::new(e)),
        };
        match tx.try_send(envelope) {
            Ok(()) => status::OK,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => status::CLOSED,
            Err(tokio::sync::mpsc::error::TrySendError::Full(envelope)) => {
                let Some(rt) = runtime() else {
                    return status::CLOSED;
                };
                let done = SendCompletion(done);
                rt.spawn(async move {
                    let code = match tx.send(envelope).await {
                        Ok(()) => status::OK,
                        Err(_) => status::CLOSED,
                    };
                    done.call(code);
                });
                status::PENDING
            }
        }
    })
}

unsafe extern "C" fn stop(running: PluginRunning) {
    guarded(|| {
        if !running.is_null() {
            // SAFETY: made by `start`, valid until `release`.
            unsafe { &*(running as *const Running) }.token.cancel();
        }
        status::OK
    });
}

unsafe extern "C" fn release(running: PluginRunning) {
    guarded(|| {
        if !running.is_null() {
            // SAFETY: made by `start`, released once.
            drop(unsafe { Arc::from_raw(running as *const Running) });
        }
        status::OK
    });
}
