//! Kong's AWS Secrets Manager vault as a proxy-wasm filter.
//!
//! Everything except `host::proxy_wasm` is plain, sans-IO Rust: it takes time,
//! responses and events as inputs and returns actions, so it is unit-tested natively.

pub mod reference;
pub mod template;
pub mod aws;
