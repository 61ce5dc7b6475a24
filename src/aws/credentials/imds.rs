//! EC2 instance metadata (IMDS) credentials, IMDSv2 with the SDKs' v1
//! fallback.
//!
//! A fetch: `PUT /latest/api/token` (`x-aws-ec2-metadata-token-ttl-seconds:
//! 21600`) unless a token is still valid; `GET
//! /latest/meta-data/iam/security-credentials/` -> role name; `GET
//! .../security-credentials/<role>` -> JSON with `Code` = `Success`,
//! `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`. Both GETs carry
//! `x-aws-ec2-metadata-token`.
//!
//! - The token request refused (403, 404, 405, any status but 200 and 400)
//!   or not answered at all (callout error or timeout: e.g. a hop limit of 1
//!   seen from a container) -> the same GETs without a token (IMDSv1), for
//!   this fetch; the next fetch tries v2 again. Not when
//!   `AWS_EC2_METADATA_V1_DISABLED=true`. A 400 is an error.
//! - 401 on a GET with a token: the token expired; get a new one and repeat
//!   the step, once per fetch.
//! - `AWS_EC2_METADATA_DISABLED=true` (any case): not configured.
//! - Endpoint: `credentials.imds_endpoint_url`, else
//!   `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else `http://[fd00:ec2::254]` when
//!   `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`, else
//!   `http://169.254.169.254`; the upstream defaults to its `host[:port]`.

use std::fmt;

use super::config::CredentialsConfig;
use super::{
    parse_json_credentials, scrub, valid_token, var, Env, Fetch, Outgoing, Refreshing, Step,
    MAX_BODY_LEN,
};
use crate::aws::secrets_manager::{self, Endpoint};
use crate::aws::{HttpRequest, HttpResponse};

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const ROLE_PATH: &str = "/latest/meta-data/iam/security-credentials/";
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Requested IMDSv2 token lifetime (the maximum).
pub const TOKEN_TTL_S: u64 = 21_600;
/// A cached token is not used in its last minute.
const TOKEN_MARGIN_MS: u64 = 60_000;

pub type ImdsProvider = Refreshing<ImdsFetch>;

pub fn provider(config: &CredentialsConfig, env: Env) -> ImdsProvider {
    Refreshing::new(ImdsFetch::new(config, env))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Idle,
    Token,
    Role,
    Credentials,
}

pub struct ImdsFetch {
    disabled: Option<String>,
    invalid: Option<String>,
    v1_disabled: bool,
    endpoint: Endpoint,
    upstream: String,
    timeout_ms: u32,
    /// IMDSv2 session token and until when to use it.
    token: Option<(String, u64)>,
    stage: Stage,
    role: Option<String>,
    /// This fetch already replaced a token after a 401.
    retokened: bool,
    /// This fetch goes without a token.
    v1: bool,
}

impl fmt::Debug for ImdsFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImdsFetch")
            .field("disabled", &self.disabled)
            .field("invalid", &self.invalid)
            .field("authority", &self.endpoint.authority)
            .field("upstream", &self.upstream)
            .field("token", &self.token.as_ref().map(|(_, until)| until))
            .field("stage", &self.stage)
            .field("role", &self.role)
            .field("v1", &self.v1)
            .finish()
    }
}

