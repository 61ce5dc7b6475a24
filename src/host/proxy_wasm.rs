//! The host shell: the only code that talks to proxy-wasm. It turns host
//! callbacks into engine events and carries out the engine's actions.
//!
//! Host calls whose SDK wrappers panic on an unexpected status or on
//! non-UTF-8 data (shared data, header maps, local replies, resuming) go
//! through [`abi`] instead, so no host answer can crash the VM.
//! `dispatch_http_call` stays on the SDK: the SDK must record which context
//! owns a callout to route its answer.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as Flow, ContextType, LogLevel};

use super::{SharedStore, StoreError};
use crate::config::Config;
use crate::engine::{Action, CalloutResult, Decision, Engine, Level, Owner, Rendered};

/// Tick period: how soon a request waiting for a secret that another worker
/// fetches is resumed. Refresh, prefetch and lost-callout expiry run every
/// `engine::MAINTENANCE_MS`; an idle tick does nothing.
const TICK: Duration = Duration::from_millis(25);
/// Metrics are published every this many ticks.
const METRICS_EVERY: u32 = 8;
/// Largest callout response body read (GetSecretValue answers are < 100 KiB).
const MAX_BODY: usize = crate::aws::secrets_manager::MAX_BODY_BYTES;
const REJECT_BODY: &[u8] = b"secret unavailable\n";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { tick_started: false, ticks: 0, metrics: Vec::new() })
    });
}}

thread_local! {
    /// This VM's engine, once a configuration was accepted.
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
    /// Callout token -> engine fetch id.
    static TOKENS: RefCell<HashMap<u32, u64>> = RefCell::new(HashMap::new());
    /// Response headers for requests resumed by another context.
    static PENDING: RefCell<HashMap<u32, Rc<Rendered>>> = RefCell::new(HashMap::new());
}

struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        abi::get_shared_data(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        abi::set_shared_data(key, value, cas)
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

/// Run `f` on the engine, if configured. Never holds the borrow across host
/// calls that could re-enter.
fn with_engine<R>(f: impl FnOnce(&mut Engine, &mut HostStore) -> R) -> Option<R> {
    ENGINE.with(|cell| {
        let mut guard = cell.try_borrow_mut().ok()?;
        let engine = guard.as_mut()?;
        Some(f(engine, &mut HostStore))
    })
}

/// What happened to the context that was active while actions ran.
#[derive(Default, PartialEq)]
enum Own {
    #[default]
    Untouched,
    Resumed(Rc<Rendered>),
    Rejected,
}

/// Carry out actions. `active` is the context whose callback we are in; a
/// resume or reject aimed at it is reported back rather than done through
/// the host, since it is still inside its own callback.
fn execute(actions: Vec<Action>, active: Owner) -> Own {
    if actions.is_empty() {
        return Own::Untouched; // the hot path: no host call
    }
    let mut queue: VecDeque<Action> = actions.into();
    let mut own = Own::Untouched;
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Log { level, message } => log(level, &message),
            Action::Dispatch {
                fetch,
                upstream,
                request,
                timeout_ms,
            } => {
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
                match proxy_wasm::hostcalls::dispatch_http_call(
                    &upstream,
                    headers,
                    Some(&request.body),
                    vec![],
                    timeout,
                ) {
                    Ok(token) => {
                        TOKENS.with(|t| t.borrow_mut().insert(token, fetch));
                    }
                    Err(status) => {
                        let reason = format!(
                            "dispatch to upstream '{upstream}' refused ({status:?}): in Envoy, is there a cluster with that name?"
                        );
                        let mut out = Vec::new();
                        with_engine(|e, s| {
                            e.on_dispatch_error(fetch, reason, now_ms(), s, active, &mut out)
                        });
                        queue.extend(out);
                    }
                }
            }
            Action::Resume { ctx, headers } => {
                if active == Owner::Ctx(ctx) {
                    own = Own::Resumed(headers);
                    continue;
                }
                if abi::set_effective_context(ctx) {
                    set_request_headers(&headers);
                    if !headers.response.is_empty() {
                        PENDING.with(|p| p.borrow_mut().insert(ctx, headers));
                    }
                    abi::resume_http_request();
                }
            }
            Action::Reject { ctx } => {
                if active == Owner::Ctx(ctx) {
                    own = Own::Rejected;
                    continue;
                }
                if abi::set_effective_context(ctx) {
                    reject();
                }
            }
        }
    }
    if let Owner::Ctx(ctx) = active {
        abi::set_effective_context(ctx);
    }
    own
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
    let Some(fetch) = TOKENS.with(|t| t.borrow_mut().remove(&token)) else {
        return Own::Untouched;
    };
    let result = read_callout(body_size);
    let mut out = Vec::new();
    with_engine(|e, s| e.on_callout(fetch, result, now_ms(), s, active, &mut out));
    execute(out, active)
}

