//! The host boundary. The engine sees the host only through [`SharedStore`]
//! (a synchronous key-value map, defined in [`crate::cache`] and re-exported
//! here) and the [`crate::engine::Action`]s it returns;
//! [`execute`] carries those out through [`Host`], the few host calls they
//! need. `proxy_wasm` is the real host shell; `fake` models Envoy's and
//! Kong's differing semantics for native tests, running the same [`execute`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::aws::{HttpRequest, HttpResponse};
use crate::engine::vm::Vm;
use crate::engine::{Action, CallRef, CalloutResult, Level, Owner, Rendered, Waking};

pub mod contexts;
pub mod fake;
#[cfg(target_arch = "wasm32")]
pub mod proxy_wasm;
pub mod wire;

/// Shared data, defined in [`crate::cache`] (below the engine and the host)
/// and re-exported here, where hosts implement it.
pub use crate::cache::{SharedStore, StoreError};

/// The host calls behind [`Action`]s. Each acts on the context whose
/// callback is running, or (Envoy) on the one made effective with
/// [`Host::set_effective_context`].
pub trait Host: SharedStore {
    fn log(&mut self, level: Level, message: &str);
    /// Send a callout from the running context: the host's token for it.
    fn dispatch(
        &mut self,
        upstream: &str,
        request: &HttpRequest,
        timeout_ms: u32,
    ) -> Result<u32, String>;
    /// Make `ctx` the context later calls act on; false when it is gone.
    fn set_effective_context(&mut self, ctx: u32) -> bool;
    /// Set the paused request's headers, keep the response headers for its
    /// response, and let it continue.
    fn resume(&mut self, ctx: u32, headers: &Rc<Rendered>);
    /// Answer the paused request with a 503.
    fn reject(&mut self);
}

/// What happened, while actions ran, to the request whose callback is
/// running: it is told rather than acted on through the host, since it
/// continues (or not) by what its own callback returns.
#[derive(Debug, Default, PartialEq)]
pub enum Own {
    #[default]
    Untouched,
    Resumed(Rc<Rendered>),
    Rejected,
}

/// Carry out `actions` from within `active`'s callback at `now`. `vm` is
/// borrowed only between host calls (a host call may re-enter the filter).
pub fn execute<H: Host>(
    vm: &RefCell<Vm>,
    host: &mut H,
    actions: Vec<Action>,
    active: Owner,
    now: u64,
) -> Own {
    if actions.is_empty() {
        return Own::Untouched; // the hot path: no host call
    }
    let waking = vm.try_borrow().map_or(Waking::OwnCallbacks, |v| v.waking());
    let mut queue: VecDeque<Action> = actions.into();
    let mut own = Own::Untouched;
    let mut switched = false;
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Log { level, message } => host.log(level, &crate::text::log_line(&message)),
            Action::Dispatch {
                call,
                upstream,
                request,
                timeout_ms,
            } => {
                let more =
                    dispatch_callout(vm, host, call, &upstream, &request, timeout_ms, active, now);
                queue.extend(more);
            }
            Action::Resume { ctx, headers } => {
                if active == Owner::Ctx(ctx) {
                    own = Own::Resumed(headers);
                } else if waking == Waking::AnyContext {
                    switched = true;
                    if host.set_effective_context(ctx) {
                        host.resume(ctx, &headers);
                    }
                } else {
                    // Kong would act on the running request instead.
                    host.log(Level::Error, "internal: refused to resume another request");
                }
            }
            Action::Reject { ctx } => {
                if active == Owner::Ctx(ctx) {
                    own = Own::Rejected;
                } else if waking == Waking::AnyContext {
                    switched = true;
                    if host.set_effective_context(ctx) {
                        host.reject();
                    }
                } else {
                    host.log(Level::Error, "internal: refused to answer another request");
                }
            }
        }
    }
    if switched {
        if let Owner::Ctx(ctx) = active {
            host.set_effective_context(ctx);
        }
    }
    own
}

/// Send a callout for `call`: the actions the engine answers a refused
/// dispatch with (none when it was sent).
#[allow(clippy::too_many_arguments)]
#[inline(never)] // see Config::fields
fn dispatch_callout<H: Host>(
    vm: &RefCell<Vm>,
    host: &mut H,
    call: CallRef,
    upstream: &str,
    request: &HttpRequest,
    timeout_ms: u32,
    active: Owner,
    now: u64,
) -> Vec<Action> {
    let mut out = Vec::new();
    match host.dispatch(upstream, request, timeout_ms) {
        Ok(token) => {
            if let Ok(mut vm) = vm.try_borrow_mut() {
                vm.on_dispatched(token, call, active, timeout_ms, now);
            }
        }
        Err(why) => {
            let reason = format!(
                "dispatch to upstream '{}' refused ({why}): in Envoy, is there a cluster with that name?",
                crate::text::quoted(upstream)
            );
            if let Ok(mut vm) = vm.try_borrow_mut() {
                vm.on_dispatch_failed(call, reason, now, host, active, &mut out);
            }
        }
    }
    out
}

/// The header map a callout is sent with: the request's pseudo-headers,
/// then its headers.
pub fn callout_headers(request: &HttpRequest) -> Vec<(&str, &str)> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", request.method.as_str()),
        (":path", request.path.as_str()),
        (":authority", request.authority.as_str()),
        (":scheme", request.scheme.as_str()),
    ];
    headers.extend(
        request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str())),
    );
    headers
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
            .map(|(_, v)| match v.as_str() {
                // ngx_wasm_module's status when the peer closed without answering.
                "ok" => "connection closed before a response".to_string(),
                v => v.chars().filter(|c| !c.is_control()).take(100).collect(),
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callouts_carry_pseudo_headers_first() {
        let request = HttpRequest {
            method: "POST".into(),
            scheme: "https".into(),
            authority: "secretsmanager.us-east-1.amazonaws.com".into(),
            path: "/".into(),
            headers: vec![(
                "x-amz-target".into(),
                "secretsmanager.GetSecretValue".into(),
            )],
            body: Vec::new(),
        };
        assert_eq!(
            callout_headers(&request),
            vec![
                (":method", "POST"),
                (":path", "/"),
                (":authority", "secretsmanager.us-east-1.amazonaws.com"),
                (":scheme", "https"),
                ("x-amz-target", "secretsmanager.GetSecretValue"),
            ]
        );
    }
}
