//! STS `AssumeRole` on top of base credentials (a vault's `assume_role_arn`).
//!
//! [`AssumeRole`] does not own its base provider: it is handed one on every
//! call, so that several roles (different vaults may assume different roles)
//! share one base. [`Assumed`] pairs a role with an owned base when a plain
//! [`Provider`] is wanted; [`CredentialSet`](super::CredentialSet) shares one
//! base among many roles.
//!
//! Ids: the base's callouts are passed on with id `2 * base_id`, the role's
//! own STS calls get odd ids; `on_response` routes accordingly.
//!
//! Endpoint: the vault's `sts_endpoint_url` (signed for the vault's region),
//! else `https://sts.<region>.amazonaws.com` signed for the region, or with
//! `AWS_STS_REGIONAL_ENDPOINTS=legacy` `https://sts.amazonaws.com` signed for
//! `us-east-1`. Upstream: [`AssumeRoleSettings::upstream`], default the
//! endpoint's `host[:port]`.
//!
//! When STS says the base credentials are bad (`ExpiredToken`,
//! `InvalidClientTokenId`, `SignatureDoesNotMatch`...), the base is
//! invalidated (those credentials only) so the retry uses fresh ones.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::{
    scrub, valid_session_name, valid_token, Env, Outgoing, Poll, Provider, RefreshState, Update,
};
use crate::aws::secrets_manager::Endpoint;
use crate::aws::sigv4::{self, Credentials};
use crate::aws::sts::{self, EndpointMode, StsEndpoint};
use crate::aws::HttpResponse;

/// Kong's default RoleSessionName.
pub const DEFAULT_SESSION_NAME: &str = "KongVault";

/// Which role to assume, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssumeRoleSettings {
    pub role_arn: String,
    /// RoleSessionName, 2-64 characters of `[\w+=,.@-]`.
    pub session_name: String,
    /// 900-43200; `None` = STS's default (3600).
    pub duration_seconds: Option<u32>,
    /// The vault's region: the regional endpoint and the signing region.
    pub region: String,
    /// A vault's `sts_endpoint_url`.
    pub sts_endpoint: Option<Endpoint>,
    /// Callout upstream; `None` = the endpoint's `host[:port]`.
    pub upstream: Option<String>,
    pub timeout_ms: u32,
}

impl AssumeRoleSettings {
    /// Defaults: session `KongVault`, STS's duration, regional endpoint,
    /// 5 s timeout.
    pub fn new(role_arn: &str, region: &str) -> AssumeRoleSettings {
        AssumeRoleSettings {
            role_arn: role_arn.to_string(),
            session_name: DEFAULT_SESSION_NAME.to_string(),
            duration_seconds: None,
            region: region.to_string(),
            sts_endpoint: None,
            upstream: None,
            timeout_ms: super::config::DEFAULT_TIMEOUT_MS,
        }
    }
}

pub struct AssumeRole {
    settings: AssumeRoleSettings,
    sts: StsEndpoint,
    upstream: String,
    invalid: Option<String>,
    state: RefreshState,
    /// The base credentials the STS call in flight was signed with.
    signed_with: Option<Credentials>,
}

impl fmt::Debug for AssumeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssumeRole")
            .field("role_arn", &self.settings.role_arn)
            .field("session_name", &self.settings.session_name)
            .field("sts", &self.sts.endpoint.authority)
            .field("signing_region", &self.sts.signing_region)
            .field("upstream", &self.upstream)
            .field("invalid", &self.invalid)
            .field("state", &self.state)
            .finish()
    }
}

fn base_id(id: u64) -> u64 {
    id.wrapping_mul(2)
}

fn own_id(id: u64) -> u64 {
    id.wrapping_mul(2) | 1
}

impl AssumeRole {
    /// Reads `AWS_STS_REGIONAL_ENDPOINTS` from `env`.
    pub fn new(settings: AssumeRoleSettings, env: Env) -> AssumeRole {
        AssumeRole::with_mode(settings, EndpointMode::from_env(env))
    }

