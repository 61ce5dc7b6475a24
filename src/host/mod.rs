//! The host boundary. The engine sees the host only through [`SharedStore`]
//! (a synchronous key-value map) and the [`crate::engine::Action`]s it returns.
//! `proxy_wasm` is the real host shell; `fake` models Envoy's and Kong's
//! differing semantics for native tests.

pub mod fake;
#[cfg(target_arch = "wasm32")]
pub mod proxy_wasm;

/// Why a shared-data write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The entry changed since it was read (or, on Kong, exists when cas was None).
    CasMismatch,
    /// Any other host refusal.
    Failed,
}

/// Host shared data (proxy-wasm `get_shared_data`/`set_shared_data`), shared by
/// every VM of the plugin. `cas` semantics differ per host: Envoy treats `None`
/// as an unconditional write, Kong as "only if absent". Code using this trait
/// must be correct under both.
pub trait SharedStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}
