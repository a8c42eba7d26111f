//! The testbed plugin as a shared library: the adapter of `testbed.rs`,
//! exported with `declare_plugin!`. The routing benchmark compiles the same
//! `testbed.rs` into the hub, so both sides run the very same adapter.

mod testbed;

polyhub_sdk::declare_plugin!(testbed::Factory);