    pub fn with_mode(settings: AssumeRoleSettings, mode: EndpointMode) -> AssumeRole {
        let sts = sts::endpoint(
            Some(settings.region.as_str()),
            mode,
            settings.sts_endpoint.as_ref(),
        );
        let invalid = if !valid_token(&settings.role_arn) || settings.role_arn.len() > 2048 {
            Some("role ARN must be non-empty printable ASCII without spaces".to_string())
        } else if !valid_session_name(&settings.session_name) {
            Some("role session name must be 2-64 characters of letters, digits and _+=,.@-".into())
        } else if settings
            .duration_seconds
            .is_some_and(|d| !(900..=43_200).contains(&d))
        {
            Some("duration must be 900 to 43200 seconds".into())
        } else {
            None
        };
        AssumeRole {
            upstream: settings
                .upstream
                .clone()
                .unwrap_or_else(|| sts.endpoint.authority.clone()),
            sts,
            invalid,
            settings,
            state: RefreshState::default(),
            signed_with: None,
        }
    }

    pub fn settings(&self) -> &AssumeRoleSettings {
        &self.settings
    }

    /// Where the STS calls go and which region they are signed for.
    pub fn sts_endpoint(&self) -> &StsEndpoint {
        &self.sts
    }

    fn prefix(&self, msg: impl fmt::Display) -> String {
        format!("assume_role {}: {msg}", self.settings.role_arn)
    }

    /// Like [`Provider::poll`], with the base credentials from `base`.
    pub fn poll(&mut self, now: u64, base: &mut dyn Provider) -> Poll {
        if let Some(r) = &self.invalid {
            return Poll::Failed(self.prefix(r));
        }
        if let Some((id, timeout_ms)) = self.state.lost(now) {
            let why = format!("no answer within {timeout_ms} ms");
            self.on_response(own_id(id), Err(why), now, base);
        }
        if let Some(c) = self.state.fresh(now) {
            return Poll::Ready(c.clone());
        }
        if self.state.in_flight() || self.state.backing_off(now) {
            return self.state.fallback(now);
        }
        self.poll_base(now, base)
    }

    /// Time to call STS: with the base's credentials once it has them.
    #[inline(never)] // see Config::fields
    fn poll_base(&mut self, now: u64, base: &mut dyn Provider) -> Poll {
        match base.poll(now) {
            Poll::Ready(b) => self.start(&b.credentials, now),
            dispatch @ Poll::Dispatch { .. } => dispatch.map_id(base_id),
            Poll::Pending => self.state.fallback(now),
            Poll::NotConfigured(r) => match self.state.usable(now) {
                Some(c) => Poll::Ready(c.clone()),
                None => Poll::NotConfigured(self.prefix(format!("no base credentials: {r}"))),
            },
            Poll::Failed(r) => match self.state.usable(now) {
                Some(c) => Poll::Ready(c.clone()),
                None => Poll::Failed(self.prefix(format!("no base credentials: {r}"))),
            },
        }
    }

    #[inline(never)] // see Config::fields
    fn start(&mut self, base: &Credentials, now: u64) -> Poll {
        let mut request = sts::assume_role_request(
            &self.sts.endpoint,
            &self.settings.role_arn,
            &self.settings.session_name,
            self.settings.duration_seconds,
        );
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(now);
        if let Err(e) = sigv4::sign(&mut request, base, &self.sts.signing_region, "sts", time) {
            let reason = self.prefix(e);
            self.state.fail(reason, now);
            return self.state.fallback(now);
        }
        self.signed_with = Some(base.clone());
        self.state
            .dispatch(
                Outgoing {
                    upstream: self.upstream.clone(),
                    request,
                    timeout_ms: self.settings.timeout_ms,
                },
                now,
            )
            .map_id(own_id)
    }

