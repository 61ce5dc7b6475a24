//! The host shell: the only code that talks to the proxy-wasm ABI. It
//! exports the callbacks the host calls (`proxy_on_*`), turns them into
//! [`Vm`] events and carries out the actions through [`super::execute`].
//!
//! Written against the ABI (0.2.1) directly rather than through the
//! proxy-wasm SDK: every host call reports failure instead of panicking (the
//! SDK panics on an unknown callout token or context id, and on statuses it
//! does not expect), a request costs no boxed context nor hash lookups, and
//! the module is about 30 KB smaller (measured).
//!
//! Every root context (one per filter configuration: Envoy's filter configs
//! sharing a `vm_id`, Kong's filter chain entries) is configured on its own
//! and answers only for its own HTTP contexts, which carry their root's id
//! into every [`Vm`] call.
//!
//! - `mod.rs`: this VM's state (the [`Vm`], the contexts the host created,
//!   metrics), the [`Host`] the actions run on, and the callbacks
//! - `exports.rs`: the `#[no_mangle]` entry points, each handing over to a
//!   callback here
//! - `abi.rs`: the raw host calls, each reporting failure instead of
//!   panicking

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::contexts::Contexts;

use super::{callout_headers, execute, Host, Own, SharedStore, StoreError};
use crate::aws::HttpRequest;
use crate::engine::vm::Vm;
use crate::engine::{Action, CalloutResult, Decision, Level, Owner, Rendered, Waking};

mod abi;
mod exports;

/// Tick period (ms): how soon a request waiting for a secret that another
/// worker fetches is resumed (Envoy). Refresh, prefetch and lost-callout
/// expiry run every `engine::MAINTENANCE_MS`; an idle tick does nothing.
const TICK_MS: u32 = 25;
/// Metrics are published at most this often (ms).
const METRICS_EVERY_MS: u64 = 200;
/// Largest callout response body read (GetSecretValue answers are < 100 KiB).
const MAX_BODY: usize = crate::aws::secrets_manager::MAX_BODY_BYTES;
const REJECT_BODY: &[u8] = b"secret unavailable\n";
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

/// A value of this VM's only thread. A proxy-wasm VM has one thread (wasm32
/// without the atomics feature cannot share memory), so a plain static is
/// sound; `thread_local!` would reach it through a function pointer, an
/// indirect call in every callback.
struct Local<T>(T);

impl<T> Local<T> {
    /// Like `LocalKey::with`.
    #[inline(always)]
    fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0)
    }
}

// SAFETY: single-threaded VM (above); refused to build otherwise (below).
unsafe impl<T> Sync for Local<T> {}

#[cfg(target_feature = "atomics")]
compile_error!("the proxy-wasm shell assumes a single-threaded VM (no atomics)");

/// This VM's state: one engine per root context. How the host continues
/// paused requests is probed at each configuration (the safe way until then).
static VM: Local<RefCell<Vm>> = Local(RefCell::new(Vm::new(Waking::OwnCallbacks)));
/// The contexts the host created, and what each needs between callbacks.
static CONTEXTS: Local<RefCell<Contexts>> = Local(RefCell::new(Contexts::new()));
/// Host metric ids and the counts already reported, and when.
static METRICS: Local<RefCell<Metrics>> = Local(RefCell::new(Metrics::new()));
/// The time (ms) at the last callback that read the clock: every tick (25 ms)
/// does. The warm path uses it instead of a host call.
static CLOCK: Local<Cell<u64>> = Local(Cell::new(0));

/// Run `f` on the context table, if it is not busy (re-entered).
fn contexts<R>(f: impl FnOnce(&mut Contexts) -> R) -> Option<R> {
    CONTEXTS.with(|c| c.try_borrow_mut().ok().map(|mut c| f(&mut c)))
}

/// How this host continues paused requests. Envoy refuses to make an
/// unknown context effective (BadArgument); ngx_wasm_module (Kong) accepts
/// any id without doing anything, and resuming there acts on the running
/// request only. Asking is harmless on both.
fn probe_waking() -> Waking {
    if abi::set_effective_context(u32::MAX) {
        Waking::OwnCallbacks
    } else {
        Waking::AnyContext
    }
}

fn waking() -> Waking {
    VM.with(|cell| {
        cell.try_borrow()
            .map_or(Waking::OwnCallbacks, |vm| vm.waking())
    })
}

/// The proxy-wasm host behind [`Host`].
struct AbiHost;

impl SharedStore for AbiHost {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        abi::get_shared_data(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        abi::set_shared_data(key, value, cas)
    }
}

impl Host for AbiHost {
    fn log(&mut self, level: Level, message: &str) {
        log(level, message);
    }

