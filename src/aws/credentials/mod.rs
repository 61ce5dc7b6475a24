//! AWS credential providers as sans-IO state machines.
//!
//! Every provider is a [`Provider`]: it is polled with the current time and
//! answers with credentials ([`Poll::Ready`]), a callout to send
//! ([`Poll::Dispatch`]), or why it has none. Answers to callouts come back
//! through [`Provider::on_response`]. Nothing here reads the environment,
//! the clock or the network by itself: the environment is handed in once, at
//! construction, as `&dyn Fn(&str) -> Option<String>` (the shell passes
//! `std::env::var`), time as `now` (ms since the epoch).
//!
//! # Sources
//! | source (`credentials.source`) | reads | callouts |
//! |---|---|---|
//! | `env` ([`env`](mod@env)) | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | none |
//! | `container` ([`container`]) | `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` / `_FULL_URI`, `AWS_CONTAINER_AUTHORIZATION_TOKEN` | `GET` the URI (ECS, EKS Pod Identity) |
//! | `web_identity` ([`web_identity`]) | `AWS_ROLE_ARN`, `AWS_ROLE_SESSION_NAME`, `AWS_WEB_IDENTITY_TOKEN` | STS `AssumeRoleWithWebIdentity` (EKS IRSA) |
//! | `imds` ([`imds`]) | `AWS_EC2_METADATA_DISABLED`, `AWS_EC2_METADATA_V1_DISABLED`, `AWS_EC2_METADATA_SERVICE_ENDPOINT` | IMDSv2 token, role, credentials (v1 fallback) |
//! | `chain` ([`chain`], the default) | all of the above | the chosen source's |
//!
//! [`assume_role::AssumeRole`] sits on top of any of them (a vault's
//! `assume_role_arn`): STS `AssumeRole` signed with the base credentials.
//!
//! # The chain
//! Order: env, container, web identity, IMDS. This is Kong's order
//! (lua-resty-aws: environment, shared file, remote/container, process, token
//! file web identity, EC2 metadata) and the issue's. aws-config (the Rust
//! SDK) and most other SDKs try web identity *before* container; the two
//! differ only when a pod has both IRSA and EKS Pod Identity set up, where
//! Kong (and this filter) use Pod Identity and the SDKs IRSA. Switching is a
//! one-line change of [`chain::ORDER`].
//!
//! Fall-through follows aws-config's `CredentialsProviderChain`: a source that
//! is *not configured* (its variables are absent: `CredentialsNotLoaded`)
//! passes to the next; the first configured source is used for good, and its
//! failures (an unreachable container endpoint, a refused AssumeRoleWithWebIdentity,
//! a disallowed `_FULL_URI` host, a token file that cannot be read) are
//! reported, never papered over with a later source. In particular a pod with
//! IRSA variables whose token cannot be read fails loudly rather than
//! silently using the node's instance role through IMDS. Unlike aws-config the
//! choice is made once (the environment does not change while a VM lives).
//! Partial env credentials (a key id without a secret) count as "not
//! configured", as in aws-config. IMDS is configured unless
//! `AWS_EC2_METADATA_DISABLED=true`.
//!
//! # Files the sandbox cannot read
//! A proxy-wasm filter has no file system: the shared credentials/config
//! files (`AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`) are not supported,
//! and neither are `AWS_WEB_IDENTITY_TOKEN_FILE` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` as such. What to use instead:
//! - the token itself in an environment variable: `AWS_WEB_IDENTITY_TOKEN`
//!   (our own variable; no SDK reads it) or `AWS_CONTAINER_AUTHORIZATION_TOKEN`
//!   (standard). Environment variables are read once when the VM starts, so
//!   this only suits tokens that outlive the filter's configuration: NOT
//!   EKS's projected service account tokens, which the kubelet rotates (they
//!   expire after 24 h by default; AWS recommends refreshing hourly).
//! - a URL serving the file's current content, fetched before every
//!   credentials refresh, so rotation just works:
//!   `credentials.web_identity_token_url` (IRSA) and
//!   `credentials.container_authorization_token_url` (EKS Pod Identity), with
//!   `..._upstream` (default: the URL's `host[:port]`). Serve the projected
//!   token file from loopback only, e.g. a sidecar, or (Kong) an nginx
//!   `location` with `alias /var/run/secrets/eks.amazonaws.com/serviceaccount/token;`
//!   injected through `nginx_http_include`, bound to `127.0.0.1`. Anything
//!   that can reach that URL can get the token: keep it on loopback.
//! - if only the `_FILE` variable is set, the source counts as configured and
//!   fails with an error that says exactly this (see "The chain").
//!
//! # Upstreams and defaults
//! One rule, the same as for secrets: a callout's default upstream is the
//! `host[:port]` of the URL it calls, exactly as written in the URL (no port
//! added). That is what Kong needs (`host[:port]`); an Envoy user either
//! names clusters that way or overrides the upstream:
//! - container: `169.254.170.2` (relative URI) or the `_FULL_URI`'s
//!   authority; override `credentials.container_upstream`;
//! - IMDS: `169.254.169.254`; override `credentials.imds_upstream`;
//! - STS for web identity: `sts.<region>.amazonaws.com` (or `sts.amazonaws.com`);
//!   override `credentials.sts_upstream`;
//! - STS for AssumeRole: the vault's STS endpoint authority; the engine may
//!   pass an override in [`assume_role::AssumeRoleSettings::upstream`];
//! - token URLs: their authority; override `..._token_upstream`.
//!
//! Timeouts: `credentials.timeout_ms` (default 5000) for container, token
//! and STS callouts; `credentials.imds_timeout_ms` (default 1000, as the
//! SDKs: an IMDSv2 token `PUT` that is never answered, e.g. a hop limit of 1
//! seen from a container, then falls back to IMDSv1 quickly).
//!
//! # Refresh
//! Temporary credentials are refreshed ahead of expiry: 5 minutes before, or
//! halfway through their remaining lifetime when that is shorter. While a
//! refresh is in flight, or after it failed, the still-valid credentials keep
//! being served (they stop being served 10 s before they expire). A failed
//! fetch backs off 1 s, doubling to 60 s. A callout that gets no answer within
//! its timeout + 2 s counts as failed (Kong <= 3.8 never answers a failed
//! dispatch). [`Provider::invalidate`] drops the current credentials (after
//! AWS said `ExpiredToken`/`InvalidSignature`...): the next poll refetches.
//!
//! # Driving a provider (recipe for the engine)
//! ```text
//! loop (at most ~8 times):                    // on_tick (refresh off the request path) and
//!   match set.poll(slot, now) {               // whenever a secret fetch needs credentials
//!     Dispatch{id, upstream, request, timeout_ms} => send it (remember id -> credentials), continue
//!     Ready(c)          => sign with c.credentials; break
//!     Pending           => wait for an answer (or the next tick); break
//!     NotConfigured(why) | Failed(why) => fail the fetch with `why`; break   // retried later
//!   }
//! callout answer for id  => match set.on_response(id, result, now) {
//!     Refreshed{..} | Progress => poll again (more callouts, or resume waiting fetches)
//!     Failed{reason, ..} => log reason; poll again (valid old credentials may still be served)
//!     Ignored => nothing }
//! AWS answered a credentials error (ExpiredToken, InvalidSignature, ...) for a request
//!   signed with `c` => set.invalidate(slot, Some(&c)); poll (loop above); retry once.
//! ```
//! [`set::CredentialSet`] bundles the base provider (from
//! [`CredentialsConfig`]) and one [`assume_role::AssumeRole`] per distinct
//! role, sharing the base; its ids are unique across all of them.
//!
//! # Secrets
//! Secret keys, session tokens, web identity and authorization tokens and
//! signatures never appear in errors, `Display` or `Debug`. Bodies that
//! carry credentials are never excerpted; bodies over 64 KiB are refused.

