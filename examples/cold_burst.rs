//! Cold-start burst on each host's semantics, simulated with the engine itself
//! (the sans-IO core driven by `host::fake::proxy`, 1 ms steps of simulated
//! time): how many GetSecretValue calls, and how long requests wait, when a
//! burst of requests arrives before the cache is warm.
//!
//! `cargo run --release --example cold_burst` prints JSON (used by `make bench`).

use aws_vault::host::fake::proxy::{FakeProxy, State};
use aws_vault::host::fake::HostKind;

const ROOT: u32 = 0x5eed_1234;
const TICK_MS: u64 = 25;

struct Scenario {
    name: &'static str,
    kind: HostKind,
    workers: usize,
    secrets: usize,
    requests: usize,
    /// Requests arrive spread evenly over [start, start + spread) ms after configure.
    start_ms: u64,
    spread_ms: u64,
    aws_latency_ms: u64,
}

fn run(s: &Scenario) -> serde_json::Value {
    let mut p = FakeProxy::new(s.kind, s.workers);
    let mut headers = serde_json::Map::new();
    for i in 0..s.secrets {
        p.aws
            .secrets
            .insert(format!("cold-{i}"), format!("value-{i}"));
        headers.insert(
            format!("x-s{i}"),
            format!("{{vault://aws/cold-{i}}}").into(),
        );
    }
    let config = serde_json::json!({
        "aws": {"region": "us-east-1", "endpoint_url": "https://secretsmanager.us-east-1.amazonaws.com",
                "ttl": 300},
        "request_headers": headers,
    });
    p.configure(ROOT, &config.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = p.now;
    let arrivals: Vec<u64> = (0..s.requests)
        .map(|i| s.start_ms + (i as u64 * s.spread_ms) / s.requests.max(1) as u64)
        .collect();
    let mut next = 0usize;
    let mut ctxs = Vec::new();
    for ms in 0..10_000u64 {
        p.now = t0 + ms;
        p.answer_due(s.aws_latency_ms);
        while next < arrivals.len() && arrivals[next] <= ms {
            ctxs.push(p.request(next % s.workers, ROOT, &[]));
            next += 1;
        }
        if ms > 0 && ms % TICK_MS == 0 {
            p.tick(ROOT);
        }
        if next == arrivals.len() && p.paused().is_empty() && p.in_flight.is_empty() {
            break;
        }
    }
    let mut waits: Vec<u64> = ctxs
        .iter()
        .filter_map(|c| p.requests.get(c))
        .filter_map(|r| r.settled_at.map(|t| t - r.arrived_at))
        .collect();
    waits.sort_unstable();
    let pct = |q: f64| -> u64 {
        if waits.is_empty() {
            return 0;
        }
        waits[((waits.len() - 1) as f64 * q).round() as usize]
    };
    let ok = ctxs
        .iter()
        .filter(|c| matches!(p.state(**c), State::Continued(_)))
        .count();
    serde_json::json!({
        "name": s.name,
        "host": format!("{:?}", s.kind),
        "workers": s.workers,
        "secrets": s.secrets,
        "requests": s.requests,
        "arrive_ms": [s.start_ms, s.start_ms + s.spread_ms],
        "aws_latency_ms": s.aws_latency_ms,
        "get_secret_value_calls": p.aws.get_secret_value_calls,
        "answered_200": ok,
        "still_paused": p.paused().len(),
        "violations": p.violations.len(),
        "wait_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": waits.last().copied().unwrap_or(0)},
    })
}

fn main() {
    let mut results = Vec::new();
    for kind in [HostKind::Envoy, HostKind::Kong] {
        for (name, start_ms, spread_ms) in [
            // Before the first tick's prefetch: the worst case.
            ("before_prefetch", 0, 20),
            // While the prefetch is in flight.
            ("during_prefetch", 30, 40),
            // After it landed: nobody waits.
            ("after_prefetch", 150, 50),
        ] {
            results.push(run(&Scenario {
                name,
                kind,
                workers: 2,
                secrets: 10,
                requests: 500,
                start_ms,
                spread_ms,
                aws_latency_ms: 50,
            }));
        }
    }
    println!("{}", serde_json::Value::Array(results));
}
