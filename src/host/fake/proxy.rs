//! A whole proxy simulated natively: workers (one [`Vm`] each) sharing one
//! [`FakeStore`], a clock, callouts in flight and paused requests, with
//! Envoy's or Kong's semantics for the host calls [`execute`] makes.
//!
//! - Envoy: `set_effective_context` switches to any live request; resuming
//!   or answering acts on it; an answer for a request that is gone is dropped.
//! - Kong (ngx_wasm_module): `set_effective_context` does nothing; resuming,
//!   answering and setting headers act on the request whose callback runs
//!   (from a root context: a NULL request, a crash); a request that paused
//!   and whose last callout was handled without being continued is continued
//!   by the host, without its headers; a request paused with no callout in
//!   flight hangs forever.
//!
//! Anything that would crash, hang or misdirect on the real host is
//! recorded in [`FakeProxy::violations`]; tests assert there are none.
//!
//! Native test and simulation support, never in the `.wasm`: a worker index
//! out of range is a bug in the test driving it.
#![allow(clippy::indexing_slicing)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::{failed_callout, CalloutFailure, FakeStore, HostKind};
use crate::aws::{HttpRequest, HttpResponse};
use crate::engine::vm::Vm;
use crate::engine::{CalloutResult, Decision, Level, Owner, Rendered, Waking};
use crate::host::{callout_result, execute, Host, Own, SharedStore, StoreError};

/// Where a simulated request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Paused by the filter, waiting.
    Paused,
    /// Sent upstream with these request headers set by the filter.
    Continued(Vec<(String, String)>),
    /// Answered 503 by the filter.
    Rejected,
    /// Continued by the host without the filter (Kong auto-continue).
    ContinuedByHost,
}

#[derive(Debug)]
pub struct Request {
    pub worker: usize,
    pub root: u32,
    pub state: State,
    /// Response headers the filter will set.
    pub response: Option<Rc<Rendered>>,
    pub gone: bool,
    /// When it arrived, and when the filter let it go or answered it.
    pub arrived_at: u64,
    pub settled_at: Option<u64>,
}

/// A callout the host is carrying.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub worker: usize,
    pub owner: Owner,
    pub upstream: String,
    pub request: HttpRequest,
    pub timeout_ms: u32,
    /// When it was sent (simulated time).
    pub sent_at: u64,
}

/// What the fake AWS answers: GetSecretValue from a table of secrets
/// (SecretId -> SecretString), counting calls.
#[derive(Debug, Default)]
pub struct FakeAws {
    pub secrets: BTreeMap<String, String>,
    pub get_secret_value_calls: usize,
    pub other_calls: usize,
}

impl FakeAws {
    pub fn answer(&mut self, request: &HttpRequest) -> CalloutResult {
        let target = request
            .headers
            .iter()
            .find(|(n, _)| n == "x-amz-target")
            .map(|(_, v)| v.as_str());
        if target != Some("secretsmanager.GetSecretValue") {
            self.other_calls += 1;
            return CalloutResult::Failed("fake AWS: not GetSecretValue".into());
        }
        self.get_secret_value_calls += 1;
        let id = serde_json::from_slice::<serde_json::Value>(&request.body)
            .ok()
            .and_then(|v| v.get("SecretId").and_then(|s| s.as_str()).map(String::from))
            .unwrap_or_default();
        let (status, body) = match self.secrets.get(&id) {
            Some(value) => (
                200,
                serde_json::json!({"ARN": format!("arn:aws:secretsmanager:us-east-1:1:secret:{id}-AbCdEf"),
                    "Name": id, "SecretString": value}),
            ),
            None => (
                400,
                serde_json::json!({"__type": "ResourceNotFoundException", "message": "not found"}),
            ),
        };
        CalloutResult::Response(HttpResponse {
            status,
            headers: vec![("x-amzn-requestid".into(), "r".into())],
            body: body.to_string().into_bytes(),
        })
    }
}

pub struct FakeProxy {
    pub kind: HostKind,
    pub store: FakeStore,
    pub vms: Vec<RefCell<Vm>>,
    pub now: u64,
    pub requests: BTreeMap<u32, Request>,
    pub in_flight: BTreeMap<u32, InFlight>,
    pub aws: FakeAws,
    pub logs: Vec<(Level, String)>,
    pub violations: Vec<String>,
    /// Upstreams the host refuses to dispatch to (Envoy: no such cluster).
    pub refused_upstreams: Vec<String>,
    next_ctx: u32,
    next_token: u32,
    seed: u64,
    /// Requests answered while a callback ran, ended after it.
    ended: Vec<u32>,
}

