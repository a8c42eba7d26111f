//! The built-in adapter kinds: one line each, each behind its cargo feature.

use std::sync::Arc;

use polyhub_sdk::AdapterFactory;

/// The adapter factories the hub knows by `type`.
#[derive(Clone, Default)]
pub struct Registry {
    factories: Vec<Arc<dyn AdapterFactory>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every adapter compiled into this binary.
    pub fn builtin() -> Self {
        #[allow(unused_mut)]
        let mut r = Registry::new();
        #[cfg(feature = "mqtt")]
        r.add(polyhub_mqtt::Factory);
        #[cfg(feature = "coap")]
        r.add(polyhub_coap::Factory);
        #[cfg(feature = "http")]
        r.add(polyhub_http::Factory);
        #[cfg(feature = "amqp")]
        r.add(polyhub_amqp::Factory);
        #[cfg(feature = "xmpp")]
        r.add(polyhub_xmpp::Factory);
        r
    }

    /// Adds a factory (replacing one of the same kind).
    pub fn add(&mut self, factory: impl AdapterFactory) {
        self.add_arc(Arc::new(factory));
    }

    /// Adds a shared factory (replacing one of the same kind).
    pub fn add_arc(&mut self, factory: Arc<dyn AdapterFactory>) {
        self.factories.retain(|f| f.kind() != factory.kind());
        self.factories.push(factory);
    }

    /// The factory for `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn AdapterFactory>> {
        self.factories.iter().find(|f| f.kind() == kind).cloned()
    }

    /// The known kinds, in registration order.
    pub fn kinds(&self) -> Vec<&str> {
        self.factories.iter().map(|f| f.kind()).collect()
    }
}
