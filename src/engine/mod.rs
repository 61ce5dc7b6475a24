//! The filter's brain: events in, actions out.
//!
//! One `Engine` lives in each VM (Envoy: one per worker thread plus the main
//! thread; Kong: one per worker process). It never calls the host: it reads
//! and writes shared data through [`SharedStore`] and returns [`Action`]s for
//! the host shell to carry out (dispatch a callout, resume or fail a paused
//! request, log). Time always comes in as `now`, milliseconds since the epoch.
//!
//! Lifecycle of a secret: fetched on the first tick after start (prefetch), by
//! exactly one VM (a lease in shared data), published to shared data, picked
//! up by every other VM; refreshed from the tick when its ttl passes while the
//! old value keeps being served (until `resurrect_ttl` past expiry). A request
//! pauses only when a secret has no usable value at all.
//!
//! Where things are, one concern a file (each but `stats.rs` and `vm.rs` a
//! part of the one `impl Engine`):
//! - `mod.rs`: the types the host shell sees ([`Action`], [`Decision`],
//!   [`CallRef`], [`Owner`], [`Waking`], [`Rendered`]...), the [`Engine`]
//!   itself and its events (`on_request`, `on_callout`, `on_tick`,
//!   `on_context_done`, `warm`, ...)
//! - `secrets.rs`: one secret's lifecycle: usable or not, adopting shared
//!   entries, due or not, fetching under its lease, recording outcomes
//! - `waiters.rs`: paused requests: resolved, woken (Kong), bounded, failed
//! - `credentials.rs`: AWS credentials shared by every VM of the proxy
//! - `render.rs`: header templates compiled, values derived, headers rendered
//! - `refresh.rs`: refreshes an upstream's status asks for; jitter
//! - `incoming.rs`: references from trusted incoming headers, and their bounds
//! - `stats.rs`: counters for metrics
//! - `vm.rs`: one VM: an engine per root context, callouts matched to their fetch

use litemap::LiteMap;
use std::rc::Rc;

use crate::aws::credentials::{CredentialSet, Outgoing, Slot, Update};
use crate::aws::sigv4::Credentials;
use crate::aws::HttpResponse;
use crate::cache::{Entry, SharedStore};
use crate::config::Config;

mod credentials;
mod incoming;
mod refresh;
mod render;
mod secrets;
mod stats;
pub mod vm;
mod waiters;

use credentials::CredSlot;
use render::{CompiledHeader, RefSlot};
use secrets::{Secret, Status};
pub use stats::{Stats, FAILURE_REASONS};
use waiters::Waiter;

/// Longest secret (or key) value injected into a header, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 16 * 1024;
/// Most distinct secrets one configuration names (those named by requests
/// are bounded apart, see `incoming`).
pub const MAX_SECRETS: usize = 256;
/// Most requests one VM keeps paused at once.
pub const MAX_WAITERS: usize = 4096;
/// How long after its timeout an unanswered callout is given up (Kong <= 3.8
/// never answers a failed dispatch).
pub(crate) const CALLOUT_GRACE_MS: u64 = 2_000;
/// How often the tick refreshes, prefetches and expires lost callouts.
pub const MAINTENANCE_MS: u64 = 200;
/// Header values set on a request or response: `(lower-case name, value)`.
pub type Headers = Vec<(String, String)>;

/// Which context a callout is dispatched from: its answer goes back there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Root,
    Ctx(u32),
}

/// How the host lets a paused request go on (see `shared/notes/hosts.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Waking {
    /// Envoy: any callback of the VM may resume or answer any paused request
    /// (`proxy_set_effective_context` switches to it).
    #[default]
    AnyContext,
    /// Kong (ngx_wasm_module): resuming and answering act on the request whose
    /// callback is running, so a paused request must own a callout in flight
    /// whose answer, delivered to it, wakes it.
    OwnCallbacks,
}

/// The exact fetch a callout serves: the root context whose engine sent it,
/// that engine's generation (a root re-configured gets a new one) and the
/// engine's fetch id. An answer is applied only to this fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallRef {
    pub root: u32,
    pub gen: u32,
    pub fetch: u64,
}