    /// Like [`Provider::on_response`]; answers for the base go to `base`.
    pub fn on_response(
        &mut self,
        id: u64,
        result: Result<HttpResponse, String>,
        now: u64,
        base: &mut dyn Provider,
    ) -> Update {
        if id & 1 == 0 {
            return base.on_response(id >> 1, result, now);
        }
        if !self.state.take(id >> 1) {
            return Update::Ignored;
        }
        let signed_with = self.signed_with.take();
        let secrets: Vec<&str> = signed_with
            .iter()
            .flat_map(|c| {
                std::iter::once(c.secret_access_key.as_str()).chain(c.session_token.as_deref())
            })
            .collect();
        let outcome = match result {
            Err(e) => Err(format!(
                "AssumeRole callout failed: {}",
                scrub(&e, &secrets, 200)
            )),
            Ok(resp) => sts::parse_credentials_response(&resp).map_err(|e| {
                if e.is_credentials_problem() {
                    base.invalidate(signed_with.as_ref());
                }
                scrub(&e.to_string(), &secrets, 400)
            }),
        };
        match outcome {
            Ok(creds) => self.state.succeed(creds, now),
            Err(reason) => {
                let reason = self.prefix(reason);
                self.state.fail(reason, now)
            }
        }
    }

    /// Drop the assumed credentials if they are `rejected` (or always with
    /// `None`); the base is left alone.
    pub fn invalidate(&mut self, rejected: Option<&Credentials>) {
        self.state.invalidate(rejected);
    }
}

/// An [`AssumeRole`] with its own base provider, as a [`Provider`].
pub struct Assumed<P> {
    pub base: P,
    pub role: AssumeRole,
}

impl<P: fmt::Debug> fmt::Debug for Assumed<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assumed")
            .field("base", &self.base)
            .field("role", &self.role)
            .finish()
    }
}

