//! Raw proxy-wasm ABI calls that report failure instead of panicking.

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
    fn proxy_get_header_map_pairs(map: u32, out_data: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, out_id: *mut u32) -> u32;
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
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
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
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len());
    }
}

/// One header's value, if present (non-UTF-8 bytes replaced).
pub fn header_value(map: u32, name: &str) -> Option<String> {
    let mut data = null_mut();
    let mut size = 0usize;
    let status =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
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
    let status = unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) };
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