/// How a callout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutResult {
    Response(HttpResponse),
    /// No HTTP answer: dispatch refused, timeout, connection failure.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What the host shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Dispatch {
        call: CallRef,
        upstream: String,
        request: crate::aws::HttpRequest,
        timeout_ms: u32,
    },
    /// Set these request headers on a paused request and let it go; keep the
    /// response headers for its response.
    Resume {
        ctx: u32,
        headers: Rc<Rendered>,
    },
    /// Answer a paused request with a 503.
    Reject {
        ctx: u32,
    },
    Log {
        level: Level,
        message: String,
    },
}

/// The header values a request gets, rendered once per secret change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rendered {
    pub request: Headers,
    pub response: Headers,
    /// The secrets in the request headers, when upstream statuses make
    /// them refresh (`refresh_on_status`); empty otherwise.
    pub used: Vec<usize>,
    /// The engine generation that rendered them (indexes in `used` are its).
    pub gen: u32,
}

/// The answer to a new request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Continue(Rc<Rendered>),
    /// Paused: a later [`Action::Resume`] or [`Action::Reject`] names it.
    Pause,
    Reject,
}

/// A callout in flight (or about to be), by fetch id.
struct Fetch {
    kind: FetchKind,
    owner: Owner,
    deadline: u64,
}

enum FetchKind {
    /// GetSecretValue for a secret, signed with these credentials.
    /// `leased`: this VM holds the secret's lease for it (the one fetch of
    /// the proxy); otherwise a paused request's own fetch (Kong waking).
    Secret {
        secret: usize,
        credentials: Credentials,
        retry: bool,
        leased: bool,
    },
    /// A credentials provider's callout (its id in the [`CredentialSet`]),
    /// kept to be re-sent as a wake-up.
    Credentials { id: u64, slot: Slot, sent: Outgoing },
    /// Kong: a copy of an in-flight credentials callout sent from a paused
    /// request's own context, only so that its answer wakes that request.
    WakeUp,
}

/// One configuration's state machine (see the module docs).
pub struct Engine {
    config: Config,
    /// Secrets `0..configured` come from the configuration; later ones were
    /// named in trusted incoming headers.
    configured: usize,
    secrets: Vec<Secret>,
    refs: Vec<RefSlot>,
    request: Vec<CompiledHeader>,
    response: Vec<CompiledHeader>,
    rendered: Option<Result<Rc<Rendered>, String>>,
    waiters: LiteMap<u32, Waiter>,
    fetches: LiteMap<u64, Fetch>,
    next_fetch: u64,
    /// This VM's id in leases.
    holder: u64,
    rng: u64,
    credentials: CredentialSet,
    cred_slots: LiteMap<Slot, CredSlot>,
    next_maintenance: u64,
    dirty: bool,
    /// The root context this engine serves and its generation there.
    root: u32,
    gen: u32,
    waking: Waking,
    /// Admission of new secrets named by requests.
    admission: incoming::Admission,
    /// The warm path's answer: until when every configured secret is fresh,
    /// and the headers. Made by the first warm request after a change, dropped
    /// with every change of a secret's entry, so a warm request reads only this.
    warm: Option<(u64, Rc<Rendered>)>,
    /// Spread ttl refreshes (off only in simulations that compare).
    jitter: bool,
    pub stats: Stats,
}

impl Engine {
    /// Build from a validated config. `seed` comes from the host's randomness
    /// (it names this VM in leases and jitters backoff).
    /// `env` reads environment variables: for `env` vault references, which
    /// are resolved once, here (a VM's environment never changes), and for
    /// the credential providers.
    pub fn new(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
        seed: u64,
    ) -> Result<Engine, String> {
        let mut engine = Engine::empty(config, env, seed);
        engine.compile_headers(config, env)?;
        engine.configured = engine.secrets.len();
        engine
            .cred_slots
            .insert(Slot::Base, base_credentials_slot(config, env));
        Ok(engine)
    }

    /// An engine for `config` with no header compiled yet.
    #[inline(never)] // see Config::fields
    fn empty(config: &Config, env: &dyn Fn(&str) -> Option<String>, seed: u64) -> Engine {
        Engine {
            config: config.clone(),
            configured: 0,
            secrets: Vec::new(),
            refs: Vec::new(),
            request: Vec::new(),
            response: Vec::new(),
            rendered: None,
            waiters: LiteMap::new(),
            fetches: LiteMap::new(),
            next_fetch: 1,
            holder: seed | 1,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            credentials: CredentialSet::new(&config.credentials, env),
            cred_slots: LiteMap::new(),
            next_maintenance: 0,
            dirty: false,
            root: 0,
            gen: 0,
            waking: Waking::AnyContext,
            admission: incoming::Admission::default(),
            warm: None,
            jitter: true,
            stats: Stats::default(),
        }
    }

