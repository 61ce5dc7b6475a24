//! The default chain: env, container, web identity, IMDS.
//!
//! Semantics (see the module docs of [`super`] for the why): a source that
//! answers [`Poll::NotConfigured`] is skipped; the first one that answers
//! anything else is chosen for good, failures included. If no source is
//! configured the chain is `NotConfigured`, listing why for each. When the
//! last resort (IMDS) fails, its error also says why the others were
//! skipped, since that is usually the actual problem.

use super::config::{CredentialsConfig, Source};
use super::{container, env, imds, web_identity, Env, Poll, Provider, Update};
use crate::aws::sigv4::Credentials;
use crate::aws::HttpResponse;

/// The order sources are tried in (Kong's; aws-config tries web identity
/// before container).
pub const ORDER: [Source; 4] = [
    Source::Env,
    Source::Container,
    Source::WebIdentity,
    Source::Imds,
];

pub struct Chain {
    providers: Vec<Box<dyn Provider>>,
    selected: Option<usize>,
    skipped: Vec<String>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field(
                "providers",
                &self.providers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("selected", &self.selected())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl Chain {
    pub fn new(config: &CredentialsConfig, env: Env) -> Chain {
        let providers = ORDER
            .iter()
            .map(|source| -> Box<dyn Provider> {
                match source {
                    Source::Env => Box::new(env::provider(env)),
                    Source::Container => Box::new(container::provider(config, env)),
                    Source::WebIdentity => Box::new(web_identity::provider(config, env)),
                    Source::Imds | Source::Chain => Box::new(imds::provider(config, env)),
                }
            })
            .collect();
        Chain::from_providers(providers)
    }

    /// A chain over any providers, tried in the given order.
    pub fn from_providers(providers: Vec<Box<dyn Provider>>) -> Chain {
        Chain {
            providers,
            selected: None,
            skipped: Vec::new(),
        }
    }

    /// The source in use, once one is configured.
    pub fn selected(&self) -> Option<&'static str> {
        self.selected
            .and_then(|i| self.providers.get(i))
            .map(|p| p.name())
    }

    fn context(&self, i: usize, poll: Poll) -> Poll {
        match poll {
            Poll::Failed(reason) if i + 1 == self.providers.len() && !self.skipped.is_empty() => {
                Poll::Failed(format!(
                    "{reason} (other sources not configured: {})",
                    self.skipped.join("; ")
                ))
            }
            other => other,
        }
    }
}

impl Provider for Chain {
    fn name(&self) -> &'static str {
        self.selected().unwrap_or("chain")
    }

    fn poll(&mut self, now: u64) -> Poll {
        if let Some(i) = self.selected {
            let Some(p) = self.providers.get_mut(i) else {
                return Poll::Failed("internal: no provider".into());
            };
            let poll = p.poll(now);
            return self.context(i, poll);
        }
        self.skipped.clear();
        for i in 0..self.providers.len() {
            let Some(p) = self.providers.get_mut(i) else {
                break;
            };
            match p.poll(now) {
                Poll::NotConfigured(reason) => self.skipped.push(reason),
                other => {
                    self.selected = Some(i);
                    return self.context(i, other);
                }
            }
        }
        Poll::NotConfigured(format!(
            "no credentials source is configured: {}",
            self.skipped.join("; ")
        ))
    }

    fn on_response(&mut self, id: u64, result: Result<HttpResponse, String>, now: u64) -> Update {
        match self.selected.and_then(|i| self.providers.get_mut(i)) {
            Some(p) => p.on_response(id, result, now),
            None => Update::Ignored,
        }
    }

