//! The adapter the factory builds: runs either the broker client or the
//! embedded broker, in the adapter's span.

use polyhub_sdk::reexports::async_trait;
use polyhub_sdk::{Adapter, AdapterContext, AdapterError};

use crate::config::{Mode, Settings};

/// A configured MQTT adapter.
#[derive(Debug)]
pub struct MqttAdapter {
    settings: Settings,
}

impl MqttAdapter {
    /// An adapter for validated settings.
    pub fn new(settings: Settings) -> Self {
        MqttAdapter { settings }
    }
}

#[async_trait]
impl Adapter for MqttAdapter {
    async fn run(self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError> {
        let Settings {
            mode,
            subscribe,
            forward,
        } = self.settings;
        match mode {
            Mode::Client(c) => crate::client::run(c, subscribe, forward, ctx).await,
            Mode::Broker(b) => crate::broker::run(b, subscribe, forward, ctx).await,
        }
    }
}