pub mod assume_role;
pub mod chain;
pub mod config;
pub mod container;
pub mod env;
pub mod imds;
pub mod set;
pub mod web_identity;

use std::fmt;

use serde_json::Value;

use super::secrets_manager::{self, Endpoint};
use super::sigv4::Credentials;
use super::{HttpRequest, HttpResponse};

pub use config::{CredentialsConfig, Source};
pub use set::{CredentialSet, Slot};

/// Longest body accepted from any credentials endpoint.
pub const MAX_BODY_LEN: usize = 64 * 1024;
/// Refresh this long before expiry at the latest.
pub const REFRESH_AHEAD_MS: u64 = 5 * 60 * 1000;
/// Credentials are not handed out in the last 10 s of their life.
pub const EXPIRY_MARGIN_MS: u64 = 10_000;
/// First retry delay after a failure; doubles up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_MIN_MS: u64 = 1_000;
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// A callout unanswered this long after its timeout is given up.
pub const CALLOUT_GRACE_MS: u64 = 2_000;

/// An environment lookup: `std::env::var` in the shell, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Credentials with an optional expiry (ms since the epoch; `None` = static).
/// `Debug` redacts the secret key and session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedCredentials {
    pub credentials: Credentials,
    pub expires_at: Option<u64>,
}

/// One step of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Use these. They stay valid at least [`EXPIRY_MARGIN_MS`] from `now`.
    Ready(TimedCredentials),
    /// Send this callout, report its result with `on_response(id, ..)`, and
    /// poll again: the next poll may well be `Ready` (old credentials still
    /// valid while this refresh is in flight).
    Dispatch {
        /// Unique within the provider (or [`CredentialSet`]) that returned it.
        id: u64,
        upstream: String,
        request: HttpRequest,
        timeout_ms: u32,
    },
    /// Waiting for an answer already asked for; no usable credentials yet.
    Pending,
    /// This source is not configured here (e.g. env vars absent): a chain
    /// moves on; anyone else treats it as "no credentials".
    NotConfigured(String),
    /// Configured but failed, no usable credentials. The provider retries by
    /// itself (backoff): keep polling.
    Failed(String),
}

impl Poll {
    /// The same step with a `Dispatch` id renamed (wrappers namespace the ids
    /// of what they wrap).
    pub fn map_id(self, f: impl FnOnce(u64) -> u64) -> Poll {
        match self {
            Poll::Dispatch {
                id,
                upstream,
                request,
                timeout_ms,
            } => Poll::Dispatch {
                id: f(id),
                upstream,
                request,
                timeout_ms,
            },
            other => other,
        }
    }
}

/// What an answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// New credentials are cached; poll to get them.
    Refreshed { expires_at: Option<u64> },
    /// A step succeeded and another callout is needed: poll to get it.
    Progress,
    /// The fetch failed; the next attempt is not before `retry_at`. Still
    /// valid credentials (if any) keep being served.
    Failed { reason: String, retry_at: u64 },
    /// Not an answer this provider waits for (unknown id, or already given up).
    Ignored,
}

/// A credentials source as a sans-IO state machine.
pub trait Provider {
    /// Short source name for logs (`env`, `container`, `web_identity`,
    /// `imds`, `assume_role`; a chain names the source it chose).
    fn name(&self) -> &'static str;
    /// Call whenever credentials are needed and from the periodic tick:
    /// returns the cached credentials while valid and starts refreshes ahead
    /// of expiry (a `Dispatch`, after which the next poll serves the cached
    /// credentials again).
    fn poll(&mut self, now: u64) -> Poll;
    /// The result of a callout this provider asked for (`Err`: no HTTP
    /// answer: dispatch refused, timeout, connection failure).
    fn on_response(&mut self, id: u64, result: Result<HttpResponse, String>, now: u64) -> Update;
    /// AWS rejected `rejected` (expired, bad signature): drop them so that
    /// the next poll refetches. A no-op when the provider has already moved
    /// on to other credentials (a late rejection of old ones); `None` drops
    /// whatever is cached.
    fn invalidate(&mut self, rejected: Option<&Credentials>);
}

