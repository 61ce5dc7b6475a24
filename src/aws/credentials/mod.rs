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
//!
//! # Files
//! The trait, the types and these docs are here; the sources are
//! [`env`](mod@env), [`container`], [`web_identity`], [`imds`], [`chain`],
//! [`assume_role`], with [`set`] and [`config`] around them. Shared machinery,
//! each in a file of its own: `refresh.rs` (the fetch-and-cache machine
//! [`Refreshing`]), `url.rs` ([`Url`]), `token.rs` (token URLs),
//! `json_credentials.rs` ([`parse_json_credentials`]), `timestamp.rs`
//! ([`parse_timestamp`]), `validate.rs` (what tokens and credentials must
//! look like).

pub mod assume_role;
pub mod chain;
pub mod config;
pub mod container;
pub mod env;
pub mod imds;
pub mod set;
pub mod web_identity;

mod json_credentials;
mod refresh;
mod timestamp;
mod token;
mod url;
mod validate;

#[cfg(test)]
pub(crate) mod testing;

use super::sigv4::Credentials;
use super::{HttpRequest, HttpResponse};

pub use config::{CredentialsConfig, Source};
pub use json_credentials::parse_json_credentials;
pub use refresh::{
    backoff_ms, Fetch, Outgoing, Refreshing, Step, BACKOFF_MAX_MS, BACKOFF_MIN_MS,
    CALLOUT_GRACE_MS, EXPIRY_MARGIN_MS, REFRESH_AHEAD_MS,
};
pub(crate) use refresh::{RefreshState, Setup};
pub use set::{CredentialSet, Slot};
pub use timestamp::parse_timestamp;
pub(crate) use token::{token_from, token_request, TokenSettings, TokenSource};
pub(crate) use url::{get_request, valid_path};
pub use url::{parse_url, Url};
pub use validate::valid_session_name;
pub(crate) use validate::{check_credentials, valid_header_value, valid_token};

/// Longest body accepted from any credentials endpoint.
pub const MAX_BODY_LEN: usize = 64 * 1024;

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::testing::*;
    use super::*;

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
}
