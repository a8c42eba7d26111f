//! Carries a plugin's `tracing` events into the hub's log.
//!
//! A plugin library has its own copy of `tracing` and so its own global
//! dispatcher, which nobody installs: without this, every `warn!` in a
//! loaded adapter would vanish. [`install`] sets a small subscriber that
//! formats each event (message first, then `key=value` fields) and hands it
//! to the hub's [`HostInit::log`] callback. Spans are not carried.

use std::ffi::c_void;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use super::abi::{HostInit, StrView};

type LogFn = unsafe extern "C" fn(*const c_void, u32, StrView, StrView);

struct Forward {
    ctx: *const c_void,
    log: LogFn,
    max: u32,
}

// SAFETY: the hub promises `log` may be called from any thread with `ctx`
// for the life of the process.
unsafe impl Send for Forward {}
// SAFETY: as above.
unsafe impl Sync for Forward {}

fn level_number(level: &Level) -> u32 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Installs the forwarding subscriber as this library's global default
/// (once; later calls keep the first).
pub(crate) fn install(host: &HostInit) {
    let forward = Forward {
        ctx: host.log_ctx,
        log: host.log,
        max: host.max_log_level.min(5),
    };
    let _ = tracing::subscriber::set_global_default(forward);
}

struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={:?}", field.name(), value);
        }
    }
}

impl Subscriber for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_number(metadata.level()) <= self.max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(match self.max {
            0 => tracing::level_filters::LevelFilter::OFF,
            1 => tracing::level_filters::LevelFilter::ERROR,
            2 => tracing::level_filters::LevelFilter::WARN,
            3 => tracing::level_filters::LevelFilter::INFO,
            4 => tracing::level_filters::LevelFilter::DEBUG,
            _ => tracing::level_filters::LevelFilter::TRACE,
        })
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields {
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        fields.message.push_str(&fields.rest);
        let meta = event.metadata();
        // SAFETY: see the Send/Sync impls; the views live for the call.
        unsafe {
            (self.log)(
                self.ctx,
                level_number(meta.level()),
                StrView::from_str(meta.target()),
                StrView::from_str(&fields.message),
            )
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}
