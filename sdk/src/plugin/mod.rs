//! Dynamic plugins: an adapter built as a shared library (`cdylib`) that the
//! hub loads from `plugin = "path.so"`.
//!
//! Rust has no stable ABI, so the boundary is C-shaped and the convenience
//! Rust-shaped. A plugin crate implements the same [`Adapter`](crate::Adapter)
//! and [`AdapterFactory`](crate::AdapterFactory) as the built-in adapters and
//! exports the factory with [`declare_plugin!`](crate::declare_plugin):
//!
//! ```ignore
//! #[derive(Default)]
//! pub struct Factory;
//! impl polyhub_sdk::AdapterFactory for Factory { /* kind(), create() */ }
//! polyhub_sdk::declare_plugin!(Factory);
//! ```
//!
//! The macro exports one `extern "C"` symbol, `polyhub_plugin_header`, that
//! returns a [`PluginHeader`](abi::PluginHeader): magic bytes, the header
//! size, the ABI version, the target triple, the rustc and sdk versions, the
//! adapter kind and an `init` function. The hub checks all of it before it
//! calls anything else, then talks to the library only through the
//! `#[repr(C)]` tables of [`abi`]: envelopes cross as borrowed views the
//! receiver copies, config as TOML text. The library runs its adapters on its
//! own tokio runtime and catches every panic at the boundary; the hub marks a
//! panicking adapter failed and runs on.
//!
//! Plugin code never touches `unsafe`: everything here except the macro is
//! the machinery behind it. `sdk/README.md` is the step-by-step guide.

pub mod abi;
#[doc(hidden)]
pub mod export;
mod link;
mod log_forward;
pub mod view;

pub use export::{panic_message, DEFAULT_WORKER_THREADS};

/// The tokio the sdk is built with, for plugins that want no dependency
/// besides `polyhub-sdk` (the library's runtime is this tokio's).
pub use tokio;

/// The serde the sdk is built with; derive with
/// `#[serde(crate = "polyhub_sdk::plugin::serde")]` to need no serde
/// dependency of your own.
pub use serde;

/// Exports an [`AdapterFactory`](crate::AdapterFactory) from a `cdylib`
/// crate as a polyhub plugin.
///
/// `declare_plugin!(Factory)` needs `Factory: Default`;
/// `declare_plugin!(Factory, Factory::new(...))` takes a constructor
/// expression instead. Use it once per library.
#[macro_export]
macro_rules! declare_plugin {
    ($factory:ty) => {
        $crate::declare_plugin!($factory, <$factory as ::core::default::Default>::default());
    };
    ($factory:ty, $make:expr) => {
        /// The polyhub plugin header (see `polyhub_sdk::plugin`).
        #[no_mangle]
        pub extern "C" fn polyhub_plugin_header() -> *const $crate::plugin::abi::PluginHeader {
            fn make() -> ::std::boxed::Box<dyn $crate::AdapterFactory> {
                let factory: $factory = $make;
                ::std::boxed::Box::new(factory)
            }
            $crate::plugin::export::header(make)
        }
    };
}
