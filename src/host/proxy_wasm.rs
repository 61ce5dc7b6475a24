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

use std::cell::RefCell;
use std::rc::Rc;

use litemap::LiteMap;

use super::{execute, Host, Own, SharedStore, StoreError};
use crate::aws::HttpRequest;
use crate::engine::vm::Vm;
use crate::engine::{Action, CalloutResult, Decision, Level, Owner, Rendered, Waking};

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

thread_local! {
    /// This VM's state: one engine per root context.
    static VM: RefCell<Vm> = RefCell::new(Vm::new(probe_waking()));
    /// The contexts the host created, and what each needs between callbacks.
    static CONTEXTS: RefCell<Contexts> = const { RefCell::new(Contexts::new()) };
    /// Host metric ids and the counts already reported, and when.
    static METRICS: RefCell<Metrics> = const { RefCell::new(Metrics::new()) };
    /// The time (ms) at the last callback that read the clock: every tick
    /// (25 ms) does. The warm path uses it instead of a host call.
    static CLOCK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

struct Contexts {
    /// Root contexts: has the tick been started?
    roots: LiteMap<u32, bool>,
    http: LiteMap<u32, Http>,
}

impl Contexts {
    const fn new() -> Contexts {
        Contexts {
            roots: LiteMap::new(),
            http: LiteMap::new(),
        }
    }
}

/// One HTTP request's state.
struct Http {
    /// The root context (configuration) this request belongs to.
    root: u32,
    /// Response headers to set, once resumed.
    response: Option<Rc<Rendered>>,
    /// Paused by this filter and not yet resumed or answered by it.
    paused: bool,
    /// Went through the engine (not the warm path): it may be waiting or own
    /// callouts, so the engine must hear when it ends.
    engaged: bool,
}

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
        abi::dispatch_http_call(upstream, &headers, &request.body, timeout_ms)
            .map_err(|status| format!("status {status}"))
    }

    fn set_effective_context(&mut self, ctx: u32) -> bool {
        abi::set_effective_context(ctx)
    }

    fn resume(&mut self, ctx: u32, headers: &Rc<Rendered>) {
        set_request_headers(headers);
        contexts(|c| {
            if let Some(h) = c.http.get_mut(&ctx) {
                h.response = Some(headers.clone());
                h.paused = false;
            }
        });
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

fn set_request_headers(rendered: &Rendered) {
    for (name, value) in &rendered.request {
        abi::replace_header(abi::MAP_REQUEST_HEADERS, name, value);
    }
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

fn on_configure(root: u32) -> bool {
    let bytes = abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, usize::MAX);
    let text = String::from_utf8_lossy(&bytes);
    let env = |k: &str| std::env::var(k).ok();
    let (now, seed) = (now_ms(), seed());
    let configured = run(Owner::Root, now, |vm, host, out| {
        let waking = vm.waking();
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
    let Some(root) = contexts(|c| c.http.get(&ctx).map(|h| h.root)).flatten() else {
        return CONTINUE; // not ours (a host without context_create?)
    };
    // Warm: every configured secret fresh by the clock of the last tick, no
    // trusted incoming headers to read. No host call but setting the headers.
    let tick_clock = CLOCK.with(std::cell::Cell::get);
    let warm = VM.with(|cell| {
        let mut vm = cell.try_borrow_mut().ok()?;
        if tick_clock == 0 {
            return None;
        }
        vm.warm(root, tick_clock)
    });
    if let Some(rendered) = warm {
        set_request_headers(&rendered);
        if !rendered.response.is_empty() || !rendered.used.is_empty() {
            contexts(|c| c.http.get_mut(&ctx).map(|h| h.response = Some(rendered)));
        }
        return CONTINUE;
    }
    contexts(|c| c.http.get_mut(&ctx).map(|h| h.engaged = true));
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
            set_request_headers(&rendered);
            if !rendered.response.is_empty() || !rendered.used.is_empty() {
                contexts(|c| c.http.get_mut(&ctx).map(|h| h.response = Some(rendered)));
            }
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
        c.http.get_mut(&ctx).map(|h| {
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
            set_request_headers(&rendered);
            contexts(|c| {
                if let Some(h) = c.http.get_mut(&ctx) {
                    h.response = Some(rendered);
                    h.paused = false;
                }
            });
            abi::resume_http_request();
        }
        Own::Rejected => {
            contexts(|c| c.http.get_mut(&ctx).map(|h| h.paused = false));
            reject_from_callout();
        }
    }
}

fn on_done(ctx: u32) {
    let http = |c: &mut Contexts| c.http.get(&ctx).map(|h| (h.root, h.engaged));
    match contexts(|c| (http(c), c.roots.contains_key(&ctx))) {
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

/// The entry points the host calls (proxy-wasm ABI 0.2.1). On wasm32, `u32`,
/// `usize` and `bool` are all `i32`; a bool result is returned as 0/1.
mod exports {
    use super::{contexts, Http, CONTINUE};

    extern "C" {
        fn __wasm_call_ctors();
    }

    /// WASI reactor start: static constructors, then the panic hook.
    #[no_mangle]
    pub extern "C" fn _initialize() {
        // SAFETY: called once by the host before anything else, as the
        // wasm32-wasip1 reactor ABI requires.
        unsafe { __wasm_call_ctors() };
        // A panic must never happen (the VM is lost); should one, the log
        // says where, never what: a panic message could quote data.
        std::panic::set_hook(Box::new(|info| {
            let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
            super::abi::log(
                super::abi::LOG_CRITICAL,
                &format!("aws_vault panicked at {file}:{line}"),
            );
        }));
    }

    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    /// Memory the host fills for the filter (header maps, buffers, shared
    /// data); taken back with `Vec::from_raw_parts(ptr, size, size)`.
    #[no_mangle]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        let boxed: Box<[u8]> = vec![0u8; size].into_boxed_slice();
        Box::into_raw(boxed).cast::<u8>()
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
        contexts(|c| {
            if root_context_id == 0 {
                if !c.roots.contains_key(&context_id) {
                    c.roots.insert(context_id, false);
                }
            } else {
                c.http.insert(
                    context_id,
                    Http {
                        root: root_context_id,
                        response: None,
                        paused: false,
                        engaged: false,
                    },
                );
            }
        });
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(
        _root_context_id: u32,
        _vm_configuration_size: usize,
    ) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_configure(root_context_id: u32, _configuration_size: usize) -> u32 {
        u32::from(super::on_configure(root_context_id))
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_tick(root_context_id: u32) {
        super::on_tick(root_context_id);
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
        super::on_request_headers(context_id)
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_headers(
        context_id: u32,
        _headers: usize,
        _eos: u32,
    ) -> u32 {
        super::on_response_headers(context_id)
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_http_call_response(
        _context_id: u32,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        super::on_http_call_response(token, body_size);
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_done(context_id: u32) -> u32 {
        super::on_done(context_id);
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_delete(context_id: u32) {
        contexts(|c| {
            if c.http.remove(&context_id).is_none() {
                c.roots.remove(&context_id);
            }
        });
    }

    // What the filter does not use: exported as no-ops, as an SDK would.

    #[no_mangle]
    pub extern "C" fn proxy_on_log(_context_id: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_request_body(_context_id: u32, _size: usize, _eos: u32) -> u32 {
        CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_request_trailers(_context_id: u32, _trailers: usize) -> u32 {
        CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_body(_context_id: u32, _size: usize, _eos: u32) -> u32 {
        CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_trailers(_context_id: u32, _trailers: usize) -> u32 {
        CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_queue_ready(_root_context_id: u32, _queue_id: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_new_connection(_context_id: u32) -> u32 {
        CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_downstream_data(_context_id: u32, _size: usize, _eos: u32) -> u32 {
        CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_downstream_connection_close(_context_id: u32, _peer: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_upstream_data(_context_id: u32, _size: usize, _eos: u32) -> u32 {
        CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_upstream_connection_close(_context_id: u32, _peer: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_grpc_receive_initial_metadata(
        _context_id: u32,
        _token: u32,
        _n: u32,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_grpc_receive(_context_id: u32, _token: u32, _size: usize) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_grpc_receive_trailing_metadata(
        _context_id: u32,
        _token: u32,
        _n: u32,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_grpc_close(_context_id: u32, _token: u32, _status: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_foreign_function(_context_id: u32, _function: u32, _size: usize) {}
}

/// Raw proxy-wasm ABI calls that report failure instead of panicking.
mod abi {
    use std::ptr::null_mut;

    use crate::host::StoreError;

    pub const LOG_DEBUG: u32 = 1;
    pub const LOG_INFO: u32 = 2;
    pub const LOG_WARN: u32 = 3;
    pub const LOG_ERROR: u32 = 4;
    pub const LOG_CRITICAL: u32 = 5;

    pub const MAP_REQUEST_HEADERS: u32 = 0;
    pub const MAP_RESPONSE_HEADERS: u32 = 2;
    pub const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
    pub const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
    pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
    const OK: u32 = 0;
    const CAS_MISMATCH: u32 = 8;
    const STREAM_HTTP_REQUEST: u32 = 0;
    const METRIC_COUNTER: u32 = 0;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        fn proxy_http_call(
            upstream: *const u8,
            upstream_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            out_token: *mut u32,
        ) -> u32;
        fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
        fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
            out_cas: *mut u32,
        ) -> u32;
        fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            data: *const u8,
            size: usize,
            cas: u32,
        ) -> u32;
        fn proxy_set_effective_context(context_id: u32) -> u32;
        fn proxy_continue_stream(stream: u32) -> u32;
        fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_pairs(
            map: u32,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            out_id: *mut u32,
        ) -> u32;
        fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
    }

    /// Take ownership of memory the host allocated through the SDK's
    /// `proxy_on_memory_allocate` (a `Vec<u8>` of exactly `size`).
    unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(data, size, size)
        }
    }

    pub fn log(level: u32, message: &str) {
        unsafe {
            proxy_log(level, message.as_ptr(), message.len());
        }
    }

    /// Send a callout: the host's token, or the status it refused with.
    pub fn dispatch_http_call(
        upstream: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, u32> {
        let map = crate::host::wire::serialize_map(headers);
        let mut token = 0u32;
        let status = unsafe {
            proxy_http_call(
                upstream.as_ptr(),
                upstream.len(),
                map.as_ptr(),
                map.len(),
                body.as_ptr(),
                body.len(),
                null_mut(),
                0,
                timeout_ms,
                &mut token,
            )
        };
        if status == OK {
            Ok(token)
        } else {
            Err(status)
        }
    }

    pub fn set_tick_period(ms: u32) {
        unsafe {
            proxy_set_tick_period_milliseconds(ms);
        }
    }

    pub fn current_time_ns() -> u64 {
        let mut t: u64 = 0;
        unsafe {
            proxy_get_current_time_nanoseconds(&mut t);
        }
        t
    }

    pub fn get_shared_data(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let mut data = null_mut();
        let mut size = 0usize;
        let mut cas = 0u32;
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        if status != OK {
            return (None, None);
        }
        let value = unsafe { take(data, size) };
        let cas = (cas != 0).then_some(cas);
        if data.is_null() {
            (None, cas)
        } else {
            (Some(value), cas)
        }
    }

    pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let status = unsafe {
            proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        };
        match status {
            OK => Ok(()),
            CAS_MISMATCH => Err(StoreError::CasMismatch),
            _ => Err(StoreError::Failed),
        }
    }

    /// False when the context is gone (client disconnected).
    pub fn set_effective_context(id: u32) -> bool {
        unsafe { proxy_set_effective_context(id) == OK }
    }

    pub fn resume_http_request() {
        unsafe {
            proxy_continue_stream(STREAM_HTTP_REQUEST);
        }
    }

    pub fn send_local_response(status: u32, details: &str, body: &[u8], headers: &[(&str, &str)]) {
        let map = crate::host::wire::serialize_map(headers);
        unsafe {
            proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                map.as_ptr(),
                map.len(),
                -1,
            );
        }
    }

    pub fn replace_header(map: u32, name: &str, value: &str) {
        unsafe {
            proxy_replace_header_map_value(
                map,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            );
        }
    }

    /// One header's value, if present (non-UTF-8 bytes replaced).
    pub fn header_value(map: u32, name: &str) -> Option<String> {
        let mut data = null_mut();
        let mut size = 0usize;
        let status = unsafe {
            proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size)
        };
        if status != OK || data.is_null() {
            return None;
        }
        let bytes = unsafe { take(data, size) };
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A header map, decoded leniently (non-UTF-8 bytes replaced).
    pub fn header_map(map: u32) -> Vec<(String, String)> {
        let mut data = null_mut();
        let mut size = 0usize;
        let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
        if status != OK {
            return Vec::new();
        }
        let bytes = unsafe { take(data, size) };
        crate::host::wire::deserialize_map(&bytes)
    }

    pub fn define_counter(name: &str) -> Option<u32> {
        let mut id = 0u32;
        let status =
            unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) };
        (status == OK).then_some(id)
    }

    pub fn increment_metric(id: u32, by: u64) {
        unsafe {
            proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }

    pub fn buffer(buffer: u32, max_size: usize) -> Vec<u8> {
        let mut data = null_mut();
        let mut size = 0usize;
        let status = unsafe { proxy_get_buffer_bytes(buffer, 0, max_size, &mut data, &mut size) };
        if status != OK {
            return Vec::new();
        }
        unsafe { take(data, size) }
    }
}