/// The host as seen from one callback: which worker, which context runs,
/// which one is effective.
struct Running<'a> {
    proxy: &'a mut FakeProxy,
    worker: usize,
    running: Owner,
    effective: Owner,
}

impl SharedStore for Running<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.proxy.store.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.proxy.store.set(key, value, cas)
    }
}

impl Running<'_> {
    /// The request host calls act on now: Envoy the effective one, Kong the running one.
    fn target(&mut self, what: &str) -> Option<u32> {
        let target = match self.proxy.kind {
            HostKind::Envoy => self.effective,
            HostKind::Kong => self.running,
        };
        match target {
            Owner::Ctx(c) => Some(c),
            Owner::Root => {
                self.proxy.violations.push(format!(
                    "{what} from a root context (Kong: NULL request, crash)"
                ));
                None
            }
        }
    }
}

impl Host for Running<'_> {
    fn log(&mut self, level: Level, message: &str) {
        if message.contains('\n') || message.contains('\r') {
            self.proxy
                .violations
                .push(format!("raw line break logged: {message:?}"));
        }
        self.proxy.logs.push((level, message.to_string()));
    }

    fn dispatch(
        &mut self,
        upstream: &str,
        request: &HttpRequest,
        timeout_ms: u32,
    ) -> Result<u32, String> {
        if self.proxy.refused_upstreams.iter().any(|u| u == upstream) {
            return Err("BadArgument".into());
        }
        let token = self.proxy.next_token;
        self.proxy.next_token += 1;
        self.proxy.in_flight.insert(
            token,
            InFlight {
                worker: self.worker,
                owner: self.running,
                upstream: upstream.to_string(),
                request: request.clone(),
                timeout_ms,
                sent_at: self.proxy.now,
            },
        );
        Ok(token)
    }

    fn set_effective_context(&mut self, ctx: u32) -> bool {
        match self.proxy.kind {
            HostKind::Kong => true, // a no-op that says Ok
            HostKind::Envoy => {
                let live = self
                    .proxy
                    .requests
                    .get(&ctx)
                    .is_some_and(|r| !r.gone && r.worker == self.worker);
                if live {
                    self.effective = Owner::Ctx(ctx);
                }
                live
            }
        }
    }

    fn resume(&mut self, ctx: u32, headers: &Rc<Rendered>) {
        let Some(target) = self.target("resume") else {
            return;
        };
        if target != ctx {
            self.proxy
                .violations
                .push(format!("resuming request {ctx} acted on request {target}"));
        }
        self.proxy.settle(target, Own::Resumed(headers.clone()));
    }

    fn reject(&mut self) {
        if let Some(target) = self.target("local response") {
            self.proxy.settle(target, Own::Rejected);
        }
    }
}

impl FakeProxy {
    pub fn new(kind: HostKind, workers: usize) -> FakeProxy {
        let waking = match kind {
            HostKind::Envoy => Waking::AnyContext,
            HostKind::Kong => Waking::OwnCallbacks,
        };
        FakeProxy {
            kind,
            store: FakeStore::new(kind),
            vms: (0..workers)
                .map(|_| RefCell::new(Vm::new(waking)))
                .collect(),
            now: 1_700_000_000_000,
            requests: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            aws: FakeAws::default(),
            logs: Vec::new(),
            violations: Vec::new(),
            refused_upstreams: Vec::new(),
            next_ctx: 1,
            next_token: 1,
            seed: 7919,
            ended: Vec::new(),
        }
    }

    /// Run `event` on worker `worker`'s VM from `active`'s callback and
    /// carry out its actions with this host's semantics.
    fn run<R>(
        &mut self,
        worker: usize,
        active: Owner,
        event: impl FnOnce(&mut Vm, &mut dyn SharedStore, u64, &mut Vec<crate::engine::Action>) -> R,
    ) -> (R, Own) {
        let vms = std::mem::take(&mut self.vms);
        let now = self.now;
        let mut out = Vec::new();
        let result = {
            let mut vm = vms[worker].borrow_mut();
            let mut host = Running {
                proxy: self,
                worker,
                running: active,
                effective: active,
            };
            event(&mut vm, &mut host, now, &mut out)
        };
        let own = {
            let mut host = Running {
                proxy: self,
                worker,
                running: active,
                effective: active,
            };
            execute(&vms[worker], &mut host, out, active, now)
        };
        self.vms = vms;
        // A request answered by the filter ends: the host calls its on_done.
        self.end_answered();
        (result, own)
    }