impl<P: Provider + ?Sized> Provider for Box<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn poll(&mut self, now: u64) -> Poll {
        (**self).poll(now)
    }
    fn on_response(&mut self, id: u64, result: Result<HttpResponse, String>, now: u64) -> Update {
        (**self).on_response(id, result, now)
    }
    fn invalidate(&mut self, rejected: Option<&Credentials>) {
        (**self).invalidate(rejected)
    }
}

/// The base provider `config` asks for.
pub fn provider(config: &CredentialsConfig, env: Env) -> Box<dyn Provider> {
    match config.source {
        Source::Env => Box::new(env::provider(env)),
        Source::Container => Box::new(container::provider(config, env)),
        Source::WebIdentity => Box::new(web_identity::provider(config, env)),
        Source::Imds => Box::new(imds::provider(config, env)),
        Source::Chain => Box::new(chain::Chain::new(config, env)),
    }
}

// ---------------------------------------------------------------------------
// The generic fetch-and-cache machine shared by the simple providers.

/// A callout to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub upstream: String,
    pub request: HttpRequest,
    pub timeout_ms: u32,
}

/// What a [`Fetch`] wants next.
#[derive(Debug)]
pub enum Step {
    Send(Outgoing),
    Done(TimedCredentials),
    Fail(String),
    NotConfigured(String),
}

/// One source's fetch protocol, without caching, backoff or ids: those are
/// [`Refreshing`]'s. A fetch is `begin`, then one `answer` per `Send`.
pub trait Fetch {
    fn name(&self) -> &'static str;
    fn begin(&mut self, now: u64) -> Step;
    fn answer(&mut self, result: Result<HttpResponse, String>, now: u64) -> Step;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    id: u64,
    deadline: u64,
    timeout_ms: u32,
}

/// Cache, refresh timing, in-flight callout and backoff of one credentials
/// source. Used by [`Refreshing`] and [`assume_role::AssumeRole`].
#[derive(Default)]
pub(crate) struct RefreshState {
    cached: Option<TimedCredentials>,
    refresh_at: u64,
    in_flight: Option<InFlight>,
    queued: Option<Outgoing>,
    failures: u32,
    retry_at: u64,
    last_error: Option<String>,
    next_id: u64,
}

impl fmt::Debug for RefreshState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshState")
            .field("cached", &self.cached)
            .field("refresh_at", &self.refresh_at)
            .field("in_flight", &self.in_flight.map(|i| i.id))
            .field("failures", &self.failures)
            .field("retry_at", &self.retry_at)
            .field("last_error", &self.last_error)
            .finish()
    }
}

impl RefreshState {
    pub(crate) fn usable(&self, now: u64) -> Option<&TimedCredentials> {
        self.cached.as_ref().filter(|c| match c.expires_at {
            None => true,
            Some(e) => now.saturating_add(EXPIRY_MARGIN_MS) < e,
        })
    }

    /// Usable credentials, unless a refresh is due.
    pub(crate) fn fresh(&self, now: u64) -> Option<&TimedCredentials> {
        self.usable(now).filter(|_| now < self.refresh_at)
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    pub(crate) fn backing_off(&self, now: u64) -> bool {
        now < self.retry_at
    }

    /// The in-flight callout, if it is past its deadline.
    pub(crate) fn lost(&self, now: u64) -> Option<(u64, u32)> {
        self.in_flight
            .filter(|i| now >= i.deadline)
            .map(|i| (i.id, i.timeout_ms))
    }

    /// Is `id` the callout we wait for? If so it is no longer in flight.
    pub(crate) fn take(&mut self, id: u64) -> bool {
        if self.in_flight.is_some_and(|i| i.id == id) {
            self.in_flight = None;
            true
        } else {
            false
        }
    }

    pub(crate) fn queue(&mut self, out: Outgoing) {
        self.queued = Some(out);
    }

    pub(crate) fn take_queued(&mut self) -> Option<Outgoing> {
        self.queued.take()
    }

    /// Mark `out` in flight under a new id.
    pub(crate) fn dispatch(&mut self, out: Outgoing, now: u64) -> Poll {
        self.next_id += 1;
        let id = self.next_id;
        self.in_flight = Some(InFlight {
            id,
            deadline: now
                .saturating_add(u64::from(out.timeout_ms))
                .saturating_add(CALLOUT_GRACE_MS),
            timeout_ms: out.timeout_ms,
        });
        Poll::Dispatch {
            id,
            upstream: out.upstream,
            request: out.request,
            timeout_ms: out.timeout_ms,
        }
    }

    pub(crate) fn succeed(&mut self, creds: TimedCredentials, now: u64) -> Update {
        self.refresh_at = match creds.expires_at {
            None => u64::MAX,
            Some(e) => {
                let ahead = REFRESH_AHEAD_MS.min(e.saturating_sub(now) / 2);
                e.saturating_sub(ahead)
            }
        };
        let expires_at = creds.expires_at;
        self.cached = Some(creds);
        self.failures = 0;
        self.retry_at = 0;
        self.last_error = None;
        self.queued = None;
        Update::Refreshed { expires_at }
    }

    pub(crate) fn fail(&mut self, reason: String, now: u64) -> Update {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now.saturating_add(backoff_ms(self.failures));
        self.last_error = Some(reason.clone());
        self.queued = None;
        Update::Failed {
            reason,
            retry_at: self.retry_at,
        }
    }

    /// What to answer when no new fetch can start now.
    pub(crate) fn fallback(&self, now: u64) -> Poll {
        if let Some(c) = self.usable(now) {
            return Poll::Ready(c.clone());
        }
        if self.in_flight.is_some() || self.queued.is_some() {
            return Poll::Pending;
        }
        match &self.last_error {
            Some(e) => Poll::Failed(e.clone()),
            None => Poll::Pending,
        }
    }

    pub(crate) fn invalidate(&mut self, rejected: Option<&Credentials>) {
        let matches = match (&self.cached, rejected) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(c), Some(r)) => c.credentials == *r,
        };
        if matches {
            self.cached = None;
            self.refresh_at = 0;
            self.retry_at = 0;
        }
    }
}