impl<P: Provider> Provider for Assumed<P> {
    fn name(&self) -> &'static str {
        "assume_role"
    }

    fn poll(&mut self, now: u64) -> Poll {
        self.role.poll(now, &mut self.base)
    }

    fn on_response(&mut self, id: u64, result: Result<HttpResponse, String>, now: u64) -> Update {
        self.role.on_response(id, result, now, &mut self.base)
    }

    fn invalidate(&mut self, rejected: Option<&Credentials>) {
        self.role.invalidate(rejected);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::super::{env, imds, CredentialsConfig};
    use super::*;
    use crate::aws::secrets_manager::parse_endpoint_url;

    const ROLE: &str = "arn:aws:iam::123456789012:role/vault-reader";
    const BASE_KEY: &str = "AKIABASEKEYEXAMPLE";
    const BASE_SECRET: &str = "BaseSecretKeyEXAMPLEbaseSECRETkey0000000";

    fn base_env() -> impl Fn(&str) -> Option<String> {
        env_of(&[
            ("AWS_ACCESS_KEY_ID", BASE_KEY),
            ("AWS_SECRET_ACCESS_KEY", BASE_SECRET),
        ])
    }

    fn assumed(settings: AssumeRoleSettings, mode: EndpointMode) -> Assumed<env::EnvProvider> {
        Assumed {
            base: env::provider(&base_env()),
            role: AssumeRole::with_mode(settings, mode),
        }
    }

    fn auth(req: &crate::aws::HttpRequest) -> String {
        header(req, "authorization").unwrap().to_string()
    }

    fn body(req: &crate::aws::HttpRequest) -> String {
        String::from_utf8(req.body.clone()).unwrap()
    }

    #[test]
    fn regional_request_signed_with_base_credentials() {
        let mut settings = AssumeRoleSettings::new(ROLE, "eu-west-1");
        settings.duration_seconds = Some(900);
        let mut p = assumed(settings, EndpointMode::Regional);
        assert_eq!(p.name(), "assume_role");
        let (id, upstream, req, timeout) = dispatched(p.poll(T0));
        assert_eq!(id % 2, 1);
        assert_eq!(upstream, "sts.eu-west-1.amazonaws.com");
        assert_eq!(timeout, 5000);
        assert_eq!(req.method, "POST");
        assert_eq!(req.authority, "sts.eu-west-1.amazonaws.com");
        assert_eq!(
            body(&req),
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fvault-reader&RoleSessionName=KongVault&DurationSeconds=900"
        );
        let a = auth(&req);
        assert!(
            a.starts_with(&format!(
                "AWS4-HMAC-SHA256 Credential={BASE_KEY}/20240101/eu-west-1/sts/aws4_request"
            )),
            "{a}"
        );
        assert_eq!(header(&req, "x-amz-date"), Some("20240101T000000Z"));
        assert_eq!(header(&req, "x-amz-security-token"), None);
        assert_eq!(p.poll(T0), Poll::Pending);
        let u = p.on_response(id, Ok(resp(200, &sts_xml("AssumeRole", T0 + HOUR))), T0 + 1);
        assert_eq!(
            u,
            Update::Refreshed {
                expires_at: Some(T0 + HOUR)
            }
        );
        let c = ready(p.poll(T0 + 2));
        assert_eq!(c.credentials.access_key_id, AKID);
        assert_eq!(c.credentials.session_token.as_deref(), Some(TOKEN));
        // Refresh ahead of expiry, old credentials served meanwhile.
        let t = T0 + HOUR - 5 * 60_000;
        let (id2, ..) = dispatched(p.poll(t));
        assert_eq!(ready(p.poll(t + 1)), c);
        assert_ne!(id, id2);
        let dbg = format!("{p:?}", p = p.role);
        assert!(!dbg.contains(BASE_SECRET) && !dbg.contains(SECRET), "{dbg}");
    }

    #[test]
    fn legacy_endpoint_signed_for_us_east_1() {
        let settings = AssumeRoleSettings::new(ROLE, "ap-southeast-2");
        let env = env_of(&[("AWS_STS_REGIONAL_ENDPOINTS", "legacy")]);
        let mut p = Assumed {
            base: env::provider(&base_env()),
            role: AssumeRole::new(settings, &env),
        };
        let (_, upstream, req, _) = dispatched(p.poll(T0));
        assert_eq!(upstream, "sts.amazonaws.com");
        assert_eq!(req.authority, "sts.amazonaws.com");
        assert!(auth(&req).contains("/20240101/us-east-1/sts/aws4_request"));
    }

    #[test]
    fn endpoint_override_and_upstream() {
        let mut settings = AssumeRoleSettings::new(ROLE, "eu-central-1");
        settings.sts_endpoint = Some(parse_endpoint_url("http://127.0.0.1:5000").unwrap());
        settings.session_name = "vault-a".into();
        settings.timeout_ms = 1234;
        let mut p = assumed(settings.clone(), EndpointMode::Legacy);
        let (_, upstream, req, timeout) = dispatched(p.poll(T0));
        assert_eq!(upstream, "127.0.0.1:5000");
        assert_eq!(timeout, 1234);
        assert_eq!(req.scheme, "http");
        assert_eq!(req.authority, "127.0.0.1:5000");
        assert!(body(&req).contains("RoleSessionName=vault-a"));
        assert!(auth(&req).contains("/eu-central-1/sts/aws4_request"));
        settings.upstream = Some("sts_cluster".into());
        let mut p = assumed(settings, EndpointMode::Regional);
        assert_eq!(dispatched(p.poll(T0)).1, "sts_cluster");
    }

    #[test]
    fn session_token_of_base_is_signed() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", BASE_KEY),
            ("AWS_SECRET_ACCESS_KEY", BASE_SECRET),
            ("AWS_SESSION_TOKEN", "BaseSessionTokenValue"),
        ]);
        let mut p = Assumed {
            base: env::provider(&env),
            role: AssumeRole::with_mode(
                AssumeRoleSettings::new(ROLE, "us-west-2"),
                EndpointMode::Regional,
            ),
        };
        let (_, _, req, _) = dispatched(p.poll(T0));
        assert_eq!(
            header(&req, "x-amz-security-token"),
            Some("BaseSessionTokenValue")
        );
        assert!(auth(&req).contains("x-amz-security-token"));
    }

    #[test]
    fn base_callouts_pass_through_with_even_ids() {
        let env = env_of(&[]);
        let mut p = Assumed {
            base: imds::provider(&CredentialsConfig::default(), &env),
            role: AssumeRole::with_mode(
                AssumeRoleSettings::new(ROLE, "us-east-1"),
                EndpointMode::Regional,
            ),
        };
        let (id, upstream, req, _) = dispatched(p.poll(T0));
        assert_eq!(id % 2, 0);
        assert_eq!(
            (upstream.as_str(), req.method.as_str()),
            ("169.254.169.254", "PUT")
        );
        assert_eq!(p.poll(T0), Poll::Pending);
        let mut tok = resp(200, "imds-token");
        tok.headers.push((
            "x-aws-ec2-metadata-token-ttl-seconds".into(),
            "21600".into(),
        ));
        assert_eq!(p.on_response(id, Ok(tok), T0), Update::Progress);
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(200, "node-role")), T0);
        let (id, ..) = dispatched(p.poll(T0));
        let base_creds = imds_json(T0 + 6 * HOUR).replace(AKID, "ASIABASEFROMIMDS");
        assert!(matches!(
            p.on_response(id, Ok(resp(200, &base_creds)), T0),
            Update::Refreshed { .. }
        ));
        // Now the role's own STS call, signed with the IMDS credentials.
        let (id, upstream, req, _) = dispatched(p.poll(T0));
        assert_eq!(id % 2, 1);
        assert_eq!(upstream, "sts.us-east-1.amazonaws.com");
        assert!(auth(&req).contains("Credential=ASIABASEFROMIMDS/"));
        assert_eq!(header(&req, "x-amz-security-token"), Some(TOKEN));
        p.on_response(id, Ok(resp(200, &sts_xml("AssumeRole", T0 + HOUR))), T0);
        assert_eq!(ready(p.poll(T0)).expires_at, Some(T0 + HOUR));
    }

    #[test]
    fn sts_errors_back_off_and_expired_base_is_invalidated() {
        let mut p = assumed(
            AssumeRoleSettings::new(ROLE, "us-east-1"),
            EndpointMode::Regional,
        );
        let (id, ..) = dispatched(p.poll(T0));
        let denied = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized</Message></Error></ErrorResponse>";
        match p.on_response(id, Ok(resp(403, denied)), T0) {
            Update::Failed { reason, retry_at } => {
                assert_eq!(
                    reason,
                    format!(
                        "assume_role {ROLE}: STS error AccessDenied (HTTP 403): not authorized"
                    )
                );
                assert_eq!(retry_at, T0 + 1000);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.poll(T0 + 999), Poll::Failed(e) if e.contains("AccessDenied")));
        let (id, ..) = dispatched(p.poll(T0 + 1000));
        let echoed = format!("<ErrorResponse><Error><Code>ExpiredToken</Code><Message>expired {BASE_SECRET}</Message></Error></ErrorResponse>");
        match p.on_response(id, Ok(resp(400, &echoed)), T0 + 1000) {
            Update::Failed { reason, retry_at } => {
                assert!(!reason.contains(BASE_SECRET), "{reason}");
                assert!(reason.contains("** redacted **"), "{reason}");
                assert_eq!(retry_at, T0 + 3000);
            }
            other => panic!("{other:?}"),
        }
        // The base (env) was invalidated: it re-reads (same values) on the next poll.
        assert!(p.base.poll(T0 + 1000) != Poll::Pending);
        let (id, ..) = dispatched(p.poll(T0 + 3000));
        match p.on_response(id, Err("timeout".into()), T0 + 3000) {
            Update::Failed { reason, .. } => {
                assert_eq!(
                    reason,
                    format!("assume_role {ROLE}: AssumeRole callout failed: timeout")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base_failures_are_reported_and_valid_role_credentials_kept() {
        // No base credentials at all.
        let env = env_of(&[]);
        let mut p = Assumed {
            base: env::provider(&env),
            role: AssumeRole::with_mode(
                AssumeRoleSettings::new(ROLE, "us-east-1"),
                EndpointMode::Regional,
            ),
        };
        match p.poll(T0) {
            Poll::NotConfigured(r) => assert_eq!(
                r,
                format!("assume_role {ROLE}: no base credentials: env: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
            ),
            other => panic!("{other:?}"),
        }
        // Base fails after the role got credentials: they are still served.
        let bad = env_of(&[
            ("AWS_ACCESS_KEY_ID", BASE_KEY),
            ("AWS_SECRET_ACCESS_KEY", "has a space"),
        ]);
        let mut p = Assumed {
            base: env::provider(&bad),
            role: AssumeRole::with_mode(
                AssumeRoleSettings::new(ROLE, "us-east-1"),
                EndpointMode::Regional,
            ),
        };
        p.role
            .state
            .succeed(TimedCredentialsExt::sample(T0 + HOUR), T0);
        let t = T0 + HOUR - 5 * 60_000;
        assert!(matches!(p.poll(t), Poll::Ready(_)));
        assert!(matches!(p.poll(t + 5000), Poll::Ready(_)));
        // Once expired, the base's error shows.
        match p.poll(T0 + HOUR) {
            Poll::Failed(r) => assert_eq!(
                r,
                format!("assume_role {ROLE}: no base credentials: env: the AWS_* variables hold an invalid secret access key")
            ),
            other => panic!("{other:?}"),
        }
    }

    struct TimedCredentialsExt;
    impl TimedCredentialsExt {
        fn sample(expires: u64) -> super::super::TimedCredentials {
            super::super::TimedCredentials {
                credentials: Credentials {
                    access_key_id: AKID.into(),
                    secret_access_key: SECRET.into(),
                    session_token: Some(TOKEN.into()),
                },
                expires_at: Some(expires),
            }
        }
    }

    #[test]
    fn invalid_settings() {
        for (f, want) in [
            (
                Box::new(|s: &mut AssumeRoleSettings| s.session_name = "x".into())
                    as Box<dyn Fn(&mut AssumeRoleSettings)>,
                "role session name",
            ),
            (
                Box::new(|s: &mut AssumeRoleSettings| s.duration_seconds = Some(60)),
                "duration",
            ),
            (
                Box::new(|s: &mut AssumeRoleSettings| s.role_arn = String::new()),
                "role ARN",
            ),
        ] {
            let mut settings = AssumeRoleSettings::new(ROLE, "us-east-1");
            f(&mut settings);
            let mut p = assumed(settings, EndpointMode::Regional);
            assert!(matches!(p.poll(T0), Poll::Failed(e) if e.contains(want)));
        }
        // An unusable region is a signing failure, reported.
        let mut p = assumed(
            AssumeRoleSettings::new(ROLE, "bad region"),
            EndpointMode::Regional,
        );
        assert!(matches!(p.poll(T0), Poll::Failed(e) if e.contains("region")));
    }

    #[test]
    fn invalidate_refetches() {
        let mut p = assumed(
            AssumeRoleSettings::new(ROLE, "us-east-1"),
            EndpointMode::Regional,
        );
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(200, &sts_xml("AssumeRole", T0 + HOUR))), T0);
        let c = ready(p.poll(T0));
        p.invalidate(Some(&c.credentials));
        assert!(matches!(p.poll(T0 + 1), Poll::Dispatch { .. }));
        assert_eq!(p.poll(T0 + 1), Poll::Pending);
    }
}