    /// Configure root `root` on every worker (as Envoy and Kong do).
    pub fn configure(&mut self, root: u32, config: &str) -> Result<(), String> {
        for w in 0..self.vms.len() {
            self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let seed = self.seed;
            let (r, _) = self.run(w, Owner::Root, |vm, store, _, out| {
                vm.configure(root, config, &test_env, seed, store, out)
            });
            r?;
        }
        Ok(())
    }

    /// Envoy deletes a root context (configuration removed or replaced).
    pub fn remove_root(&mut self, root: u32) {
        for w in 0..self.vms.len() {
            self.run(w, Owner::Root, |vm, store, _, out| {
                vm.remove_root(root, store, out)
            });
        }
    }

    /// A new request for root `root` on worker `worker`, with these incoming
    /// headers. Returns its context id.
    pub fn request(&mut self, worker: usize, root: u32, incoming: &[(&str, &str)]) -> u32 {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.requests.insert(
            ctx,
            Request {
                worker,
                root,
                state: State::Paused,
                response: None,
                gone: false,
                arrived_at: self.now,
                settled_at: None,
            },
        );
        let (decision, own) = self.run(worker, Owner::Ctx(ctx), |vm, store, now, out| {
            vm.on_request(root, ctx, now, incoming, store, out)
        });
        match (own, decision) {
            (Own::Untouched, Decision::Continue(rendered)) => {
                self.settle(ctx, Own::Resumed(rendered))
            }
            (Own::Untouched, Decision::Reject) => self.settle(ctx, Own::Rejected),
            (Own::Untouched, Decision::Pause) => {}
            (own, _) => self.settle(ctx, own),
        }
        self.kong_check(ctx);
        self.end_answered();
        ctx
    }

    fn end_answered(&mut self) {
        for ctx in std::mem::take(&mut self.ended) {
            self.finish(ctx);
        }
    }

    fn settle(&mut self, ctx: u32, own: Own) {
        let Some(r) = self.requests.get_mut(&ctx) else {
            return;
        };
        if r.state != State::Paused {
            self.violations
                .push(format!("request {ctx} acted on again after {:?}", r.state));
            return;
        }
        if own != Own::Untouched {
            r.settled_at = Some(self.now);
        }
        match own {
            Own::Untouched => {}
            Own::Resumed(rendered) => {
                r.state = State::Continued(rendered.request.clone());
                r.response = Some(rendered);
            }
            Own::Rejected => {
                r.state = State::Rejected;
                self.ended.push(ctx);
            }
        }
    }

    /// Kong: a request that paused and has no callout in flight is either
    /// continued by the host (when one was handled) or hangs.
    fn kong_check(&mut self, ctx: u32) {
        if self.kind != HostKind::Kong {
            return;
        }
        let pending = self.in_flight.values().any(|c| c.owner == Owner::Ctx(ctx));
        if let Some(r) = self.requests.get_mut(&ctx) {
            if r.state == State::Paused && !pending && !r.gone {
                self.violations.push(format!(
                    "request {ctx} paused with no callout of its own: it hangs"
                ));
            }
        }
    }

    /// The host delivers the answer to callout `token`.
    pub fn deliver(&mut self, token: u32, result: CalloutResult) {
        let Some(call) = self.in_flight.remove(&token) else {
            return;
        };
        if let Owner::Ctx(ctx) = call.owner {
            if self.requests.get(&ctx).is_none_or(|r| r.gone) {
                return; // the SDK drops answers for contexts that are gone
            }
        }
        let (_, own) = self.run(call.worker, call.owner, |vm, store, now, out| {
            vm.on_callout(token, || result, now, store, call.owner, out)
        });
        if let Owner::Ctx(ctx) = call.owner {
            self.settle(ctx, own);
            if self.kind == HostKind::Kong {
                let pending = self.in_flight.values().any(|c| c.owner == call.owner);
                if let Some(r) = self.requests.get_mut(&ctx) {
                    if r.state == State::Paused && !pending {
                        r.state = State::ContinuedByHost;
                        self.violations.push(format!(
                            "request {ctx} continued by the host without its headers"
                        ));
                    }
                }
            }
        }
        self.end_answered();
    }

