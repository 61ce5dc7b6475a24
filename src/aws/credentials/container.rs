//! Container credentials (ECS task roles, EKS Pod Identity, any
//! "container credentials" endpoint).
//!
//! - `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (wins when both are set) ->
//!   `GET http://169.254.170.2<uri>`;
//! - `AWS_CONTAINER_CREDENTIALS_FULL_URI` -> `GET <uri>`: https to any host;
//!   http only to a loopback address (`127.0.0.0/8`, `::1`, or the name
//!   `localhost`: unlike aws-config we cannot resolve other names to check
//!   them), `169.254.170.2` (ECS), `169.254.170.23` or `fd00:ec2::23` (EKS
//!   Pod Identity). Anything else is a configuration error (the source is
//!   configured, and fails), as in aws-config.
//! - `Authorization: <token>`: from `credentials.container_authorization_token_url`
//!   (fetched before each refresh: rotation works), else
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN`. `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`
//!   cannot be read in the sandbox: if it is the only token setting, the
//!   source fails with an error saying so (EKS Pod Identity sets exactly
//!   that: configure the token URL).
//!
//! Answer: JSON `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::ControlFlow;

use serde_json::Value;

use super::config::CredentialsConfig;
use super::{
    get_request, parse_json_credentials, parse_url, scrub, token_from, token_request,
    valid_header_value, valid_path, var, Env, Fetch, Outgoing, Refreshing, Setup, Step,
    TokenSettings, TokenSource, Url,
};
use crate::aws::secrets_manager::Endpoint;
use crate::aws::HttpResponse;

/// The ECS credentials endpoint host for a relative URI.
pub const ECS_HOST: &str = "169.254.170.2";

pub type ContainerProvider = Refreshing<ContainerFetch>;

pub fn provider(config: &CredentialsConfig, env: Env) -> ContainerProvider {
    Refreshing::new(ContainerFetch::new(config, env))
}

struct Target {
    url: Url,
    upstream: String,
    timeout_ms: u32,
    /// The `Authorization` token; `None`: no header.
    auth: Option<TokenSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Idle,
    Token,
    Credentials,
}

pub struct ContainerFetch {
    setup: Setup<Target>,
    stage: Stage,
    /// The authorization token in use (for scrubbing messages).
    token: Option<String>,
}

impl fmt::Debug for ContainerFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ContainerFetch");
        self.setup.debug_fields(&mut d, |d, t| {
            d.field("authority", &t.url.endpoint.authority)
                .field("upstream", &t.upstream)
                .field(
                    "auth",
                    &t.auth
                        .as_ref()
                        .map_or_else(|| "none".to_string(), TokenSource::describe),
                );
        });
        d.field("stage", &self.stage).finish()
    }
}

impl ContainerFetch {
    pub fn new(config: &CredentialsConfig, env: Env) -> ContainerFetch {
        ContainerFetch {
            setup: setup(config, env),
            stage: Stage::Idle,
            token: None,
        }
    }

    /// The URL credentials are fetched from, if configured.
    pub fn url(&self) -> Option<&Url> {
        match &self.setup {
            Setup::Ready(t) => Some(&t.url),
            _ => None,
        }
    }

    fn credentials_request(&mut self, t_token: Option<String>) -> Step {
        let Setup::Ready(t) = &self.setup else {
            return Step::Fail("not configured".into());
        };
        let mut headers = Vec::new();
        if let Some(token) = &t_token {
            headers.push(("authorization".to_string(), token.clone()));
        }
        self.token = t_token;
        self.stage = Stage::Credentials;
        Step::Send(Outgoing {
            upstream: t.upstream.clone(),
            request: get_request(&t.url, headers),
            timeout_ms: t.timeout_ms,
        })
    }
}

#[inline(never)] // see Config::fields
fn setup(config: &CredentialsConfig, env: Env) -> Setup<Target> {
    let url = match credentials_url(env) {
        Ok(url) => url,
        Err(no_target) => return no_target,
    };

    let auth = TokenSettings {
        url: config.container_authorization_token_url.as_ref(),
        upstream: config.container_authorization_token_upstream.as_deref(),
        var: "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        valid: valid_header_value,
        invalid: "AWS_CONTAINER_AUTHORIZATION_TOKEN is not a valid header value \
                  (printable ASCII only)",
        file_var: "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        file_error: "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE is set, but a proxy-wasm filter \
                     cannot read files: set credentials.container_authorization_token_url to a \
                     local URL serving that file (rotated tokens, e.g. EKS Pod Identity), or \
                     AWS_CONTAINER_AUTHORIZATION_TOKEN to the token itself",
    }
    .source(env);
    let auth = match auth {
        Ok(auth) => auth,
        Err(e) => return Setup::Invalid(e),
    };

    Setup::Ready(Box::new(Target {
        upstream: config
            .container_upstream
            .clone()
            .unwrap_or_else(|| url.endpoint.authority.clone()),
        url,
        timeout_ms: config.timeout_ms,
        auth,
    }))
}

