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

use litemap::LiteMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use crate::aws::credentials::assume_role::AssumeRoleSettings;
use crate::aws::credentials::{CredentialSet, Outgoing, Poll, Slot, Update};
use crate::aws::secrets_manager::{self, ErrorKind, SecretValue};
use crate::aws::sigv4::{self, Credentials};
use crate::aws::HttpResponse;
use crate::cache::{self, Entry, Lease, SharedCredentials, SharedStore};
use crate::config::{Config, EnvRef, HeaderTemplate, Resolved, SecretTarget};
use crate::template::Segment;

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
/// How long one VM may refresh a credentials source before others may.
const CREDENTIALS_LEASE_MS: u64 = 30_000;
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

/// Counters for metrics; the host shell publishes them as proxy-wasm
/// counters named `aws_vault.<field>` (failures: `aws_vault.fetches_failed.<reason>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests whose secrets were all cached (no pause).
    pub cache_hits: u64,
    /// Requests that had to pause for a fetch.
    pub cache_misses: u64,
    /// Requests answered 503.
    pub requests_failed: u64,
    /// Secret uses of an expired value inside its resurrect window.
    pub stale_served: u64,
    pub fetches_started: u64,
    /// Fetches started for a secret that already had a value (rotation).
    pub refreshes: u64,
    /// Of those, the ones an upstream status asked for (`refresh_on_status`).
    pub refreshes_on_status: u64,
    pub fetches_succeeded: u64,
    /// Failed fetches by reason (see [`FAILURE_REASONS`]).
    pub fetches_failed: [u64; FAILURE_REASONS.len()],
}

/// Labels of failed fetches, for metrics.
pub const FAILURE_REASONS: [&str; 10] = [
    "not_found",
    "access_denied",
    "decryption",
    "invalid_request",
    "throttling",
    "credentials",
    "server",
    "malformed",
    "callout",
    "other",
];

impl Stats {
    /// Every counter as `(metric name suffix, value)`.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("cache_hits".to_string(), self.cache_hits),
            ("cache_misses".to_string(), self.cache_misses),
            ("requests_failed".to_string(), self.requests_failed),
            ("stale_served".to_string(), self.stale_served),
            ("fetches_started".to_string(), self.fetches_started),
            ("refreshes".to_string(), self.refreshes),
            ("refreshes_on_status".to_string(), self.refreshes_on_status),
            ("fetches_succeeded".to_string(), self.fetches_succeeded),
        ];
        for (reason, n) in FAILURE_REASONS.iter().zip(self.fetches_failed) {
            out.push((format!("fetches_failed.{reason}"), n));
        }
        out
    }

    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &Stats) {
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.requests_failed += other.requests_failed;
        self.stale_served += other.stale_served;
        self.fetches_started += other.fetches_started;
        self.refreshes += other.refreshes;
        self.refreshes_on_status += other.refreshes_on_status;
        self.fetches_succeeded += other.fetches_succeeded;
        for (mine, theirs) in self.fetches_failed.iter_mut().zip(other.fetches_failed) {
            *mine += theirs;
        }
    }

    fn failed(&mut self, reason: &str) {
        let i = FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(FAILURE_REASONS.len() - 1);
        if let Some(n) = self.fetches_failed.get_mut(i) {
            *n += 1;
        }
    }
}

struct Secret {
    target: SecretTarget,
    /// Where its signing credentials come from (base chain or an assumed role).
    slot: Slot,
    /// AWS refused the last credentials: the next fetch is the one retry.
    retrying: bool,
    descriptor: String,
    skey: String,
    lease_key: String,
    entry: Option<Entry>,
    fetch: Option<u64>,
    /// Named only by requests' trusted incoming headers: bounded, evicted
    /// when idle, never leased nor published when failing (see `incoming`).
    incoming: bool,
    /// Last time a request needed it.
    last_used: u64,
    /// Values of keys named by incoming references, derived on demand and
    /// dropped when the value changes (at most `incoming::MAX_KEYS`).
    keys: Vec<(String, Result<String, String>)>,
    /// An upstream answered a `refresh_on_status` status to a request that
    /// carried it: the next tick fetches it again (see `refresh`).
    refresh_requested: bool,
    /// Such a fetch is in flight: its outcome records `forced_at`.
    forcing: bool,
    /// How long before its expiry this VM refreshes it: a random point in
    /// the last tenth of its ttl, so proxies started together spread out.
    early_ms: u64,
}

struct RefSlot {
    text: String,
    secret: usize,
    key: Option<String>,
    /// Derived from the secret's value: the header-safe value, or why not.
    value: Result<String, String>,
}

enum Part {
    Lit(String),
    Ref(usize),
}

struct CompiledHeader {
    name: String,
    parts: Vec<Part>,
}

/// One credentials source (the base chain, or an assumed role) as shared by
/// every VM: temporary credentials are fetched by one VM (a lease) and
/// published to shared data.
struct CredSlot {
    /// Describes the source; stored inside entries to detect key collisions.
    key: String,
    skey: String,
    lease_key: String,
    /// The latest shared credentials seen.
    shared: Option<SharedCredentials>,
    /// The provider hands out static credentials (environment): no sharing.
    is_static: bool,
}

impl CredSlot {
    fn new(key: String) -> CredSlot {
        let skey =
            cache::shared_key(&format!("credentials|{key}")).replace("/secret/", "/credentials/");
        CredSlot {
            lease_key: format!("{skey}/lease"),
            skey,
            key,
            shared: None,
            is_static: false,
        }
    }

    fn credentials(&self) -> Option<Credentials> {
        self.shared.as_ref().map(|c| Credentials {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: c.session_token.clone(),
        })
    }
}

/// A paused request: when it paused, and headers of its own (from trusted
/// incoming headers) to render on top of the configured ones.
struct Waiter {
    since: u64,
    extra: Vec<IncomingHeader>,
}

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

