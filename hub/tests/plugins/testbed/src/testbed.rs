//! The `testbed` adapter: relays every envelope of its subscription to
//! `{prefix}/{topic}`, answers probe commands that exercise the whole hub
//! link (last value, retained, snapshot, filters, counters), and panics where
//! its config says so. Written against the sdk like any adapter; compiled
//! both as a plugin and into the hub's benchmark.

use polyhub_sdk::plugin::serde::Deserialize;
use polyhub_sdk::reexports::async_trait;
use polyhub_sdk::{
    Adapter, AdapterConfig, AdapterContext, AdapterError, AdapterFactory, AdapterState,
    ConfigError, Envelope, Topic, TopicFilter,
};

/// `[adapters.config]` of a testbed adapter.
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "polyhub_sdk::plugin::serde", deny_unknown_fields)]
pub struct TestbedConfig {
    /// What to do: `relay` (default), `panic-in-create`, `panic-in-run`,
    /// `panic-on-message`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Filter to subscribe to (default `in/#`).
    #[serde(default = "default_subscribe")]
    pub subscribe: String,
    /// Prefix of relayed topics (default `out`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Depth of the subscription queue (the hub's default when absent).
    pub depth: Option<usize>,
}

fn default_mode() -> String {
    "relay".to_owned()
}
fn default_subscribe() -> String {
    "in/#".to_owned()
}
fn default_prefix() -> String {
    "out".to_owned()
}

/// Builds `testbed` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "testbed"
    }

    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        let c: TestbedConfig = config.parse()?;
        match c.mode.as_str() {
            "relay" | "panic-in-run" | "panic-on-message" => {}
            "panic-in-create" => panic!("testbed: asked to panic in create"),
            other => {
                return Err(ConfigError::key(
                    "mode",
                    format!("unknown mode `{other}`; expected relay, panic-in-create, panic-in-run or panic-on-message"),
                ))
            }
        }
        let filter = TopicFilter::new(&c.subscribe)
            .map_err(|e| ConfigError::key("subscribe", e.to_string()))?;
        Ok(Box::new(Testbed { config: c, filter }))
    }
}

struct Testbed {
    config: TestbedConfig,
    filter: TopicFilter,
}

impl Testbed {
    fn out(&self, rest: &str) -> Option<Topic> {
        Topic::new(&format!("{}/{}", self.config.prefix, rest)).ok()
    }
}

#[async_trait]
impl Adapter for Testbed {
    async fn run(self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError> {
        if self.config.mode == "panic-in-run" {
            panic!("testbed: asked to panic in run");
        }
        let sub = ctx
            .subscribe_with_depth([self.filter.clone()], self.config.depth)
            .map_err(AdapterError::protocol)?;
        let mut sub = sub;
        ctx.set_state(AdapterState::Up, None);
        polyhub_sdk::reexports::tracing::info!(adapter = %ctx.name(), "Testbed up.");
        loop {
            let envelope = tokio::select! {
                _ = ctx.shutdown().cancelled() => break,
                e = sub.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
            };
            if self.config.mode == "panic-on-message" {
                panic!("testbed: asked to panic on {}", envelope.topic);
            }
            let topic = envelope.topic.as_str();
            let reply = if let Some(cmd) = topic.rsplit_once("/cmd/").map(|(_, c)| c) {
                let arg = String::from_utf8_lossy(&envelope.payload).into_owned();
                let answer = match cmd {
                    "last" => Topic::new(&arg)
                        .ok()
                        .and_then(|t| ctx.last_value(&t))
                        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
                        .unwrap_or_else(|| "none".to_owned()),
                    "retained" => TopicFilter::new(&arg)
                        .map(|f| ctx.retained(&f).len().to_string())
                        .unwrap_or_else(|e| e.to_string()),
                    "clear" => Topic::new(&arg)
                        .map(|t| ctx.clear_last_value(&t).to_string())
                        .unwrap_or_else(|e| e.to_string()),
                    "snapshot" => {
                        let s = ctx.snapshot();
                        let me = s.adapters.iter().find(|a| a.name == ctx.name());
                        format!(
                            "hub={} adapters={} self={}",
                            s.hub,
                            s.adapters.len(),
                            me.map_or("missing", |a| a.state.as_str())
                        )
                    }
                    "add" => match TopicFilter::new(&arg) {
                        Ok(f) => sub
                            .add(&f)
                            .map_or_else(|e| e.to_string(), |_| "added".into()),
                        Err(e) => e.to_string(),
                    },
                    "remove" => match TopicFilter::new(&arg) {
                        Ok(f) => sub.remove(&f).to_string(),
                        Err(e) => e.to_string(),
                    },
                    "count" => {
                        ctx.metrics().record_error();
                        ctx.metrics().incr("probe_count");
                        "counted".to_owned()
                    }
                    other => format!("unknown command {other}"),
                };
                self.out(cmd)
                    .map(|t| Envelope::new(t, answer.into_bytes()).with_origin(ctx.origin()))
            } else {
                self.out(topic).map(|t| {
                    let mut e = Envelope::new(t, envelope.payload.clone())
                        .with_qos(envelope.qos)
                        .with_origin(ctx.origin());
                    e.content_type = envelope.content_type.clone();
                    e.headers = envelope.headers.clone();
                    e
                })
            };
            if let Some(reply) = reply {
                if ctx.publish(reply).await.is_err() {
                    break;
                }
            }
        }
        ctx.set_state(AdapterState::Stopped, None);
        Ok(())
    }
}

use polyhub_sdk::plugin::tokio;