    fn dispatch(
        &mut self,
        upstream: &str,
        request: &HttpRequest,
        timeout_ms: u32,
    ) -> Result<u32, String> {
        let headers = callout_headers(request);
        abi::dispatch_http_call(upstream, &headers, &request.body, timeout_ms)
            .map_err(|status| format!("status {status}"))
    }

    fn set_effective_context(&mut self, ctx: u32) -> bool {
        abi::set_effective_context(ctx)
    }

    fn resume(&mut self, ctx: u32, headers: &Rc<Rendered>) {
        go_on_with(ctx, headers.clone(), From::Paused);
        abi::resume_http_request();
    }

    fn reject(&mut self) {
        reject();
    }
}

fn log(level: Level, message: &str) {
    abi::log(
        match level {
            Level::Debug => abi::LOG_DEBUG,
            Level::Info => abi::LOG_INFO,
            Level::Warn => abi::LOG_WARN,
            Level::Error => abi::LOG_ERROR,
        },
        message,
    );
}

/// Run an event on the VM, then carry out its actions from `active`'s
/// callback. The VM is not borrowed while actions run (a host call may
/// re-enter the filter); re-entered, an event is dropped rather than panic.
fn run<R>(
    active: Owner,
    now: u64,
    event: impl FnOnce(&mut Vm, &mut AbiHost, &mut Vec<Action>) -> R,
) -> Option<(R, Own)> {
    VM.with(|cell| {
        let mut out = Vec::new();
        let result = {
            let mut vm = cell.try_borrow_mut().ok()?;
            event(&mut vm, &mut AbiHost, &mut out)
        };
        let own = execute(cell, &mut AbiHost, out, active, now);
        Some((result, own))
    })
}

/// Request `ctx` goes on with `rendered`: its request headers set now, and
/// kept for its response what that needs (see [`keep`]).
fn go_on_with(ctx: u32, rendered: Rc<Rendered>, from: From) {
    set_request_headers(&rendered);
    keep(ctx, rendered, from);
}

#[inline(always)]
fn set_request_headers(rendered: &Rendered) {
    for (name, value) in &rendered.request {
        abi::replace_header(abi::MAP_REQUEST_HEADERS, name, value);
    }
}

/// Does a request served `rendered` keep anything for its response
/// (response headers, the secrets to watch statuses for)?
#[inline(always)]
fn keeps(rendered: &Rendered) -> bool {
    !rendered.response.is_empty() || !rendered.used.is_empty()
}

/// Keep for request `ctx`'s response what `rendered` says it needs. `from`:
/// `Headers(root)` from its own request headers callback (a warm request is
/// not in the context table: entered only if something must be kept),
/// `Paused` when a paused request (in the table) is resumed, which also
/// clears its paused mark.
fn keep(ctx: u32, rendered: Rc<Rendered>, from: From) {
    let keep = keeps(&rendered);
    if keep || from == From::Paused {
        contexts(|c| {
            let http = match from {
                From::Headers(root) => Some(c.entry(ctx, root)),
                From::Paused => c.http.get_mut(&ctx),
            };
            if let Some(h) = http {
                h.paused = false;
                if keep {
                    h.response = Some(rendered);
                }
            }
        });
    }
}

/// Where a request goes on from: see [`keep`].
#[derive(Clone, Copy, PartialEq)]
enum From {
    Headers(u32),
    Paused,
}

fn reject() {
    abi::send_local_response(
        503,
        "aws_vault_secret_unavailable",
        REJECT_BODY,
        &[("content-type", "text/plain")],
    );
}

/// The 503 from a request's own callout answer. ngx_wasm_module (Kong)
/// drops the client connection instead of answering when that reply has a
/// body and the callout was a POST that failed after connecting (seen with
/// nginx 1.27.4 + ngx_wasm_module 2025-04): there it goes without one.
fn reject_from_callout() {
    if waking() == Waking::OwnCallbacks {
        abi::send_local_response(503, "aws_vault_secret_unavailable", b"", &[]);
    } else {
        reject();
    }
}

fn now_ms() -> u64 {
    let now = abi::current_time_ns() / 1_000_000;
    CLOCK.with(|c| c.set(now));
    now
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness, fall back to time: only lease ids and jitter need it.
    if getrandom::fill(&mut bytes).is_err() {
        return now_ms() ^ 0x5851_f42d_4c95_7f2d;
    }
    u64::from_le_bytes(bytes)
}

/// Read a callout's answer as the host reports it.
fn read_callout(body_size: usize) -> CalloutResult {
    let headers = abi::header_map(abi::MAP_HTTP_CALL_RESPONSE_HEADERS);
    super::callout_result(headers, body_size, MAX_BODY, || {
        abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, body_size)
    })
}

