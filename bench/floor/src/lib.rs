//! The proxy-wasm floor of the aws_vault benchmark (bench/README.md).
//!
//! The least an HTTP filter can do in Envoy's proxy-wasm host to inject one header: on
//! every request, one host call (`proxy_replace_header_map_value` on the request headers,
//! `authorization: Bearer <fixed token>`), then Continue. No SDK, no std, no allocation,
//! no per-context state. Every other callback of ABI 0.2.1 is exported and does nothing,
//! so the host sees the same set of entry points as with an SDK filter; what is left is
//! the cost of the host itself (VM per worker, context creation, callbacks, the header
//! call), which aws_vault is measured against.
//!
//! Signatures follow the ABI 0.2.1 as the proxy-wasm Rust SDK 0.2 declares them (its
//! `dispatcher.rs`, `hostcalls.rs`): on wasm32 `u32`, `usize` and `bool` are all `i32`.

#![no_std]

use core::sync::atomic::{AtomicUsize, Ordering};

/// Must equal bench/run.py's `TOKEN`: the driver checks the injected header through the
/// upstream's `/check` route before measuring.
const VALUE: &[u8] = b"Bearer s3cr3t-token-0123456789abcdef";
const NAME: &[u8] = b"authorization";

const MAP_HTTP_REQUEST_HEADERS: u32 = 0;
const ACTION_CONTINUE: u32 = 0;
const TRUE: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

// ---------------------------------------------------------------------------------- memory

static HEAP_NEXT: AtomicUsize = AtomicUsize::new(0);
static HEAP_END: AtomicUsize = AtomicUsize::new(0);

/// Where the host copies data the module asks for (buffers, properties, header maps). The
/// floor asks for none, so this is only here because the host requires it: a bump
/// allocator over fresh pages, never freed.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    const PAGE: usize = 65536;
    let size = match size.max(1).checked_add(7) {
        Some(s) => s & !7,
        None => return core::ptr::null_mut(),
    };
    let (mut next, mut end) = (
        HEAP_NEXT.load(Ordering::Relaxed),
        HEAP_END.load(Ordering::Relaxed),
    );
    if end - next < size {
        let pages = size.div_ceil(PAGE);
        let first = core::arch::wasm32::memory_grow(0, pages);
        if first == usize::MAX {
            return core::ptr::null_mut();
        }
        next = first * PAGE;
        end = next + pages * PAGE;
        HEAP_END.store(end, Ordering::Relaxed);
    }
    HEAP_NEXT.store(next + size, Ordering::Relaxed);
    next as *mut u8
}

// ------------------------------------------------------------------------- VM and contexts

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    TRUE
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(
    _root_context_id: u32,
    _plugin_configuration_size: usize,
) -> u32 {
    TRUE
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _root_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_log(_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_done(_context_id: u32) -> u32 {
    TRUE
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_tick(_root_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_queue_ready(_root_context_id: u32, _queue_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_foreign_function(
    _root_context_id: u32,
    _function_id: u32,
    _arguments_size: usize,
) {
}

// ----------------------------------------------------------------------------------- HTTP

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    _context_id: u32,
    _num_headers: usize,
    _end_of_stream: u32,
) -> u32 {
    // SAFETY: both slices are static; the host only reads them during the call.
    unsafe {
        proxy_replace_header_map_value(
            MAP_HTTP_REQUEST_HEADERS,
            NAME.as_ptr(),
            NAME.len(),
            VALUE.as_ptr(),
            VALUE.len(),
        );
    }
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(
    _context_id: u32,
    _body_size: usize,
    _end_of_stream: u32,
) -> u32 {
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(_context_id: u32, _num_trailers: usize) -> u32 {
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    _context_id: u32,
    _num_headers: usize,
    _end_of_stream: u32,
) -> u32 {
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(
    _context_id: u32,
    _body_size: usize,
    _end_of_stream: u32,
) -> u32 {
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(_context_id: u32, _num_trailers: usize) -> u32 {
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _context_id: u32,
    _token_id: u32,
    _num_headers: usize,
    _body_size: usize,
    _num_trailers: usize,
) {
}

// ------------------------------------------------------------------- gRPC and TCP (unused)

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive_initial_metadata(
    _context_id: u32,
    _token_id: u32,
    _headers: u32,
) {
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(_context_id: u32, _token_id: u32, _response_size: usize) {}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive_trailing_metadata(
    _context_id: u32,
    _token_id: u32,
    _trailers: u32,
) {
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(_context_id: u32, _token_id: u32, _status_code: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_new_connection(_context_id: u32) -> u32 {
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_data(
    _context_id: u32,
    _data_size: usize,
    _end_of_stream: u32,
) -> u32 {
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_connection_close(_context_id: u32, _peer_type: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_upstream_data(
    _context_id: u32,
    _data_size: usize,
    _end_of_stream: u32,
) -> u32 {
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_upstream_connection_close(_context_id: u32, _peer_type: u32) {}
