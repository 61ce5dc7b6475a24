//! The engine driven natively: several VMs sharing one fake store, a fake
//! clock and canned AWS answers, under Envoy's and Kong's store semantics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;
use crate::cache::Entry;
use crate::host::fake::proxy::test_env as env;
use crate::host::fake::{FakeStore, HostKind};

const CONFIG: &str = r#"{
  "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "upstream": "moto", "ttl": 10, "resurrect_ttl": 20},
  "request_headers": {"authorization": "Bearer {vault://aws/prod/api/token}", "x-two": "{vault://aws/prod/api/user}:{vault://aws/prod/api/token}"},
  "response_headers": {"x-resp": "{vault://aws/resp}"}
}"#;

fn no_credentials(name: &str) -> Option<String> {
    (name == "AWS_EC2_METADATA_DISABLED").then(|| "true".into())
}

/// A GetSecretValue answer; `Name` "*" is replaced by the SecretId asked for
/// ([`named`]) when answered through [`Proxy::answer`].
fn ok(secret_string: &str) -> CalloutResult {
    let body = serde_json::json!({"ARN": "arn", "Name": "*", "SecretString": secret_string});
    http_200(&body.to_string())
}

/// A 200 answer with `body`.
fn http_200(body: &str) -> CalloutResult {
    CalloutResult::Response(HttpResponse {
        status: 200,
        headers: vec![],
        body: body.as_bytes().to_vec(),
    })
}

/// `result` with `"Name":"*"` replaced by the SecretId that fetch `fetch` asked for.
fn named(engine: &Engine, fetch: u64, result: CalloutResult) -> CalloutResult {
    let id = match engine.fetches.get(&fetch).map(|f| &f.kind) {
        Some(FetchKind::Secret { secret, .. }) => engine.secrets[*secret].target.secret_id.clone(),
        _ => return result,
    };
    match result {
        CalloutResult::Response(mut r) => {
            let body = String::from_utf8(r.body.clone()).unwrap();
            let name = serde_json::to_string(&id).unwrap();
            r.body = body
                .replace(r#""Name":"*""#, &format!(r#""Name":{name}"#))
                .into_bytes();
            CalloutResult::Response(r)
        }
        other => other,
    }
}

fn aws_error(status: u16, code: &str) -> CalloutResult {
    CalloutResult::Response(HttpResponse {
        status,
        headers: vec![],
        body: format!(r#"{{"__type":"{code}","message":"nope"}}"#).into_bytes(),
    })
}

/// A proxy: VMs sharing a store, a clock.
struct Proxy {
    store: FakeStore,
    vms: Vec<Engine>,
    now: u64,
}

impl Proxy {
    fn new(kind: HostKind, vms: usize, config: &str) -> Proxy {
        let config = Config::parse(config, &|_| None).unwrap();
        Proxy {
            store: FakeStore::new(kind),
            vms: (0..vms)
                .map(|i| Engine::new(&config, &env, 1000 + i as u64 * 7919).unwrap())
                .collect(),
            now: 1_700_000_000_000,
        }
    }

    fn request(&mut self, vm: usize, ctx: u32) -> (Decision, Vec<Action>) {
        let mut out = Vec::new();
        let d = self.vms[vm].on_request(ctx, self.now, &[], &mut self.store, &mut out);
        (d, out)
    }

    fn tick(&mut self, vm: usize) -> Vec<Action> {
        let mut out = Vec::new();
        self.vms[vm].on_tick(self.now, &mut self.store, &mut out);
        out
    }

    fn answer(&mut self, vm: usize, fetch: u64, result: CalloutResult) -> Vec<Action> {
        let mut out = Vec::new();
        let result = named(&self.vms[vm], fetch, result);
        self.vms[vm].on_callout(
            fetch,
            result,
            self.now,
            &mut self.store,
            Owner::Root,
            &mut out,
        );
        out
    }

    /// Answer the fetches in `actions` of CONFIG's two secrets: `api` for
    /// aws/prod/api, `resp` for the other; returns the follow-up actions.
    fn answer_config(
        &mut self,
        vm: usize,
        actions: &[Action],
        api: &str,
        resp: &str,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        for (id, _, request) in dispatch_of(actions) {
            let body = String::from_utf8(request.body).unwrap();
            let value = if body.contains("prod/api") { api } else { resp };
            out.extend(self.answer(vm, id, ok(value)));
        }
        out
    }

    /// Answer every dispatch in `actions` with `result`, returning the follow-up actions.
    fn answer_all(&mut self, vm: usize, actions: &[Action], result: &CalloutResult) -> Vec<Action> {
        let mut out = Vec::new();
        for id in dispatches(actions) {
            out.extend(self.answer(vm, id, result.clone()));
        }
        out
    }
}

fn dispatches(actions: &[Action]) -> Vec<u64> {
    dispatch_of(actions)
        .into_iter()
        .map(|(id, ..)| id)
        .collect()
}

fn dispatch_bodies(actions: &[Action]) -> Vec<String> {
    dispatch_of(actions)
        .into_iter()
        .map(|(.., request)| String::from_utf8(request.body).unwrap())
        .collect()
}

fn resumed(actions: &[Action]) -> Vec<(u32, Rc<Rendered>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Resume { ctx, headers } => Some((*ctx, headers.clone())),
            _ => None,
        })
        .collect()
}

fn rejected(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reject { ctx } => Some(*ctx),
            _ => None,
        })
        .collect()
}

fn logs(actions: &[Action]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn header<'a>(headers: &'a Headers, name: &str) -> &'a str {
    &headers.iter().find(|(n, _)| n == name).unwrap().1
}

