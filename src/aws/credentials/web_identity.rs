//! Web identity (EKS IAM Roles for Service Accounts, any OIDC token):
//! `AWS_ROLE_ARN` + a web identity token -> STS `AssumeRoleWithWebIdentity`
//! (unsigned), session name `AWS_ROLE_SESSION_NAME` (default `aws-vault`).
//!
//! # Getting the token in
//! SDKs read the token from `AWS_WEB_IDENTITY_TOKEN_FILE` before every
//! refresh. A proxy-wasm filter cannot open files (no WASI preopens in Envoy
//! or Kong), so that variable alone does not work. In order of precedence:
//! 1. `credentials.web_identity_token_url` (+ `web_identity_token_upstream`,
//!    default the URL's `host[:port]`): the token is fetched with a `GET`
//!    before every AssumeRoleWithWebIdentity, so kubelet's rotation of the
//!    projected token (`/var/run/secrets/eks.amazonaws.com/serviceaccount/token`)
//!    just works. Something must serve that file over HTTP on loopback: a
//!    sidecar (any static file server), or in Kong an nginx `server` bound to
//!    `127.0.0.1` with `location = /irsa-token { alias <token file>; }`
//!    added via `nginx_http_include`. Whatever can reach the URL can read the
//!    token, so never expose it beyond loopback.
//! 2. `AWS_WEB_IDENTITY_TOKEN`: the token itself (our own variable, no SDK
//!    reads it). Read once when the VM starts: fine for long-lived tokens
//!    from your own OIDC issuer, NOT for EKS's projected tokens, which expire
//!    (24 h by default) and are rotated in the file: once the token in the
//!    variable expires, every refresh fails until the filter is reconfigured
//!    with a new one.
//! 3. Only `AWS_WEB_IDENTITY_TOKEN_FILE` (what EKS injects): the source is
//!    configured and fails, with an error that explains 1 and 2. It does not
//!    fall through to IMDS (which would silently use the node's role).
//!
//! STS endpoint: `credentials.sts_endpoint_url`, else regional for
//! `credentials.sts_region` / `AWS_REGION` / `AWS_DEFAULT_REGION`
//! (`AWS_STS_REGIONAL_ENDPOINTS=legacy`, or no region: the global endpoint).

use std::fmt;
use std::ops::ControlFlow;

use super::config::CredentialsConfig;
use super::{
    env_region, scrub, token_from, token_request, valid_session_name, valid_token, var, Env, Fetch,
    Outgoing, Refreshing, Setup, Step, TokenSettings, TokenSource,
};
use crate::aws::sts::{self, EndpointMode, StsEndpoint};
use crate::aws::HttpResponse;

/// RoleSessionName when `AWS_ROLE_SESSION_NAME` is not set.
pub const DEFAULT_SESSION_NAME: &str = "aws-vault";
/// STS accepts web identity tokens of 4 to 20,000 characters.
const MAX_TOKEN_LEN: usize = 20_000;

pub type WebIdentityProvider = Refreshing<WebIdentityFetch>;

pub fn provider(config: &CredentialsConfig, env: Env) -> WebIdentityProvider {
    Refreshing::new(WebIdentityFetch::new(config, env))
}

struct Target {
    role_arn: String,
    session_name: String,
    token: TokenSource,
    sts: StsEndpoint,
    sts_upstream: String,
    timeout_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Idle,
    Token,
    Sts,
}

pub struct WebIdentityFetch {
    setup: Setup<Target>,
    stage: Stage,
    /// The token sent with the STS call in flight (for scrubbing).
    token: Option<String>,
}

impl fmt::Debug for WebIdentityFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WebIdentityFetch");
        self.setup.debug_fields(&mut d, |d, t| {
            d.field("role_arn", &t.role_arn)
                .field("session_name", &t.session_name)
                .field("sts", &t.sts.endpoint.authority)
                .field("sts_upstream", &t.sts_upstream)
                .field("token", &t.token.describe());
        });
        d.field("stage", &self.stage).finish()
    }
}

impl WebIdentityFetch {
    pub fn new(config: &CredentialsConfig, env: Env) -> WebIdentityFetch {
        WebIdentityFetch {
            setup: setup(config, env),
            stage: Stage::Idle,
            token: None,
        }
    }

    fn sts_request(&mut self, token: String) -> Step {
        let Setup::Ready(t) = &self.setup else {
            return Step::Fail("not configured".into());
        };
        if token.len() < 4 || token.len() > MAX_TOKEN_LEN {
            return Step::Fail(format!(
                "the web identity token must be 4 to {MAX_TOKEN_LEN} characters long"
            ));
        }
        let request = sts::assume_role_with_web_identity_request(
            &t.sts.endpoint,
            &t.role_arn,
            &t.session_name,
            &token,
        );
        self.token = Some(token);
        self.stage = Stage::Sts;
        Step::Send(Outgoing {
            upstream: t.sts_upstream.clone(),
            request,
            timeout_ms: t.timeout_ms,
        })
    }
}

