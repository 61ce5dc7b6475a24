//! Several configurations in one VM, driven through the fake proxy with
//! Envoy's and Kong's semantics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;
use crate::engine::tests::both;
use crate::host::fake::proxy::{FakeProxy, State};
use crate::host::fake::{CalloutFailure, HostKind};

/// Kong-like root ids (CRC32s), and Envoy-like small ones.
const A: u32 = 0x9f3a_1c22;
const B: u32 = 7;
const C: u32 = 0xffff_fff0;

fn config(headers: &str) -> String {
    format!(
        r#"{{"aws": {{"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "upstream": "moto", "ttl": 60}},
            "request_headers": {headers}}}"#
    )
}

fn proxy(kind: HostKind, workers: usize) -> FakeProxy {
    let mut p = FakeProxy::new(kind, workers);
    for (k, v) in [
        ("sec-a", "value-of-a"),
        ("sec-b", "value-of-b"),
        ("shared", "shared-value"),
        ("victim", r#"{"k":"victim-value"}"#),
    ] {
        p.aws.secrets.insert(k.into(), v.into());
    }
    p
}

/// Every request answered, none left paused, nothing misdirected.
fn assert_clean(p: &FakeProxy) {
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    assert!(p.paused().is_empty(), "still paused: {:?}", p.paused());
}

#[test]
fn each_root_renders_only_its_own_headers() {
    both(|kind| {
        let mut p = proxy(kind, 2);
        p.configure(A, &config(r#"{"x-a": "{vault://aws/sec-a}"}"#))
            .unwrap();
        p.configure(B, &config(r#"{"x-b": "{vault://aws/sec-b}"}"#))
            .unwrap();
        p.configure(C, &config(r#"{"x-c": "literal"}"#)).unwrap();
        let mut seen = Vec::new();
        for round in 0..3 {
            for (w, root) in [(0, A), (1, B), (1, A), (0, C), (0, B)] {
                seen.push((p.request(w, root, &[]), root));
            }
            if round == 0 {
                p.answer_all();
            }
            p.advance(50, &[A, B, C]);
            p.answer_all();
        }
        assert_clean(&p);
        for (ctx, root) in seen {
            let State::Continued(headers) = p.state(ctx).clone() else {
                panic!("{kind:?}: request {ctx} of root {root}: {:?}", p.state(ctx));
            };
            let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
            match root {
                A => assert_eq!(headers, vec![("x-a".into(), "value-of-a".into())]),
                B => assert_eq!(headers, vec![("x-b".into(), "value-of-b".into())]),
                _ => assert_eq!(names, vec!["x-c"]),
            }
        }
    });
}

#[test]
fn same_secret_same_settings_is_fetched_once_per_proxy() {
    let mut p = proxy(HostKind::Envoy, 2);
    p.configure(A, &config(r#"{"x-a": "{vault://aws/shared}"}"#))
        .unwrap();
    p.configure(B, &config(r#"{"x-b": "Bearer {vault://aws/shared}"}"#))
        .unwrap();
    let mut ctxs = Vec::new();
    for i in 0..40 {
        ctxs.push(p.request(i % 2, if i % 3 == 0 { A } else { B }, &[]));
    }
    for _ in 0..10 {
        p.answer_all();
        p.advance(25, &[A, B]);
    }
    assert_eq!(
        p.aws.get_secret_value_calls, 1,
        "one fetch for the whole proxy"
    );
    assert_clean(&p);
    for ctx in ctxs {
        assert!(
            matches!(p.state(ctx), State::Continued(_)),
            "{:?}",
            p.state(ctx)
        );
    }
}

#[test]
fn a_new_root_reuses_what_is_cached() {
    both(|kind| {
        let mut p = proxy(kind, 2);
        p.configure(A, &config(r#"{"x-a": "{vault://aws/shared}"}"#))
            .unwrap();
        p.advance(250, &[A]); // prefetch
        p.answer_all();
        assert_eq!(p.aws.get_secret_value_calls, 1);
        p.configure(B, &config(r#"{"x-b": "{vault://aws/shared}"}"#))
            .unwrap();
        p.advance(1_000, &[A, B]);
        let ctx = p.request(1, B, &[]);
        assert_eq!(p.header(ctx, "x-b"), Some("shared-value"));
        assert_eq!(p.aws.get_secret_value_calls, 1, "{kind:?}: no second fetch");
        assert_clean(&p);
    });
}

#[test]
fn same_name_under_other_settings_stays_apart() {
    both(|kind| {
        let mut p = proxy(kind, 1);
        let east = config(r#"{"x-s": "{vault://aws/sec-a}"}"#);
        let west = east.replace("http://127.0.0.1:4566", "http://127.0.0.1:4567");
        p.configure(A, &east).unwrap();
        p.configure(B, &west).unwrap();
        p.advance(250, &[A, B]);
        assert_eq!(p.in_flight.len(), 2, "one fetch per endpoint");
        // The second endpoint has no such secret.
        let tokens: Vec<u32> = p.in_flight.keys().copied().collect();
        for t in tokens {
            if p.in_flight[&t].request.authority.ends_with("4567") {
                p.aws.secrets.remove("sec-a");
                p.answer(t);
                p.aws.secrets.insert("sec-a".into(), "value-of-a".into());
            } else {
                p.answer(t);
            }
        }
        let a = p.request(0, A, &[]);
        let b = p.request(0, B, &[]);
        assert_eq!(p.header(a, "x-s"), Some("value-of-a"));
        assert_eq!(p.state(b), &State::Rejected, "{kind:?}");
        assert_clean(&p);
    });
}

#[test]
fn a_reconfigured_root_never_applies_an_old_answer_to_a_new_secret() {
    both(|kind| {
        let mut p = proxy(kind, 1);
        p.configure(A, &config(r#"{"x": "{vault://aws/sec-a}"}"#))
            .unwrap();
        let old = p.request(0, A, &[]);
        let old_call = *p.in_flight.keys().next().unwrap();
        // The configuration changes while sec-a's fetch is in flight.
        p.configure(A, &config(r#"{"x": "{vault://aws/sec-b}"}"#))
            .unwrap();
        let new = p.request(0, A, &[]);
        p.answer(old_call); // sec-a's value arrives for the retired engine
        p.answer_all();
        p.advance(100, &[A]);
        assert_eq!(p.header(new, "x"), Some("value-of-b"), "{kind:?}");
        assert_eq!(
            p.state(old),
            &State::Rejected,
            "{kind:?}: paused under the old config"
        );
        assert_clean(&p);
        // And after the next refresh.
        p.advance(61_000, &[A]);
        p.answer_all();
        let later = p.request(0, A, &[]);
        assert_eq!(p.header(later, "x"), Some("value-of-b"));
    });
}

#[test]
fn removing_a_root_fails_its_paused_requests_and_drops_late_answers() {
    let mut p = proxy(HostKind::Envoy, 2);
    p.configure(A, &config(r#"{"x-a": "{vault://aws/sec-a}"}"#))
        .unwrap();
    p.configure(B, &config(r#"{"x-b": "{vault://aws/sec-b}"}"#))
        .unwrap();
    let paused: Vec<u32> = (0..6).map(|i| p.request(i % 2, A, &[])).collect();
    let other = p.request(0, B, &[]);
    assert!(!p.in_flight.is_empty());
    p.remove_root(A);
    for ctx in &paused {
        assert_eq!(p.state(*ctx), &State::Rejected, "failed at once");
    }
    p.answer_all(); // late answers for the gone root are ignored
    p.advance(100, &[B]);
    p.answer_all();
    assert_eq!(p.header(other, "x-b"), Some("value-of-b"));
    let after = p.request(1, A, &[]);
    assert_eq!(
        p.state(after),
        &State::Rejected,
        "no configuration, fail closed"
    );
    assert_clean(&p);
}

#[test]
fn kong_cold_burst_every_request_is_answered() {
    let mut p = proxy(HostKind::Kong, 2);
    p.configure(
        A,
        &config(r#"{"authorization": "Bearer {vault://aws/sec-a}"}"#),
    )
    .unwrap();
    let ctxs: Vec<u32> = (0..50).map(|i| p.request(i % 2, A, &[])).collect();
    assert_eq!(p.paused().len(), 50);
    p.answer_all();
    assert_clean(&p);
    for ctx in &ctxs {
        assert_eq!(p.header(*ctx, "authorization"), Some("Bearer value-of-a"));
    }
    // Each waiter owned its own fetch: a bounded number of duplicates.
    assert!(p.aws.get_secret_value_calls <= 50);
    // Warm: no more fetches.
    let before = p.aws.get_secret_value_calls;
    let warm = p.request(1, A, &[]);
    assert_eq!(p.header(warm, "authorization"), Some("Bearer value-of-a"));
    assert_eq!(p.aws.get_secret_value_calls, before);
}

#[test]
fn kong_waiters_fetch_missing_secrets_at_once_and_go_on_after_the_last() {
    let mut p = proxy(HostKind::Kong, 1);
    p.configure(
        A,
        &config(r#"{"x-1": "{vault://aws/sec-a}", "x-2": "{vault://aws/sec-b}"}"#),
    )
    .unwrap();
    let ctx = p.request(0, A, &[]);
    assert_eq!(p.in_flight.len(), 2, "both fetched from its own context");
    let first = *p.in_flight.keys().next().unwrap();
    p.answer(first);
    assert_eq!(
        p.state(ctx),
        &State::Paused,
        "continued only after its last callout"
    );
    // A second request while both are known to be on their way: one copy only.
    let later = p.request(0, A, &[]);
    assert_eq!(p.in_flight.len(), 2);
    p.answer_all();
    for c in [ctx, later] {
        assert_eq!(p.header(c, "x-1"), Some("value-of-a"));
        assert_eq!(p.header(c, "x-2"), Some("value-of-b"));
    }
    assert_eq!(p.aws.get_secret_value_calls, 3);
    assert_clean(&p);
}

#[test]
fn kong_waiting_is_bounded_by_the_requests_own_callouts() {
    let mut p = proxy(HostKind::Kong, 1);
    p.configure(A, &config(r#"{"x": "{vault://aws/sec-a}"}"#))
        .unwrap();
    let ctxs: Vec<u32> = (0..5).map(|_| p.request(0, A, &[])).collect();
    for _ in 0..20 {
        let Some(&token) = p.in_flight.keys().next() else {
            break;
        };
        p.now += 5_000;
        p.fail(token, CalloutFailure::Timeout);
    }
    for ctx in ctxs {
        assert_eq!(p.state(ctx), &State::Rejected);
    }
    assert_clean(&p);
}

#[test]
fn kong_incoming_references_are_answered() {
    let mut p = proxy(HostKind::Kong, 2);
    let conf = config(r#"{}"#).replace(
        r#""request_headers""#,
        r#""resolve_incoming_headers": ["x-ref"], "request_headers""#,
    );
    p.configure(A, &conf).unwrap();
    p.advance(250, &[A]);
    p.answer_all();
    let ctxs: Vec<u32> = (0..30)
        .map(|i| p.request(i % 2, A, &[("x-ref", "{vault://aws/victim/k}")]))
        .collect();
    p.answer_all();
    assert_clean(&p);
    for ctx in ctxs {
        assert_eq!(p.header(ctx, "x-ref"), Some("victim-value"));
    }
}

#[test]
fn kong_config_change_with_waiters_fails_them_from_their_own_answers() {
    let mut p = proxy(HostKind::Kong, 1);
    p.configure(A, &config(r#"{"x": "{vault://aws/sec-a}"}"#))
        .unwrap();
    let waiters: Vec<u32> = (0..4).map(|_| p.request(0, A, &[])).collect();
    p.configure(A, &config(r#"{"x": "{vault://aws/sec-b}"}"#))
        .unwrap();
    assert!(p.violations.is_empty(), "{:?}", p.violations);
    p.answer_all();
    for ctx in waiters {
        assert_eq!(p.state(ctx), &State::Rejected);
    }
    let fresh = p.request(0, A, &[]);
    p.answer_all();
    assert_eq!(p.header(fresh, "x"), Some("value-of-b"));
    assert_clean(&p);
}

#[test]
fn envoy_waiters_on_other_workers_resume_after_one_fetch() {
    let mut p = proxy(HostKind::Envoy, 3);
    p.configure(A, &config(r#"{"x": "{vault://aws/sec-a}"}"#))
        .unwrap();
    let ctxs: Vec<u32> = (0..30).map(|i| p.request(i % 3, A, &[])).collect();
    p.answer_all();
    p.advance(50, &[A]);
    assert_eq!(p.aws.get_secret_value_calls, 1);
    for ctx in ctxs {
        assert_eq!(p.header(ctx, "x"), Some("value-of-a"));
    }
    assert_clean(&p);
}

#[test]
fn roots_per_vm_are_bounded() {
    let mut p = proxy(HostKind::Envoy, 1);
    let conf = config(r#"{"x": "literal"}"#);
    for root in 0..MAX_ROOTS as u32 {
        p.configure(root.wrapping_mul(2_654_435_761), &conf)
            .unwrap();
    }
    let err = p.configure(12345, &conf).unwrap_err();
    assert!(err.contains("too many filter configurations"), "{err}");
    // Re-configuring an existing root is always possible.
    p.configure(0, &conf).unwrap();
    p.remove_root(0);
    p.configure(12345, &conf).unwrap();
}

#[test]
fn a_late_answer_for_a_gone_request_is_dropped_and_refetched() {
    both(|kind| {
        let mut p = proxy(kind, 1);
        p.configure(A, &config(r#"{"x": "{vault://aws/sec-a}"}"#))
            .unwrap();
        let ctx = p.request(0, A, &[]);
        p.finish(ctx); // the client left; its callout's answer is dropped
        p.answer_all();
        p.advance(300, &[A]);
        p.answer_all();
        let next = p.request(0, A, &[]);
        p.answer_all();
        p.advance(50, &[A]);
        assert_eq!(p.header(next, "x"), Some("value-of-a"), "{kind:?}");
        assert_clean(&p);
    });
}

#[test]
fn outside_text_never_forges_log_lines() {
    both(|kind| {
        let mut p = proxy(kind, 1);
        // A configured secret id with a line break (AWS has no such secret).
        let conf = config(
            r#"{"x": "{vault://aws/x%0a[2099-01-01 00:00:00.000][1][critical][main] FORGED}"}"#,
        )
        .replace(
            r#""request_headers""#,
            r#""resolve_incoming_headers": ["x-ref"], "request_headers""#,
        );
        p.configure(A, &conf).unwrap();
        p.advance(250, &[A]);
        p.answer_all();
        // Requests naming such ids are refused before any fetch.
        let calls = p.aws.get_secret_value_calls;
        let forged = "{vault://aws/y%0a[2099-01-01 00:00:00.000][1][critical][main] FORGED/k}";
        let ctx = p.request(0, A, &[("x-ref", forged)]);
        assert_eq!(p.state(ctx), &State::Rejected);
        assert_eq!(p.aws.get_secret_value_calls, calls);
        let long = format!("{{vault://aws/{}}} {{vault://nope/x}}", "y".repeat(3000));
        let ctx = p.request(0, A, &[("x-ref", &long)]);
        assert_eq!(p.state(ctx), &State::Rejected);
        p.answer_all();
        assert_clean(&p); // no raw line break was logged
        let all: Vec<&str> = p.logs.iter().map(|(_, m)| m.as_str()).collect();
        assert!(all.iter().any(|m| m.contains("x\\n[2099")), "{all:#?}");
        assert!(
            all.iter().any(|m| m.contains("control characters")),
            "{all:#?}"
        );
        assert!(all
            .iter()
            .all(|m| m.chars().count() <= crate::text::MAX_LOG_LINE + 3));
    });
}

#[test]
fn refresh_on_status_is_a_setting_of_each_root() {
    let mut p = proxy(HostKind::Envoy, 1);
    let watching = config(r#"{"x": "{vault://aws/sec-a}"}"#).replace(
        r#""request_headers""#,
        r#""refresh_on_status": [401], "request_headers""#,
    );
    p.configure(A, &watching).unwrap();
    p.configure(B, &config(r#"{"y": "{vault://aws/sec-a}"}"#))
        .unwrap();
    p.advance(250, &[A, B]);
    p.answer_all();
    let calls = p.aws.get_secret_value_calls;
    let b = p.request(0, B, &[]);
    p.now += 20_000;
    p.upstream_status(b, 401);
    p.advance(50, &[A, B]);
    assert_eq!(
        p.aws.get_secret_value_calls, calls,
        "B does not watch statuses"
    );
    let a = p.request(0, A, &[]);
    p.upstream_status(a, 401);
    p.advance(50, &[A, B]);
    p.answer_all();
    assert_eq!(p.aws.get_secret_value_calls, calls + 1, "A does");
    assert_clean(&p);
}
