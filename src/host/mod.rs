//! The host boundary. The engine sees the host only through [`SharedStore`]
//! (a synchronous key-value map) and the [`crate::engine::Action`]s it returns.
//! `proxy_wasm` is the real host shell; `fake` models Envoy's and Kong's
//! differing semantics for native tests.

use crate::aws::HttpResponse;
use crate::engine::CalloutResult;

pub mod fake;
#[cfg(target_arch = "wasm32")]
pub mod proxy_wasm;
pub mod wire;

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

/// A callout's answer as the host reported it -> [`CalloutResult`]. Envoy
/// synthesizes a status for failures (504 timeout, 503 connect failure);
/// Kong reports no `:status`, only `:dispatch_status` (`timeout`, `broken
/// connection`, ...). `body` is read only when the answer is usable.
pub fn callout_result(
    headers: Vec<(String, String)>,
    body_size: usize,
    max_body: usize,
    body: impl FnOnce() -> Vec<u8>,
) -> CalloutResult {
    let status = headers
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| v.trim().parse::<u16>().ok());
    let Some(status) = status else {
        let why = headers
            .iter()
            .find(|(n, _)| n == ":dispatch_status")
            .map(|(_, v)| v.chars().filter(|c| !c.is_control()).take(100).collect())
            .unwrap_or_else(|| "no response".into());
        return CalloutResult::Failed(why);
    };
    // Envoy's own answer for a connect failure, reset or timeout (503/504
    // with an "upstream ..." text body), not AWS's: AWS answers carry a
    // request id.
    let from_aws = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("x-amzn-requestid"));
    if !from_aws && (status == 503 || status == 504) && body_size <= 512 {
        let text = body();
        if text.starts_with(b"upstream ") || text.starts_with(b"no healthy upstream") {
            let why: String = String::from_utf8_lossy(&text)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            return CalloutResult::Failed(format!("{status} from the proxy: {why}"));
        }
        return CalloutResult::Response(HttpResponse {
            status,
            headers: regular(headers),
            body: text,
        });
    }
    if body_size > max_body {
        return CalloutResult::Failed(format!("response body of {body_size} bytes is too large"));
    }
    CalloutResult::Response(HttpResponse {
        status,
        headers: regular(headers),
        body: body(),
    })
}

/// Regular headers, lower-cased; pseudo-headers dropped.
fn regular(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter(|(n, _)| !n.starts_with(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect()
}