struct Root {
    tick_started: bool,
    ticks: u32,
    /// Host metric ids and the counts already reported, by metric name.
    metrics: Vec<(u32, u64)>,
}

impl Root {
    /// Report counter increases since the last tick. Batched here rather than
    /// per request: the hot path makes no host call for metrics.
    fn publish_metrics(&mut self) {
        let Some(counters) = with_engine(|e, _| e.stats.counters()) else {
            return;
        };
        if self.metrics.is_empty() {
            self.metrics = counters
                .iter()
                .filter_map(|(name, _)| abi::define_counter(&format!("aws_vault.{name}")))
                .map(|id| (id, 0))
                .collect();
            if self.metrics.len() != counters.len() {
                self.metrics.clear();
                return;
            }
        }
        for ((id, reported), (_, value)) in self.metrics.iter_mut().zip(counters) {
            if value > *reported {
                abi::increment_metric(*id, value - *reported);
                *reported = value;
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        on_callout_answer(token, body_size, Owner::Root);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, usize::MAX);
        let text = String::from_utf8_lossy(&bytes);
        let env = |k: &str| std::env::var(k).ok();
        let engine =
            Config::parse(&text, &env).and_then(|config| Engine::new(&config, &env, seed()));
        match engine {
            Ok(engine) => {
                log(
                    Level::Info,
                    &format!("configuration accepted ({} secrets)", engine.secret_count()),
                );
                ENGINE.with(|cell| {
                    if let Ok(mut slot) = cell.try_borrow_mut() {
                        *slot = Some(engine);
                    }
                });
                // Kong traps on a second non-zero set_tick_period.
                if !self.tick_started {
                    self.tick_started = true;
                    self.set_tick_period(TICK);
                }
                true
            }
            Err(e) => {
                log(Level::Error, &format!("invalid configuration: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let mut out = Vec::new();
        with_engine(|e, s| e.on_tick(now_ms(), s, &mut out));
        execute(out, Owner::Root);
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(METRICS_EVERY) {
            self.publish_metrics();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            response: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    id: u32,
    response: Option<Rc<Rendered>>,
}

impl Http {
    fn settle(&mut self, own: Own) -> Option<Flow> {
        match own {
            Own::Untouched => None,
            Own::Resumed(rendered) => {
                set_request_headers(&rendered);
                self.response = Some(rendered);
                Some(Flow::Continue)
            }
            Own::Rejected => {
                reject();
                Some(Flow::Pause)
            }
        }
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let own = on_callout_answer(token, body_size, Owner::Ctx(self.id));
        // This context was paused waiting; its own callback can resume it.
        match own {
            Own::Resumed(rendered) => {
                set_request_headers(&rendered);
                self.response = Some(rendered);
                abi::resume_http_request();
            }
            Own::Rejected => reject(),
            Own::Untouched => {}
        }
    }

    fn on_done(&mut self) -> bool {
        with_engine(|e, s| e.on_context_done(self.id, s));
        PENDING.with(|p| p.borrow_mut().remove(&self.id));
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Flow {
        let mut out = Vec::new();
        let now = now_ms();
        let Some(decision) = with_engine(|e, s| {
            // Only the allowlisted headers are read: one host call each.
            let incoming: Vec<(String, String)> = e
                .trusted_headers()
                .iter()
                .filter_map(|name| {
                    abi::header_value(abi::MAP_REQUEST_HEADERS, name).map(|v| (name.clone(), v))
                })
                .collect();
            let incoming: Vec<(&str, &str)> = incoming
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            e.on_request(self.id, now, &incoming, s, &mut out)
        }) else {
            return Flow::Continue;
        };
        let own = execute(out, Owner::Ctx(self.id));
        if let Some(flow) = self.settle(own) {
            return flow;
        }
        match decision {
            Decision::Continue(rendered) => {
                set_request_headers(&rendered);
                self.response = Some(rendered);
                Flow::Continue
            }
            Decision::Pause => Flow::Pause,
            Decision::Reject => {
                reject();
                Flow::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Flow {
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
