//! The filter's own work per warm request, natively: what `proxy_on_request_headers`,
//! `proxy_on_done` ask of the VM for a request whose secret is cached (no host calls).
//! `cargo run --release --example warm_path` prints ns per request (bench/README.md).

use std::time::Instant;

use aws_vault::engine::vm::Vm;
use aws_vault::engine::{Action, CalloutResult, Decision, Owner, Waking};
use aws_vault::host::fake::proxy::{test_env, FakeAws};
use aws_vault::host::fake::{FakeStore, HostKind};

fn main() {
    let mut vm = Vm::new(Waking::AnyContext);
    let mut store = FakeStore::new(HostKind::Envoy);
    let config = r#"{"aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "upstream": "moto"},
        "request_headers": {"authorization": "Bearer {vault://aws/bench/api/token}"}}"#;
    let root = 7;
    let mut out = Vec::new();
    vm.configure(root, config, &test_env, 1, &mut store, &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut aws = FakeAws::default();
    aws.secrets
        .insert("bench/api".into(), r#"{"token":"s3cr3t"}"#.into());
    let now = 1_700_000_000_000u64;
    out.clear();
    vm.on_tick(root, now, &mut store, &mut out);
    for (token, action) in out.drain(..).enumerate() {
        if let Action::Dispatch {
            call,
            request,
            timeout_ms,
            ..
        } = action
        {
            vm.on_dispatched(token as u32, call, Owner::Root, timeout_ms, now);
            let answer: CalloutResult = aws.answer(&request);
            let mut o = Vec::new();
            vm.on_callout(
                token as u32,
                || answer,
                now,
                &mut store,
                Owner::Root,
                &mut o,
            );
        }
    }
    let n = 2_000_000u32;
    let started = Instant::now();
    for ctx in 1..=n {
        let mut o = Vec::new();
        let d = vm.on_request(root, ctx, now, &[], &mut store, &mut o);
        assert!(matches!(d, Decision::Continue(_)));
        vm.on_context_done(root, ctx, &mut store);
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{{\"warm_request_ns_native\": {ns:.1}}}");
}