#[derive(Clone)]
enum Status {
    Usable,
    Wait,
    Failed(String),
}

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
    /// Until when every configured secret is fresh (computed on demand).
    fresh_until: Option<u64>,
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
        let mut engine = Engine {
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
            fresh_until: None,
            jitter: true,
            stats: Stats::default(),
        };
        for h in &config.request_headers {
            let compiled = engine.compile(config, h, env)?;
            engine.request.push(compiled);
        }
        for h in &config.response_headers {
            let compiled = engine.compile(config, h, env)?;
            engine.response.push(compiled);
        }
        engine.configured = engine.secrets.len();
        let base = format!("base|{}", config.credentials.source.as_str());
        let mut base_slot = CredSlot::new(base);
        // Keys in the environment are static: nothing to share, no lease.
        use crate::aws::credentials::Source;
        let env_keys = env("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty())
            && env("AWS_SECRET_ACCESS_KEY").is_some_and(|v| !v.is_empty());
        base_slot.is_static =
            env_keys && matches!(config.credentials.source, Source::Env | Source::Chain);
        engine.cred_slots.insert(Slot::Base, base_slot);
        Ok(engine)
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

    /// Names of incoming request headers whose references are resolved.
    pub fn trusted_headers(&self) -> &[String] {
        &self.config.resolve_incoming_headers
    }

    fn compile(
        &mut self,
        config: &Config,
        h: &HeaderTemplate,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CompiledHeader, String> {
        self.compile_template(config, h, env)
            .map_err(|e| format!("{}: {e}", h.field))
    }

    /// Turn a configured template into parts, registering its secrets.
    fn compile_template(
        &mut self,
        config: &Config,
        h: &HeaderTemplate,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CompiledHeader, String> {
        let mut parts = Vec::new();
        for segment in &h.template.segments {
            match segment {
                Segment::Literal(text) => parts.push(Part::Lit(text.clone())),
                Segment::Reference { text, reference } => {
                    let resolved = match config.resolve(text, reference) {
                        Err(e) => return Err(format!("{text}: {e}")),
                        Ok(Resolved::Aws(r)) => *r,
                        Ok(Resolved::Env(r)) => {
                            parts.push(Part::Lit(
                                env_value(&r, env).map_err(|e| format!("{text}: {e}"))?,
                            ));
                            continue;
                        }
                    };
                    let descriptor = resolved.target.descriptor();
                    let secret = match self.secrets.iter().position(|s| s.descriptor == descriptor)
                    {
                        Some(i) => i,
                        None => {
                            if self.secrets.len() >= MAX_SECRETS {
                                return Err(format!(
                                    "{text}: too many distinct secrets (limit {MAX_SECRETS})"
                                ));
                            }
                            let secret = self
                                .new_secret(resolved.target, false, 0)
                                .map_err(|e| format!("{text}: {e}"))?;
                            self.secrets.push(secret);
                            self.secrets.len() - 1
                        }
                    };
                    let slot = match self
                        .refs
                        .iter()
                        .position(|r| r.secret == secret && r.key == resolved.key)
                    {
                        Some(i) => i,
                        None => {
                            self.refs.push(RefSlot {
                                text: text.clone(),
                                secret,
                                key: resolved.key,
                                value: Err("not fetched yet".into()),
                            });
                            self.refs.len() - 1
                        }
                    };
                    parts.push(Part::Ref(slot));
                }
            }
        }
        Ok(CompiledHeader {
            name: h.name.clone(),
            parts,
        })
    }

    /// A secret to track for `target`, with its credentials slot (an
    /// assumed role gets its own).
    fn new_secret(
        &mut self,
        target: SecretTarget,
        incoming: bool,
        now: u64,
    ) -> Result<Secret, String> {
        let descriptor = target.descriptor();
        let skey = cache::shared_key(&descriptor);
        let slot = match &target.assume_role_arn {
            None => Slot::Base,
            Some(arn) => {
                let t = &target;
                let mut role = AssumeRoleSettings::new(arn, &t.region);
                role.session_name = t.role_session_name.clone();
                role.sts_endpoint = t.sts_endpoint.clone();
                role.upstream = t.sts_upstream.clone();
                role.timeout_ms = t.timeout_ms;
                let key = format!(
                    "role|{}|{}|{}|{}",
                    role.role_arn,
                    role.session_name,
                    role.region,
                    role.sts_endpoint
                        .as_ref()
                        .map_or("", |e| e.authority.as_str())
                );
                let slot = self
                    .credentials
                    .role(role)
                    .map_err(|e| format!("assume_role_arn: {e}"))?;
                self.cred_slots
                    .entry(slot)
                    .or_insert_with(|| CredSlot::new(key));
                slot
            }
        };
        Ok(Secret {
            slot,
            retrying: false,
            lease_key: format!("{skey}/lease"),
            skey,
            descriptor,
            target,
            entry: None,
            fetch: None,
            incoming,
            last_used: now,
            keys: Vec::new(),
            refresh_requested: false,
            forcing: false,
            early_ms: 0,
        })
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
    /// resolves no trusted incoming headers and every configured secret is fresh at `now` (which may lag
    /// the real clock by a tick: values are then served at most that long
    /// past their ttl, well inside the resurrect window). `None`: take
    /// [`Engine::on_request`] with the real clock.
    pub fn warm(&mut self, now: u64) -> Option<Rc<Rendered>> {
        if !self.config.resolve_incoming_headers.is_empty() {
            return None; // the request's own headers must be read
        }
        let fresh_until = match self.fresh_until {
            Some(t) => t,
            None => {
                let t = self
                    .secrets
                    .iter()
                    .take(self.configured)
                    .map(|s| match &s.entry {
                        Some(e) if e.value.is_some() => e.expires_at.unwrap_or(u64::MAX),
                        _ => 0,
                    })
                    .min()
                    .unwrap_or(u64::MAX);
                self.fresh_until = Some(t);
                t
            }
        };
        if now >= fresh_until {
            return None;
        }
        let rendered = self.render().ok()?;
        self.stats.cache_hits += 1;
        Some(rendered)
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

    /// Kong ([`Waking::OwnCallbacks`]): make sure the paused request `ctx`
    /// owns a callout in flight, since only its answer can continue it (the
    /// host continues the request by itself once its last callout is handled).
    /// Secrets it lacks that nobody fetches yet are fetched from its context,
    /// in parallel, under their leases (the answers are published for
    /// everyone as usual). When every missing secret is already being fetched
    /// (here or by another worker), it sends one copy of the fetch expected
    /// to land last, to be woken then; while credentials are being fetched,
    /// its own step of the provider or a copy of the step in flight. `Err`:
    /// nothing can be sent, the request is failed rather than left to hang.
    /// Envoy needs none of this: any callback resumes any request.
    fn wake(
        &mut self,
        ctx: u32,
        needs: &[usize],
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let owner = Owner::Ctx(ctx);
        if self.waking == Waking::AnyContext || self.owns_callout(owner) {
            return Ok(());
        }
        let missing: Vec<usize> = (0..self.configured)
            .chain(needs.iter().copied())
            .filter(|&i| {
                self.secrets
                    .get(i)
                    .and_then(|s| s.entry.as_ref())
                    .and_then(|e| e.usable(now))
                    .is_none()
            })
            .collect();
        // Secrets nobody fetches yet: fetch them all now.
        for &i in &missing {
            if self.in_flight(i).is_some() {
                continue;
            }
            let Some(slot) = self.secrets.get(i).map(|s| s.slot) else {
                continue;
            };
            match self.poll_credentials(slot, now, store, owner, true, out) {
                Ok(Some(credentials)) => {
                    if !self.take_lease(i, now, store) {
                        continue; // another worker fetches it
                    }
                    if !self.dispatch_secret(i, credentials, now, store, owner, true, out) {
                        return Err(self.failure(i));
                    }
                }
                Ok(None) => {} // credentials on their way (maybe from this context)
                Err(why) => {
                    self.stats.failed("credentials");
                    return Err(format!("{}: no AWS credentials: {why}", self.describe(i)));
                }
            }
        }
        if self.owns_callout(owner) {
            return Ok(());
        }
        // Everything missing is on its way: a copy of the fetch expected to
        // land last wakes this request when the rest has landed too.
        let Some(&first) = missing.first() else {
            return Ok(()); // all usable: the caller continues it
        };
        let last = missing
            .iter()
            .copied()
            .max_by_key(|&i| self.in_flight(i).unwrap_or(0))
            .unwrap_or(first);
        let Some(slot) = self.secrets.get(last).map(|s| s.slot) else {
            return Err("internal: unknown secret".into());
        };
        match self.poll_credentials(slot, now, store, owner, true, out) {
            Ok(Some(credentials)) => {
                if self.dispatch_secret(last, credentials, now, store, owner, false, out) {
                    Ok(())
                } else {
                    Err(self.failure(last))
                }
            }
            Ok(None) if self.owns_callout(owner) => Ok(()),
            Ok(None) => {
                let resend = self.fetches.values().find_map(|f| match &f.kind {
                    FetchKind::Credentials { slot: s, sent, .. } if *s == slot => {
                        Some(sent.clone())
                    }
                    _ => None,
                });
                let Some(sent) = resend else {
                    return Err(format!(
                        "{}: waiting for AWS credentials with no callout to wait on",
                        self.describe(last)
                    ));
                };
                let id = self.next_fetch;
                self.next_fetch += 1;
                self.fetches.insert(
                    id,
                    Fetch {
                        kind: FetchKind::WakeUp,
                        owner,
                        deadline: now + u64::from(sent.timeout_ms) + CALLOUT_GRACE_MS,
                    },
                );
                out.push(Action::Dispatch {
                    call: self.call(id),
                    upstream: sent.upstream,
                    request: sent.request,
                    timeout_ms: sent.timeout_ms,
                });
                Ok(())
            }
            Err(why) => {
                self.stats.failed("credentials");
                Err(format!(
                    "{}: no AWS credentials: {why}",
                    self.describe(last)
                ))
            }
        }
    }

    fn owns_callout(&self, owner: Owner) -> bool {
        self.fetches.values().any(|f| f.owner == owner)
    }

    /// The deadline of the latest GetSecretValue in flight here for secret
    /// `i` (later deadline: sent later), if any.
    fn in_flight(&self, i: usize) -> Option<u64> {
        self.fetches
            .values()
            .filter(|f| matches!(f.kind, FetchKind::Secret { secret, .. } if secret == i))
            .map(|f| f.deadline)
            .max()
    }

    /// Why secret `i` has no value, for a request's 503.
    fn failure(&self, i: usize) -> String {
        let reason = self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .and_then(|e| e.error.clone())
            .unwrap_or_else(|| "fetch failed".into());
        format!("{}: {reason}", self.describe(i))
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

    #[allow(clippy::too_many_arguments)]
    fn secret_answer(
        &mut self,
        i: usize,
        used: Credentials,
        retry: bool,
        result: CalloutResult,
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        let Some(secret) = self.secrets.get(i) else {
            return;
        };
        let slot = secret.slot;
        let outcome = match result {
            CalloutResult::Failed(reason) => {
                Err((format!("callout failed: {reason}"), false, "callout"))
            }
            CalloutResult::Response(resp) => {
                match secrets_manager::parse_get_secret_value_of(&resp, &secret.target.secret_id) {
                    Ok(SecretValue::String(value)) => Ok((value, false)),
                    // Unlike Kong, served as the base64 text AWS sent (as the
                    // Secrets Manager Agent does); a key cannot be taken from it.
                    Ok(SecretValue::Binary(base64)) => Ok((base64, true)),
                    Err(e) if e.kind == ErrorKind::Credentials && !retry => {
                        // Expired or revoked credentials: drop them, fetch new
                        // ones, and retry once (from the next evaluation).
                        out.push(Action::Log {
                            level: Level::Info,
                            message: format!(
                            "fetching {} was refused ({}): renewing credentials and retrying once",
                            self.describe(i),
                            e.code
                        ),
                        });
                        self.credentials.invalidate(slot, Some(&used));
                        self.invalidate_shared(slot, &used, store);
                        if let Some(s) = self.secrets.get_mut(i) {
                            s.retrying = true;
                        }
                        self.dirty = true;
                        return;
                    }
                    Err(e) => {
                        let cacheable = !e.kind.is_retryable();
                        Err((e.to_string(), cacheable, e.kind.as_str()))
                    }
                }
            }
        };
        match outcome {
            Ok((value, binary)) => self.record_success(i, value, binary, now, store, out),
            Err((reason, cacheable, label)) => {
                self.stats.failed(label);
                self.record_failure(i, reason, cacheable, now, store, out)
            }
        }
    }

    /// Poll every credentials slot, dispatching what providers ask for:
    /// refresh ahead of expiry happens here, off the request path.
    fn drive_credentials(
        &mut self,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) {
        let slots: Vec<Slot> = self.credentials.slots().collect();
        for slot in slots {
            // Failures are logged when the provider reports them; a fetch
            // that needs these credentials records its own.
            let _ = self.poll_credentials(slot, now, store, owner, false, out);
        }
    }

    /// AWS refused `used`: make sure no VM hands them out again.
    fn invalidate_shared(&mut self, slot: Slot, used: &Credentials, store: &mut dyn SharedStore) {
        let Some(cs) = self.cred_slots.get_mut(&slot) else {
            return;
        };
        let (bytes, cas) = store.get(&cs.skey);
        if let Some(mut c) = bytes.and_then(|b| SharedCredentials::decode(&b, &cs.key)) {
            if c.access_key_id == used.access_key_id {
                c.expires_at = 0;
                let _ = store.set(&cs.skey, &c.encode(), cas);
            }
        }
        cs.shared = None;
    }

    /// Temporary credentials another VM published, if no refresh is due;
    /// `Err(valid)` when a refresh is due (`valid`: still usable meanwhile).
    fn shared_credentials(
        &mut self,
        slot: Slot,
        now: u64,
        store: &dyn SharedStore,
    ) -> Result<Credentials, Option<Credentials>> {
        let Some(cs) = self.cred_slots.get_mut(&slot) else {
            return Err(None);
        };
        if !cs.shared.as_ref().is_some_and(|c| c.fresh(now)) {
            let (bytes, _) = store.get(&cs.skey);
            if let Some(c) = bytes.and_then(|b| SharedCredentials::decode(&b, &cs.key)) {
                cs.shared = Some(c);
            }
        }
        match &cs.shared {
            Some(c) if c.fresh(now) => cs.credentials().ok_or(None),
            Some(c) if c.valid(now) => Err(cs.credentials()),
            _ => Err(None),
        }
    }

    /// Credentials for `slot`, if ready; dispatches the provider's callouts.
    /// Temporary credentials come from shared data while fresh; when a
    /// refresh is due, the VM holding the slot's lease asks its provider and
    /// publishes the result, the others keep using the valid ones meanwhile.
    /// `force`: ask the provider even if another VM holds the slot's lease
    /// (a Kong request that must own the callout it waits on).
    fn poll_credentials(
        &mut self,
        slot: Slot,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        force: bool,
        out: &mut Vec<Action>,
    ) -> Result<Option<Credentials>, String> {
        let is_static = self.cred_slots.get(&slot).is_none_or(|c| c.is_static);
        if !is_static {
            let meanwhile = match self.shared_credentials(slot, now, store) {
                Ok(c) => return Ok(Some(c)),
                Err(meanwhile) => meanwhile,
            };
            let lease_key = self.cred_slots.get(&slot).map(|c| c.lease_key.clone());
            // Long enough for a provider's few callouts (IMDS: three).
            let lease_until = now + CREDENTIALS_LEASE_MS;
            let held = lease_key
                .as_deref()
                .is_some_and(|k| Lease::acquire(store, k, self.holder, now, lease_until));
            if !held && !force {
                return Ok(meanwhile); // another VM is refreshing them
            }
        }
        let mut dispatched = false;
        // A provider asks for one callout per poll (IMDS: token, then role...).
        for _ in 0..8 {
            match self.credentials.poll(slot, now) {
                Poll::Ready(c) => {
                    self.share_credentials(slot, &c, now, dispatched, store);
                    return Ok(Some(c.credentials));
                }
                Poll::Pending => return Ok(None),
                Poll::NotConfigured(why) | Poll::Failed(why) => {
                    self.release_credentials_lease(slot, store);
                    return Err(why);
                }
                Poll::Dispatch {
                    id,
                    upstream,
                    request,
                    timeout_ms,
                } => {
                    let fetch = self.next_fetch;
                    self.next_fetch += 1;
                    let sent = Outgoing {
                        upstream: upstream.clone(),
                        request: request.clone(),
                        timeout_ms,
                    };
                    self.fetches.insert(
                        fetch,
                        Fetch {
                            kind: FetchKind::Credentials { id, slot, sent },
                            owner,
                            deadline: now + u64::from(timeout_ms) + CALLOUT_GRACE_MS,
                        },
                    );
                    out.push(Action::Dispatch {
                        call: self.call(fetch),
                        upstream,
                        request,
                        timeout_ms,
                    });
                    dispatched = true;
                }
            }
        }
        Ok(None)
    }

    /// Publish what the provider handed out (temporary credentials only),
    /// and give the lease back unless a refresh is still in flight.
    fn share_credentials(
        &mut self,
        slot: Slot,
        c: &crate::aws::credentials::TimedCredentials,
        now: u64,
        refreshing: bool,
        store: &mut dyn SharedStore,
    ) {
        let Some(cs) = self.cred_slots.get_mut(&slot) else {
            return;
        };
        let Some(expires_at) = c.expires_at else {
            cs.is_static = true;
            Lease::release(store, &cs.lease_key, self.holder);
            return;
        };
        let known = cs.shared.as_ref().is_some_and(|s| {
            s.access_key_id == c.credentials.access_key_id && s.expires_at == expires_at
        });
        if !known {
            let shared = SharedCredentials {
                v: cache::FORMAT,
                key: cs.key.clone(),
                access_key_id: c.credentials.access_key_id.clone(),
                secret_access_key: c.credentials.secret_access_key.clone(),
                session_token: c.credentials.session_token.clone(),
                fetched_at: now,
                expires_at,
            };
            shared.publish(store, &cs.skey);
            cs.shared = Some(shared);
        }
        if !refreshing {
            Lease::release(store, &cs.lease_key, self.holder);
        }
    }

    fn release_credentials_lease(&mut self, slot: Slot, store: &mut dyn SharedStore) {
        if let Some(cs) = self.cred_slots.get(&slot) {
            Lease::release(store, &cs.lease_key, self.holder);
        }
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

    /// Is secret `i` to be fetched now: never fetched, or within its early
    /// refresh window before expiry (or past it), and not backing off?
    fn due(&self, i: usize, now: u64) -> bool {
        let Some(s) = self.secrets.get(i) else {
            return false;
        };
        let Some(e) = &s.entry else {
            return true;
        };
        let refresh_at = e.expires_at.map(|x| x.saturating_sub(s.early_ms));
        let stale = e.value.is_none() || refresh_at.is_some_and(|r| now >= r);
        stale && now >= e.retry_at
    }

    /// May secret `i` be fetched again because an upstream refused it? Not
    /// while backing off, and not within `refresh_min_interval` of the last
    /// such refresh anywhere in the proxy (shared data says when).
    fn refresh_allowed(&self, i: usize, now: u64) -> bool {
        let Some(e) = self.secrets.get(i).and_then(|s| s.entry.as_ref()) else {
            return false;
        };
        now >= e.retry_at
            && now
                >= e.forced_at
                    .saturating_add(self.config.refresh_min_interval_ms)
    }

    /// The upstream answered `status` to a request that carried secrets
    /// `used` (from a [`Rendered`] of this engine). Listed in
    /// `refresh_on_status`: each is fetched again from the next tick, at most
    /// once per `refresh_min_interval` per proxy whatever clients send.
    pub fn on_upstream_status(
        &mut self,
        used: &[usize],
        status: u16,
        now: u64,
        store: &dyn SharedStore,
    ) {
        if !self.config.refresh_on_status.contains(&status) {
            return;
        }
        for &i in used {
            if self.secrets.get(i).is_none_or(|s| s.refresh_requested) {
                continue;
            }
            self.sync(i, store); // another worker may have just refreshed it
            if self.refresh_allowed(i, now) {
                if let Some(s) = self.secrets.get_mut(i) {
                    s.refresh_requested = true;
                }
            }
        }
    }

    /// Start the refreshes upstream statuses asked for (from any tick: on
    /// Kong a response callback may not send callouts).
    fn refresh_requested(&mut self, now: u64, store: &mut dyn SharedStore, out: &mut Vec<Action>) {
        for i in 0..self.secrets.len() {
            let Some(s) = self.secrets.get_mut(i) else {
                continue;
            };
            if !std::mem::take(&mut s.refresh_requested) || s.fetch.is_some() {
                continue;
            }
            self.sync(i, store);
            if self.refresh_allowed(i, now)
                && self.start_fetch(i, now, store, Owner::Root, true, out)
            {
                self.stats.refreshes_on_status += 1;
            }
        }
    }

    /// The secrets the configured request headers use.
    fn request_secrets(&self) -> Vec<usize> {
        let mut used: Vec<usize> = Vec::new();
        for part in self.request.iter().flat_map(|h| &h.parts) {
            if let Part::Ref(r) = part {
                if let Some(i) = self.refs.get(*r).map(|r| r.secret) {
                    if !used.contains(&i) {
                        used.push(i);
                    }
                }
            }
        }
        used
    }

    /// Is every configured secret, and every one in `extra`, usable now?
    /// Starts fetches for those that are not.
    fn evaluate(
        &mut self,
        extra: &[usize],
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) -> Status {
        let mut wait = false;
        for i in (0..self.configured).chain(extra.iter().copied()) {
            match self.status(i, now, store, owner, out) {
                Status::Usable => {}
                Status::Wait => wait = true,
                failed @ Status::Failed(_) => return failed,
            }
        }
        if wait {
            Status::Wait
        } else {
            Status::Usable
        }
    }

    fn status(
        &mut self,
        i: usize,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) -> Status {
        let fresh = self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .is_some_and(|e| !e.expired(now));
        if fresh {
            return Status::Usable;
        }
        // Stale or missing here: another VM may have fetched a newer value.
        self.sync(i, store);
        if self.usable(i, now) {
            return Status::Usable;
        }
        let Some(secret) = self.secrets.get(i) else {
            return Status::Failed("internal: unknown secret".into());
        };
        if secret.fetch.is_some() {
            return Status::Wait;
        }
        if let Some(e) = &secret.entry {
            if now < e.retry_at {
                let reason = e.error.clone().unwrap_or_else(|| "fetch failed".into());
                return Status::Failed(format!("{}: {reason}", self.describe(i)));
            }
        }
        if self.waking == Waking::OwnCallbacks && owner != Owner::Root {
            // Kong: the request sends its own callout (`wake`), one at a time.
            return Status::Wait;
        }
        if !self.start_fetch(i, now, store, owner, false, out) {
            // Another VM holds the lease (its result arrives via shared
            // data) or just published, or the fetch failed at once.
            if self.usable(i, now) {
                return Status::Usable;
            }
            if let Some(e) = self.secrets.get(i).and_then(|s| s.entry.as_ref()) {
                if now < e.retry_at && e.usable(now).is_none() {
                    let reason = e.error.clone().unwrap_or_else(|| "fetch failed".into());
                    return Status::Failed(format!("{}: {reason}", self.describe(i)));
                }
            }
        }
        Status::Wait
    }

    fn usable(&mut self, i: usize, now: u64) -> bool {
        let Some(e) = self.secrets.get(i).and_then(|s| s.entry.as_ref()) else {
            return false;
        };
        if e.usable(now).is_none() {
            return false;
        }
        if e.expired(now) {
            self.stats.stale_served += 1;
        }
        true
    }

    /// Adopt the shared-data entry if it is newer than ours.
    fn sync(&mut self, i: usize, store: &dyn SharedStore) {
        let Some(s) = self.secrets.get(i) else { return };
        let Some(shared) = cache::load(store, &s.skey, &s.descriptor) else {
            return;
        };
        let newer = s
            .entry
            .as_ref()
            .is_none_or(|mine| shared.updated_at > mine.updated_at);
        if newer {
            self.adopt(i, shared);
        }
    }

    fn adopt(&mut self, i: usize, entry: Entry) {
        let changed_value = self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .is_none_or(|old| old.value != entry.value);
        // A new fetch (not only a new value) draws a new point: every
        // refresh lands somewhere else in the window.
        let refetched = self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .is_none_or(|old| old.fetched_at != entry.fetched_at);
        let early = match (self.jitter, self.secrets.get(i)) {
            (true, Some(s)) if refetched => {
                let tenth = crate::cache::secs_to_ms(s.target.ttl) / 10;
                (tenth as f64 * self.random_unit()) as u64
            }
            (_, Some(s)) => s.early_ms,
            (_, None) => 0,
        };
        if let Some(s) = self.secrets.get_mut(i) {
            s.entry = Some(entry);
            s.early_ms = early;
        }
        self.fresh_until = None;
        self.dirty = true;
        if changed_value {
            self.derive(i);
            self.rendered = None;
        }
    }

    /// Recompute the header-safe values of every configured reference to
    /// secret `i` (the JSON parsed once), and forget the keys derived for
    /// incoming references.
    fn derive(&mut self, i: usize) {
        let Some(s) = self.secrets.get_mut(i) else {
            return;
        };
        s.keys.clear();
        let value = s.entry.as_ref().and_then(|e| e.value.as_deref());
        let binary = s.entry.as_ref().is_some_and(|e| e.binary);
        let mut parsed = None;
        for slot in self.refs.iter_mut().filter(|r| r.secret == i) {
            slot.value = match (value, &slot.key) {
                (None, _) => Err("no value".into()),
                (Some(v), None) => header_safe(v.to_string()),
                (Some(_), Some(_)) if binary => Err(BINARY_KEY.into()),
                (Some(v), Some(key)) => parsed
                    .get_or_insert_with(|| secrets_manager::parse_object(v))
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|object| secrets_manager::key_of(object, key))
                    .map_err(|e| format!("key '{key}': {e}"))
                    .and_then(header_safe),
            };
        }
    }

    /// Try to start a GetSecretValue for secret `i`. False when another VM
    /// holds the lease or the request could not be built (failure recorded).
    /// `forced`: an upstream refused its value (`refresh_on_status`): fetch
    /// even if fresh, as long as [`Engine::refresh_allowed`].
    fn start_fetch(
        &mut self,
        i: usize,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        forced: bool,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(slot) = self.secrets.get(i).map(|s| s.slot) else {
            return false;
        };
        // Credentials first: this VM's own, no lease needed to get them.
        let credentials = match self.poll_credentials(slot, now, store, owner, false, out) {
            Ok(Some(c)) => c,
            Ok(None) => return false, // being fetched; re-evaluated when they arrive
            Err(why) => {
                self.stats.failed("credentials");
                let reason = format!("no AWS credentials: {why}");
                self.record_failure(i, reason, false, now, store, out);
                return false;
            }
        };
        if !self.take_lease(i, now, store) {
            return false;
        }
        // Another VM may have published between our look at shared data and
        // taking the lease: fetch only if it is still due.
        self.sync(i, store);
        let due = if forced {
            self.refresh_allowed(i, now)
        } else {
            self.due(i, now)
        };
        if !due {
            self.release_lease(i, store);
            return false;
        }
        let sent = self.dispatch_secret(i, credentials, now, store, owner, true, out);
        if sent && forced {
            if let Some(s) = self.secrets.get_mut(i) {
                s.forcing = true;
            }
        }
        sent
    }

    /// Take secret `i`'s proxy-wide fetch lease, for as long as a fetch may take.
    fn take_lease(&mut self, i: usize, now: u64, store: &mut dyn SharedStore) -> bool {
        let Some(s) = self.secrets.get(i) else {
            return false;
        };
        if s.incoming {
            return true; // no lease records for names a client chose
        }
        let until = now + u64::from(s.target.timeout_ms) + CALLOUT_GRACE_MS;
        Lease::acquire(store, &s.lease_key, self.holder, now, until)
    }

    fn release_lease(&mut self, i: usize, store: &mut dyn SharedStore) {
        if let Some(s) = self.secrets.get(i).filter(|s| !s.incoming) {
            Lease::release(store, &s.lease_key, self.holder);
        }
    }

    /// Sign and send GetSecretValue for secret `i`. `leased`: under the
    /// secret's lease (released when the answer is published). False when
    /// signing failed (failure recorded).
    #[allow(clippy::too_many_arguments)]
    fn dispatch_secret(
        &mut self,
        i: usize,
        credentials: Credentials,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        leased: bool,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(s) = self.secrets.get(i) else {
            return false;
        };
        let t = &s.target;
        let deadline = now + u64::from(t.timeout_ms) + CALLOUT_GRACE_MS;
        let mut request =
            secrets_manager::get_secret_value_request(&t.endpoint, &t.secret_id, t.stage);
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(now);
        let signed = sigv4::sign(
            &mut request,
            &credentials,
            &t.region,
            "secretsmanager",
            time,
        )
        .map_err(|e| format!("signing failed: {e}"));
        let (upstream, timeout_ms) = (t.upstream.clone(), t.timeout_ms);
        if let Err(reason) = signed {
            self.stats.failed("credentials");
            self.record_failure(i, reason, false, now, store, out);
            if leased {
                self.release_lease(i, store);
            }
            return false;
        }
        let id = self.next_fetch;
        self.next_fetch += 1;
        let retry = self.secrets.get(i).is_some_and(|s| s.retrying);
        self.fetches.insert(
            id,
            Fetch {
                kind: FetchKind::Secret {
                    secret: i,
                    credentials,
                    retry,
                    leased,
                },
                owner,
                deadline,
            },
        );
        if let Some(s) = self.secrets.get_mut(i) {
            if leased {
                s.fetch = Some(id);
            }
            s.retrying = false;
        }
        self.stats.fetches_started += 1;
        if self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .is_some_and(|e| e.value.is_some())
        {
            self.stats.refreshes += 1;
        }
        out.push(Action::Log {
            level: Level::Debug,
            message: format!("fetching {} via upstream '{upstream}'", self.describe(i)),
        });
        out.push(Action::Dispatch {
            call: self.call(id),
            upstream,
            request,
            timeout_ms,
        });
        true
    }

    fn record_success(
        &mut self,
        i: usize,
        value: String,
        binary: bool,
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        self.stats.fetches_succeeded += 1;
        let Some(s) = self.secrets.get(i) else { return };
        let mut entry = self.base_entry(i, store);
        entry.succeed(value, now, s.target.ttl, s.target.resurrect_ttl);
        entry.binary = binary;
        if s.forcing {
            entry.forced_at = now;
        }
        let current = cache::publish(store, &s.skey, &entry);
        out.push(Action::Log {
            level: Level::Info,
            message: format!("fetched {}", self.describe(i)),
        });
        if let Some(s) = self.secrets.get_mut(i) {
            s.forcing = false;
        }
        self.adopt(i, current);
    }

    fn record_failure(
        &mut self,
        i: usize,
        reason: String,
        cacheable: bool,
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        let jitter = self.random_unit();
        let Some(s) = self.secrets.get(i) else { return };
        let mut entry = self.base_entry(i, store);
        entry.fail(reason.clone(), cacheable, now, s.target.neg_ttl, jitter);
        if s.forcing {
            entry.forced_at = now;
        }
        // A failure for a name a client chose stays here: junk must leave
        // nothing behind in shared data.
        let current = if s.incoming {
            entry
        } else {
            cache::publish(store, &s.skey, &entry)
        };
        let serving = if current.usable(now).is_some() {
            " (still serving the previous value)"
        } else {
            ""
        };
        out.push(Action::Log {
            level: Level::Warn,
            message: format!(
                "fetching {} failed: {reason}; retry in {} ms{serving}",
                self.describe(i),
                current.retry_at.saturating_sub(now)
            ),
        });
        if let Some(s) = self.secrets.get_mut(i) {
            s.forcing = false;
        }
        self.adopt(i, current);
    }

    /// The entry to update: the newest of ours and the shared one.
    fn base_entry(&self, i: usize, store: &dyn SharedStore) -> Entry {
        let Some(s) = self.secrets.get(i) else {
            return Entry::default();
        };
        let shared = cache::load(store, &s.skey, &s.descriptor);
        let mine = s.entry.clone();
        let mut base = match (mine, shared) {
            (Some(m), Some(sh)) => {
                if sh.updated_at > m.updated_at {
                    sh
                } else {
                    m
                }
            }
            (Some(m), None) => m,
            (None, Some(sh)) => sh,
            (None, None) => Entry::default(),
        };
        base.key = s.descriptor.clone();
        base
    }

    /// Resolve waiters after secret states changed.
    fn flush(
        &mut self,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) {
        // A failure recorded while evaluating makes another pass worthwhile;
        // bounded, since each pass only records failures with a retry_at ahead.
        // Kong: a waiter whose own callback this is must be continued,
        // answered or given a new callout now, or the host continues it.
        let own_turn = self.waking == Waking::OwnCallbacks
            && matches!(owner, Owner::Ctx(c) if self.waiters.contains_key(&c));
        for pass in 0..3 {
            if !(self.dirty || self.waiters_overdue(now) || own_turn && pass == 0) {
                return;
            }
            self.dirty = false;
            // Kong: only the request whose callback this is can be continued.
            let ids: Vec<u32> = match (self.waking, owner) {
                (Waking::AnyContext, _) => self.waiters.keys().copied().collect(),
                (Waking::OwnCallbacks, Owner::Ctx(c)) if self.waiters.contains_key(&c) => {
                    vec![c]
                }
                (Waking::OwnCallbacks, _) => Vec::new(),
            };
            if ids.is_empty() {
                return;
            }
            let configured = self.evaluate(&[], now, store, owner, out);
            for ctx in ids {
                let Some(waiter) = self.waiters.remove(&ctx) else {
                    continue;
                };
                let status = match &configured {
                    Status::Usable if !waiter.extra.is_empty() => {
                        let needs = self.extra_secrets(&waiter.extra);
                        self.evaluate(&needs, now, store, owner, out)
                    }
                    other => other.clone(),
                };
                // Kong: continued only from the answer to its last callout.
                let status = match status {
                    Status::Usable
                        if self.waking == Waking::OwnCallbacks
                            && self.fetches.values().any(|f| f.owner == Owner::Ctx(ctx)) =>
                    {
                        Status::Wait
                    }
                    other => other,
                };
                match status {
                    Status::Wait if now.saturating_sub(waiter.since) > self.max_wait_ms() => {
                        self.reject_log(Some(ctx), "timed out waiting for secrets", out);
                    }
                    Status::Wait => {
                        let needs = self.extra_secrets(&waiter.extra);
                        match self.wake(ctx, &needs, now, store, out) {
                            Ok(()) => {
                                self.waiters.insert(ctx, waiter);
                            }
                            Err(reason) => self.reject_log(Some(ctx), &reason, out),
                        }
                    }
                    Status::Usable => match self.render_with(&waiter.extra) {
                        Ok(headers) => out.push(Action::Resume { ctx, headers }),
                        Err(reason) => self.reject_log(Some(ctx), &reason, out),
                    },
                    Status::Failed(reason) => self.reject_log(Some(ctx), &reason, out),
                }
            }
        }
    }

    fn waiters_overdue(&self, now: u64) -> bool {
        self.waiters
            .values()
            .any(|w| now.saturating_sub(w.since) > self.max_wait_ms())
    }

    /// A paused request is failed after this long, whatever happens.
    fn max_wait_ms(&self) -> u64 {
        let longest = self
            .secrets
            .iter()
            .map(|s| u64::from(s.target.timeout_ms))
            .max()
            .unwrap_or(0);
        2 * (longest + CALLOUT_GRACE_MS)
    }

    fn reject_log(&mut self, ctx: Option<u32>, reason: &str, out: &mut Vec<Action>) {
        self.stats.requests_failed += 1;
        out.push(Action::Log {
            level: Level::Warn,
            message: format!("request failed with 503: {reason}"),
        });
        if let Some(ctx) = ctx {
            out.push(Action::Reject { ctx });
        }
    }

    /// Render every configured header; cached until a secret value changes.
    fn render(&mut self) -> Result<Rc<Rendered>, String> {
        if let Some(r) = &self.rendered {
            return r.clone();
        }
        let r = self.render_now().map(Rc::new);
        self.rendered = Some(r.clone());
        r
    }

    fn render_now(&self) -> Result<Rendered, String> {
        let used = if self.config.refresh_on_status.is_empty() {
            Vec::new()
        } else {
            self.request_secrets()
        };
        Ok(Rendered {
            used,
            gen: self.gen,
            request: self
                .request
                .iter()
                .map(|h| self.render_header(h))
                .collect::<Result<_, _>>()?,
            response: self
                .response
                .iter()
                .map(|h| self.render_header(h))
                .collect::<Result<_, _>>()?,
        })
    }

    fn render_header(&self, h: &CompiledHeader) -> Result<(String, String), String> {
        let mut value = String::new();
        for part in &h.parts {
            match part {
                Part::Lit(text) => value.push_str(text),
                Part::Ref(i) => {
                    let slot = self.refs.get(*i).ok_or("internal: unknown reference")?;
                    let v = slot
                        .value
                        .as_ref()
                        .map_err(|e| format!("reference {} failed: {e}", slot.text))?;
                    value.push_str(v);
                }
            }
        }
        checked_header(&h.name, value)
    }

    /// `aws/prod/db (AWSCURRENT)`: names a secret in logs, never its value.
    fn describe(&self, i: usize) -> String {
        match self.secrets.get(i) {
            Some(s) => format!(
                "secret '{}' (vault {}, {}, {})",
                s.target.secret_id,
                s.target.vault,
                s.target.region,
                s.target.stage.as_str()
            ),
            None => "unknown secret".into(),
        }
    }

    /// xorshift64*, in [0, 1): jitter needs spread, not cryptographic strength.
    fn random_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Why a key reference to a SecretBinary secret fails.
const BINARY_KEY: &str =
    "the secret holds SecretBinary: a key cannot be taken from it (reference the whole secret for its base64 text)";

/// A rendered header, if its value may be sent.
fn checked_header(name: &str, value: String) -> Result<(String, String), String> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(format!(
            "header {name} would be longer than {MAX_HEADER_VALUE_LEN} bytes"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("header {name} would contain control characters"));
    }
    Ok((name.to_string(), value))
}

/// The value of an `env` vault reference, checked like a fetched secret.
fn env_value(r: &EnvRef, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let value = env(&r.variable).ok_or_else(|| {
        format!(
            "environment variable {} is not set or not visible to the filter (Envoy: vm_config.environment_variables; Kong: nginx env directive)",
            r.variable
        )
    })?;
    match &r.key {
        None => header_safe(value),
        Some(key) => secrets_manager::extract_key(&value, key)
            .map_err(|e| format!("key '{key}': {e}"))
            .and_then(header_safe),
    }
}

/// A value may go into a header only if it has no control characters (CR, LF,
/// NUL, TAB, DEL...) and is not too long: a secret must never split a header.
fn header_safe(value: String) -> Result<String, String> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(format!("value is longer than {MAX_HEADER_VALUE_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(
            "value contains control characters (CR, LF, NUL, ...) and cannot go into a header"
                .into(),
        );
    }
    Ok(value)
}

mod incoming;
pub mod vm;

use incoming::IncomingHeader;

#[cfg(test)]
mod tests;
