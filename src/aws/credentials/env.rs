//! Static credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! optional `AWS_SESSION_TOKEN`, read once at construction. Empty values
//! count as unset. A key id without a secret (or the reverse) is "not
//! configured", as in aws-config, so a chain moves on; the reason says which
//! variable is missing.

use std::fmt;

use super::{check_credentials, var, Env, Fetch, Refreshing, Step, TimedCredentials};
use crate::aws::sigv4::Credentials;
use crate::aws::HttpResponse;

pub struct EnvFetch {
    creds: Result<Credentials, String>,
}

impl fmt::Debug for EnvFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials' Debug redacts the secret and the token.
        f.debug_struct("EnvFetch")
            .field("creds", &self.creds)
            .finish()
    }
}

pub type EnvProvider = Refreshing<EnvFetch>;

pub fn provider(env: Env) -> EnvProvider {
    Refreshing::new(EnvFetch::new(env))
}

impl EnvFetch {
    pub fn new(env: Env) -> EnvFetch {
        let key = var(env, "AWS_ACCESS_KEY_ID");
        let secret = var(env, "AWS_SECRET_ACCESS_KEY");
        let creds = match (key, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
                access_key_id: access_key_id.trim().to_string(),
                secret_access_key: secret_access_key.trim().to_string(),
                session_token: var(env, "AWS_SESSION_TOKEN").map(|t| t.trim().to_string()),
            }),
            (None, None) => Err("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set".into()),
            (Some(_), None) => {
                Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into())
            }
            (None, Some(_)) => {
                Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into())
            }
        };
        EnvFetch { creds }
    }
}

impl Fetch for EnvFetch {
    fn name(&self) -> &'static str {
        "env"
    }

    fn begin(&mut self, _now: u64) -> Step {
        match &self.creds {
            Err(reason) => Step::NotConfigured(reason.clone()),
            Ok(c) => match check_credentials(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.as_deref(),
            ) {
                Ok(()) => Step::Done(TimedCredentials {
                    credentials: c.clone(),
                    expires_at: None,
                }),
                Err(e) => Step::Fail(e.replace("credentials have", "the AWS_* variables hold")),
            },
        }
    }

    fn answer(&mut self, _result: Result<HttpResponse, String>, _now: u64) -> Step {
        Step::Fail("unexpected callout answer".into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::super::{Poll, Provider};
    use super::*;

    #[test]
    fn present() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", TOKEN),
        ]);
        let mut p = provider(&env);
        assert_eq!(p.name(), "env");
        let c = ready(p.poll(T0));
        assert_eq!(c.credentials.access_key_id, AKID);
        assert_eq!(c.credentials.secret_access_key, SECRET);
        assert_eq!(c.credentials.session_token.as_deref(), Some(TOKEN));
        assert_eq!(c.expires_at, None);
        // Static: still served years later, no callout ever.
        assert_eq!(ready(p.poll(T0 + 1000 * HOUR)), c);
        // Invalidated: the same values again (they are all there is).
        p.invalidate(None);
        assert_eq!(ready(p.poll(T0)), c);
        assert_clean(&format!("{p:?}"));
    }

    #[test]
    fn without_session_token() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", ""),
        ]);
        let c = ready(provider(&env).poll(T0));
        assert_eq!(c.credentials.session_token, None);
    }

    #[test]
    fn absent_and_partial_are_not_configured() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (
                &[],
                "env: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set",
            ),
            (
                &[("AWS_ACCESS_KEY_ID", AKID)],
                "env: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
            ),
            (
                &[
                    ("AWS_SECRET_ACCESS_KEY", SECRET),
                    ("AWS_ACCESS_KEY_ID", " "),
                ],
                "env: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
            ),
            (
                &[("AWS_SESSION_TOKEN", TOKEN)],
                "env: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set",
            ),
        ];
        for (vars, want) in cases {
            let env = env_of(vars);
            let mut p = provider(&env);
            assert_eq!(p.poll(T0), Poll::NotConfigured(want.into()));
            assert_eq!(p.poll(T0 + 1), Poll::NotConfigured(want.into()));
        }
    }

    #[test]
    fn unusable_values_fail_without_quoting_them() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI with space"),
        ]);
        match provider(&env).poll(T0) {
            Poll::Failed(e) => {
                assert_eq!(
                    e,
                    "env: the AWS_* variables hold an invalid secret access key"
                );
                assert_clean(&e);
            }
            other => panic!("{other:?}"),
        }
    }
}