    /// Compile the configured request and response headers.
    #[inline(never)] // see Config::fields
    fn compile_headers(
        &mut self,
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        for h in &config.request_headers {
            let compiled = self.compile(config, h, env)?;
            self.request.push(compiled);
        }
        for h in &config.response_headers {
            let compiled = self.compile(config, h, env)?;
            self.response.push(compiled);
        }
        Ok(())
    }

    /// The same engine serving root context `root`, generation `gen`, on a
    /// host that wakes paused requests as `waking` says.
    pub fn serving(mut self, root: u32, gen: u32, waking: Waking) -> Engine {
        self.root = root;
        self.gen = gen;
        self.waking = waking;
        self
    }

    /// The same engine with ttl refreshes at expiry exactly, not spread
    /// (only for simulations that compare the two).
    pub fn without_jitter(mut self) -> Engine {
        self.jitter = false;
        self
    }

    /// Generation of this engine in its root context.
    pub fn generation(&self) -> u32 {
        self.gen
    }

    fn call(&self, fetch: u64) -> CallRef {
        CallRef {
            root: self.root,
            gen: self.gen,
            fetch,
        }
    }

    /// Record a callout about to be sent from `owner`'s context for `kind`,
    /// given up on `timeout_ms` plus [`CALLOUT_GRACE_MS`] after `now`: its
    /// fetch id.
    fn track(&mut self, kind: FetchKind, owner: Owner, now: u64, timeout_ms: u32) -> u64 {
        let id = self.next_fetch;
        self.next_fetch += 1;
        self.fetches.insert(
            id,
            Fetch {
                kind,
                owner,
                deadline: now + u64::from(timeout_ms) + CALLOUT_GRACE_MS,
            },
        );
        id
    }

    /// Names of incoming request headers whose references are resolved.
    pub fn trusted_headers(&self) -> &[String] {
        &self.config.resolve_incoming_headers
    }

    /// Number of distinct secrets (GetSecretValue targets) in the config.
    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// Requests currently paused.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Is an answer for `fetch` still awaited?
    pub fn awaits(&self, fetch: u64) -> bool {
        self.fetches.contains_key(&fetch)
    }

    /// This engine's root is gone: give back the fetch leases it holds (the
    /// answers will be dropped) and hand over its paused requests, to be failed.
    pub fn shut_down(&mut self, store: &mut dyn SharedStore) -> Vec<u32> {
        let leased: Vec<usize> = self
            .fetches
            .values()
            .filter_map(|f| match f.kind {
                FetchKind::Secret {
                    secret,
                    leased: true,
                    ..
                } => Some(secret),
                _ => None,
            })
            .collect();
        for i in leased {
            self.release_lease(i, store);
        }
        let slots: Vec<Slot> = self.cred_slots.keys().copied().collect();
        for slot in slots {
            self.release_credentials_lease(slot, store);
        }
        self.fetches.clear();
        std::mem::take(&mut self.waiters)
            .into_tuple_vec()
            .into_iter()
            .map(|(ctx, _)| ctx)
            .collect()
    }

    /// The warm path: the headers for a request, when the configuration
    /// resolves no trusted incoming headers and every configured secret is
    /// fresh at `now` (which may lag the real clock by a tick: values are then
    /// served at most that long past their ttl, well inside the resurrect
    /// window). `None`: take [`Engine::on_request`] with the real clock.
    #[inline]
    pub fn warm(&mut self, now: u64) -> Option<&Rc<Rendered>> {
        let serves = match self.warm.as_ref().map(|(until, _)| *until) {
            Some(until) => now < until,
            None => self.make_warm(now),
        };
        if !serves {
            return None;
        }
        self.stats.cache_hits += 1;
        self.warm.as_ref().map(|(_, rendered)| rendered)
    }

    /// [`Engine::warm`] after a change: makes the snapshot when there can be
    /// one, and says whether it serves at `now`.
    #[inline(never)]
    fn make_warm(&mut self, now: u64) -> bool {
        if !self.config.resolve_incoming_headers.is_empty() {
            return false; // the request's own headers must be read
        }
        let fresh_until = self
            .secrets
            .iter()
            .take(self.configured)
            .map(|s| s.entry.as_ref().map_or(0, Entry::fresh_until))
            .min()
            .unwrap_or(u64::MAX);
        let Ok(rendered) = self.render() else {
            return false;
        };
        self.warm = Some((fresh_until, rendered));
        now < fresh_until
    }

