//! The host shell: the only code that talks to proxy-wasm. It turns host
//! callbacks into [`Vm`] events and carries out the actions through
//! [`super::execute`].
//!
//! Every root context (one per filter configuration: Envoy's filter configs
//! sharing a `vm_id`, Kong's filter chain entries) is configured on its own
//! and answers only for its own HTTP contexts: `Root` and `Http` carry the
//! root's id into every [`Vm`] call.
//!
//! Host calls whose SDK wrappers panic on an unexpected status or on
//! non-UTF-8 data (shared data, header maps, local replies, resuming) go
//! through [`abi`] instead, so no host answer can crash the VM.
//! `dispatch_http_call` stays on the SDK: the SDK must record which context
//! owns a callout to route its answer.

use std::cell::RefCell;

use litemap::LiteMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as Flow, ContextType, LogLevel};

use super::{execute, Host, Own, SharedStore, StoreError};
use crate::aws::HttpRequest;
use crate::engine::vm::Vm;
use crate::engine::{CalloutResult, Decision, Level, Owner, Rendered, Waking};

/// Tick period: how soon a request waiting for a secret that another worker
/// fetches is resumed (Envoy). Refresh, prefetch and lost-callout expiry run
/// every `engine::MAINTENANCE_MS`; an idle tick does nothing.
const TICK: Duration = Duration::from_millis(25);
/// Metrics are published at most this often (ms).
const METRICS_EVERY_MS: u64 = 200;
/// Largest callout response body read (GetSecretValue answers are < 100 KiB).
const MAX_BODY: usize = crate::aws::secrets_manager::MAX_BODY_BYTES;
const REJECT_BODY: &[u8] = b"secret unavailable\n";

proxy_wasm::main! {{
    // A panic must never happen (the VM is lost); should one, the log says
    // where, never what: a panic message could quote data.
    std::panic::set_hook(Box::new(|info| {
        let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
        abi::log(LogLevel::Critical, &format!("aws_vault panicked at {file}:{line}"));
    }));
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, tick_started: false })
    });
}}

thread_local! {
    /// This VM's state: one engine per root context.
    static VM: RefCell<Vm> = RefCell::new(Vm::new(probe_waking()));
    /// Response headers for requests resumed by another context.
    static PENDING: RefCell<LiteMap<u32, Rc<Rendered>>> = const { RefCell::new(LiteMap::new()) };
    /// Host metric ids and the counts already reported, and when.
    static METRICS: RefCell<Metrics> = RefCell::new(Metrics::default());
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
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        proxy_wasm::hostcalls::dispatch_http_call(
            upstream,
            headers,
            Some(&request.body),
            vec![],
            timeout,
        )
        .map_err(|status| format!("{status:?}"))
    }

    fn set_effective_context(&mut self, ctx: u32) -> bool {
        abi::set_effective_context(ctx)
    }

    fn resume(&mut self, ctx: u32, headers: &Rc<Rendered>) {
        set_request_headers(headers);
        if !headers.response.is_empty() {
            PENDING.with(|p| p.borrow_mut().insert(ctx, headers.clone()));
        }
        abi::resume_http_request();
    }

    fn reject(&mut self) {
        reject();
    }
}

fn log(level: Level, message: &str) {
    let level = match level {
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    };
    abi::log(level, message);
}

/// Run an event on the VM, then carry out its actions from `active`'s
/// callback. The VM is not borrowed while actions run (a host call may
/// re-enter the filter); re-entered, an event is dropped rather than panic.
fn run<R>(
    active: Owner,
    now: u64,
    event: impl FnOnce(&mut Vm, &mut AbiHost, &mut Vec<crate::engine::Action>) -> R,
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
    let kong = VM.with(|cell| {
        cell.try_borrow()
            .map_or(true, |vm| vm.waking() == Waking::OwnCallbacks)
    });
    if kong {
        abi::send_local_response(503, "aws_vault_secret_unavailable", b"", &[]);
    } else {
        reject();
    }
}