#[inline(never)] // see Config::fields
fn setup(config: &CredentialsConfig, env: Env) -> Setup<Target> {
    let token = TokenSettings {
        url: config.web_identity_token_url.as_ref(),
        upstream: config.web_identity_token_upstream.as_deref(),
        var: "AWS_WEB_IDENTITY_TOKEN",
        valid: valid_token,
        invalid: "AWS_WEB_IDENTITY_TOKEN is not a token (printable ASCII without spaces)",
        file_var: "AWS_WEB_IDENTITY_TOKEN_FILE",
        file_error:
            "AWS_WEB_IDENTITY_TOKEN_FILE is set, but a proxy-wasm filter cannot read files: set \
             credentials.web_identity_token_url to a local URL serving that file (rotated tokens, \
             e.g. EKS IRSA), or AWS_WEB_IDENTITY_TOKEN to the token itself (static tokens only)",
    }
    .source(env);
    let token = match token {
        Ok(Some(token)) => token,
        Ok(None) => {
            return Setup::NotConfigured(
                "AWS_WEB_IDENTITY_TOKEN, AWS_WEB_IDENTITY_TOKEN_FILE and \
                 credentials.web_identity_token_url are not set"
                    .into(),
            )
        }
        Err(e) => return Setup::Invalid(e),
    };
    let (role_arn, session_name) = match role_and_session_name(env) {
        Ok(role) => role,
        Err(e) => return Setup::Invalid(e),
    };
    let region = config.sts_region.clone().or_else(|| env_region(env));
    let sts = sts::endpoint(
        region.as_deref(),
        EndpointMode::from_env(env),
        config.sts_endpoint_url.as_ref(),
    );
    Setup::Ready(Box::new(Target {
        sts_upstream: config
            .sts_upstream
            .clone()
            .unwrap_or_else(|| sts.endpoint.authority.clone()),
        role_arn,
        session_name,
        token,
        sts,
        timeout_ms: config.timeout_ms,
    }))
}

/// `AWS_ROLE_ARN` (required) and `AWS_ROLE_SESSION_NAME` (default
/// [`DEFAULT_SESSION_NAME`]), trimmed and checked.
#[inline(never)] // see Config::fields
fn role_and_session_name(env: Env) -> Result<(String, String), String> {
    let Some(role_arn) = var(env, "AWS_ROLE_ARN").map(|r| r.trim().to_string()) else {
        return Err("a web identity token is configured but AWS_ROLE_ARN is not set".into());
    };
    if !valid_token(&role_arn) || role_arn.len() > 2048 {
        return Err("AWS_ROLE_ARN is not a valid role ARN".into());
    }
    let session_name = match var(env, "AWS_ROLE_SESSION_NAME") {
        None => DEFAULT_SESSION_NAME.to_string(),
        Some(s) => {
            let s = s.trim().to_string();
            if !valid_session_name(&s) {
                return Err(
                    "AWS_ROLE_SESSION_NAME must be 2-64 characters of letters, digits and _+=,.@-"
                        .into(),
                );
            }
            s
        }
    };
    Ok((role_arn, session_name))
}

impl Fetch for WebIdentityFetch {
    fn name(&self) -> &'static str {
        "web_identity"
    }

    fn begin(&mut self, _now: u64) -> Step {
        let target = match self.setup.target() {
            ControlFlow::Continue(t) => t,
            ControlFlow::Break(step) => return step,
        };
        match &target.token {
            TokenSource::Static(token) => {
                let token = token.clone();
                self.sts_request(token)
            }
            TokenSource::Url { url, upstream } => {
                self.stage = Stage::Token;
                Step::Send(token_request(url, upstream, target.timeout_ms))
            }
        }
    }

    fn answer(&mut self, result: Result<HttpResponse, String>, _now: u64) -> Step {
        match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Idle => Step::Fail("unexpected callout answer".into()),
            Stage::Token => match token_from(result, "web identity token") {
                Ok(token) => self.sts_request(token),
                Err(e) => Step::Fail(e),
            },
            Stage::Sts => {
                let token = self.token.take();
                let role = match &self.setup {
                    Setup::Ready(t) => t.role_arn.as_str(),
                    _ => "?",
                };
                sts_answer(result, token.as_deref(), role)
            }
        }
    }
}

