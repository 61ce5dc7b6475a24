//! The one thing the cache and the engine need from a host: its shared data,
//! a synchronous key-value map with compare-and-swap. Defined here, below
//! both, so that neither imports the host boundary; `host` re-exports it and
//! implements it (the real shell, the fakes).

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
