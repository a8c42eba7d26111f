//! The proxy that makes a loaded adapter look built-in: a factory whose
//! `create` hands the config to the library as TOML text, and an adapter
//! whose `run` starts the library's adapter with the hub link as C callbacks
//! and waits for it to finish.

use std::sync::Arc;

use polyhub_sdk::plugin::abi::{status, OwnedStr, PluginAdapter, PluginRunning, StrView};
use polyhub_sdk::{
    Adapter, AdapterConfig, AdapterContext, AdapterError, AdapterFactory, ConfigError,
};

use super::handshake::LoadedPlugin;
use super::host_api::{self, HostState, RunningGuard};

/// The factory of a loaded plugin.
#[derive(Debug)]
pub struct PluginFactory {
    plugin: Arc<LoadedPlugin>,
}

impl PluginFactory {
    pub(crate) fn new(plugin: Arc<LoadedPlugin>) -> Self {
        PluginFactory { plugin }
    }

    /// The library path as configured.
    pub fn path(&self) -> &str {
        &self.plugin.path
    }
}

/// Takes a plugin-allocated string and frees it in the plugin.
fn take_string(plugin: &LoadedPlugin, s: OwnedStr) -> String {
    if s.ptr.is_null() {
        return String::new();
    }
    // SAFETY: the plugin allocated `len` bytes at `ptr`.
    let text =
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(s.ptr, s.len) }).into_owned();
    // SAFETY: handed back once, to the side that allocated it.
    unsafe { (plugin.api.free_string)(s) };
    text
}

impl AdapterFactory for PluginFactory {
    fn kind(&self) -> &str {
        &self.plugin.kind
    }

    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        let text = config.to_toml_string();
        let mut raw: PluginAdapter = std::ptr::null_mut();
        let mut error = OwnedStr::NONE;
        // SAFETY: the views live for the call; out pointers are valid.
        let code = unsafe {
            (self.plugin.api.create)(
                StrView::from_str(&config.name),
                StrView::from_str(&text),
                &mut raw,
                &mut error,
            )
        };
        let message = take_string(&self.plugin, error);
        match code {
            status::OK if !raw.is_null() => Ok(Box::new(ProxyAdapter {
                plugin: self.plugin.clone(),
                raw: Some(RawAdapter(raw)),
            })),
            status::PANIC => {
                tracing::error!(plugin = %self.plugin.path, adapter = %config.name, "Plugin panicked in create().");
                Err(ConfigError::table(format!(
                    "plugin {} panicked while checking this config",
                    self.plugin.path
                )))
            }
            _ => {
                let (key, message) = message.split_once('\n').unwrap_or(("", &message));
                let message = if message.is_empty() {
                    format!(
                        "plugin {} refused the config (status {code})",
                        self.plugin.path
                    )
                } else {
                    message.to_owned()
                };
                Err(ConfigError {
                    key: (!key.is_empty()).then(|| key.to_owned()),
                    message,
                })
            }
        }
    }
}

/// A plugin-side adapter not yet started.
struct RawAdapter(PluginAdapter);
// SAFETY: the plugin's adapters are `Send` (the sdk's `Adapter: Send`); the
// pointer is handed back to the plugin exactly once.
unsafe impl Send for RawAdapter {}

/// A loaded adapter, as the hub runs it.
struct ProxyAdapter {
    plugin: Arc<LoadedPlugin>,
    raw: Option<RawAdapter>,
}

impl Drop for ProxyAdapter {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            // SAFETY: never started; handed back once.
            unsafe { (self.plugin.api.drop_adapter)(raw.0) };
        }
    }
}

#[polyhub_sdk::reexports::async_trait]
impl Adapter for ProxyAdapter {
    async fn run(mut self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError> {
        let Some(raw) = self.raw.take() else {
            return Err(AdapterError::protocol("plugin adapter already started"));
        };
        let plugin = self.plugin.clone();
        let (state, mut finished) = HostState::new(ctx.clone(), plugin.clone());
        let running = start(&plugin, raw, &ctx, &state)?;
        state.set_running(Arc::new(running));

        let outcome = tokio::select! {
            r = &mut finished => r,
            _ = ctx.shutdown().cancelled() => {
                state.stop_plugin();
                finished.await
            }
        };
        state.end();
        let (code, message) =
            outcome.unwrap_or((status::ERROR, "the plugin dropped its run".into()));
        match code {
            status::OK => Ok(()),
            status::PANIC => {
                ctx.metrics().record_error();
                tracing::error!(adapter = %ctx.name(), plugin = %plugin.path, panic = %message, "Plugin adapter panicked; marked failed.");
                Err(AdapterError::protocol(format!(
                    "plugin panicked: {message}"
                )))
            }
            _ => Err(AdapterError::protocol(message)),
        }
    }
}

/// Starts the plugin's adapter with the hub's callbacks.
fn start(
    plugin: &Arc<LoadedPlugin>,
    raw: RawAdapter,
    ctx: &AdapterContext,
    state: &Arc<HostState>,
) -> Result<RunningGuard, AdapterError> {
    let host_ctx = Arc::into_raw(state.clone());
    let mut running: PluginRunning = std::ptr::null_mut();
    // SAFETY: the adapter is handed over once; the host table is static;
    // host_ctx stays valid until the plugin calls `release`.
    let code = unsafe {
        (plugin.api.start)(
            raw.0,
            StrView::from_str(ctx.name()),
            StrView::from_str(ctx.kind()),
            host_api::host_api(),
            host_ctx as *const std::ffi::c_void,
            &mut running,
        )
    };
    if code != status::OK || running.is_null() {
        // host_ctx is left to the plugin (it may hold it), never freed here.
        let why = if code == status::PANIC {
            "panicked in start"
        } else {
            "refused to start"
        };
        return Err(AdapterError::protocol(format!(
            "plugin {} {why} (status {code})",
            plugin.path
        )));
    }
    Ok(RunningGuard::new(plugin.clone(), running))
}