struct Metrics {
    /// Host metric ids and the counts already reported, by counter.
    defined: Vec<(u32, u64)>,
    next_at: u64,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            defined: Vec::new(),
            next_at: 0,
        }
    }

    /// Report counter increases since last time, for the whole VM. Batched
    /// from the tick: the hot path makes no host call for metrics.
    #[inline(never)] // see Config::fields
    fn publish(&mut self, now: u64) {
        if now < self.next_at {
            return;
        }
        self.next_at = now + METRICS_EVERY_MS;
        let Some(counters) = VM.with(|cell| cell.try_borrow().ok().map(|vm| vm.stats().counters()))
        else {
            return;
        };
        if self.defined.is_empty() {
            self.defined = counters
                .iter()
                .filter_map(|(name, _)| abi::define_counter(&format!("aws_vault.{name}")))
                .map(|id| (id, 0))
                .collect();
            if self.defined.len() != counters.len() {
                self.defined.clear();
                return;
            }
        }
        for ((id, reported), (_, value)) in self.defined.iter_mut().zip(counters) {
            if value > *reported {
                abi::increment_metric(*id, value - *reported);
                *reported = value;
            }
        }
    }
}

// ------------------------------------------------------------------- callbacks

#[inline(never)] // see Config::fields
fn on_configure(root: u32) -> bool {
    let bytes = abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, usize::MAX);
    let text = String::from_utf8_lossy(&bytes);
    let env = |k: &str| std::env::var(k).ok();
    let (now, seed) = (now_ms(), seed());
    let waking = probe_waking();
    let configured = run(Owner::Root, now, |vm, host, out| {
        vm.set_waking(waking);
        vm.configure(root, &text, &env, seed, host, out)
            .map(|secrets| (secrets, waking))
    });
    match configured {
        Some((Ok((secrets, waking)), _)) => {
            let host = match waking {
                Waking::AnyContext => "paused requests resumed from any context",
                Waking::OwnCallbacks => "paused requests continued from their own callouts",
            };
            log(
                Level::Info,
                &format!("configuration accepted ({secrets} secrets; {host})"),
            );
            // Kong traps on a second non-zero set_tick_period.
            let start = contexts(|c| match c.roots.get_mut(&root) {
                Some(started) if !*started => {
                    *started = true;
                    true
                }
                Some(_) => false,
                None => {
                    c.roots.insert(root, true);
                    true
                }
            });
            if start == Some(true) {
                abi::set_tick_period(TICK_MS);
            }
            true
        }
        Some((Err(e), _)) => {
            log(
                Level::Error,
                &crate::text::log_line(&format!("invalid configuration: {e}")),
            );
            false
        }
        None => false,
    }
}

#[inline(never)] // see Config::fields
fn on_tick(root: u32) {
    let now = now_ms();
    run(Owner::Root, now, |vm, host, out| {
        vm.on_tick(root, now, host, out)
    });
    METRICS.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.publish(now);
        }
    });
}

fn on_request_headers(ctx: u32) -> u32 {
    let Some(root) = contexts(|c| c.take_root(ctx)).flatten() else {
        return CONTINUE; // not ours (a host without context_create?)
    };
    // Warm: every configured secret fresh by the clock of the last tick, no
    // trusted incoming headers to read. No host call but setting the headers.
    let tick_clock = CLOCK.with(Cell::get);
    // Served with the VM borrowed: setting a header does not call the filter.
    let served = VM.with(|cell| {
        let mut vm = cell.try_borrow_mut().ok()?;
        if tick_clock == 0 {
            return None;
        }
        let rendered = vm.warm(root, tick_clock)?;
        set_request_headers(rendered);
        Some(keeps(rendered).then(|| Rc::clone(rendered)))
    });
    match served {
        Some(None) => return CONTINUE,
        Some(Some(rendered)) => {
            keep(ctx, rendered, From::Headers(root));
            return CONTINUE;
        }
        None => {}
    }
    on_request_headers_cold(ctx, root)
}

