//! Kong's AWS Secrets Manager vault as a proxy-wasm filter.
//!
//! Everything except `host::proxy_wasm` is plain, sans-IO Rust: it takes time,
//! responses and events as inputs and returns actions, so it is unit-tested
//! natively. Module map:
//! - [`reference`], [`template`]: Kong's vault reference grammar, header templates
//! - [`config`]: the JSON plugin configuration, validated with field-named errors
//! - [`json`]: JSON field helpers shared by the configuration parsers
//! - [`aws`]: SigV4 signing, GetSecretValue requests and responses
//! - [`cache`]: shared data as the filter uses it: the store a host provides
//!   ([`cache::SharedStore`]), entry format, leases, shared credentials, backoff
//! - [`engine`]: the state machine (events in, actions out), one file per
//!   concern (secrets, waiters, credentials, rendering, refresh, stats)
//! - [`host`]: the host boundary; `host::proxy_wasm` is the only proxy-wasm user
//! - [`text`]: outside text made safe for log lines
//! - [`cli`]: the native `aws-vault` command's logic
//!
//! Layers point down: `host` drives `engine`, which uses `cache`, `config`,
//! `aws` and `template`; `engine` and `cache` never import `host` (tests
//! aside, which run on `host::fake`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod aws;
pub mod cache;
pub mod cli;
pub mod config;
pub mod engine;
pub mod host;
pub mod json;
pub mod reference;
pub mod template;
pub mod text;