    /// A new request's headers arrived. `incoming`: the request's values of
    /// the [`Engine::trusted_headers`] it carries.
    pub fn on_request(
        &mut self,
        ctx: u32,
        now: u64,
        incoming: &[(&str, &str)],
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) -> Decision {
        let extra = match self.compile_incoming(incoming, now, store) {
            Ok(extra) => extra,
            Err(reason) => {
                self.reject_log(None, &reason, out);
                return Decision::Reject;
            }
        };
        let needs = self.extra_secrets(&extra);
        let decision = match self.evaluate(&needs, now, store, Owner::Ctx(ctx), out) {
            Status::Usable => match self.render_with(&extra) {
                Ok(rendered) => {
                    self.stats.cache_hits += 1;
                    Decision::Continue(rendered)
                }
                Err(reason) => {
                    self.reject_log(None, &reason, out);
                    Decision::Reject
                }
            },
            Status::Failed(reason) => {
                self.reject_log(None, &reason, out);
                Decision::Reject
            }
            Status::Wait if self.waiters.len() >= MAX_WAITERS => {
                let reason = format!("too many paused requests (limit {MAX_WAITERS})");
                self.reject_log(None, &reason, out);
                Decision::Reject
            }
            Status::Wait => match self.wake(ctx, &needs, now, store, out) {
                Ok(()) => {
                    self.stats.cache_misses += 1;
                    self.waiters.insert(ctx, Waiter { since: now, extra });
                    Decision::Pause
                }
                Err(reason) => {
                    self.reject_log(None, &reason, out);
                    Decision::Reject
                }
            },
        };
        self.flush(now, store, Owner::Ctx(ctx), out);
        decision
    }

    /// A callout dispatched for `fetch` ended.
    pub fn on_callout(
        &mut self,
        fetch: u64,
        result: CalloutResult,
        now: u64,
        store: &mut dyn SharedStore,
        active: Owner,
        out: &mut Vec<Action>,
    ) {
        let Some(f) = self.fetches.remove(&fetch) else {
            return; // already given up on (expired by the tick)
        };
        match f.kind {
            FetchKind::WakeUp => self.dirty = true,
            FetchKind::Credentials { id, .. } => {
                self.credentials_answer(id, result, now, store, active, out);
            }
            FetchKind::Secret {
                secret,
                credentials,
                retry,
                leased,
            } => {
                if leased {
                    if let Some(s) = self.secrets.get_mut(secret) {
                        s.fetch = None;
                    }
                }
                self.secret_answer(secret, credentials, retry, result, now, store, out);
                if leased {
                    // Released only after the outcome is published, so that a
                    // VM taking the lease next finds the result instead of
                    // fetching again.
                    self.release_lease(secret, store);
                }
            }
        }
        self.flush(now, store, active, out);
    }

    /// The answer to credentials provider callout `id`.
    #[inline(never)] // see Config::fields
    fn credentials_answer(
        &mut self,
        id: u64,
        result: CalloutResult,
        now: u64,
        store: &mut dyn SharedStore,
        active: Owner,
        out: &mut Vec<Action>,
    ) {
        let result = match result {
            CalloutResult::Response(r) => Ok(r),
            CalloutResult::Failed(why) => Err(why),
        };
        match self.credentials.on_response(id, result, now) {
            Update::Failed { reason, .. } => out.push(Action::Log {
                level: Level::Warn,
                message: format!("getting AWS credentials failed: {reason}"),
            }),
            Update::Refreshed { .. } => out.push(Action::Log {
                level: Level::Info,
                message: "AWS credentials refreshed".into(),
            }),
            Update::Progress | Update::Ignored => {}
        }
        // More steps (IMDS), and fetches that waited for credentials.
        self.drive_credentials(now, store, active, out);
        self.dirty = true;
    }

    /// A dispatch the engine asked for could not even be sent.
    pub fn on_dispatch_error(
        &mut self,
        fetch: u64,
        reason: String,
        now: u64,
        store: &mut dyn SharedStore,
        active: Owner,
        out: &mut Vec<Action>,
    ) {
        self.on_callout(
            fetch,
            CalloutResult::Failed(reason),
            now,
            store,
            active,
            out,
        );
    }