/// A request not served warm: the engine decides (fetch, pause, reject). Out
/// of line so that the warm path above stays a small function (see
/// Config::fields for why function size matters).
#[inline(never)]
fn on_request_headers_cold(ctx: u32, root: u32) -> u32 {
    contexts(|c| c.entry(ctx, root).engaged = true);
    let now = now_ms();
    let decision = run(Owner::Ctx(ctx), now, |vm, host, out| {
        let trusted = vm.trusted_headers(root);
        if trusted.is_empty() {
            return vm.on_request(root, ctx, now, &[], host, out);
        }
        // Every value of every allowlisted header: one sent twice is refused.
        let all = abi::header_map(abi::MAP_REQUEST_HEADERS);
        let incoming: Vec<(&str, &str)> = all
            .iter()
            .filter(|(n, _)| trusted.iter().any(|t| t.eq_ignore_ascii_case(n)))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        vm.on_request(root, ctx, now, &incoming, host, out)
    });
    let Some((decision, own)) = decision else {
        // Re-entered while the VM is busy: fail closed.
        reject();
        return PAUSE;
    };
    let decision = match own {
        Own::Untouched => decision,
        Own::Resumed(rendered) => Decision::Continue(rendered),
        Own::Rejected => Decision::Reject,
    };
    match decision {
        Decision::Continue(rendered) => {
            go_on_with(ctx, rendered, From::Headers(root));
            CONTINUE
        }
        Decision::Pause => {
            // Only Kong continues a request behind the filter's back.
            if waking() == Waking::OwnCallbacks {
                contexts(|c| c.http.get_mut(&ctx).map(|h| h.paused = true));
            }
            PAUSE
        }
        Decision::Reject => {
            reject();
            PAUSE
        }
    }
}

fn on_response_headers(ctx: u32) -> u32 {
    let Some((root, paused, rendered)) = contexts(|c| {
        c.http_mut(ctx).map(|h| {
            let paused = std::mem::take(&mut h.paused);
            (h.root, paused, h.response.take())
        })
    })
    .flatten() else {
        return CONTINUE;
    };
    if paused {
        // The host let the request go on without this filter (Kong 3.8
        // after a failed callout): it went upstream without its secrets.
        log(
            Level::Error,
            "a paused request was continued by the host without its secrets (a failed callout on Kong <= 3.8?)",
        );
    }
    let Some(rendered) = rendered else {
        return CONTINUE;
    };
    if !rendered.used.is_empty() {
        // refresh_on_status: did the upstream refuse what it was given?
        let status = abi::header_value(abi::MAP_RESPONSE_HEADERS, ":status")
            .and_then(|s| s.trim().parse::<u16>().ok());
        if let Some(status) = status {
            let now = now_ms();
            VM.with(|cell| {
                if let Ok(mut vm) = cell.try_borrow_mut() {
                    vm.on_upstream_status(
                        root,
                        rendered.gen,
                        &rendered.used,
                        status,
                        now,
                        &AbiHost,
                    );
                }
            });
        }
    }
    for (name, value) in &rendered.response {
        abi::replace_header(abi::MAP_RESPONSE_HEADERS, name, value);
    }
    CONTINUE
}

#[inline(never)] // see Config::fields
fn on_http_call_response(token: u32, body_size: usize) {
    // The host calls back on the root context; the callout belongs to the
    // context that sent it, which must be the one acted on.
    let owner = VM.with(|cell| cell.try_borrow().ok().and_then(|vm| vm.call_owner(token)));
    let Some(active) = owner else {
        return; // given up on, or not ours
    };
    if let Owner::Ctx(ctx) = active {
        let live = contexts(|c| c.http.contains_key(&ctx)) == Some(true);
        if !live || !abi::set_effective_context(ctx) {
            return; // the request went away: its answer is dropped
        }
    }
    let now = now_ms();
    let own = run(active, now, |vm, host, out| {
        vm.on_callout(token, || read_callout(body_size), now, host, active, out)
    })
    .map_or(Own::Untouched, |(_, own)| own);
    let Owner::Ctx(ctx) = active else {
        return;
    };
    // The request was paused waiting; its own callback continues it.
    match own {
        Own::Untouched => {}
        Own::Resumed(rendered) => {
            go_on_with(ctx, rendered, From::Paused);
            abi::resume_http_request();
        }
        Own::Rejected => {
            contexts(|c| c.http.get_mut(&ctx).map(|h| h.paused = false));
            reject_from_callout();
        }
    }
}

fn on_done(ctx: u32) {
    let http = |c: &mut Contexts| c.http_mut(ctx).map(|h| (h.root, h.engaged));
    match contexts(|c| (http(c), c.is_root(ctx))) {
        // Served from the warm path: nothing of it in the engine.
        Some((Some((_, false)), _)) => {}
        Some((Some((root, true)), _)) => VM.with(|cell| {
            if let Ok(mut vm) = cell.try_borrow_mut() {
                vm.on_context_done(root, ctx, &mut AbiHost);
            }
        }),
        // Envoy: a root context's configuration was removed or replaced.
        Some((None, true)) => {
            run(Owner::Root, now_ms(), |vm, host, out| {
                vm.remove_root(ctx, host, out)
            });
        }
        _ => {}
    }
}