/// Delay before attempt `failures + 1`: 1 s, 2 s, 4 s, ... capped at 60 s.
pub fn backoff_ms(failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_MIN_MS
        .saturating_mul(1u64 << shift)
        .min(BACKOFF_MAX_MS)
}

/// A [`Fetch`] with caching, refresh ahead of expiry, backoff and lost
/// callout expiry: the [`Provider`] for env, container, web identity and IMDS.
pub struct Refreshing<F> {
    fetch: F,
    state: RefreshState,
    not_configured: Option<String>,
}

impl<F: Fetch + fmt::Debug> fmt::Debug for Refreshing<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refreshing")
            .field("fetch", &self.fetch)
            .field("state", &self.state)
            .field("not_configured", &self.not_configured)
            .finish()
    }
}

impl<F: Fetch> Refreshing<F> {
    pub fn new(fetch: F) -> Self {
        Refreshing {
            fetch,
            state: RefreshState::default(),
            not_configured: None,
        }
    }

    /// The source's protocol state (for tests and introspection).
    pub fn fetcher(&self) -> &F {
        &self.fetch
    }

    fn prefixed(&self, reason: String) -> String {
        format!("{}: {reason}", self.fetch.name())
    }

    fn step_update(&mut self, step: Step, now: u64) -> Update {
        match step {
            Step::Send(out) => {
                self.state.queue(out);
                Update::Progress
            }
            Step::Done(creds) => self.state.succeed(creds, now),
            Step::Fail(reason) | Step::NotConfigured(reason) => {
                let reason = self.prefixed(reason);
                self.state.fail(reason, now)
            }
        }
    }
}

impl<F: Fetch> Provider for Refreshing<F> {
    fn name(&self) -> &'static str {
        self.fetch.name()
    }

    fn poll(&mut self, now: u64) -> Poll {
        if let Some(reason) = &self.not_configured {
            return Poll::NotConfigured(reason.clone());
        }
        if let Some((id, timeout_ms)) = self.state.lost(now) {
            let why = format!("no answer within {timeout_ms} ms");
            self.on_response(id, Err(why), now);
        }
        if let Some(out) = self.state.take_queued() {
            return self.state.dispatch(out, now);
        }
        if let Some(c) = self.state.fresh(now) {
            return Poll::Ready(c.clone());
        }
        if self.state.in_flight() || self.state.backing_off(now) {
            return self.state.fallback(now);
        }
        match self.fetch.begin(now) {
            Step::Send(out) => self.state.dispatch(out, now),
            Step::Done(creds) => {
                self.state.succeed(creds.clone(), now);
                Poll::Ready(creds)
            }
            Step::Fail(reason) => {
                let reason = self.prefixed(reason);
                self.state.fail(reason, now);
                self.state.fallback(now)
            }
            Step::NotConfigured(reason) => {
                let reason = self.prefixed(reason);
                self.not_configured = Some(reason.clone());
                Poll::NotConfigured(reason)
            }
        }
    }

    fn on_response(&mut self, id: u64, result: Result<HttpResponse, String>, now: u64) -> Update {
        if !self.state.take(id) {
            return Update::Ignored;
        }
        let step = self.fetch.answer(result, now);
        self.step_update(step, now)
    }

    fn invalidate(&mut self, rejected: Option<&Credentials>) {
        self.state.invalidate(rejected);
    }
}

// ---------------------------------------------------------------------------
// Helpers shared by the providers.

/// A URL with a path: `http[s]://host[:port]/path?query`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    pub endpoint: Endpoint,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parse a URL that may have a path and query (not a fragment or userinfo).
/// Errors never quote the URL.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("URL must start with http:// or https://".into());
    };
    let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = (rest.get(..cut).unwrap_or(""), rest.get(cut..).unwrap_or(""));
    if path.contains('#') {
        return Err("URL must not have a fragment (#...)".into());
    }
    let endpoint = secrets_manager::parse_endpoint_url(&format!("{scheme}://{authority}"))
        .map_err(|e| e.replace("endpoint URL", "URL"))?;
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if !valid_path(&path) {
        return Err("URL path must be printable ASCII without spaces".into());
    }
    Ok(Url { endpoint, path })
}

/// A request path: starts with `/`, printable ASCII, no spaces.
pub(crate) fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Usable as a header value and in a form body: printable ASCII, no spaces.
pub(crate) fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

pub(crate) fn get_request(url: &Url, headers: Vec<(String, String)>) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        scheme: url.endpoint.scheme.clone(),
        authority: url.endpoint.authority.clone(),
        path: url.path.clone(),
        headers,
        body: Vec::new(),
    }
}