fn is_true(v: Option<String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl ImdsFetch {
    pub fn new(config: &CredentialsConfig, env: Env) -> ImdsFetch {
        let default = Endpoint {
            scheme: "http".into(),
            authority: "169.254.169.254".into(),
            host: "169.254.169.254".into(),
            port: None,
        };
        let mut invalid = None;
        let endpoint = if let Some(e) = &config.imds_endpoint_url {
            e.clone()
        } else if let Some(url) = var(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT") {
            match secrets_manager::parse_endpoint_url(url.trim()) {
                Ok(e) => e,
                Err(e) => {
                    invalid = Some(format!("AWS_EC2_METADATA_SERVICE_ENDPOINT: {e}"));
                    default
                }
            }
        } else if var(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("ipv6"))
        {
            Endpoint {
                scheme: "http".into(),
                authority: "[fd00:ec2::254]".into(),
                host: "[fd00:ec2::254]".into(),
                port: None,
            }
        } else {
            default
        };
        ImdsFetch {
            disabled: is_true(env("AWS_EC2_METADATA_DISABLED"))
                .then(|| "AWS_EC2_METADATA_DISABLED is true".to_string()),
            invalid,
            v1_disabled: is_true(env("AWS_EC2_METADATA_V1_DISABLED")),
            upstream: config
                .imds_upstream
                .clone()
                .unwrap_or_else(|| endpoint.authority.clone()),
            endpoint,
            timeout_ms: config.imds_timeout_ms,
            token: None,
            stage: Stage::Idle,
            role: None,
            retokened: false,
            v1: false,
        }
    }

    fn request(&self, method: &str, path: String, headers: Vec<(String, String)>) -> Outgoing {
        Outgoing {
            upstream: self.upstream.clone(),
            request: HttpRequest {
                method: method.into(),
                scheme: self.endpoint.scheme.clone(),
                authority: self.endpoint.authority.clone(),
                path,
                headers,
                body: Vec::new(),
            },
            timeout_ms: self.timeout_ms,
        }
    }

    fn token_step(&mut self) -> Step {
        self.stage = Stage::Token;
        Step::Send(self.request(
            "PUT",
            TOKEN_PATH.into(),
            vec![(TOKEN_TTL_HEADER.into(), TOKEN_TTL_S.to_string())],
        ))
    }

    /// The next GET: the role name, or its credentials once it is known.
    fn get_step(&mut self) -> Step {
        let headers = match (&self.token, self.v1) {
            (Some((token, _)), false) => vec![(TOKEN_HEADER.to_string(), token.clone())],
            _ => Vec::new(),
        };
        let (stage, path) = match &self.role {
            None => (Stage::Role, ROLE_PATH.to_string()),
            Some(role) => (Stage::Credentials, format!("{ROLE_PATH}{role}")),
        };
        self.stage = stage;
        Step::Send(self.request("GET", path, headers))
    }

    #[inline(never)] // see Config::fields
    fn on_token(&mut self, result: Result<HttpResponse, String>, now: u64) -> Step {
        let why = match result {
            Ok(resp) if resp.status == 200 => {
                let token = std::str::from_utf8(&resp.body)
                    .ok()
                    .map(str::trim)
                    .filter(|t| valid_token(t) && resp.body.len() <= MAX_BODY_LEN);
                let Some(token) = token else {
                    return Step::Fail("IMDS answered an unusable session token".into());
                };
                let ttl_s = resp
                    .header(TOKEN_TTL_HEADER)
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(TOKEN_TTL_S)
                    .min(TOKEN_TTL_S);
                let until = now
                    .saturating_add(ttl_s.saturating_mul(1000))
                    .saturating_sub(TOKEN_MARGIN_MS);
                self.token = Some((token.to_string(), until));
                self.v1 = false;
                return self.get_step();
            }
            Ok(resp) if resp.status == 400 => {
                return Step::Fail("IMDS refused the session token request (HTTP 400)".into())
            }
            Ok(resp) => format!("HTTP {}", resp.status),
            Err(e) => scrub(&e, &[], 200),
        };
        if self.v1_disabled {
            return Step::Fail(format!(
                "the IMDSv2 session token request failed ({why}) and AWS_EC2_METADATA_V1_DISABLED is true"
            ));
        }
        // IMDSv1 for this fetch, as the SDKs do.
        self.token = None;
        self.v1 = true;
        self.get_step()
    }

    fn unauthorized(&mut self) -> Step {
        if !self.v1 && !self.retokened {
            // The token expired (or IMDS restarted): get a new one, once.
            self.retokened = true;
            self.token = None;
            return self.token_step();
        }
        self.token = None;
        if self.v1 {
            Step::Fail(
                "IMDS answered 401: it requires IMDSv2, but the session token request failed"
                    .into(),
            )
        } else {
            Step::Fail("IMDS answered 401 even with a new session token".into())
        }
    }

    #[inline(never)] // see Config::fields
    fn on_role(&mut self, result: Result<HttpResponse, String>) -> Step {
        match result {
            Err(e) => Step::Fail(format!("IMDS callout failed: {}", scrub(&e, &[], 200))),
            Ok(resp) => match resp.status {
                200 => {
                    let role = std::str::from_utf8(&resp.body)
                        .ok()
                        .filter(|_| resp.body.len() <= MAX_BODY_LEN)
                        .and_then(|b| b.lines().map(str::trim).find(|l| !l.is_empty()));
                    match role {
                        Some(role) if valid_role_name(role) => {
                            self.role = Some(role.to_string());
                            self.get_step()
                        }
                        _ => Step::Fail("IMDS answered an invalid IAM role name".into()),
                    }
                }
                401 => self.unauthorized(),
                404 => Step::Fail(
                    "no IAM role is attached to this instance (IMDS answered 404 for the role name)"
                        .into(),
                ),
                s => Step::Fail(format!("IMDS answered HTTP {s} for the role name")),
            },
        }
    }

    fn on_credentials(&mut self, result: Result<HttpResponse, String>) -> Step {
        let role = self.role.clone().unwrap_or_default();
        match result {
            Err(e) => Step::Fail(format!("IMDS callout failed: {}", scrub(&e, &[], 200))),
            Ok(resp) => match resp.status {
                200 => match parse_json_credentials(&resp.body, true) {
                    Ok(c) => Step::Done(c),
                    Err(e) => Step::Fail(format!("role '{role}': {e}")),
                },
                401 => self.unauthorized(),
                404 => Step::Fail(format!(
                    "IMDS has no credentials for role '{role}' (HTTP 404)"
                )),
                s => Step::Fail(format!(
                    "IMDS answered HTTP {s} for the credentials of role '{role}'"
                )),
            },
        }
    }
}

/// IAM role names: 1-64 characters of `[\w+=,.@-]`.
fn valid_role_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

impl Fetch for ImdsFetch {
    fn name(&self) -> &'static str {
        "imds"
    }

    fn begin(&mut self, now: u64) -> Step {
        if let Some(r) = &self.disabled {
            return Step::NotConfigured(r.clone());
        }
        if let Some(r) = &self.invalid {
            return Step::Fail(r.clone());
        }
        self.role = None;
        self.retokened = false;
        self.v1 = false;
        if self.token.as_ref().is_some_and(|(_, until)| now < *until) {
            self.get_step()
        } else {
            self.token = None;
            self.token_step()
        }
    }

    fn answer(&mut self, result: Result<HttpResponse, String>, now: u64) -> Step {
        match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Idle => Step::Fail("unexpected callout answer".into()),
            Stage::Token => self.on_token(result, now),
            Stage::Role => self.on_role(result),
            Stage::Credentials => self.on_credentials(result),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::super::{Poll, Provider, Update, CALLOUT_GRACE_MS};
    use super::*;
    use crate::aws::secrets_manager::parse_endpoint_url;

    const IMDS_TOKEN: &str = "AQAEAImdsSessionToken==";

    fn make(vars: &[(&str, &str)]) -> ImdsProvider {
        let env = env_of(vars);
        provider(&CredentialsConfig::default(), &env)
    }

    fn token_resp(ttl: Option<&str>) -> HttpResponse {
        let mut r = resp(200, IMDS_TOKEN);
        if let Some(ttl) = ttl {
            r.headers.push((TOKEN_TTL_HEADER.into(), ttl.into()));
        }
        r
    }

    /// Answer the token PUT, the role GET and the credentials GET.
    fn full_v2_fetch(p: &mut ImdsProvider, t: u64, expires: u64) {
        let (id, upstream, req, timeout) = dispatched(p.poll(t));
        assert_eq!(upstream, "169.254.169.254");
        assert_eq!(timeout, 1000);
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("PUT", TOKEN_PATH)
        );
        assert_eq!(req.authority, "169.254.169.254");
        assert_eq!(header(&req, TOKEN_TTL_HEADER), Some("21600"));
        assert_eq!(
            p.on_response(id, Ok(token_resp(Some("21600"))), t),
            Update::Progress
        );
        role_and_creds(p, t, Some(IMDS_TOKEN), expires);
    }

    fn role_and_creds(p: &mut ImdsProvider, t: u64, token: Option<&str>, expires: u64) {
        let (id, _, req, _) = dispatched(p.poll(t));
        assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", ROLE_PATH));
        assert_eq!(header(&req, TOKEN_HEADER), token);
        assert_eq!(
            p.on_response(id, Ok(resp(200, "vault-role\n")), t),
            Update::Progress
        );
        let (id, _, req, _) = dispatched(p.poll(t));
        assert_eq!(req.path, format!("{ROLE_PATH}vault-role"));
        assert_eq!(header(&req, TOKEN_HEADER), token);
        assert_eq!(
            p.on_response(id, Ok(resp(200, &imds_json(expires))), t),
            Update::Refreshed {
                expires_at: Some(expires)
            }
        );
    }

    #[test]
    fn v2_token_role_credentials_then_token_reused() {
        let mut p = make(&[]);
        assert_eq!(p.name(), "imds");
        full_v2_fetch(&mut p, T0, T0 + 6 * HOUR);
        let c = ready(p.poll(T0));
        assert_eq!(c.credentials.access_key_id, AKID);
        assert_eq!(c.credentials.session_token.as_deref(), Some(TOKEN));
        assert_eq!(c.expires_at, Some(T0 + 6 * HOUR));
        assert!(!format!("{p:?}").contains(IMDS_TOKEN));
        // The refresh reuses the session token (no PUT) while it is valid.
        let t = T0 + 6 * HOUR - 5 * 60_000;
        role_and_creds(&mut p, t, Some(IMDS_TOKEN), T0 + 12 * HOUR);
        // Much later the token has expired: a new PUT first.
        let t = T0 + 12 * HOUR - 5 * 60_000;
        full_v2_fetch(&mut p, t, T0 + 18 * HOUR);
    }

    #[test]
    fn token_refused_falls_back_to_v1() {
        for status in [403, 404, 405, 500] {
            let mut p = make(&[]);
            let (id, ..) = dispatched(p.poll(T0));
            assert_eq!(
                p.on_response(id, Ok(resp(status, "")), T0),
                Update::Progress
            );
            role_and_creds(&mut p, T0, None, T0 + HOUR);
            assert!(matches!(p.poll(T0), Poll::Ready(_)));
            // The next fetch tries v2 again.
            let (_, _, req, _) = dispatched(p.poll(T0 + HOUR - 5 * 60_000));
            assert_eq!(req.method, "PUT");
        }
    }

    #[test]
    fn token_callout_failure_or_silence_falls_back_to_v1() {
        let mut p = make(&[]);
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Err("timeout".into()), T0);
        role_and_creds(&mut p, T0, None, T0 + HOUR);

        // Never answered at all (hop limit): given up after timeout + grace.
        let mut p = make(&[]);
        let (_id, ..) = dispatched(p.poll(T0));
        assert_eq!(p.poll(T0 + 1000), Poll::Pending);
        let t = T0 + 1000 + CALLOUT_GRACE_MS;
        role_and_creds(&mut p, t, None, T0 + HOUR);
    }

    #[test]
    fn token_400_is_an_error() {
        let mut p = make(&[]);
        let (id, ..) = dispatched(p.poll(T0));
        match p.on_response(id, Ok(resp(400, "")), T0) {
            Update::Failed { reason, .. } => {
                assert_eq!(
                    reason,
                    "imds: IMDS refused the session token request (HTTP 400)"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_disabled() {
        let mut p = make(&[("AWS_EC2_METADATA_V1_DISABLED", "true")]);
        let (id, ..) = dispatched(p.poll(T0));
        match p.on_response(id, Ok(resp(403, "")), T0) {
            Update::Failed { reason, .. } => {
                assert!(
                    reason.contains("(HTTP 403) and AWS_EC2_METADATA_V1_DISABLED"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unauthorized_get_gets_a_new_token_once() {
        let mut p = make(&[]);
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(token_resp(None)), T0);
        let (id, ..) = dispatched(p.poll(T0)); // role
        p.on_response(id, Ok(resp(200, "vault-role")), T0);
        let (id, ..) = dispatched(p.poll(T0)); // creds
        assert_eq!(p.on_response(id, Ok(resp(401, "")), T0), Update::Progress);
        let (id, _, req, _) = dispatched(p.poll(T0));
        assert_eq!(req.method, "PUT");
        let mut fresh = token_resp(None);
        fresh.body = b"NewSessionToken".to_vec();
        p.on_response(id, Ok(fresh), T0);
        // Straight back to the credentials (the role is known).
        let (id, _, req, _) = dispatched(p.poll(T0));
        assert_eq!(req.path, format!("{ROLE_PATH}vault-role"));
        assert_eq!(header(&req, TOKEN_HEADER), Some("NewSessionToken"));
        // A second 401 in the same fetch fails.
        match p.on_response(id, Ok(resp(401, "")), T0) {
            Update::Failed { reason, .. } => {
                assert_eq!(
                    reason,
                    "imds: IMDS answered 401 even with a new session token"
                )
            }
            other => panic!("{other:?}"),
        }
        // 401 on the role GET also re-tokens.
        let t = T0 + 1000;
        let (id, _, req, _) = dispatched(p.poll(t));
        assert_eq!(req.method, "PUT");
        p.on_response(id, Ok(token_resp(None)), t);
        let (id, _, req, _) = dispatched(p.poll(t));
        assert_eq!(req.path, ROLE_PATH);
        assert_eq!(p.on_response(id, Ok(resp(401, "")), t), Update::Progress);
        assert_eq!(dispatched(p.poll(t)).2.method, "PUT");
    }

    #[test]
    fn v1_unauthorized_means_v2_required() {
        let mut p = make(&[]);
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(403, "")), T0);
        let (id, ..) = dispatched(p.poll(T0));
        match p.on_response(id, Ok(resp(401, "")), T0) {
            Update::Failed { reason, .. } => {
                assert!(reason.contains("requires IMDSv2"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_answers() {
        let mut p = make(&[]);
        let mut t = T0;
        let mut failed = |p: &mut ImdsProvider, steps: &[HttpResponse]| -> String {
            let mut last = Update::Ignored;
            for r in steps {
                let (id, ..) = dispatched(p.poll(t));
                last = p.on_response(id, Ok(r.clone()), t);
            }
            match last {
                Update::Failed { reason, retry_at } => {
                    t = retry_at;
                    reason
                }
                other => panic!("{other:?}"),
            }
        };
        let tok = token_resp(None);
        let role = resp(200, "vault-role");
        let e = failed(&mut p, &[tok.clone(), resp(404, "")]);
        assert_eq!(
            e,
            "imds: no IAM role is attached to this instance (IMDS answered 404 for the role name)"
        );
        // The token is cached from here on.
        let e = failed(&mut p, &[resp(200, "../../etc")]);
        assert_eq!(e, "imds: IMDS answered an invalid IAM role name");
        let e = failed(&mut p, &[role.clone(), resp(404, "")]);
        assert_eq!(
            e,
            "imds: IMDS has no credentials for role 'vault-role' (HTTP 404)"
        );
        let bad_code = imds_json(T0 + HOUR).replace("Success", "AssumeRoleUnauthorizedAccess");
        let e = failed(&mut p, &[role.clone(), resp(200, &bad_code)]);
        assert_eq!(
            e,
            "imds: role 'vault-role': credentials response has Code 'AssumeRoleUnauthorizedAccess' (expected Success)"
        );
        assert_clean(&e);
        let e = failed(&mut p, &[role.clone(), resp(200, "{not json")]);
        assert_eq!(
            e,
            "imds: role 'vault-role': credentials response is not a JSON object"
        );
        let e = failed(&mut p, &[role.clone(), resp(500, "")]);
        assert_eq!(
            e,
            "imds: IMDS answered HTTP 500 for the credentials of role 'vault-role'"
        );
        let e = failed(&mut p, &[resp(503, "")]);
        assert_eq!(e, "imds: IMDS answered HTTP 503 for the role name");
    }

    #[test]
    fn expired_credentials_are_refetched() {
        let mut p = make(&[]);
        full_v2_fetch(&mut p, T0, T0 + HOUR);
        // Nobody polled during the refresh window: now they are expired.
        let t = T0 + 2 * HOUR;
        let (_, _, req, _) = dispatched(p.poll(t));
        assert_eq!(req.path, ROLE_PATH, "the 6 h session token is reused");
        // The expired credentials are not served meanwhile.
        assert_eq!(p.poll(t), Poll::Pending);
    }

    #[test]
    fn disabled_and_endpoints() {
        let mut p = make(&[("AWS_EC2_METADATA_DISABLED", "TRUE")]);
        assert_eq!(
            p.poll(T0),
            Poll::NotConfigured("imds: AWS_EC2_METADATA_DISABLED is true".into())
        );
        let mut p = make(&[("AWS_EC2_METADATA_DISABLED", "false")]);
        assert!(matches!(p.poll(T0), Poll::Dispatch { .. }));

        let mut p = make(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "http://127.0.0.1:1338/",
        )]);
        let (_, upstream, req, _) = dispatched(p.poll(T0));
        assert_eq!(upstream, "127.0.0.1:1338");
        assert_eq!(req.authority, "127.0.0.1:1338");
        let mut p = make(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")]);
        assert_eq!(dispatched(p.poll(T0)).2.authority, "[fd00:ec2::254]");
        let mut p = make(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "nope")]);
        assert!(
            matches!(p.poll(T0), Poll::Failed(e) if e.starts_with("imds: AWS_EC2_METADATA_SERVICE_ENDPOINT: "))
        );

        let config = CredentialsConfig {
            imds_endpoint_url: Some(parse_endpoint_url("http://169.254.169.254:80").unwrap()),
            imds_upstream: Some("imds_cluster".into()),
            imds_timeout_ms: 250,
            ..CredentialsConfig::default()
        };
        let env = env_of(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://ignored")]);
        let mut p = provider(&config, &env);
        let (_, upstream, req, timeout) = dispatched(p.poll(T0));
        assert_eq!(
            (upstream.as_str(), req.authority.as_str(), timeout),
            ("imds_cluster", "169.254.169.254:80", 250)
        );
    }
}
