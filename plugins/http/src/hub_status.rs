//! The whole hub's `/health` and `/metrics`: the sdk's renderers, shared
//! with the hub's admin listener (one copy).

pub use polyhub_sdk::status::{health, prometheus, PROMETHEUS_CONTENT_TYPE};