/// A header value: printable ASCII or spaces, not empty.
pub(crate) fn valid_header_value(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// The callout fetching a token from a URL (a projected token file served
/// over HTTP, see the module docs).
pub(crate) fn token_request(url: &Url, upstream: &str, timeout_ms: u32) -> Outgoing {
    Outgoing {
        upstream: upstream.to_string(),
        request: get_request(url, Vec::new()),
        timeout_ms,
    }
}

/// The token in a token URL's answer: a 200 whose body, trimmed, is
/// printable ASCII without spaces. The body is the token: never excerpted.
pub(crate) fn token_from(
    result: Result<HttpResponse, String>,
    what: &str,
) -> Result<String, String> {
    let resp =
        result.map_err(|e| format!("callout to the {what} URL failed: {}", scrub(&e, &[], 200)))?;
    if resp.status != 200 {
        return Err(format!("the {what} URL answered HTTP {}", resp.status));
    }
    if resp.body.len() > MAX_BODY_LEN {
        return Err(format!("the {what} URL answered more than 64 KiB"));
    }
    let token = std::str::from_utf8(&resp.body)
        .map(str::trim)
        .map_err(|_| format!("the {what} URL answered a body that is not UTF-8"))?;
    if token.is_empty() {
        return Err(format!("the {what} URL answered an empty body"));
    }
    if !valid_token(token) {
        return Err(format!(
            "the {what} URL answered a body that is not a token (printable ASCII without spaces)"
        ));
    }
    Ok(token.to_string())
}

/// A variable's value, with empty counted as unset (as aws-config does).
pub(crate) fn var(env: Env, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// `AWS_REGION`, then `AWS_DEFAULT_REGION`.
pub(crate) fn env_region(env: Env) -> Option<String> {
    var(env, "AWS_REGION")
        .or_else(|| var(env, "AWS_DEFAULT_REGION"))
        .map(|r| r.trim().to_string())
}

/// Text from outside shown in a message: control characters become spaces,
/// at most `max` characters, and every `secret` (at least 4 bytes long)
/// replaced by `** redacted **`.
pub(crate) fn scrub(text: &str, secrets: &[&str], max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "** redacted **");
    }
    let mut capped: String = out.trim().chars().take(max).collect();
    if out.trim().chars().count() > max {
        capped.push_str("...");
    }
    capped
}

/// The JSON credentials document of the container endpoint and IMDS:
/// `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration` (required), and,
/// with `require_code` (IMDS), `Code` = `Success`. The body holds
/// credentials: errors are fixed texts.
pub fn parse_json_credentials(body: &[u8], require_code: bool) -> Result<TimedCredentials, String> {
    if body.len() > MAX_BODY_LEN {
        return Err("credentials response is larger than 64 KiB".into());
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err("credentials response is not a JSON object".into());
    };
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(_)) => Ok(None),
        Some(_) => Err(format!("credentials response: {name} is not a string")),
    };
    if require_code {
        match text("Code")? {
            Some(code) if code == "Success" => {}
            Some(code) if looks_like_code(&code) => {
                return Err(format!(
                    "credentials response has Code '{code}' (expected Success)"
                ))
            }
            Some(_) => return Err("credentials response has an unexpected Code".into()),
            None => return Err("credentials response has no Code".into()),
        }
    }
    let access_key_id = text("AccessKeyId")?.ok_or("credentials response has no AccessKeyId")?;
    let secret_access_key =
        text("SecretAccessKey")?.ok_or("credentials response has no SecretAccessKey")?;
    let session_token = text("Token")?;
    let expiration = text("Expiration")?.ok_or("credentials response has no Expiration")?;
    let expires_at = parse_timestamp(&expiration)
        .ok_or("credentials response has an invalid Expiration (expected ISO 8601 UTC)")?;
    check_credentials(&access_key_id, &secret_access_key, session_token.as_deref())?;
    Ok(TimedCredentials {
        credentials: Credentials {
            access_key_id,
            secret_access_key,
            session_token,
        },
        expires_at: Some(expires_at),
    })
}