/// Bring the two secrets of CONFIG into the cache through VM 0.
fn warm(p: &mut Proxy) {
    let out = p.tick(0);
    let bodies = dispatch_bodies(&out);
    assert_eq!(bodies.len(), 2, "prefetch fetches both secrets once");
    p.answer_config(0, &out, r#"{"token":"t0k","user":"alice"}"#, "resp-value");
}

/// Run `test` under Envoy's semantics, then Kong's (also the VM tests').
pub(super) fn both(test: impl Fn(HostKind)) {
    test(HostKind::Envoy);
    test(HostKind::Kong);
}

#[test]
fn cold_request_pauses_fetches_once_and_resumes_all() {
    both(|kind| {
        let mut p = Proxy::new(kind, 1, CONFIG);
        let (d1, out1) = p.request(0, 1);
        assert_eq!(d1, Decision::Pause);
        assert_eq!(dispatches(&out1).len(), 2, "two secrets, each fetched once");
        let body = dispatch_bodies(&out1).join(" ");
        assert!(body.contains(r#""SecretId":"prod/api""#), "{body}");
        let (d2, out2) = p.request(0, 2);
        assert_eq!(d2, Decision::Pause);
        assert!(
            dispatches(&out2).is_empty(),
            "second waiter shares the fetch"
        );
        let out = p.answer_config(0, &out1, r#"{"token":"t0k","user":"alice"}"#, "resp-value");
        let r = resumed(&out);
        assert_eq!(r.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1, 2]);
        let h = &r[0].1;
        assert_eq!(header(&h.request, "authorization"), "Bearer t0k");
        assert_eq!(header(&h.request, "x-two"), "alice:t0k");
        assert_eq!(header(&h.response, "x-resp"), "resp-value");
        assert_eq!(p.vms[0].waiting(), 0);
        // Warm now: no pause, no host fetch.
        let (d3, out3) = p.request(0, 3);
        assert!(matches!(d3, Decision::Continue(_)));
        assert!(dispatches(&out3).is_empty());
    });
}

#[test]
fn requests_are_signed_for_the_vault_region() {
    let mut p = Proxy::new(HostKind::Envoy, 1, CONFIG);
    let out = p.tick(0);
    let Some(Action::Dispatch {
        upstream,
        request,
        timeout_ms,
        ..
    }) = out.iter().find(|a| matches!(a, Action::Dispatch { .. }))
    else {
        panic!("no dispatch")
    };
    assert_eq!(upstream, "moto");
    assert_eq!(*timeout_ms, crate::config::DEFAULT_TIMEOUT_MS);
    assert_eq!(request.authority, "127.0.0.1:4566");
    let auth = request
        .headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .unwrap();
    assert!(
        auth.1.contains("/us-east-1/secretsmanager/aws4_request"),
        "{}",
        auth.1
    );
}

#[test]
fn one_fetch_for_the_whole_proxy_other_vms_pick_it_up() {
    both(|kind| {
        let mut p = Proxy::new(kind, 3, CONFIG);
        let out0 = p.tick(0);
        assert_eq!(dispatches(&out0).len(), 2);
        // Other VMs tick and get requests meanwhile: lease held, no fetch.
        assert!(dispatches(&p.tick(1)).is_empty(), "{kind:?}");
        let (d, out) = p.request(2, 7);
        assert_eq!(d, Decision::Pause);
        assert!(dispatches(&out).is_empty(), "{kind:?}");
        // VM 0 gets the answers and publishes them.
        p.answer_config(0, &out0, r#"{"token":"t0k","user":"alice"}"#, "resp-value");
        // VM 2's waiter is resumed by its next tick, from shared data.
        p.now += 200;
        let out = p.tick(2);
        assert!(dispatches(&out).is_empty());
        let r = resumed(&out);
        assert_eq!(r.len(), 1);
        assert_eq!(header(&r[0].1.request, "authorization"), "Bearer t0k");
        // VM 1 serves without pausing.
        assert!(matches!(p.request(1, 9).0, Decision::Continue(_)));
    });
}

#[test]
fn expiry_refreshes_in_background_and_serves_stale_meanwhile() {
    both(|kind| {
        let mut p = Proxy::new(kind, 2, CONFIG);
        warm(&mut p);
        p.now += 10_000; // ttl passed
        let (d, out) = p.request(1, 1);
        assert!(matches!(d, Decision::Continue(_)), "stale value served");
        assert!(
            dispatches(&out).is_empty(),
            "requests never fetch a refresh"
        );
        let out = p.tick(1);
        let ids = dispatches(&out);
        assert_eq!(ids.len(), 2, "tick refreshes both");
        assert!(
            dispatches(&p.tick(0)).is_empty(),
            "lease: one refresh per proxy"
        );
        p.answer_config(1, &out, r#"{"token":"new","user":"bob"}"#, "resp2");
        let Decision::Continue(h) = p.request(0, 2).0 else {
            panic!()
        };
        assert_eq!(
            header(&h.request, "authorization"),
            "Bearer new",
            "VM 0 picks up the new value"
        );
    });
}

#[test]
fn refresh_failures_serve_stale_until_resurrect_ttl_then_fail() {
    both(|kind| {
        let mut p = Proxy::new(kind, 1, CONFIG);
        warm(&mut p);
        p.now += 10_000;
        let out = p.tick(0);
        let out = p.answer_all(0, &out, &aws_error(500, "InternalServiceError"));
        assert!(
            logs(&out).contains("still serving the previous value"),
            "{}",
            logs(&out)
        );
        assert!(matches!(p.request(0, 1).0, Decision::Continue(_)));
        // Backoff: no new fetch right away.
        assert!(dispatches(&p.tick(0)).is_empty());
        p.now += 19_999; // just inside the resurrect window (ttl 10 + resurrect 20)
        assert!(matches!(p.request(0, 2).0, Decision::Continue(_)));
        let out = p.tick(0);
        p.answer_all(0, &out, &aws_error(503, "ServiceUnavailable"));
        p.now += 2;
        let (d, out) = p.request(0, 3);
        assert_eq!(d, Decision::Reject, "{}", logs(&out));
        assert!(logs(&out).contains("ServiceUnavailable"), "{}", logs(&out));
        assert!(!logs(&out).contains("t0k"));
    });
}

#[test]
fn not_found_rejects_waiters_and_fails_fast_until_retry() {
    both(|kind| {
        let mut p = Proxy::new(kind, 1, CONFIG);
        let (_, out) = p.request(0, 1);
        let out = p.answer_all(0, &out, &aws_error(400, "ResourceNotFoundException"));
        assert_eq!(rejected(&out), vec![1]);
        assert!(logs(&out).contains("ResourceNotFoundException"));
        let (d, out) = p.request(0, 2);
        assert_eq!(d, Decision::Reject);
        assert!(dispatches(&out).is_empty(), "backoff: AWS is not hammered");
        p.now += 1_000;
        let out = p.tick(0);
        assert_eq!(dispatches(&out).len(), 2, "retried after backoff");
    });
}

#[test]
fn bad_values_are_never_injected() {
    let cases = [
        (
            r#"{"token":"a\r\nX-Evil: 1","user":"u"}"#,
            "control characters",
        ),
        (r#"{"user":"u"}"#, "key 'token'"),
        (r#"{"token":5,"user":"u"}"#, "key 'token'"),
        ("not json", "key 'token'"),
    ];
    for (secret, why) in cases {
        let mut p = Proxy::new(HostKind::Envoy, 1, CONFIG);
        let (_, out) = p.request(0, 1);
        let follow = p.answer_config(0, &out, secret, "fine");
        assert_eq!(rejected(&follow), vec![1], "{secret}");
        let l = logs(&follow);
        assert!(l.contains(why), "{secret}: {l}");
        assert!(
            !l.contains("Evil") && !l.contains("not json"),
            "no value in logs: {l}"
        );
    }
}

#[test]
fn lost_callouts_expire_and_orphans_are_refetched() {
    both(|kind| {
        let mut p = Proxy::new(kind, 1, CONFIG);
        let (_, out) = p.request(0, 1);
        assert_eq!(dispatches(&out).len(), 2);
        // Client 1 goes away: its callouts' answers will never be delivered.
        p.vms[0].on_context_done(1, &mut p.store);
        let (d, out) = p.request(0, 2);
        assert_eq!(d, Decision::Pause);
        let again = dispatches(&out);
        assert_eq!(again.len(), 2, "orphaned fetches are redone");
        // These answers never come (Kong <= 3.8): the tick gives up on them.
        p.now += u64::from(crate::config::DEFAULT_TIMEOUT_MS) + CALLOUT_GRACE_MS;
        let out = p.tick(0);
        assert_eq!(rejected(&out), vec![2], "{}", logs(&out));
        assert!(logs(&out).contains("callout lost"));
        // A late answer for a given-up fetch is ignored.
        assert!(p.answer(0, again[0], ok("x")).is_empty());
    });
}

#[test]
fn waiters_never_wait_forever() {
    let mut p = Proxy::new(HostKind::Kong, 2, CONFIG);
    p.tick(0); // VM 0 takes the leases and never answers
    let (d, _) = p.request(1, 5);
    assert_eq!(d, Decision::Pause);
    let mut rejected_at = None;
    for step in 1..200 {
        p.now += 200;
        let out = p.tick(1);
        if rejected(&out).contains(&5) {
            rejected_at = Some(step);
            break;
        }
    }
    assert!(
        rejected_at.is_some(),
        "waiter on another VM's lost fetch was failed"
    );
}

#[test]
fn missing_credentials_fail_with_a_clear_reason() {
    let config = Config::parse(CONFIG, &|_| None).unwrap();
    let mut e = Engine::new(&config, &no_credentials, 1).unwrap();
    let mut store = FakeStore::new(HostKind::Envoy);
    let mut out = Vec::new();
    let d = e.on_request(1, 1_000, &[], &mut store, &mut out);
    assert_eq!(d, Decision::Reject);
    assert!(logs(&out).contains("no AWS credentials"), "{}", logs(&out));
}

#[test]
fn dispatch_refused_fails_the_request() {
    let mut p = Proxy::new(HostKind::Envoy, 1, CONFIG);
    let (_, out) = p.request(0, 1);
    let mut follow = Vec::new();
    for id in dispatches(&out) {
        let mut o = Vec::new();
        p.vms[0].on_dispatch_error(
            id,
            "BadArgument".into(),
            p.now,
            &mut p.store,
            Owner::Ctx(1),
            &mut o,
        );
        follow.extend(o);
    }
    assert_eq!(rejected(&follow), vec![1]);
}

#[test]
fn shared_entries_never_hold_another_secret() {
    // Whatever a colliding or corrupt entry holds, it is not used.
    let mut p = Proxy::new(HostKind::Kong, 1, CONFIG);
    let keys: Vec<String> = p.vms[0].secrets.iter().map(|s| s.skey.clone()).collect();
    for k in &keys {
        let mut other = Entry {
            key: "someone-else".into(),
            ..Entry::default()
        };
        other.succeed("foreign".into(), p.now, 0.0, 0.0);
        p.store.set(k, &other.encode(), None).unwrap();
    }
    let (d, out) = p.request(0, 1);
    assert_eq!(d, Decision::Pause);
    assert_eq!(dispatches(&out).len(), 2);
}

const TRUSTED: &str = r#"{
  "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "upstream": "moto"},
  "request_headers": {"x-static": "{vault://aws/static}"},
  "resolve_incoming_headers": ["x-backend-auth"]
}"#;

fn incoming_request(p: &mut Proxy, ctx: u32, value: &str) -> (Decision, Vec<Action>) {
    let mut out = Vec::new();
    let d = p.vms[0].on_request(
        ctx,
        p.now,
        &[("x-backend-auth", value)],
        &mut p.store,
        &mut out,
    );
    (d, out)
}

#[test]
fn trusted_incoming_headers_are_resolved_without_overrides() {
    let mut p = Proxy::new(HostKind::Envoy, 1, TRUSTED);
    let out = p.tick(0);
    p.answer_all(0, &out, &ok("static-v"));
    let (d, out) = incoming_request(&mut p, 1, "Bearer {vault://aws/dyn/token}");
    assert_eq!(d, Decision::Pause);
    let bodies = dispatch_bodies(&out);
    assert_eq!(bodies.len(), 1, "only the new secret is fetched");
    assert!(bodies[0].contains(r#""SecretId":"dyn""#));
    let out = p.answer_all(0, &out, &ok(r#"{"token":"dyn-tok"}"#));
    let r = resumed(&out);
    assert_eq!(header(&r[0].1.request, "x-backend-auth"), "Bearer dyn-tok");
    assert_eq!(header(&r[0].1.request, "x-static"), "static-v");
    // Now cached: no pause. A plain request does not wait for dynamic secrets.
    assert!(matches!(
        incoming_request(&mut p, 2, "{vault://aws/dyn/token}").0,
        Decision::Continue(_)
    ));
    assert!(matches!(p.request(0, 3).0, Decision::Continue(_)));
    // No references: left alone.
    let Decision::Continue(h) = incoming_request(&mut p, 4, "plain").0 else {
        panic!()
    };
    assert!(h.request.iter().all(|(n, _)| n != "x-backend-auth"));
}

#[test]
fn trusted_incoming_headers_refuse_overrides_and_unknown_vaults() {
    let mut p = Proxy::new(HostKind::Envoy, 1, TRUSTED);
    for (value, why) in [
        (
            "{vault://aws/s/k?endpoint_url=http://evil.example}",
            "query overrides are not allowed",
        ),
        ("{vault://aws/s/k?ttl=0}", "query overrides are not allowed"),
        ("{vault://other/s/k}", "could not find vault (other)"),
        ("{vault://aws/s#3}", "invalid version"),
        ("{vault://aws/unterminated", "unterminated"),
    ] {
        let (d, out) = incoming_request(&mut p, 1, value);
        assert_eq!(d, Decision::Reject, "{value}");
        assert!(logs(&out).contains(why), "{value}: {}", logs(&out));
        assert!(dispatches(&out).is_empty());
    }
}

/// Answer every dispatch in `out` (and what follows) with NotFound.
fn not_found_all(p: &mut Proxy, out: &[Action]) {
    let mut next = out.to_vec();
    while !dispatches(&next).is_empty() {
        next = p.answer_all(0, &next, &aws_error(400, "ResourceNotFoundException"));
    }
}

/// TRUSTED warm: x-static's secret fetched.
fn trusted_warm() -> Proxy {
    let mut p = Proxy::new(HostKind::Envoy, 1, TRUSTED);
    let out = p.tick(0);
    for id in dispatches(&out) {
        p.answer(0, id, ok("static-value"));
    }
    p
}

fn incoming_count(p: &Proxy) -> usize {
    p.vms[0].secrets.iter().filter(|s| s.incoming).count()
}

#[test]
fn secrets_named_by_requests_are_bounded_and_evicted() {
    let mut p = trusted_warm();
    // 64 distinct names paused at once: the table is full.
    let mut outs = Vec::new();
    for i in 0..incoming::MAX_SECRETS as u32 {
        if i % incoming::NEW_BURST == 0 {
            p.now += 10_000; // admission refills
        }
        let (d, out) = incoming_request(&mut p, i + 1, &format!("{{vault://aws/junk{i}}}"));
        assert_eq!(d, Decision::Pause, "{i}: {}", logs(&out));
        outs.push(out);
    }
    let (d, out) = incoming_request(&mut p, 999, "{vault://aws/one-more}");
    assert_eq!(d, Decision::Reject);
    assert!(
        logs(&out).contains("too many secrets named by requests in use"),
        "{}",
        logs(&out)
    );
    // Configured secrets are never locked out.
    let (d, _) = p.request(0, 1000);
    assert!(matches!(d, Decision::Continue(_)));
    // Once answered (not found), the junk is evicted for new names.
    for out in &outs {
        not_found_all(&mut p, out);
    }
    p.now += 10_000;
    let (d, out) = incoming_request(&mut p, 1001, "{vault://aws/legit}");
    assert_eq!(d, Decision::Pause, "{}", logs(&out));
    p.answer_all(0, &out, &ok("legit-value"));
    assert_eq!(incoming_count(&p), incoming::MAX_SECRETS);
    let (d, _) = incoming_request(&mut p, 1002, "{vault://aws/legit}");
    let Decision::Continue(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(header(&r.request, "x-backend-auth"), "legit-value");
}

#[test]
fn new_names_are_admitted_at_a_bounded_rate() {
    let mut p = trusted_warm();
    let mut admitted = 0;
    let mut fetches = 0;
    for i in 0..100u32 {
        let (d, out) = incoming_request(&mut p, i + 1, &format!("{{vault://aws/new{i}}}"));
        fetches += dispatches(&out).len();
        if d == Decision::Pause {
            admitted += 1;
            not_found_all(&mut p, &out);
        } else {
            assert!(logs(&out).contains("too many new secrets named by requests"));
        }
    }
    assert_eq!(admitted, incoming::NEW_BURST as usize);
    assert_eq!(fetches, admitted, "one fetch per admitted name");
    p.now += 1_000;
    let again = (0..20u32)
        .filter(|i| {
            let (d, out) = incoming_request(&mut p, 200 + i, &format!("{{vault://aws/later{i}}}"));
            not_found_all(&mut p, &out);
            d == Decision::Pause
        })
        .count();
    assert_eq!(again, incoming::NEW_PER_SECOND as usize);
}

#[test]
fn junk_names_are_not_refetched_by_the_tick() {
    let mut p = trusted_warm();
    for i in 0..20u32 {
        let (_, out) = incoming_request(&mut p, i + 1, &format!("{{vault://aws/gone{i}}}"));
        not_found_all(&mut p, &out);
    }
    let mut idle_fetches = 0;
    for _ in 0..600 {
        p.now += 200;
        idle_fetches += dispatches(&p.tick(0)).len();
    }
    assert_eq!(idle_fetches, 0, "120 idle seconds");
    // Nothing of the junk reached shared data (failures stay local, no leases).
    assert_eq!(
        p.store.keys().count(),
        2,
        "{:?}",
        p.store.keys().collect::<Vec<_>>()
    );
}

#[test]
fn used_incoming_secrets_are_refreshed_until_idle() {
    let mut p = trusted_warm();
    let (_, out) = incoming_request(&mut p, 1, "{vault://aws/used/k}");
    p.answer_all(0, &out, &ok(r#"{"k":"v1"}"#));
    let used_at = p.now;
    let mut late_fetches = 0;
    for _ in 0..(10 * incoming::IDLE_MS / 200) {
        p.now += 200;
        let out = p.tick(0);
        let bodies = dispatch_bodies(&out);
        if p.now - used_at > incoming::IDLE_MS {
            late_fetches += bodies.iter().filter(|b| b.contains("used")).count();
        }
        p.answer_all(0, &out, &ok(r#"{"k":"v2"}"#));
    }
    assert_eq!(late_fetches, 0, "not refreshed once idle");
    // Used again: fetched on demand, served.
    let (d, out) = incoming_request(&mut p, 2, "{vault://aws/used/k}");
    assert!(
        d == Decision::Pause || matches!(d, Decision::Continue(_)),
        "{d:?}"
    );
    p.answer_all(0, &out, &ok(r#"{"k":"v3"}"#));
}

#[test]
fn keys_and_references_per_request_are_bounded() {
    let mut p = trusted_warm();
    let (_, out) = incoming_request(&mut p, 1, "{vault://aws/json/k0}");
    let mut fields = serde_json::Map::new();
    for k in 0..200 {
        fields.insert(format!("k{k}"), format!("v{k}").into());
    }
    p.answer_all(0, &out, &ok(&serde_json::Value::Object(fields).to_string()));
    for k in 0..200u32 {
        let (d, _) = incoming_request(&mut p, 10 + k, &format!("{{vault://aws/json/k{k}}}"));
        let Decision::Continue(r) = d else {
            panic!("{k}: {d:?}")
        };
        assert_eq!(header(&r.request, "x-backend-auth"), format!("v{k}"));
    }
    let s = p.vms[0].secrets.iter().find(|s| s.incoming).unwrap();
    assert!(s.keys.len() <= incoming::MAX_KEYS, "{}", s.keys.len());
    let many = "{vault://aws/json/k1}".repeat(incoming::MAX_REFERENCES + 1);
    let (d, out) = incoming_request(&mut p, 500, &many);
    assert_eq!(d, Decision::Reject);
    assert!(logs(&out).contains("references in the request's headers"));
    let long = format!(
        "{{vault://aws/json/{}}}",
        "k".repeat(incoming::MAX_VALUE_LEN)
    );
    let (d, out) = incoming_request(&mut p, 501, &long);
    assert_eq!(d, Decision::Reject);
    assert!(logs(&out).contains("longer than"), "{}", logs(&out));
}

#[test]
fn a_trusted_header_sent_twice_fails_closed() {
    let mut p = trusted_warm();
    let mut out = Vec::new();
    let d = p.vms[0].on_request(
        1,
        p.now,
        &[
            ("x-backend-auth", "{vault://aws/victim/k}"),
            ("X-Backend-Auth", "{vault://aws/allowed/k}"),
        ],
        &mut p.store,
        &mut out,
    );
    assert_eq!(d, Decision::Reject);
    assert!(dispatches(&out).is_empty());
    assert!(logs(&out).contains("sent more than once"), "{}", logs(&out));
}

#[test]
fn callout_failures_in_each_hosts_shape_fail_waiters_then_recover() {
    use crate::host::callout_result;
    use crate::host::fake::{failed_callout, CalloutFailure};
    for kind in [HostKind::Envoy, HostKind::Kong] {
        for failure in [CalloutFailure::Timeout, CalloutFailure::ConnectionRefused] {
            for kong_calls_back in [true, false] {
                let mut p = Proxy::new(kind, 1, CONFIG);
                let (_, out) = p.request(0, 1);
                let mut follow = Vec::new();
                for id in dispatches(&out) {
                    // None: Kong <= 3.8 stays silent; the tick gives up.
                    if let Some((headers, body)) = failed_callout(kind, failure, kong_calls_back) {
                        let r = callout_result(headers, body.len(), 1 << 20, || body.clone());
                        follow.extend(p.answer(0, id, r));
                    }
                }
                if follow.is_empty() {
                    p.now += u64::from(crate::config::DEFAULT_TIMEOUT_MS) + CALLOUT_GRACE_MS;
                    follow = p.tick(0);
                }
                assert_eq!(rejected(&follow), vec![1], "{kind:?} {failure:?}");
                // After the backoff, the tick fetches again and a later request succeeds.
                p.now += 1_000;
                let out = p.tick(0);
                assert_eq!(dispatches(&out).len(), 2);
                p.answer_config(0, &out, r#"{"token":"t","user":"u"}"#, "r");
                assert!(
                    matches!(p.request(0, 2).0, Decision::Continue(_)),
                    "{kind:?} {failure:?}"
                );
            }
        }
    }
}

#[test]
fn env_vault_values_are_resolved_at_load_and_never_from_requests() {
    let config = Config::parse(
        r#"{"aws": {"region": "us-east-1"}, "resolve_incoming_headers": ["x-in"],
            "request_headers": {"x-env": "k={vault://env/api-key}", "x-json": "{vault://env/db/user#2}"}}"#,
        &|_| None,
    )
    .unwrap();
    let vars = |k: &str| match k {
        "API_KEY" => Some("env-secret".to_string()),
        "DB_PREVIOUS" => Some(r#"{"user":"old-user"}"#.to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some("very-secret".to_string()),
        _ => None,
    };
    let mut e = Engine::new(&config, &vars, 1).unwrap();
    assert_eq!(e.secret_count(), 0, "no fetch for env references");
    let mut store = FakeStore::new(HostKind::Envoy);
    let mut out = Vec::new();
    let Decision::Continue(h) = e.on_request(1, 0, &[], &mut store, &mut out) else {
        panic!()
    };
    assert_eq!(header(&h.request, "x-env"), "k=env-secret");
    assert_eq!(header(&h.request, "x-json"), "old-user");
    let d = e.on_request(
        2,
        0,
        &[("x-in", "{vault://env/aws-secret-access-key}")],
        &mut store,
        &mut out,
    );
    assert_eq!(
        d,
        Decision::Reject,
        "a request cannot read the filter's environment"
    );
    assert!(logs(&out).contains("env vault references are not allowed"));
    assert!(!logs(&out).contains("very-secret"));
    let missing = Engine::new(&config, &no_credentials, 1).err().unwrap();
    assert!(
        missing.contains(
            "request_headers.x-env: {vault://env/api-key}: environment variable API_KEY is not set"
        ),
        "{missing}"
    );
    let bad = |k: &str| {
        (k == "API_KEY")
            .then(|| "a\nb".to_string())
            .or_else(|| env(k))
    };
    let err = Engine::new(&config, &bad, 1).err().unwrap();
    assert!(
        err.contains("control characters") && !err.contains("a\nb"),
        "{err}"
    );
}

fn sts_ok(akid: &str, token: &str, expires: &str) -> CalloutResult {
    let body = format!(
        "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>{akid}</AccessKeyId>\
         <SecretAccessKey>TEMPSECRET</SecretAccessKey><SessionToken>{token}</SessionToken>\
         <Expiration>{expires}</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>"
    );
    http_200(&body)
}

fn dispatch_of(actions: &[Action]) -> Vec<(u64, String, crate::aws::HttpRequest)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch {
                call,
                upstream,
                request,
                ..
            } => Some((call.fetch, upstream.clone(), request.clone())),
            _ => None,
        })
        .collect()
}

fn req_header<'a>(r: &'a crate::aws::HttpRequest, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn assume_role_credentials_sign_the_secret_fetch() {
    let config = r#"{"aws": {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:4566", "upstream": "moto",
        "assume_role_arn": "arn:aws:iam::123456789012:role/reader", "sts_endpoint_url": "http://127.0.0.1:4566"},
        "request_headers": {"x": "{vault://aws/s}"}}"#;
    let mut p = Proxy::new(HostKind::Kong, 1, config);
    let out = p.tick(0);
    let d = dispatch_of(&out);
    assert_eq!(d.len(), 1, "AssumeRole first, no GetSecretValue yet");
    let (id, upstream, req) = &d[0];
    assert_eq!(upstream, "127.0.0.1:4566");
    let body = String::from_utf8(req.body.clone()).unwrap();
    assert!(
        body.contains("Action=AssumeRole") && body.contains("RoleSessionName=KongVault"),
        "{body}"
    );
    assert!(
        req_header(req, "authorization")
            .unwrap()
            .contains("Credential=AKID/"),
        "signed with base keys"
    );
    let out = p.answer(0, *id, sts_ok("ASIATEMP", "tok123", "2099-01-01T00:00:00Z"));
    assert!(logs(&out).contains("AWS credentials refreshed"));
    assert!(!logs(&out).contains("TEMPSECRET") && !logs(&out).contains("tok123"));
    p.now += MAINTENANCE_MS;
    let out = p.tick(0);
    let d = dispatch_of(&out);
    assert_eq!(d.len(), 1, "{}", logs(&out));
    let req = &d[0].2;
    assert!(req_header(req, "x-amz-target")
        .unwrap()
        .contains("GetSecretValue"));
    assert!(req_header(req, "authorization")
        .unwrap()
        .contains("Credential=ASIATEMP/"));
    assert_eq!(req_header(req, "x-amz-security-token"), Some("tok123"));
}

#[test]
fn credentials_errors_renew_and_retry_once() {
    let mut p = Proxy::new(HostKind::Envoy, 1, CONFIG);
    let (_, out) = p.request(0, 1);
    let first = dispatches(&out);
    assert_eq!(first.len(), 2);
    let expired = aws_error(400, "ExpiredTokenException");
    let mut follow = Vec::new();
    for id in first {
        follow.extend(p.answer(0, id, expired.clone()));
    }
    assert!(rejected(&follow).is_empty(), "not failed yet: retried");
    assert!(logs(&follow).contains("retrying once"));
    let retries = dispatches(&follow);
    assert_eq!(retries.len(), 2, "{}", logs(&follow));
    let mut last = Vec::new();
    for id in retries {
        last.extend(p.answer(0, id, expired.clone()));
    }
    assert_eq!(rejected(&last), vec![1], "second refusal fails the request");
    assert_eq!(
        p.vms[0].stats.fetches_failed[5], 2,
        "counted as credentials failures"
    );
}

#[test]
fn imds_credentials_through_the_engine() {
    let imds_env = |_: &str| None;
    let config = Config::parse(CONFIG, &|_| None).unwrap();
    let mut e = Engine::new(&config, &imds_env, 3).unwrap();
    let mut store = FakeStore::new(HostKind::Envoy);
    let mut out = Vec::new();
    e.on_tick(1_000, &mut store, &mut out);
    let d = dispatch_of(&out);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, "169.254.169.254");
    assert_eq!(d[0].2.method, "PUT", "IMDSv2 token first");
    let answer = http_200;
    let mut out2 = Vec::new();
    e.on_callout(
        d[0].0,
        answer("TOKEN"),
        1_010,
        &mut store,
        Owner::Root,
        &mut out2,
    );
    let d = dispatch_of(&out2);
    assert_eq!(d.len(), 1, "{}", logs(&out2));
    assert_eq!(
        req_header(&d[0].2, "x-aws-ec2-metadata-token"),
        Some("TOKEN")
    );
    let mut out3 = Vec::new();
    e.on_callout(
        d[0].0,
        answer("my-role"),
        1_020,
        &mut store,
        Owner::Root,
        &mut out3,
    );
    let d = dispatch_of(&out3);
    assert!(d[0].2.path.ends_with("/my-role"), "{}", d[0].2.path);
    let creds = r#"{"Code":"Success","AccessKeyId":"ASIAIMDS","SecretAccessKey":"S","Token":"T","Expiration":"2099-01-01T00:00:00Z"}"#;
    let mut out4 = Vec::new();
    e.on_callout(
        d[0].0,
        answer(creds),
        1_030,
        &mut store,
        Owner::Root,
        &mut out4,
    );
    let mut out5 = Vec::new();
    e.on_tick(1_200, &mut store, &mut out5);
    let d = dispatch_of(&out5);
    assert_eq!(
        d.len(),
        2,
        "both secrets fetched with IMDS credentials: {}",
        logs(&out5)
    );
    assert!(req_header(&d[0].2, "authorization")
        .unwrap()
        .contains("Credential=ASIAIMDS/"));
}

#[test]
fn temporary_credentials_are_fetched_by_one_vm_and_shared() {
    both(|kind| {
        let config = Config::parse(CONFIG, &|_| None).unwrap();
        let imds_only = |_: &str| None;
        let mut store = FakeStore::new(kind);
        let mut vms: Vec<Engine> = (0..2)
            .map(|i| Engine::new(&config, &imds_only, 11 + i).unwrap())
            .collect();
        let answer = http_200;
        let mut out = Vec::new();
        vms[0].on_tick(1_000, &mut store, &mut out);
        let mut d = dispatch_of(&out);
        assert_eq!(d.len(), 1, "VM 0 starts the IMDS flow");
        let mut out1 = Vec::new();
        vms[1].on_tick(1_000, &mut store, &mut out1);
        assert!(
            dispatch_of(&out1).is_empty(),
            "VM 1 waits: lease held ({kind:?})"
        );
        let creds = r#"{"Code":"Success","AccessKeyId":"ASIASHARED","SecretAccessKey":"S","Token":"T","Expiration":"2099-01-01T00:00:00Z"}"#;
        for body in ["TOKEN", "my-role", creds] {
            let mut o = Vec::new();
            vms[0].on_callout(d[0].0, answer(body), 1_010, &mut store, Owner::Root, &mut o);
            d = dispatch_of(&o)
                .into_iter()
                .filter(|(_, up, _)| up == "169.254.169.254")
                .collect();
            if body == creds {
                assert!(d.is_empty());
            }
        }
        // VM 1 signs with the shared credentials, without any IMDS callout.
        let mut o = Vec::new();
        let decision = vms[1].on_request(7, 1_020, &[], &mut store, &mut o);
        assert_eq!(decision, Decision::Pause);
        let d = dispatch_of(&o);
        assert!(
            d.iter().all(|(_, up, _)| up == "moto"),
            "no IMDS from VM 1: {d:?}"
        );
        assert!(!d.is_empty());
        assert!(req_header(&d[0].2, "authorization")
            .unwrap()
            .contains("Credential=ASIASHARED/"));
        // AWS refuses them: the shared copy is invalidated for every VM.
        let mut o2 = Vec::new();
        vms[1].on_callout(
            d[0].0,
            aws_error(403, "ExpiredTokenException"),
            1_030,
            &mut store,
            Owner::Root,
            &mut o2,
        );
        let mut o3 = Vec::new();
        vms[0].on_tick(1_040, &mut store, &mut o3);
        assert!(
            dispatch_of(&o3)
                .iter()
                .any(|(_, up, _)| up == "169.254.169.254")
                || dispatch_of(&o2)
                    .iter()
                    .any(|(_, up, _)| up == "169.254.169.254"),
            "someone refetches credentials: {}",
            logs(&o3)
        );
    });
}

#[test]
fn waiters_pick_up_another_vms_fetch_on_the_next_short_tick() {
    let mut p = Proxy::new(HostKind::Envoy, 2, CONFIG);
    let out0 = p.tick(0); // VM 0 takes the leases and fetches
    assert!(
        dispatches(&p.tick(1)).is_empty(),
        "VM 1's maintenance: nothing to do"
    );
    let (d, _) = p.request(1, 9);
    assert_eq!(d, Decision::Pause);
    p.answer_config(0, &out0, r#"{"token":"t","user":"u"}"#, "r");
    p.now += 25; // a short tick, long before VM 1's next maintenance
    let out = p.tick(1);
    assert_eq!(resumed(&out).len(), 1, "{}", logs(&out));
    assert!(dispatches(&out).is_empty());
    // Idle short ticks do nothing at all.
    p.now += 25;
    assert!(p.tick(1).is_empty());
}

#[test]
fn paused_requests_per_vm_are_bounded() {
    let mut p = Proxy::new(HostKind::Envoy, 2, CONFIG);
    p.tick(0); // VM 0 holds the leases and never answers
    for ctx in 1..=MAX_WAITERS as u32 {
        assert_eq!(p.request(1, ctx).0, Decision::Pause);
    }
    let (d, out) = p.request(1, MAX_WAITERS as u32 + 1);
    assert_eq!(d, Decision::Reject);
    assert!(
        logs(&out).contains("too many paused requests"),
        "{}",
        logs(&out)
    );
}

mod incoming_properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A request naming secret `name` (from a small or a huge space).
        Request { name: u16, key: u8 },
        /// The host answers everything in flight: found (`true`) or not.
        Answer(bool),
        /// Time passes, the tick runs.
        Idle(u16),
        /// A paused request ends (client gone).
        Gone(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..400, 0u8..40).prop_map(|(name, key)| Op::Request { name, key }),
            2 => any::<bool>().prop_map(Op::Answer),
            2 => (0u16..5000).prop_map(Op::Idle),
            1 => any::<u8>().prop_map(Op::Gone),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever clients name: the table stays bounded, configured
        /// headers keep working, junk is fetched at most once per request
        /// that names it and never by the tick, and nothing is left paused
        /// past the waiting bound.
        #[test]
        fn incoming_bounds_hold(ops in proptest::collection::vec(op(), 1..200)) {
            let mut p = trusted_warm();
            let mut pending: Vec<Action> = Vec::new();
            let mut next_ctx = 1u32;
            let mut requests = 0usize;
            let mut junk_fetches = 0usize;
            // Paused requests and the name each one asked for.
            let mut paused: Vec<(u32, u16)> = Vec::new();
            let count = |out: &[Action]| dispatch_bodies(out).iter().filter(|b| b.contains("n-")).count();
            for op in ops {
                match op {
                    Op::Request { name, key } => {
                        next_ctx += 1;
                        requests += 1;
                        let value = format!("{{vault://aws/n-{name}/k{key}}}");
                        let (d, out) = incoming_request(&mut p, next_ctx, &value);
                        junk_fetches += count(&out);
                        if d == Decision::Pause { paused.push((next_ctx, name)); }
                        pending.extend(out);
                    }
                    Op::Answer(found) => {
                        let result = if found { ok(r#"{"k1":"v"}"#) } else { aws_error(400, "ResourceNotFoundException") };
                        let now_pending = std::mem::take(&mut pending);
                        let out = p.answer_all(0, &now_pending, &result);
                        junk_fetches += count(&out);
                        pending.extend(out.into_iter().filter(|a| matches!(a, Action::Dispatch { .. })));
                    }
                    Op::Idle(ms) => {
                        p.now += u64::from(ms);
                        let out = p.tick(0);
                        // The tick may refresh names that have values and are in use, and
                        // fetch one again for requests still paused on it (whose fetch was
                        // lost with the request that owned it); never junk nobody waits for.
                        for body in dispatch_bodies(&out) {
                            if body.contains("n-") {
                                let e = p.vms[0].secrets.iter().find(|s| body.contains(&format!("\"{}\"", s.target.secret_id))).unwrap();
                                let valued = e.entry.as_ref().is_some_and(|e| e.value.is_some());
                                let awaited = paused.iter().any(|(_, n)| e.target.secret_id == format!("n-{n}"));
                                prop_assert!(valued || awaited, "{}", e.target.secret_id);
                                junk_fetches += usize::from(!valued);
                            }
                        }
                        pending.extend(out.into_iter().filter(|a| matches!(a, Action::Dispatch { .. })));
                    }
                    Op::Gone(i) => {
                        if !paused.is_empty() {
                            let (ctx, _) = paused.remove(usize::from(i) % paused.len());
                            p.vms[0].on_context_done(ctx, &mut p.store);
                        }
                    }
                }
                prop_assert!(incoming_count(&p) <= incoming::MAX_SECRETS);
                prop_assert!(p.vms[0].waiting() <= MAX_WAITERS);
            }
            prop_assert!(junk_fetches <= requests + p.vms[0].stats.refreshes as usize);
            // The configured header still works.
            let (d, _) = p.request(0, 1_000_000);
            prop_assert!(matches!(d, Decision::Continue(_)), "{:?}", d);
            // Nothing waits past the bound.
            p.now += 60_000;
            p.tick(0);
            prop_assert_eq!(p.vms[0].waiting(), 0);
        }
    }
}

// ---- refresh_on_status and jittered refresh ----

const ROTATING: &str = r#"{
  "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "upstream": "moto", "ttl": 3600},
  "request_headers": {"x-api-key": "{vault://aws/rotating}"},
  "refresh_on_status": [401, 403],
  "refresh_min_interval": 10
}"#;

/// VM `vm` serves a request; returns what it carried.
fn served(p: &mut Proxy, vm: usize, ctx: u32) -> Rc<Rendered> {
    match p.request(vm, ctx).0 {
        Decision::Continue(r) => r,
        d => panic!("{d:?}"),
    }
}

fn warm_rotating(vms: usize) -> Proxy {
    let mut p = Proxy::new(HostKind::Envoy, vms, ROTATING);
    let out = p.tick(0);
    p.answer_all(0, &out, &ok("key-v1"));
    p
}

#[test]
fn a_refused_value_is_fetched_again_at_once_then_not_before_the_interval() {
    let mut p = warm_rotating(1);
    let r = served(&mut p, 0, 1);
    assert_eq!(header(&r.request, "x-api-key"), "key-v1");
    assert!(!r.used.is_empty());
    p.now += 1_000;
    p.vms[0].on_upstream_status(&r.used, 401, p.now, &p.store);
    let out = p.tick(0);
    assert_eq!(
        dispatches(&out).len(),
        1,
        "fetched again from the next tick"
    );
    p.answer_all(0, &out, &ok("key-v2"));
    assert_eq!(header(&served(&mut p, 0, 2).request, "x-api-key"), "key-v2");
    assert_eq!(p.vms[0].stats.refreshes_on_status, 1);
    // A flood of refusals within refresh_min_interval: nothing more.
    for ctx in 3..303 {
        let r = served(&mut p, 0, ctx);
        p.vms[0].on_upstream_status(&r.used, 401, p.now, &p.store);
        assert!(dispatches(&p.tick(0)).is_empty());
        p.now += 20;
    }
    p.now += 10_000;
    let r = served(&mut p, 0, 400);
    p.vms[0].on_upstream_status(&r.used, 403, p.now, &p.store);
    assert_eq!(dispatches(&p.tick(0)).len(), 1, "once the interval passed");
}

#[test]
fn statuses_not_listed_refresh_nothing() {
    let mut p = warm_rotating(1);
    let r = served(&mut p, 0, 1);
    for status in [200, 404, 500, 503] {
        p.now += 20_000;
        p.vms[0].on_upstream_status(&r.used, status, p.now, &p.store);
        assert!(dispatches(&p.tick(0)).is_empty(), "{status}");
    }
    let mut p = Proxy::new(HostKind::Envoy, 1, CONFIG); // no refresh_on_status
    warm(&mut p);
    let r = served(&mut p, 0, 1);
    assert!(r.used.is_empty(), "nothing to watch: no status is read");
}

#[test]
fn refusals_on_every_worker_cost_one_fetch_per_proxy() {
    both(|kind| {
        let mut p = Proxy::new(kind, 4, ROTATING);
        let out = p.tick(0);
        p.answer_all(0, &out, &ok("key-v1"));
        p.now += 2_000;
        let mut fetches = Vec::new();
        for vm in 0..4 {
            let r = served(&mut p, vm, 10 + vm as u32);
            p.vms[vm].on_upstream_status(&r.used, 401, p.now, &p.store);
        }
        for vm in 0..4 {
            let out = p.tick(vm);
            fetches.extend(dispatches(&out).into_iter().map(|f| (vm, f)));
        }
        assert_eq!(fetches.len(), 1, "{kind:?}: one fetch under the lease");
        let (vm, f) = fetches[0];
        p.answer(vm, f, ok("key-v2"));
        p.now += 200;
        for vm in 0..4 {
            p.tick(vm); // maintenance picks the new value up everywhere
            assert_eq!(
                header(&served(&mut p, vm, 100 + vm as u32).request, "x-api-key"),
                "key-v2"
            );
        }
        // Refusals arriving late for the old value change nothing now.
        for vm in 0..4 {
            p.vms[vm].on_upstream_status(&[0], 401, p.now, &p.store);
            assert!(dispatches(&p.tick(vm)).is_empty());
        }
    });
}

/// When (ms after the value was fetched) each of `n` proxies refreshes a
/// secret with ttl 100 s.
fn first_refresh_after(n: u64, jitter: bool) -> Vec<u64> {
    let config = Config::parse(
        &ROTATING.replace(r#""ttl": 3600"#, r#""ttl": 100"#),
        &|_| None,
    )
    .unwrap();
    (0..n)
        .map(|i| {
            let mut e = Engine::new(&config, &env, 77 + i * 7919).unwrap();
            if !jitter {
                e = e.without_jitter();
            }
            let mut store = FakeStore::new(HostKind::Envoy);
            let t0 = 1_700_000_000_000;
            let mut out = Vec::new();
            e.on_tick(t0, &mut store, &mut out);
            let f = dispatches(&out)[0];
            let mut o = Vec::new();
            let answer = named(&e, f, ok("v"));
            e.on_callout(f, answer, t0, &mut store, Owner::Root, &mut o);
            let mut t = t0;
            loop {
                t += 200;
                let mut out = Vec::new();
                e.on_tick(t, &mut store, &mut out);
                if !dispatches(&out).is_empty() {
                    return t - t0;
                }
                assert!(t - t0 <= 100_200, "refreshed by expiry at the latest");
            }
        })
        .collect()
}

#[test]
fn ttl_refreshes_are_spread_over_the_last_tenth() {
    let spread = first_refresh_after(200, true);
    assert!(
        spread.iter().all(|&t| (90_000..=100_200).contains(&t)),
        "{spread:?}"
    );
    let distinct: std::collections::BTreeSet<u64> = spread.iter().copied().collect();
    assert!(distinct.len() > 30, "spread out: {distinct:?}");
    let exact = first_refresh_after(20, false);
    assert!(
        exact.iter().all(|&t| (100_000..=100_200).contains(&t)),
        "{exact:?}"
    );
}

#[test]
fn the_warm_path_serves_only_fresh_values_without_incoming_headers() {
    let mut p = Proxy::new(HostKind::Envoy, 1, CONFIG);
    assert!(p.vms[0].warm(p.now).is_none(), "cold: nothing to serve");
    warm(&mut p);
    let r = p.vms[0].warm(p.now).expect("fresh");
    assert_eq!(header(&r.request, "authorization"), "Bearer t0k");
    // ttl 10 s: a tick-old clock inside it serves, past it the engine decides.
    assert!(p.vms[0].warm(p.now + 9_999).is_some());
    assert!(p.vms[0].warm(p.now + 10_000).is_none());
    let mut t = Proxy::new(HostKind::Envoy, 1, TRUSTED);
    let out = t.tick(0);
    t.answer_all(0, &out, &ok("static-value"));
    assert!(
        t.vms[0].warm(t.now).is_none(),
        "incoming headers must be read"
    );
}

#[test]
fn secret_binary_is_served_as_its_base64_text_and_never_by_key() {
    let config = r#"{
      "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "upstream": "moto"},
      "request_headers": {"x-bin": "{vault://aws/bin}"}
    }"#;
    let binary = |b64: &str| {
        http_200(&format!(
            r#"{{"ARN":"arn","Name":"*","SecretBinary":"{b64}"}}"#
        ))
    };
    let mut p = Proxy::new(HostKind::Envoy, 1, config);
    let out = p.tick(0);
    p.answer_all(0, &out, &binary("AAH/aGk="));
    let r = served(&mut p, 0, 1);
    assert_eq!(header(&r.request, "x-bin"), "AAH/aGk=");
    let keyed = config.replace("{vault://aws/bin}", "{vault://aws/bin/key}");
    let mut p = Proxy::new(HostKind::Envoy, 1, &keyed);
    let out = p.tick(0);
    p.answer_all(0, &out, &binary("AAH/aGk="));
    let (d, out) = p.request(0, 1);
    assert_eq!(d, Decision::Reject);
    assert!(logs(&out).contains("holds SecretBinary"), "{}", logs(&out));
    assert!(!logs(&out).contains("AAH/aGk="));
}

#[test]
fn assume_role_goes_to_the_vault_sts_upstream() {
    let config = r#"{
      "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "upstream": "moto",
              "assume_role_arn": "arn:aws:iam::123456789012:role/reader",
              "sts_endpoint_url": "http://127.0.0.1:4566", "sts_upstream": "sts_cluster"},
      "request_headers": {"x": "{vault://aws/s}", "y": "{vault://aws/t?sts_upstream=other_sts}"}
    }"#;
    let mut p = Proxy::new(HostKind::Envoy, 1, config);
    let out = p.tick(0);
    let upstreams: Vec<String> = dispatch_of(&out).into_iter().map(|(_, u, _)| u).collect();
    assert!(
        upstreams.contains(&"sts_cluster".to_string()),
        "{upstreams:?}"
    );
    assert!(
        upstreams.contains(&"other_sts".to_string()),
        "{upstreams:?}"
    );
}