/// The URL from `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (on the ECS host)
/// or `AWS_CONTAINER_CREDENTIALS_FULL_URI`; without one, the setup to use.
#[inline(never)] // see Config::fields
fn credentials_url(env: Env) -> Result<Url, Setup<Target>> {
    const REL: &str = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
    const FULL: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
    if let Some(rel) = var(env, REL) {
        let rel = rel.trim();
        if !valid_path(rel) {
            return Err(Setup::Invalid(format!(
                "{REL} must be a path starting with '/' (printable ASCII, no spaces)"
            )));
        }
        return Ok(Url {
            endpoint: Endpoint {
                scheme: "http".into(),
                authority: ECS_HOST.into(),
                host: ECS_HOST.into(),
                port: None,
            },
            path: rel.to_string(),
        });
    }
    let Some(full) = var(env, FULL) else {
        return Err(Setup::NotConfigured(format!(
            "{REL} and {FULL} are not set"
        )));
    };
    let url = match parse_url(full.trim()) {
        Ok(u) => u,
        Err(e) => return Err(Setup::Invalid(format!("{FULL}: {e}"))),
    };
    if !full_uri_allowed(&url.endpoint) {
        return Err(Setup::Invalid(format!(
            "{FULL}: plain http is only allowed to a loopback address, 169.254.170.2, \
             169.254.170.23 or fd00:ec2::23, not to '{}' (use https)",
            scrub(&url.endpoint.host, &[], 64)
        )));
    }
    Ok(url)
}

/// aws-config's rule for `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
pub fn full_uri_allowed(endpoint: &Endpoint) -> bool {
    if endpoint.scheme == "https" {
        return true;
    }
    let host = endpoint.host.to_ascii_lowercase();
    if host == "localhost" {
        return true;
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return ip.is_loopback()
            || ip == Ipv4Addr::new(169, 254, 170, 2)
            || ip == Ipv4Addr::new(169, 254, 170, 23);
    }
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    if let Ok(ip) = inner.parse::<Ipv6Addr>() {
        return ip.is_loopback() || ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23);
    }
    false
}

impl Fetch for ContainerFetch {
    fn name(&self) -> &'static str {
        "container"
    }

    fn begin(&mut self, _now: u64) -> Step {
        let target = match self.setup.target() {
            ControlFlow::Continue(t) => t,
            ControlFlow::Break(step) => return step,
        };
        match &target.auth {
            None => self.credentials_request(None),
            Some(TokenSource::Static(token)) => {
                let token = token.clone();
                self.credentials_request(Some(token))
            }
            Some(TokenSource::Url { url, upstream }) => {
                self.stage = Stage::Token;
                Step::Send(token_request(url, upstream, target.timeout_ms))
            }
        }
    }

    fn answer(&mut self, result: Result<HttpResponse, String>, _now: u64) -> Step {
        match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Idle => Step::Fail("unexpected callout answer".into()),
            Stage::Token => match token_from(result, "container authorization token") {
                Ok(token) => self.credentials_request(Some(token)),
                Err(e) => Step::Fail(e),
            },
            Stage::Credentials => {
                let token = self.token.take();
                credentials_answer(result, token.as_deref())
            }
        }
    }
}

/// The credentials in the endpoint's answer; `token` (the authorization
/// token sent) is scrubbed from errors.
#[inline(never)] // see Config::fields
fn credentials_answer(result: Result<HttpResponse, String>, token: Option<&str>) -> Step {
    let secrets: Vec<&str> = token.into_iter().collect();
    match result {
        Err(e) => Step::Fail(format!(
            "callout to the container credentials endpoint failed: {}",
            scrub(&e, &secrets, 200)
        )),
        Ok(resp) if resp.status == 200 => match parse_json_credentials(&resp.body, false) {
            Ok(c) => Step::Done(c),
            Err(e) => Step::Fail(e),
        },
        Ok(resp) => Step::Fail(format!(
            "the container credentials endpoint answered HTTP {}{}",
            resp.status,
            error_detail(&resp, &secrets)
        )),
    }
}