/// IMDS codes (`Success`, `AssumeRoleUnauthorizedAccess`): letters, digits, `.`, `_`, `-`.
fn looks_like_code(c: &str) -> bool {
    c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Printable ASCII key id, secret and token (what SigV4 can use). Fixed texts.
pub(crate) fn check_credentials(
    access_key_id: &str,
    secret_access_key: &str,
    session_token: Option<&str>,
) -> Result<(), String> {
    if !valid_token(access_key_id) || access_key_id.len() > 128 {
        return Err("credentials have an invalid access key id".into());
    }
    if !valid_token(secret_access_key) {
        return Err("credentials have an invalid secret access key".into());
    }
    if session_token.is_some_and(|t| !valid_token(t)) {
        return Err("credentials have an invalid session token".into());
    }
    Ok(())
}

/// ISO 8601 / RFC 3339 date-time -> ms since the epoch:
/// `2024-05-01T12:00:00Z`, with optional fractional seconds (any number of
/// digits; moto sends microseconds), `Z` or a `+hh:mm`/`-hh:mm` offset.
/// `None` for anything else or before 1970.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let s = s.trim();
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let minute = num(14, 2)?;
    let second = num(17, 2)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b.get(i).copied().unwrap_or(b'0') - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 12 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_s = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let oh = num(i + 1, 2)?;
            let (om, end) = if b.get(i + 3) == Some(&b':') {
                (num(i + 4, 2)?, i + 6)
            } else {
                (num(i + 3, 2)?, i + 5)
            };
            if end != b.len() || oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    // A leap second is counted as the last second of its minute.
    let second = second.min(59);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    if secs < 0 {
        return None;
    }
    u64::try_from(secs * 1000 + millis).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
pub(crate) mod testing {
    //! Shared test helpers.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeMap;

    use super::*;

    pub const AKID: &str = "ASIAEXAMPLEKEYID";
    pub const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzSECRETKEY";
    pub const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKENvalue";

    pub fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    pub fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// `2024-01-01T00:00:00Z` in ms.
    pub const T0: u64 = 1_704_067_200_000;
    pub const HOUR: u64 = 3_600_000;

    pub fn iso(ms: u64) -> String {
        // Inverse of days_from_civil for tests (civil_from_days).
        let secs = (ms / 1000) as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = if m <= 2 { y + 1 } else { y };
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    pub fn creds_json(expires_at: u64) -> String {
        format!(
            r#"{{"AccessKeyId":"{AKID}","SecretAccessKey":"{SECRET}","Token":"{TOKEN}","Expiration":"{}"}}"#,
            iso(expires_at)
        )
    }

    pub fn imds_json(expires_at: u64) -> String {
        format!(
            r#"{{"Code":"Success","LastUpdated":"2024-01-01T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"{AKID}","SecretAccessKey":"{SECRET}","Token":"{TOKEN}","Expiration":"{}"}}"#,
            iso(expires_at)
        )
    }

    pub fn sts_xml(action: &str, expires_at: u64) -> String {
        format!(
            r#"<{action}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <{action}Result>
    <AssumedRoleUser><AssumedRoleId>AROA:s</AssumedRoleId><Arn>arn:aws:sts::1:assumed-role/r/s</Arn></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{AKID}</AccessKeyId>
      <SecretAccessKey>{SECRET}</SecretAccessKey>
      <SessionToken>{TOKEN}</SessionToken>
      <Expiration>{}</Expiration>
    </Credentials>
  </{action}Result>
  <ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>
</{action}Response>"#,
            iso(expires_at)
        )
    }

    /// Unwrap a Dispatch.
    pub fn dispatched(p: Poll) -> (u64, String, HttpRequest, u32) {
        match p {
            Poll::Dispatch {
                id,
                upstream,
                request,
                timeout_ms,
            } => (id, upstream, request, timeout_ms),
            other => panic!("expected Dispatch, got {other:?}"),
        }
    }

    pub fn ready(p: Poll) -> TimedCredentials {
        match p {
            Poll::Ready(c) => c,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
        req.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// No secret in `text`.
    pub fn assert_clean(text: &str) {
        for s in [SECRET, TOKEN, "wJalrXUtnFEMI", "IQoJb3JpZ2lu"] {
            assert!(!text.contains(s), "secret leaked in: {text}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2024-01-01T00:00:00Z"), Some(T0));
        assert_eq!(parse_timestamp("2024-01-01T00:00:00.5Z"), Some(T0 + 500));
        assert_eq!(parse_timestamp("2024-01-01T00:00:00.123Z"), Some(T0 + 123));
        assert_eq!(
            parse_timestamp("2024-01-01T00:00:00.123456Z"),
            Some(T0 + 123)
        );
        assert_eq!(parse_timestamp(" 2024-01-01t00:00:00z "), Some(T0));
        assert_eq!(parse_timestamp("2024-01-01T02:00:00+02:00"), Some(T0));
        assert_eq!(parse_timestamp("2023-12-31T22:30:00-0130"), Some(T0));
        assert_eq!(
            parse_timestamp("2024-02-29T12:34:56Z"),
            Some(1_709_210_096_000)
        );
        assert_eq!(
            parse_timestamp("2019-11-09T13:34:41Z"),
            Some(1_573_306_481_000)
        );
        for bad in [
            "",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00ZZ",
            "2024-01-01T00:00:00+2:00",
            "1969-12-31T23:59:59Z",
            "2024-01-01T00:00:00Zjunk",
            "２０２４-01-01T00:00:00Z",
            "+024-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        for ms in [0, T0, T0 + 12 * HOUR + 34_000, 4_102_444_800_000] {
            assert_eq!(parse_timestamp(&iso(ms)), Some(ms));
        }
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let v: Vec<u64> = (1..=9).map(backoff_ms).collect();
        assert_eq!(
            v,
            [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        assert_eq!(backoff_ms(u32::MAX), 60_000);
    }

    #[test]
    fn urls() {
        let u = parse_url("http://169.254.170.2/v2/credentials/abc?x=1").unwrap();
        assert_eq!(u.endpoint.authority, "169.254.170.2");
        assert_eq!(u.path, "/v2/credentials/abc?x=1");
        let u = parse_url("https://[fd00:ec2::23]:8443").unwrap();
        assert_eq!(u.endpoint.authority, "[fd00:ec2::23]:8443");
        assert_eq!(u.path, "/");
        assert_eq!(parse_url("http://h?q").unwrap().path, "/?q");
        for bad in [
            "169.254.170.2/x",
            "ftp://h/x",
            "http://u:p@h/x",
            "http:///x",
            "http://h/a b",
            "http://h/x#f",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(!e.contains("u:p"), "{e}");
        }
    }

    #[test]
    fn json_credentials() {
        let c = parse_json_credentials(creds_json(T0).as_bytes(), false).unwrap();
        assert_eq!(c.credentials.access_key_id, AKID);
        assert_eq!(c.credentials.secret_access_key, SECRET);
        assert_eq!(c.credentials.session_token.as_deref(), Some(TOKEN));
        assert_eq!(c.expires_at, Some(T0));
        assert!(parse_json_credentials(creds_json(T0).as_bytes(), true)
            .unwrap_err()
            .contains("no Code"));
        let c = parse_json_credentials(imds_json(T0).as_bytes(), true).unwrap();
        assert_eq!(c.expires_at, Some(T0));

        let failed = imds_json(T0).replace("\"Success\"", "\"Failed\"");
        let e = parse_json_credentials(failed.as_bytes(), true).unwrap_err();
        assert!(e.contains("Code 'Failed'"), "{e}");
        assert_clean(&e);
        let weird = imds_json(T0).replace("\"Success\"", &format!("\"{SECRET} x\""));
        let e = parse_json_credentials(weird.as_bytes(), true).unwrap_err();
        assert_eq!(e, "credentials response has an unexpected Code");

        let cases = [
            ("not json".to_string(), "not a JSON object"),
            ("[1]".to_string(), "not a JSON object"),
            (
                creds_json(T0).replace("\"AccessKeyId\"", "\"X\""),
                "no AccessKeyId",
            ),
            (
                creds_json(T0).replace("\"SecretAccessKey\"", "\"X\""),
                "no SecretAccessKey",
            ),
            (
                creds_json(T0).replace("\"Expiration\"", "\"X\""),
                "no Expiration",
            ),
            (
                creds_json(T0).replace("2024-01-01T00:00:00Z", "tomorrow"),
                "invalid Expiration",
            ),
            (
                format!(r#"{{"AccessKeyId":1,"SecretAccessKey":"{SECRET}"}}"#),
                "AccessKeyId is not a string",
            ),
            (
                creds_json(T0).replace(SECRET, "bad secret"),
                "invalid secret access key",
            ),
        ];
        for (body, want) in cases {
            let e = parse_json_credentials(body.as_bytes(), false).unwrap_err();
            assert!(e.contains(want), "{e} !~ {want}");
            assert_clean(&e);
        }
        let big = format!("{}{}", creds_json(T0), " ".repeat(MAX_BODY_LEN));
        assert!(parse_json_credentials(big.as_bytes(), false)
            .unwrap_err()
            .contains("64 KiB"));
        // Without a Token: long-term keys are fine.
        let no_token = creds_json(T0).replace("\"Token\"", "\"X\"");
        let c = parse_json_credentials(no_token.as_bytes(), false).unwrap();
        assert_eq!(c.credentials.session_token, None);
    }

    #[test]
    fn scrub_redacts_and_caps() {
        let s = scrub(&format!("a\n{SECRET} b"), &[SECRET, "ab"], 100);
        assert_eq!(s, "a ** redacted ** b");
        assert_eq!(scrub("abcdef", &[], 3), "abc...");
    }

    #[test]
    fn debug_of_timed_credentials_is_redacted() {
        let c = parse_json_credentials(creds_json(T0).as_bytes(), false).unwrap();
        let d = format!("{:?} {:?}", c, Poll::Ready(c.clone()));
        assert!(d.contains(AKID));
        assert_clean(&d);
    }

    #[test]
    fn nothing_secret_in_debug_of_loaded_providers() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", TOKEN),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/c"),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "ContainerAuthTokenValue",
            ),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN", "WebIdentityTokenValue"),
        ]);
        let config = CredentialsConfig::default();
        let mut shown = Vec::new();

        let mut e = env::provider(&env);
        let c = ready(e.poll(T0));
        shown.push(format!("{e:?} {c:?} {:?}", Poll::Ready(c.clone())));

        let mut co = container::provider(&config, &env);
        let (id, _, req, _) = dispatched(co.poll(T0));
        shown.push(format!("{req:?}"));
        co.on_response(id, Ok(resp(200, &creds_json(T0 + HOUR))), T0);
        shown.push(format!("{co:?} {:?}", co.poll(T0)));

        let mut w = web_identity::provider(&config, &env);
        let (id, _, req, _) = dispatched(w.poll(T0));
        shown.push(format!("{req:?}"));
        let u = w.on_response(
            id,
            Ok(resp(200, &sts_xml("AssumeRoleWithWebIdentity", T0 + HOUR))),
            T0,
        );
        shown.push(format!("{w:?} {u:?} {:?}", w.poll(T0)));

        let mut a = assume_role::Assumed {
            base: env::provider(&env),
            role: assume_role::AssumeRole::with_mode(
                assume_role::AssumeRoleSettings::new("arn:aws:iam::1:role/r", "us-east-1"),
                crate::aws::sts::EndpointMode::Regional,
            ),
        };
        let (id, _, req, _) = dispatched(a.poll(T0));
        shown.push(format!("{req:?}"));
        a.on_response(id, Ok(resp(200, &sts_xml("AssumeRole", T0 + HOUR))), T0);
        shown.push(format!("{a:?} {:?}", a.poll(T0)));

        let mut set = CredentialSet::new(&config, &env);
        let slot = set
            .role(assume_role::AssumeRoleSettings::new(
                "arn:aws:iam::1:role/r",
                "us-east-1",
            ))
            .unwrap();
        let _ = set.poll(slot, T0);
        shown.push(format!("{set:?}"));

        for text in shown {
            assert_clean(&text);
            for s in [
                "ContainerAuthTokenValue",
                "WebIdentityTokenValue",
                "Signature=",
            ] {
                assert!(!text.contains(s), "{s} in {text}");
            }
        }
    }

    #[derive(Debug)]
    struct Scripted {
        answers: Vec<Step>,
        begun: u32,
    }

    fn out(path: &str) -> Outgoing {
        Outgoing {
            upstream: "u".into(),
            request: get_request(
                &Url {
                    endpoint: secrets_manager::parse_endpoint_url("http://h").unwrap(),
                    path: path.into(),
                },
                vec![],
            ),
            timeout_ms: 1000,
        }
    }

    impl Fetch for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn begin(&mut self, _now: u64) -> Step {
            self.begun += 1;
            Step::Send(out("/begin"))
        }
        fn answer(&mut self, result: Result<HttpResponse, String>, now: u64) -> Step {
            match result {
                Err(e) => Step::Fail(e),
                Ok(r) if r.status == 200 => Step::Done(TimedCredentials {
                    credentials: Credentials {
                        access_key_id: format!("AK{now}"),
                        secret_access_key: SECRET.into(),
                        session_token: None,
                    },
                    expires_at: Some(now + HOUR),
                }),
                Ok(r) if r.status == 100 => Step::Send(out("/next")),
                Ok(_) => self.answers.pop().unwrap_or(Step::Fail("scripted".into())),
            }
        }
    }

    fn scripted() -> Refreshing<Scripted> {
        Refreshing::new(Scripted {
            answers: vec![],
            begun: 0,
        })
    }

    #[test]
    fn refresh_ahead_serves_old_credentials_meanwhile() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        assert_eq!(p.poll(T0), Poll::Pending);
        assert_eq!(
            p.on_response(id, Ok(resp(200, "")), T0),
            Update::Refreshed {
                expires_at: Some(T0 + HOUR)
            }
        );
        let first = ready(p.poll(T0 + 1));
        assert_eq!(first.credentials.access_key_id, format!("AK{T0}"));
        // 5 minutes before expiry: refresh, serving the old ones meanwhile.
        let t = T0 + HOUR - REFRESH_AHEAD_MS - 1;
        assert_eq!(ready(p.poll(t)), first);
        let t = t + 1;
        let (id2, ..) = dispatched(p.poll(t));
        assert_eq!(ready(p.poll(t + 5)), first);
        // A stale answer is ignored.
        assert_eq!(p.on_response(id, Ok(resp(200, "")), t), Update::Ignored);
        p.on_response(id2, Ok(resp(200, "")), t + 10);
        let second = ready(p.poll(t + 11));
        assert_eq!(second.credentials.access_key_id, format!("AK{}", t + 10));
        assert_eq!(p.fetcher().begun, 2);
    }

    #[test]
    fn short_lived_credentials_refresh_at_half_life() {
        let mut p = scripted();
        p.state.succeed(
            TimedCredentials {
                credentials: Credentials {
                    access_key_id: "AK".into(),
                    secret_access_key: SECRET.into(),
                    session_token: None,
                },
                expires_at: Some(T0 + 120_000),
            },
            T0,
        );
        assert!(matches!(p.poll(T0 + 59_999), Poll::Ready(_)));
        assert!(matches!(p.poll(T0 + 60_000), Poll::Dispatch { .. }));
    }

    #[test]
    fn expired_credentials_are_refetched_and_not_served() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(200, "")), T0);
        // Past expiry (minus margin) with no refresh yet: nothing to serve.
        let t = T0 + HOUR - EXPIRY_MARGIN_MS;
        let (id, ..) = dispatched(p.poll(t));
        assert_eq!(p.poll(t), Poll::Pending);
        p.on_response(id, Ok(resp(200, "")), t);
        assert!(matches!(p.poll(t), Poll::Ready(_)));
    }

    #[test]
    fn backoff_after_failures_and_old_credentials_served() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        let u = p.on_response(id, Ok(resp(500, "")), T0);
        assert_eq!(
            u,
            Update::Failed {
                reason: "scripted: scripted".into(),
                retry_at: T0 + 1000
            }
        );
        assert_eq!(p.poll(T0 + 999), Poll::Failed("scripted: scripted".into()));
        let (id, ..) = dispatched(p.poll(T0 + 1000));
        p.on_response(id, Err("boom".into()), T0 + 1000);
        assert_eq!(p.poll(T0 + 2999), Poll::Failed("scripted: boom".into()));
        let (id, ..) = dispatched(p.poll(T0 + 3000));
        p.on_response(id, Ok(resp(200, "")), T0 + 3000);
        let good = ready(p.poll(T0 + 3000));
        // A failed refresh keeps serving the valid credentials.
        let t = T0 + 3000 + HOUR - REFRESH_AHEAD_MS;
        let (id, ..) = dispatched(p.poll(t));
        assert!(matches!(
            p.on_response(id, Ok(resp(500, "")), t),
            Update::Failed { retry_at, .. } if retry_at == t + 1000
        ));
        assert_eq!(ready(p.poll(t + 10)), good);
        assert!(matches!(p.poll(t + 1000), Poll::Dispatch { .. }));
    }

    #[test]
    fn multi_step_and_lost_callouts() {
        let mut p = scripted();
        let (id, _, req, _) = dispatched(p.poll(T0));
        assert_eq!(req.path, "/begin");
        assert_eq!(p.on_response(id, Ok(resp(100, "")), T0), Update::Progress);
        let (id2, _, req, _) = dispatched(p.poll(T0));
        assert_eq!(req.path, "/next");
        assert_ne!(id, id2);
        // Never answered: given up after timeout + grace, then backoff.
        assert_eq!(p.poll(T0 + 1000 + CALLOUT_GRACE_MS - 1), Poll::Pending);
        let t = T0 + 1000 + CALLOUT_GRACE_MS;
        assert_eq!(
            p.poll(t),
            Poll::Failed("scripted: no answer within 1000 ms".into())
        );
        assert_eq!(p.on_response(id2, Ok(resp(200, "")), t), Update::Ignored);
        assert!(matches!(p.poll(t + 1000), Poll::Dispatch { .. }));
    }

    #[test]
    fn invalidate_drops_only_the_rejected_credentials() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(200, "")), T0);
        let old = ready(p.poll(T0)).credentials;
        let other = Credentials {
            access_key_id: "OTHER".into(),
            ..old.clone()
        };
        p.invalidate(Some(&other));
        assert!(matches!(p.poll(T0 + 1), Poll::Ready(_)));
        p.invalidate(Some(&old));
        let (id, ..) = dispatched(p.poll(T0 + 2));
        // Not served any more while the refetch runs.
        assert_eq!(p.poll(T0 + 2), Poll::Pending);
        p.invalidate(Some(&old));
        p.on_response(id, Ok(resp(200, "")), T0 + 3);
        let new = ready(p.poll(T0 + 3)).credentials;
        assert_ne!(new, old);
        // A late rejection of the old ones leaves the new ones alone.
        p.invalidate(Some(&old));
        assert_eq!(ready(p.poll(T0 + 4)).credentials, new);
        p.invalidate(None);
        assert!(matches!(p.poll(T0 + 5), Poll::Dispatch { .. }));
    }

    #[test]
    fn invalidate_skips_backoff_once() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(200, "")), T0);
        let t = T0 + HOUR - REFRESH_AHEAD_MS;
        let (id, ..) = dispatched(p.poll(t));
        p.on_response(id, Ok(resp(500, "")), t);
        assert!(matches!(p.poll(t + 1), Poll::Ready(_)));
        p.invalidate(None);
        assert!(matches!(p.poll(t + 2), Poll::Dispatch { .. }));
    }
}