/// The credentials in STS's answer; `token` (the web identity token sent) is
/// scrubbed from errors.
#[inline(never)] // see Config::fields
fn sts_answer(result: Result<HttpResponse, String>, token: Option<&str>, role: &str) -> Step {
    let secrets: Vec<&str> = token.into_iter().collect();
    match result {
        Err(e) => Step::Fail(format!(
            "AssumeRoleWithWebIdentity callout failed: {}",
            scrub(&e, &secrets, 200)
        )),
        Ok(resp) => match sts::parse_credentials_response(&resp) {
            Ok(c) => Step::Done(c),
            Err(e) => Step::Fail(format!(
                "AssumeRoleWithWebIdentity for {role}: {}",
                scrub(&e.to_string(), &secrets, 400)
            )),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::super::{parse_url, Poll, Provider, Update};
    use super::*;
    use crate::aws::secrets_manager::parse_endpoint_url;

    const ROLE: &str = "arn:aws:iam::123456789012:role/vault";
    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJlLXdlYi1pZGVudGl0eQ";

    fn body(req: &crate::aws::HttpRequest) -> String {
        String::from_utf8(req.body.clone()).unwrap()
    }

    #[test]
    fn token_from_env() {
        let env = env_of(&[
            ("AWS_ROLE_ARN", ROLE),
            ("AWS_WEB_IDENTITY_TOKEN", JWT),
            ("AWS_REGION", "eu-central-1"),
            ("AWS_ROLE_SESSION_NAME", "my-session"),
        ]);
        let mut p = provider(&CredentialsConfig::default(), &env);
        assert_eq!(p.name(), "web_identity");
        let (id, upstream, req, timeout) = dispatched(p.poll(T0));
        assert_eq!(upstream, "sts.eu-central-1.amazonaws.com");
        assert_eq!(timeout, 5000);
        assert_eq!(req.method, "POST");
        assert_eq!(req.scheme, "https");
        assert_eq!(req.authority, "sts.eu-central-1.amazonaws.com");
        assert_eq!(header(&req, "authorization"), None, "unsigned");
        let b = body(&req);
        assert!(b.starts_with("Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fvault&RoleSessionName=my-session&WebIdentityToken=eyJ"), "{b}");
        assert!(!format!("{p:?}").contains(JWT));
        p.on_response(
            id,
            Ok(resp(200, &sts_xml("AssumeRoleWithWebIdentity", T0 + HOUR))),
            T0,
        );
        let c = ready(p.poll(T0));
        assert_eq!(c.expires_at, Some(T0 + HOUR));
        assert_eq!(c.credentials.session_token.as_deref(), Some(TOKEN));
        // Refreshed 5 minutes before expiry, with the same static token.
        let t = T0 + HOUR - 5 * 60_000;
        let (_, _, req, _) = dispatched(p.poll(t));
        assert!(body(&req).contains("WebIdentityToken=eyJ"));
        assert_eq!(ready(p.poll(t)), c);
    }

    #[test]
    fn token_from_url_each_refresh() {
        let config = CredentialsConfig {
            web_identity_token_url: Some(parse_url("http://127.0.0.1:8099/irsa-token").unwrap()),
            sts_endpoint_url: Some(parse_endpoint_url("http://127.0.0.1:5000").unwrap()),
            sts_upstream: Some("moto".into()),
            sts_region: Some("us-west-2".into()),
            ..CredentialsConfig::default()
        };
        let env = env_of(&[
            ("AWS_ROLE_ARN", ROLE),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
            ),
            ("AWS_WEB_IDENTITY_TOKEN", "ignored-static-token"),
        ]);
        let mut p = provider(&config, &env);
        for (round, token) in [(0u64, "token-one"), (1, "token-two")] {
            let t = T0 + round * 2 * HOUR;
            let (id, upstream, req, _) = dispatched(p.poll(t));
            assert_eq!(upstream, "127.0.0.1:8099");
            assert_eq!(
                (req.method.as_str(), req.path.as_str()),
                ("GET", "/irsa-token")
            );
            assert_eq!(p.poll(t), Poll::Pending);
            assert_eq!(
                p.on_response(id, Ok(resp(200, &format!("  {token}\n"))), t),
                Update::Progress
            );
            let (id, upstream, req, _) = dispatched(p.poll(t));
            assert_eq!(upstream, "moto");
            assert_eq!(req.authority, "127.0.0.1:5000");
            assert!(body(&req).ends_with(&format!(
                "RoleSessionName=aws-vault&WebIdentityToken={token}"
            )));
            p.on_response(
                id,
                Ok(resp(200, &sts_xml("AssumeRoleWithWebIdentity", t + HOUR))),
                t,
            );
            assert_eq!(ready(p.poll(t)).expires_at, Some(t + HOUR));
        }
    }

    #[test]
    fn sts_errors_are_reported_without_the_token() {
        let env = env_of(&[("AWS_ROLE_ARN", ROLE), ("AWS_WEB_IDENTITY_TOKEN", JWT)]);
        let mut p = provider(&CredentialsConfig::default(), &env);
        let (id, upstream, ..) = dispatched(p.poll(T0));
        assert_eq!(upstream, "sts.amazonaws.com", "no region: global endpoint");
        let xml = format!("<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Token {JWT} is expired</Message></Error></ErrorResponse>");
        match p.on_response(id, Ok(resp(400, &xml)), T0) {
            Update::Failed { reason, retry_at } => {
                assert_eq!(
                    reason,
                    format!("web_identity: AssumeRoleWithWebIdentity for {ROLE}: STS error InvalidIdentityToken (HTTP 400): Token ** redacted ** is expired")
                );
                assert_eq!(retry_at, T0 + 1000);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.poll(T0 + 1), Poll::Failed(e) if !e.contains(JWT)));
        let (id, ..) = dispatched(p.poll(T0 + 1000));
        match p.on_response(id, Err("connection refused".into()), T0 + 1000) {
            Update::Failed { reason, .. } => assert_eq!(
                reason,
                "web_identity: AssumeRoleWithWebIdentity callout failed: connection refused"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn legacy_endpoint() {
        let env = env_of(&[
            ("AWS_ROLE_ARN", ROLE),
            ("AWS_WEB_IDENTITY_TOKEN", JWT),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
            ("AWS_STS_REGIONAL_ENDPOINTS", "legacy"),
        ]);
        let (_, upstream, req, _) =
            dispatched(provider(&CredentialsConfig::default(), &env).poll(T0));
        assert_eq!(upstream, "sts.amazonaws.com");
        assert_eq!(req.authority, "sts.amazonaws.com");
    }

    type Case = (
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    );

    #[test]
    fn configuration_problems() {
        let cases: [Case; 6] = [
            (&[], None),
            (&[("AWS_ROLE_ARN", ROLE)], None),
            (
                &[("AWS_WEB_IDENTITY_TOKEN", JWT)],
                Some("AWS_ROLE_ARN is not set"),
            ),
            (
                &[
                    ("AWS_ROLE_ARN", ROLE),
                    ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/t"),
                ],
                Some(
                    "AWS_WEB_IDENTITY_TOKEN_FILE is set, but a proxy-wasm filter cannot read files",
                ),
            ),
            (
                &[
                    ("AWS_ROLE_ARN", ROLE),
                    ("AWS_WEB_IDENTITY_TOKEN", JWT),
                    ("AWS_ROLE_SESSION_NAME", "a b"),
                ],
                Some("AWS_ROLE_SESSION_NAME must be"),
            ),
            (
                &[("AWS_ROLE_ARN", ROLE), ("AWS_WEB_IDENTITY_TOKEN", "abc")],
                Some("4 to 20000 characters"),
            ),
        ];
        for (vars, want) in cases {
            let env = env_of(vars);
            let mut p = provider(&CredentialsConfig::default(), &env);
            match (p.poll(T0), want) {
                (Poll::NotConfigured(r), None) => assert!(
                    r.starts_with("web_identity: AWS_WEB_IDENTITY_TOKEN, "),
                    "{r}"
                ),
                (Poll::Failed(r), Some(w)) => assert!(r.contains(w), "{r} !~ {w}"),
                (other, w) => panic!("{vars:?}: {other:?}, wanted {w:?}"),
            }
        }
    }

    #[test]
    fn bad_token_url_answers() {
        let config = CredentialsConfig {
            web_identity_token_url: Some(parse_url("http://127.0.0.1:8099/t").unwrap()),
            ..CredentialsConfig::default()
        };
        let env = env_of(&[("AWS_ROLE_ARN", ROLE)]);
        let mut p = provider(&config, &env);
        let mut t = T0;
        for (r, want) in [
            (
                Ok(resp(500, JWT)),
                "the web identity token URL answered HTTP 500",
            ),
            (
                Ok(resp(200, "  \n")),
                "the web identity token URL answered an empty body",
            ),
            (Ok(resp(200, "two words")), "not a token"),
            (
                Err("timeout".to_string()),
                "callout to the web identity token URL failed: timeout",
            ),
        ] {
            let (id, ..) = dispatched(p.poll(t));
            match p.on_response(id, r, t) {
                Update::Failed { reason, retry_at } => {
                    assert!(reason.contains(want), "{reason}");
                    assert!(!reason.contains(JWT));
                    t = retry_at;
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
