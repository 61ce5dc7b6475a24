//! A fleet restarted at once: GetSecretValue calls per second over time,
//! with ttl refreshes spread by jitter and without, simulated with the
//! engine itself (the sans-IO core, one [`Engine`] and shared-data store per
//! proxy, 1 s ticks of simulated time, AWS answering at once).
//!
//! `cargo run --release --example fleet_refresh [proxies] [secrets] [ttl_s] [seconds]`
//! prints JSON (used by `make bench`; bench/README.md).

use aws_vault::aws::HttpResponse;
use aws_vault::config::Config;
use aws_vault::engine::{Action, CalloutResult, Engine, Owner};
use aws_vault::host::fake::proxy::test_env;
use aws_vault::host::fake::{FakeStore, HostKind};

/// GetSecretValue's answer for the request's SecretId.
fn answer(request: &aws_vault::aws::HttpRequest) -> CalloutResult {
    let id = serde_json::from_slice::<serde_json::Value>(&request.body)
        .ok()
        .and_then(|v| v.get("SecretId").and_then(|s| s.as_str()).map(String::from))
        .unwrap_or_default();
    let body = serde_json::json!({"ARN": format!("arn:aws:secretsmanager:us-east-1:1:secret:{id}-AbCdEf"),
        "Name": id, "SecretString": "value"});
    CalloutResult::Response(HttpResponse {
        status: 200,
        headers: vec![],
        body: body.to_string().into_bytes(),
    })
}

/// Calls per second, for `proxies` proxies started together at t=0.
fn run(proxies: usize, secrets: usize, ttl_s: u64, seconds: usize, jitter: bool) -> Vec<u32> {
    let mut headers = serde_json::Map::new();
    for i in 0..secrets {
        headers.insert(
            format!("x-s{i}"),
            format!("{{vault://aws/fleet-{i}}}").into(),
        );
    }
    let config = serde_json::json!({
        "aws": {"region": "us-east-1", "ttl": ttl_s},
        "request_headers": headers,
    });
    let config = Config::parse(&config.to_string(), &test_env).unwrap_or_else(|e| panic!("{e}"));
    let t0: u64 = 1_700_000_000_000;
    let mut per_second = vec![0u32; seconds];
    for p in 0..proxies {
        let mut engine = Engine::new(&config, &test_env, 0x9e37_79b9 ^ (p as u64 * 7919))
            .unwrap_or_else(|e| panic!("{e}"));
        if !jitter {
            engine = engine.without_jitter();
        }
        let mut store = FakeStore::new(HostKind::Envoy);
        for (second, calls) in per_second.iter_mut().enumerate() {
            let now = t0 + second as u64 * 1000;
            let mut out = Vec::new();
            engine.on_tick(now, &mut store, &mut out);
            let mut pending = out;
            while !pending.is_empty() {
                let mut next = Vec::new();
                for action in pending {
                    if let Action::Dispatch { call, request, .. } = action {
                        *calls += 1;
                        engine.on_callout(
                            call.fetch,
                            answer(&request),
                            now,
                            &mut store,
                            Owner::Root,
                            &mut next,
                        );
                    }
                }
                pending = next;
            }
        }
    }
    per_second
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (proxies, secrets, ttl_s, seconds) = (arg(1, 1000), arg(2, 20), arg(3, 300), arg(4, 1000));
    let with = run(proxies, secrets, ttl_s as u64, seconds, true);
    let without = run(proxies, secrets, ttl_s as u64, seconds, false);
    let peak_after_start = |v: &[u32]| v.iter().skip(5).copied().max().unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "proxies": proxies, "secrets": secrets, "ttl_s": ttl_s, "seconds": seconds,
            "aws_get_secret_value_quota_per_s": 10_000,
            "with_jitter": {"per_second": with, "total": with.iter().map(|&c| u64::from(c)).sum::<u64>(),
                            "peak_after_start": peak_after_start(&with)},
            "without_jitter": {"per_second": without, "total": without.iter().map(|&c| u64::from(c)).sum::<u64>(),
                               "peak_after_start": peak_after_start(&without)},
        })
    );
}