fn now_ms() -> u64 {
    abi::current_time_ns() / 1_000_000
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

fn on_callout_answer(token: u32, body_size: usize, active: Owner) -> Own {
    let now = now_ms();
    run(active, now, |vm, host, out| {
        vm.on_callout(token, || read_callout(body_size), now, host, active, out)
    })
    .map_or(Own::Untouched, |(_, own)| own)
}

#[derive(Default)]
struct Metrics {
    /// Host metric ids and the counts already reported, by counter.
    defined: Vec<(u32, u64)>,
    next_at: u64,
}

impl Metrics {
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

struct Root {
    id: u32,
    tick_started: bool,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        on_callout_answer(token, body_size, Owner::Root);
    }

    fn on_done(&mut self) -> bool {
        // Envoy: this configuration was removed or replaced.
        let now = now_ms();
        run(Owner::Root, now, |vm, host, out| {
            vm.remove_root(self.id, host, out)
        });
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, usize::MAX);
        let text = String::from_utf8_lossy(&bytes);
        let env = |k: &str| std::env::var(k).ok();
        let (id, now, seed) = (self.id, now_ms(), seed());
        let configured = run(Owner::Root, now, |vm, host, out| {
            let waking = vm.waking();
            vm.configure(id, &text, &env, seed, host, out)
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
                if !self.tick_started {
                    self.tick_started = true;
                    self.set_tick_period(TICK);
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

    fn on_tick(&mut self) {
        let (id, now) = (self.id, now_ms());
        run(Owner::Root, now, |vm, host, out| {
            vm.on_tick(id, now, host, out)
        });
        METRICS.with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                m.publish(now);
            }
        });
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            root: self.id,
            response: None,
            paused: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    id: u32,
    /// The root context (configuration) this request belongs to.
    root: u32,
    response: Option<Rc<Rendered>>,
    /// Paused by this filter and not yet resumed or answered by it.
    paused: bool,
}

impl Http {
    /// Carry out what happened to this request during its own callback.
    /// `answering`: the callback is its own callout's answer.
    fn settle(&mut self, own: &Own, answering: bool) {
        match own {
            Own::Untouched => {}
            Own::Resumed(rendered) => {
                set_request_headers(rendered);
                self.response = Some(rendered.clone());
                self.paused = false;
            }
            Own::Rejected => {
                if answering {
                    reject_from_callout();
                } else {
                    reject();
                }
                self.paused = false;
            }
        }
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let own = on_callout_answer(token, body_size, Owner::Ctx(self.id));
        // This request was paused waiting; its own callback can continue it.
        let resumed = matches!(own, Own::Resumed(_));
        self.settle(&own, true);
        if resumed {
            abi::resume_http_request();
        }
    }

    fn on_done(&mut self) -> bool {
        let (root, id) = (self.root, self.id);
        VM.with(|cell| {
            if let Ok(mut vm) = cell.try_borrow_mut() {
                vm.on_context_done(root, id, &mut AbiHost);
            }
        });
        PENDING.with(|p| p.borrow_mut().remove(&self.id));
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Flow {
        let (root, ctx, now) = (self.root, self.id, now_ms());
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
            return Flow::Pause;
        };
        if own != Own::Untouched {
            self.settle(&own, false);
            return match own {
                Own::Resumed(_) => Flow::Continue,
                _ => Flow::Pause,
            };
        }
        match decision {
            Decision::Continue(rendered) => {
                set_request_headers(&rendered);
                self.response = Some(rendered);
                Flow::Continue
            }
            Decision::Pause => {
                // Only Kong continues a request behind the filter's back.
                self.paused = VM.with(|cell| {
                    cell.try_borrow()
                        .is_ok_and(|vm| vm.waking() == Waking::OwnCallbacks)
                });
                Flow::Pause
            }
            Decision::Reject => {
                reject();
                Flow::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Flow {
        if self.paused {
            // The host let the request go on without this filter (Kong 3.8
            // after a failed callout): it went upstream without its secrets.
            self.paused = false;
            log(
                Level::Error,
                "a paused request was continued by the host without its secrets (a failed callout on Kong <= 3.8?)",
            );
        }
        let rendered = self
            .response
            .take()
            .or_else(|| PENDING.with(|p| p.borrow_mut().remove(&self.id)));
        if let Some(rendered) = rendered {
            for (name, value) in &rendered.response {
                abi::replace_header(abi::MAP_RESPONSE_HEADERS, name, value);
            }
        }
        Flow::Continue
    }
}

/// Raw proxy-wasm ABI calls that report failure instead of panicking.
mod abi {
    use std::ptr::null_mut;

    use proxy_wasm::types::LogLevel;

    use crate::host::StoreError;

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

    pub fn log(level: LogLevel, message: &str) {
        unsafe {
            proxy_log(level as u32, message.as_ptr(), message.len());
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