    /// A request context ended (answered, or the client went away).
    pub fn on_context_done(&mut self, ctx: u32, store: &mut dyn SharedStore) {
        self.waiters.remove(&ctx);
        // Its callouts' answers will be dropped by the host: forget them so
        // the next tick fetches again from the root context.
        let orphaned: Vec<u64> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.owner == Owner::Ctx(ctx))
            .map(|(id, _)| *id)
            .collect();
        for id in orphaned {
            // Credentials callouts stay: their providers give up on them
            // after their timeout and try again.
            match self.fetches.get(&id).map(|f| &f.kind) {
                Some(FetchKind::Secret { secret, leased, .. }) => {
                    let (secret, leased) = (*secret, *leased);
                    self.fetches.remove(&id);
                    if leased {
                        if let Some(s) = self.secrets.get_mut(secret) {
                            s.fetch = None;
                        }
                        self.release_lease(secret, store);
                    }
                }
                Some(FetchKind::WakeUp) => {
                    self.fetches.remove(&id);
                }
                Some(FetchKind::Credentials { .. }) | None => {}
            }
        }
    }

    /// Periodic work from the root context: prefetch, refresh, expire lost
    /// callouts, pick up what other VMs fetched, resolve waiters.
    ///
    /// The host ticks often (see `host::proxy_wasm`) so that a request
    /// waiting for a secret another VM fetches resumes soon after it is
    /// published; the rest of the work runs every [`MAINTENANCE_MS`].
    pub fn on_tick(&mut self, now: u64, store: &mut dyn SharedStore, out: &mut Vec<Action>) {
        if self.secrets.iter().any(|s| s.refresh_requested) {
            self.refresh_requested(now, store, out);
        }
        if now < self.next_maintenance {
            if !self.waiters.is_empty() && self.waking == Waking::AnyContext {
                // Evaluating waiters picks up what other VMs published.
                self.dirty = true;
                self.flush(now, store, Owner::Root, out);
            }
            return;
        }
        self.next_maintenance = now + MAINTENANCE_MS;
        let lost: Vec<u64> = self
            .fetches
            .iter()
            .filter(|(_, f)| now >= f.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            match self.fetches.get(&id).map(|f| &f.kind) {
                Some(FetchKind::Secret {
                    secret,
                    leased: true,
                    ..
                }) => {
                    let secret = *secret;
                    self.fetches.remove(&id);
                    if let Some(s) = self.secrets.get_mut(secret) {
                        s.fetch = None;
                    }
                    let reason = "callout lost: no answer before its timeout".to_string();
                    self.stats.failed("callout");
                    self.record_failure(secret, reason, false, now, store, out);
                    self.release_lease(secret, store);
                }
                // A request's own fetch or wake-up: its answer is the only
                // thing that can continue it, forget it only when it is gone.
                Some(FetchKind::Secret { .. } | FetchKind::WakeUp) => {
                    if let Some(Owner::Ctx(c)) = self.fetches.get(&id).map(|f| f.owner) {
                        if !self.waiters.contains_key(&c) {
                            self.fetches.remove(&id);
                        }
                    }
                }
                // The provider expires its own callouts.
                Some(FetchKind::Credentials { .. }) | None => {}
            }
        }
        self.drive_credentials(now, store, Owner::Root, out);
        for i in 0..self.secrets.len() {
            if self.idle(i, now) || self.unvalued_incoming(i) {
                // Named by requests: refreshed while in use, never retried
                // from here (a request that needs it again fetches it).
                continue;
            }
            self.sync(i, store);
            let idle = self.secrets.get(i).is_some_and(|s| s.fetch.is_none());
            if idle && self.due(i, now) {
                self.start_fetch(i, now, store, Owner::Root, false, out);
            }
        }
        self.flush(now, store, Owner::Root, out);
    }
}

/// The base credentials' slot. Keys in the environment are static: nothing
/// to share, no lease.
#[inline(never)] // see Config::fields
fn base_credentials_slot(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> CredSlot {
    use crate::aws::credentials::Source;
    let base = format!("base|{}", config.credentials.source.as_str());
    let mut slot = CredSlot::new(base);
    let env_keys = env("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty())
        && env("AWS_SECRET_ACCESS_KEY").is_some_and(|v| !v.is_empty());
    slot.is_static = env_keys && matches!(config.credentials.source, Source::Env | Source::Chain);
    slot
}

#[cfg(test)]
mod tests;