    /// Answer callout `token` from the fake AWS, or as a failure.
    pub fn answer(&mut self, token: u32) {
        let Some(call) = self.in_flight.get(&token) else {
            return;
        };
        let result = self.aws.answer(&call.request.clone());
        self.deliver(token, result);
    }

    /// Fail callout `token` the way this host reports `failure`.
    pub fn fail(&mut self, token: u32, failure: CalloutFailure) {
        match failed_callout(self.kind, failure, true) {
            Some((headers, body)) => {
                let result = callout_result(headers, body.len(), 1 << 20, || body.clone());
                self.deliver(token, result);
            }
            None => {
                self.in_flight.remove(&token);
            }
        }
    }

    /// Answer, from the fake AWS, every callout sent at least `latency_ms` ago.
    pub fn answer_due(&mut self, latency_ms: u64) {
        loop {
            let due = self
                .in_flight
                .iter()
                .find(|(_, c)| c.sent_at + latency_ms <= self.now)
                .map(|(t, _)| *t);
            match due {
                Some(token) => self.answer(token),
                None => return,
            }
        }
    }

    /// Answer every callout in flight (and those they lead to) from the fake AWS.
    pub fn answer_all(&mut self) {
        for _ in 0..100 {
            let Some(&token) = self.in_flight.keys().next() else {
                return;
            };
            self.answer(token);
        }
    }

    /// Root `root`'s tick on every worker.
    pub fn tick(&mut self, root: u32) {
        for w in 0..self.vms.len() {
            self.run(w, Owner::Root, |vm, store, now, out| {
                vm.on_tick(root, now, store, out)
            });
        }
    }

    /// Advance the clock by `ms`, ticking `roots` every 25 ms on every worker.
    pub fn advance(&mut self, ms: u64, roots: &[u32]) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 25).min(end);
            for &root in roots {
                self.tick(root);
            }
        }
    }

    /// The upstream answered request `ctx` with `status` (its response
    /// headers reach the filter).
    pub fn upstream_status(&mut self, ctx: u32, status: u16) {
        let Some(r) = self.requests.get(&ctx) else {
            return;
        };
        let (worker, root) = (r.worker, r.root);
        let Some(rendered) = r.response.clone() else {
            return;
        };
        let vms = std::mem::take(&mut self.vms);
        vms[worker].borrow_mut().on_upstream_status(
            root,
            rendered.gen,
            &rendered.used,
            status,
            self.now,
            &self.store,
        );
        self.vms = vms;
    }

    /// The request ended (answered, or the client left).
    pub fn finish(&mut self, ctx: u32) {
        let Some(r) = self.requests.get_mut(&ctx) else {
            return;
        };
        if r.gone {
            return;
        }
        r.gone = true;
        let (worker, root) = (r.worker, r.root);
        let vms = std::mem::take(&mut self.vms);
        vms[worker]
            .borrow_mut()
            .on_context_done(root, ctx, &mut self.store);
        self.vms = vms;
    }

    pub fn state(&self, ctx: u32) -> &State {
        self.requests
            .get(&ctx)
            .map_or(&State::Rejected, |r| &r.state)
    }

    /// The request header `name` request `ctx` was sent upstream with.
    pub fn header(&self, ctx: u32, name: &str) -> Option<&str> {
        match self.requests.get(&ctx).map(|r| &r.state) {
            Some(State::Continued(headers)) => headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    /// Requests still paused.
    pub fn paused(&self) -> Vec<u32> {
        self.requests
            .iter()
            .filter(|(_, r)| r.state == State::Paused && !r.gone)
            .map(|(c, _)| *c)
            .collect()
    }
}

/// The filter's environment in simulations: static keys, no IMDS.
pub fn test_env(name: &str) -> Option<String> {
    match name {
        "AWS_ACCESS_KEY_ID" => Some("AKID".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("SECRET".into()),
        "AWS_EC2_METADATA_DISABLED" => Some("true".into()),
        _ => None,
    }
}
