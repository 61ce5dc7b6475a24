//! The entry points the host calls (proxy-wasm ABI 0.2.1). On wasm32, `u32`,
//! `usize` and `bool` are all `i32`; a bool result is returned as 0/1.

use super::{contexts, CONTINUE};

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
            c.create(context_id, root_context_id);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
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
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
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
    contexts(|c| c.delete(context_id));
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
pub extern "C" fn proxy_on_grpc_receive_initial_metadata(_context_id: u32, _token: u32, _n: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(_context_id: u32, _token: u32, _size: usize) {}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive_trailing_metadata(_context_id: u32, _token: u32, _n: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(_context_id: u32, _token: u32, _status: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_foreign_function(_context_id: u32, _function: u32, _size: usize) {}
