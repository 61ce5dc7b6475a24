//! Native cost of building and SigV4-signing one `GetSecretValue` callout.
//!
//! `CARGO_PROFILE_RELEASE_PANIC=unwind cargo bench --bench sigv4` (Criterion).
//! Without the variable the cdylib+rlib library is built twice, with
//! panic=abort and with unwind, to one file name, and the bench may fail to
//! link (cargo issue #6313). `bench/run.py` sets it and reads Criterion's
//! `target/criterion/sigv4/<name>/new/estimates.json`.
//!
//! The filter pays this once per fetch (cache miss or refresh), never on a
//! cached request.
//!
//! Cargo's bench profile inherits `[profile.release]` (opt-level "z", LTO),
//! the settings the .wasm is built with; inside V8 the same code is slower.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_vault::aws::secrets_manager::{
    default_endpoint, get_secret_value_request, parse_endpoint_url, VersionStage,
};
use aws_vault::aws::sigv4::{sign, Credentials};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn creds(session_token: bool) -> Credentials {
    Credentials {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        // A real STS session token is ~800-1000 characters.
        session_token: session_token.then(|| "FwoGZXIvYXdzE".repeat(70)),
    }
}

fn signing(c: &mut Criterion) {
    let endpoint = default_endpoint("us-east-1");
    let local = parse_endpoint_url("http://127.0.0.1:4566").expect("endpoint");
    let secret_id = "prod/payments/api-credentials";
    // A fixed time: the result must not depend on the clock.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
    let plain = creds(false);
    let with_token = creds(true);

    let mut g = c.benchmark_group("sigv4");

    g.bench_function("get_secret_value_request", |b| {
        b.iter(|| {
            get_secret_value_request(
                black_box(&endpoint),
                black_box(secret_id),
                VersionStage::Current,
            )
        })
    });

    // sign() alone; the unsigned request is cloned outside the timed part.
    let unsigned = get_secret_value_request(&endpoint, secret_id, VersionStage::Current);
    g.bench_function("sign", |b| {
        b.iter_batched_ref(
            || unsigned.clone(),
            |req| sign(req, black_box(&plain), "us-east-1", "secretsmanager", now),
            BatchSize::SmallInput,
        )
    });

    // What a fetch costs the filter: build the request, then sign it.
    for (name, ep, cr) in [
        ("request_and_sign", &endpoint, &plain),
        ("request_and_sign_session_token", &endpoint, &with_token),
        ("request_and_sign_local_endpoint", &local, &plain),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut req = get_secret_value_request(
                    black_box(ep),
                    black_box(secret_id),
                    VersionStage::Current,
                );
                sign(&mut req, black_box(cr), "us-east-1", "secretsmanager", now).expect("signs");
                req
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    // Short enough for `make bench` (5 functions x ~3 s), stable enough for µs-scale work.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = signing
}
criterion_main!(benches);