/// `: <message>` from an error answer's JSON (`message`, `Message`, `code`,
/// `Code`), scrubbed and capped; empty otherwise. Never a raw body excerpt.
#[inline(never)] // see Config::fields
fn error_detail(resp: &HttpResponse, secrets: &[&str]) -> String {
    if resp.body.len() > super::MAX_BODY_LEN {
        return String::new();
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&resp.body) else {
        return String::new();
    };
    let pick = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| fields.get(*n).and_then(Value::as_str))
            .map(|s| scrub(s, secrets, 200))
            .filter(|s| !s.is_empty())
    };
    match (pick(&["code", "Code"]), pick(&["message", "Message"])) {
        (Some(c), Some(m)) => format!(": {c}: {m}"),
        (Some(one), None) | (None, Some(one)) => format!(": {one}"),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::super::{Poll, Provider, Update};
    use super::*;
    use crate::aws::secrets_manager::parse_endpoint_url;

    fn make(vars: &[(&str, &str)], config: &CredentialsConfig) -> ContainerProvider {
        let env = env_of(vars);
        provider(config, &env)
    }

    #[test]
    fn relative_uri() {
        let mut p = make(
            &[(
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/abc",
            )],
            &CredentialsConfig::default(),
        );
        assert_eq!(p.name(), "container");
        let (id, upstream, req, timeout) = dispatched(p.poll(T0));
        assert_eq!(upstream, "169.254.170.2");
        assert_eq!(timeout, 5000);
        assert_eq!(req.method, "GET");
        assert_eq!(req.scheme, "http");
        assert_eq!(req.authority, "169.254.170.2");
        assert_eq!(req.path, "/v2/credentials/abc");
        assert_eq!(header(&req, "authorization"), None);
        assert_eq!(p.poll(T0), Poll::Pending);
        let u = p.on_response(id, Ok(resp(200, &creds_json(T0 + 6 * HOUR))), T0 + 5);
        assert_eq!(
            u,
            Update::Refreshed {
                expires_at: Some(T0 + 6 * HOUR)
            }
        );
        let c = ready(p.poll(T0 + 6));
        assert_eq!(c.credentials.secret_access_key, SECRET);
        assert_eq!(c.credentials.session_token.as_deref(), Some(TOKEN));
    }

    #[test]
    fn full_uri_with_auth_token_and_upstream_override() {
        let config = CredentialsConfig {
            container_upstream: Some("pod_identity".into()),
            timeout_ms: 700,
            ..CredentialsConfig::default()
        };
        let mut p = make(
            &[
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://169.254.170.23/v1/credentials",
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer abc.def"),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/x"),
            ],
            &config,
        );
        let (id, upstream, req, timeout) = dispatched(p.poll(T0));
        assert_eq!(upstream, "pod_identity");
        assert_eq!(timeout, 700);
        assert_eq!(req.authority, "169.254.170.23");
        assert_eq!(req.path, "/v1/credentials");
        assert_eq!(header(&req, "authorization"), Some("Bearer abc.def"));
        assert!(!format!("{p:?}").contains("abc.def"));
        p.on_response(id, Ok(resp(200, &creds_json(T0 + HOUR))), T0);
        assert!(matches!(p.poll(T0), Poll::Ready(_)));
    }

    #[test]
    fn full_uri_default_upstream_is_its_authority() {
        let mut p = make(
            &[(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:8080/creds?x=1",
            )],
            &CredentialsConfig::default(),
        );
        let (_, upstream, req, _) = dispatched(p.poll(T0));
        assert_eq!(upstream, "127.0.0.1:8080");
        assert_eq!(req.path, "/creds?x=1");
    }

    #[test]
    fn relative_wins_over_full() {
        let mut p = make(
            &[
                ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/rel"),
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://127.0.0.1/full",
                ),
            ],
            &CredentialsConfig::default(),
        );
        assert_eq!(dispatched(p.poll(T0)).2.path, "/rel");
    }

    #[test]
    fn allowed_hosts() {
        for ok in [
            "https://example.com",
            "http://127.0.0.1:9",
            "http://127.8.9.10",
            "http://localhost:80",
            "http://LOCALHOST",
            "http://169.254.170.2",
            "http://169.254.170.23",
            "http://[::1]:80",
            "http://[fd00:ec2::23]",
            "http://[fd00:0ec2:0::0023]",
        ] {
            assert!(full_uri_allowed(&parse_endpoint_url(ok).unwrap()), "{ok}");
        }
        for bad in [
            "http://example.com",
            "http://169.254.169.254",
            "http://10.0.0.1",
            "http://[fd00:ec2::254]",
            "http://localhost.example.com",
        ] {
            assert!(
                !full_uri_allowed(&parse_endpoint_url(bad).unwrap()),
                "{bad}"
            );
        }
    }

    #[test]
    fn disallowed_full_uri_is_configured_and_fails() {
        let mut p = make(
            &[(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://evil.example.com/creds",
            )],
            &CredentialsConfig::default(),
        );
        match p.poll(T0) {
            Poll::Failed(e) => {
                assert!(
                    e.starts_with("container: AWS_CONTAINER_CREDENTIALS_FULL_URI: plain http"),
                    "{e}"
                );
                assert!(e.contains("'evil.example.com'"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // It retries with backoff (and fails the same way): never a callout.
        assert!(matches!(p.poll(T0 + 1000), Poll::Failed(_)));
        let mut p = make(
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "not a url")],
            &CredentialsConfig::default(),
        );
        assert!(matches!(p.poll(T0), Poll::Failed(e) if e.contains("FULL_URI: URL must start")));
        let mut p = make(
            &[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "v2/x")],
            &CredentialsConfig::default(),
        );
        assert!(matches!(p.poll(T0), Poll::Failed(e) if e.contains("must be a path")));
    }

    #[test]
    fn not_configured() {
        let mut p = make(&[], &CredentialsConfig::default());
        assert_eq!(
            p.poll(T0),
            Poll::NotConfigured(
                "container: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and AWS_CONTAINER_CREDENTIALS_FULL_URI are not set".into()
            )
        );
    }

    #[test]
    fn token_file_alone_cannot_be_read() {
        let mut p = make(
            &[
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://169.254.170.23/v1/credentials",
                ),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                    "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token",
                ),
            ],
            &CredentialsConfig::default(),
        );
        match p.poll(T0) {
            Poll::Failed(e) => {
                assert!(e.contains("cannot read files"), "{e}");
                assert!(e.contains("container_authorization_token_url"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_from_url_before_each_refresh() {
        let config = CredentialsConfig {
            container_authorization_token_url: Some(
                parse_url("http://127.0.0.1:8099/pod-token").unwrap(),
            ),
            ..CredentialsConfig::default()
        };
        let mut p = make(
            &[
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://169.254.170.23/v1/credentials",
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/ignored"),
            ],
            &config,
        );
        for (round, token) in [(0u64, "tok-one"), (1, "tok-two")] {
            let t = T0 + round * 2 * HOUR;
            let (id, upstream, req, _) = dispatched(p.poll(t));
            assert_eq!(upstream, "127.0.0.1:8099");
            assert_eq!(req.path, "/pod-token");
            assert_eq!(req.method, "GET");
            assert_eq!(
                p.on_response(id, Ok(resp(200, &format!("{token}\n"))), t),
                Update::Progress
            );
            let (id, upstream, req, _) = dispatched(p.poll(t));
            assert_eq!(upstream, "169.254.170.23");
            assert_eq!(header(&req, "authorization"), Some(token));
            p.on_response(id, Ok(resp(200, &creds_json(t + HOUR))), t);
            assert!(matches!(p.poll(t), Poll::Ready(_)));
        }
        // Token URL trouble: no body excerpt.
        let t = T0 + 10 * HOUR;
        let (id, ..) = dispatched(p.poll(t));
        match p.on_response(id, Ok(resp(404, "secret-ish body")), t) {
            Update::Failed { reason, .. } => {
                assert_eq!(
                    reason,
                    "container: the container authorization token URL answered HTTP 404"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_answers() {
        let vars = [
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "SeCrEtToKeN"),
        ];
        let mut p = make(&vars, &CredentialsConfig::default());
        let fail = |p: &mut ContainerProvider, t: u64, r: Result<HttpResponse, String>| {
            let (id, ..) = dispatched(p.poll(t));
            match p.on_response(id, r, t) {
                Update::Failed { reason, .. } => reason,
                other => panic!("{other:?}"),
            }
        };
        let e = fail(
            &mut p,
            T0,
            Ok(resp(
                400,
                r#"{"code":"InvalidToken","message":"bad token SeCrEtToKeN"}"#,
            )),
        );
        assert_eq!(
            e,
            "container: the container credentials endpoint answered HTTP 400: InvalidToken: bad token ** redacted **"
        );
        let e = fail(&mut p, T0 + 1000, Ok(resp(500, "plain SeCrEtToKeN text")));
        assert_eq!(
            e,
            "container: the container credentials endpoint answered HTTP 500"
        );
        let e = fail(&mut p, T0 + 3000, Err("timeout".into()));
        assert_eq!(
            e,
            "container: callout to the container credentials endpoint failed: timeout"
        );
        let e = fail(&mut p, T0 + 7000, Ok(resp(200, "{bad json")));
        assert_eq!(e, "container: credentials response is not a JSON object");
        let e = fail(
            &mut p,
            T0 + 15000,
            Ok(resp(
                200,
                &creds_json(T0).replace("\"Expiration\"", "\"E\""),
            )),
        );
        assert!(e.contains("no Expiration"));
        assert_clean(&e);
        // Backoff: 1, 2, 4, 8, 16 s.
        assert!(matches!(p.poll(T0 + 30_999), Poll::Failed(_)));
        assert!(matches!(p.poll(T0 + 31_000), Poll::Dispatch { .. }));
    }

    #[test]
    fn invalid_static_token() {
        let mut p = make(
            &[
                ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/x"),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "a\u{7f}b"),
            ],
            &CredentialsConfig::default(),
        );
        assert!(matches!(p.poll(T0), Poll::Failed(e) if e.contains("not a valid header value")));
    }
}