    fn invalidate(&mut self, rejected: Option<&Credentials>) {
        if let Some(p) = self.selected.and_then(|i| self.providers.get_mut(i)) {
            p.invalidate(rejected);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn chain(vars: &[(&str, &str)]) -> Chain {
        let env = env_of(vars);
        Chain::new(&CredentialsConfig::default(), &env)
    }

    #[test]
    fn env_first() {
        let mut c = chain(&[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN", "tokentoken"),
        ]);
        assert_eq!(c.name(), "chain");
        assert_eq!(ready(c.poll(T0)).credentials.access_key_id, AKID);
        assert_eq!(c.selected(), Some("env"));
        assert_eq!(c.name(), "env");
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn partial_env_falls_through_to_container() {
        let mut c = chain(&[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN", "tokentoken"),
        ]);
        let (id, upstream, ..) = dispatched(c.poll(T0));
        assert_eq!(upstream, "169.254.170.2");
        assert_eq!(c.selected(), Some("container"));
        c.on_response(id, Ok(resp(200, &creds_json(T0 + HOUR))), T0);
        assert_eq!(ready(c.poll(T0)).expires_at, Some(T0 + HOUR));
    }

    #[test]
    fn container_failure_does_not_fall_through() {
        let mut c = chain(&[
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN", "tokentoken"),
        ]);
        let (id, ..) = dispatched(c.poll(T0));
        assert!(matches!(
            c.on_response(id, Err("connection refused".into()), T0),
            Update::Failed { .. }
        ));
        match c.poll(T0 + 1) {
            Poll::Failed(r) => assert_eq!(
                r,
                "container: callout to the container credentials endpoint failed: connection refused"
            ),
            other => panic!("{other:?}"),
        }
        // Retried on the same source.
        let (_, upstream, ..) = dispatched(c.poll(T0 + 1000));
        assert_eq!(upstream, "169.254.170.2");
        // A disallowed full URI is a failure too, not a reason to move on.
        let mut c = chain(&[(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://10.1.2.3/creds",
        )]);
        assert!(matches!(c.poll(T0), Poll::Failed(r) if r.contains("plain http")));
        assert_eq!(c.selected(), Some("container"));
    }

    #[test]
    fn web_identity_before_imds_and_token_file_fails_loudly() {
        let mut c = chain(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN", "tokentoken"),
        ]);
        let (_, upstream, req, _) = dispatched(c.poll(T0));
        assert_eq!(upstream, "sts.amazonaws.com");
        assert!(String::from_utf8(req.body)
            .unwrap()
            .contains("AssumeRoleWithWebIdentity"));
        assert_eq!(c.selected(), Some("web_identity"));

        let mut c = chain(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
            ),
        ]);
        assert!(matches!(c.poll(T0), Poll::Failed(r) if r.contains("cannot read files")));
        assert_eq!(c.selected(), Some("web_identity"));
    }

    #[test]
    fn imds_last_with_context() {
        let mut c = chain(&[]);
        let (id, upstream, req, _) = dispatched(c.poll(T0));
        assert_eq!(
            (upstream.as_str(), req.method.as_str()),
            ("169.254.169.254", "PUT")
        );
        assert_eq!(c.selected(), Some("imds"));
        // Not on EC2: the token PUT and the v1 GET both fail.
        c.on_response(id, Err("unknown cluster".into()), T0);
        let (id, ..) = dispatched(c.poll(T0));
        c.on_response(id, Err("unknown cluster".into()), T0);
        match c.poll(T0 + 1) {
            Poll::Failed(r) => {
                assert!(r.starts_with("imds: IMDS callout failed: unknown cluster (other sources not configured: env: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set; container: "), "{r}");
                assert!(
                    r.contains("; web_identity: AWS_WEB_IDENTITY_TOKEN, "),
                    "{r}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_configured() {
        let mut c = chain(&[("AWS_EC2_METADATA_DISABLED", "true")]);
        match c.poll(T0) {
            Poll::NotConfigured(r) => {
                assert!(
                    r.starts_with("no credentials source is configured: env: "),
                    "{r}"
                );
                assert!(
                    r.ends_with("; imds: AWS_EC2_METADATA_DISABLED is true"),
                    "{r}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.selected(), None);
        assert_eq!(c.on_response(1, Ok(resp(200, "")), T0), Update::Ignored);
        assert!(matches!(c.poll(T0 + 1), Poll::NotConfigured(_)));
    }

    #[test]
    fn invalidate_goes_to_the_selected_source() {
        let mut c = chain(&[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x")]);
        let (id, ..) = dispatched(c.poll(T0));
        c.on_response(id, Ok(resp(200, &creds_json(T0 + HOUR))), T0);
        let creds = ready(c.poll(T0)).credentials;
        c.invalidate(Some(&creds));
        assert!(matches!(c.poll(T0 + 1), Poll::Dispatch { .. }));
    }
}
