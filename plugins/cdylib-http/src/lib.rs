//! polyhub's built-in HTTP adapter (`polyhub-http`), exported as a plugin
//! library. Nothing here but the declaration: the adapter is the very same
//! code the hub links statically for `type = "http"`.

polyhub_sdk::declare_plugin!(polyhub_http::Factory);
