//! `"credentials": {...}`: which source to use and where its callouts go.
//!
//! ```json
//! "credentials": {
//!   "source": "chain",                      // env | container | web_identity | imds | chain
//!   "timeout_ms": 5000,                     // container, token URLs, STS
//!   "imds_timeout_ms": 1000,
//!   "container_upstream": "ecs_agent",      // default: the container URI's host[:port]
//!   "container_authorization_token_url": "http://127.0.0.1:8099/pod-identity-token",
//!   "container_authorization_token_upstream": "token_sidecar",
//!   "imds_endpoint_url": "http://169.254.169.254",   // or AWS_EC2_METADATA_SERVICE_ENDPOINT
//!   "imds_upstream": "imds",                // default: 169.254.169.254
//!   "web_identity_token_url": "http://127.0.0.1:8099/irsa-token",
//!   "web_identity_token_upstream": "token_sidecar",
//!   "sts_region": "eu-central-1",           // default: AWS_REGION, AWS_DEFAULT_REGION, else global
//!   "sts_endpoint_url": "https://sts.eu-central-1.amazonaws.com",
//!   "sts_upstream": "sts"                   // default: the STS endpoint's host[:port]
//! }
//! ```
//! All fields are optional; unknown fields are refused. These settings are
//! for the base credentials; AssumeRole is per vault (`assume_role_arn`,
//! `role_session_name`, `sts_endpoint_url` in the vault config).

use serde_json::Value;

use super::{parse_url, Url};
use crate::aws::secrets_manager::{self, Endpoint};
use crate::json::{json_type, object, printable, region, string, timeout_ms};

pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;
pub const DEFAULT_IMDS_TIMEOUT_MS: u32 = 1_000;

/// Where base credentials come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Source {
    Env,
    Container,
    WebIdentity,
    Imds,
    /// env, container, web identity, IMDS: the first configured one.
    #[default]
    Chain,
}

impl Source {
    pub const ALL: [(&'static str, Source); 5] = [
        ("env", Source::Env),
        ("container", Source::Container),
        ("web_identity", Source::WebIdentity),
        ("imds", Source::Imds),
        ("chain", Source::Chain),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Env => "env",
            Source::Container => "container",
            Source::WebIdentity => "web_identity",
            Source::Imds => "imds",
            Source::Chain => "chain",
        }
    }
}

/// The validated `credentials` object. `None` = not set (the documented
/// default applies when the provider is built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsConfig {
    pub source: Source,
    /// Container, token URL and STS callouts.
    pub timeout_ms: u32,
    pub imds_timeout_ms: u32,
    pub container_upstream: Option<String>,
    pub container_authorization_token_url: Option<Url>,
    pub container_authorization_token_upstream: Option<String>,
    pub imds_endpoint_url: Option<Endpoint>,
    pub imds_upstream: Option<String>,
    pub web_identity_token_url: Option<Url>,
    pub web_identity_token_upstream: Option<String>,
    /// Region of the STS endpoint for AssumeRoleWithWebIdentity.
    pub sts_region: Option<String>,
    pub sts_endpoint_url: Option<Endpoint>,
    pub sts_upstream: Option<String>,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            source: Source::Chain,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            imds_timeout_ms: DEFAULT_IMDS_TIMEOUT_MS,
            container_upstream: None,
            container_authorization_token_url: None,
            container_authorization_token_upstream: None,
            imds_endpoint_url: None,
            imds_upstream: None,
            web_identity_token_url: None,
            web_identity_token_upstream: None,
            sts_region: None,
            sts_endpoint_url: None,
            sts_upstream: None,
        }
    }
}

const FIELDS: &[&str] = &[
    "source",
    "timeout_ms",
    "imds_timeout_ms",
    "container_upstream",
    "container_authorization_token_url",
    "container_authorization_token_upstream",
    "imds_endpoint_url",
    "imds_upstream",
    "web_identity_token_url",
    "web_identity_token_upstream",
    "sts_region",
    "sts_endpoint_url",
    "sts_upstream",
];

impl CredentialsConfig {
    /// Validate `value` (the `credentials` object); errors start with
    /// `path.field: `.
    pub fn from_json(value: &Value, path: &str) -> Result<CredentialsConfig, String> {
        let map = object(value, path)?;
        let mut c = CredentialsConfig::default();
        for (name, v) in map {
            if v.is_null() {
                // Unset, as Kong's declarative config may write it.
                if !FIELDS.contains(&name.as_str()) {
                    return Err(format!("{path}.{name}: unknown field"));
                }
                continue;
            }
            c.set(name, v).map_err(|e| format!("{path}.{name}: {e}"))?;
        }
        Ok(c)
    }

    /// The general and IMDS fields; the others are set by group, each setter
    /// passing on the names it does not know (smaller functions).
    #[inline(never)] // see Config::fields
    fn set(&mut self, name: &str, v: &Value) -> Result<(), String> {
        match name {
            "source" => self.source = source(string(v)?)?,
            "timeout_ms" => self.timeout_ms = timeout(v)?,
            "imds_timeout_ms" => self.imds_timeout_ms = timeout(v)?,
            "imds_endpoint_url" => {
                self.imds_endpoint_url = Some(secrets_manager::parse_endpoint_url(string(v)?)?)
            }
            "imds_upstream" => self.imds_upstream = Some(upstream(v)?),
            _ => return self.set_container(name, v),
        }
        Ok(())
    }

    #[inline(never)] // see Config::fields
    fn set_container(&mut self, name: &str, v: &Value) -> Result<(), String> {
        match name {
            "container_upstream" => self.container_upstream = Some(upstream(v)?),
            "container_authorization_token_url" => {
                self.container_authorization_token_url = Some(parse_url(string(v)?)?)
            }
            "container_authorization_token_upstream" => {
                self.container_authorization_token_upstream = Some(upstream(v)?)
            }
            _ => return self.set_web_identity(name, v),
        }
        Ok(())
    }

    /// The web identity and STS fields; other names are unknown.
    #[inline(never)] // see Config::fields
    fn set_web_identity(&mut self, name: &str, v: &Value) -> Result<(), String> {
        match name {
            "web_identity_token_url" => self.web_identity_token_url = Some(parse_url(string(v)?)?),
            "web_identity_token_upstream" => self.web_identity_token_upstream = Some(upstream(v)?),
            "sts_region" => self.sts_region = Some(region(string(v)?)?),
            "sts_endpoint_url" => {
                self.sts_endpoint_url = Some(secrets_manager::parse_endpoint_url(string(v)?)?)
            }
            "sts_upstream" => self.sts_upstream = Some(upstream(v)?),
            _ => {
                return Err(format!(
                    "unknown field (expected one of: {})",
                    FIELDS.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// Every field `from_json` accepts (for a JSON schema, e.g. Kong's meta.json).
    pub fn field_names() -> &'static [&'static str] {
        FIELDS
    }
}

fn source(s: &str) -> Result<Source, String> {
    Source::ALL
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, src)| *src)
        .ok_or_else(|| {
            let names: Vec<&str> = Source::ALL.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown source '{}' (expected one of: {})",
                printable(s),
                names.join(", ")
            )
        })
}

fn timeout(v: &Value) -> Result<u32, String> {
    match v {
        Value::Number(n) => timeout_ms(n.as_f64().unwrap_or(f64::NAN)),
        other => Err(format!("expected a number, got {}", json_type(other))),
    }
}

fn upstream(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults() {
        let c = CredentialsConfig::from_json(&json!({}), "credentials").unwrap();
        assert_eq!(c, CredentialsConfig::default());
        assert_eq!(c.source, Source::Chain);
        assert_eq!(c.timeout_ms, 5000);
        assert_eq!(c.imds_timeout_ms, 1000);
    }

    #[test]
    fn all_fields() {
        let c = CredentialsConfig::from_json(
            &json!({
                "source": "web_identity",
                "timeout_ms": 2500,
                "imds_timeout_ms": 300,
                "container_upstream": "ecs",
                "container_authorization_token_url": "http://127.0.0.1:8099/pod",
                "container_authorization_token_upstream": "tok",
                "imds_endpoint_url": "http://[fd00:ec2::254]",
                "imds_upstream": "imds",
                "web_identity_token_url": "http://127.0.0.1:8099/irsa?x=1",
                "web_identity_token_upstream": "tok2",
                "sts_region": "eu-central-1",
                "sts_endpoint_url": "http://127.0.0.1:5000",
                "sts_upstream": "sts"
            }),
            "credentials",
        )
        .unwrap();
        assert_eq!(c.source, Source::WebIdentity);
        assert_eq!(c.timeout_ms, 2500);
        assert_eq!(c.imds_timeout_ms, 300);
        assert_eq!(c.container_upstream.as_deref(), Some("ecs"));
        assert_eq!(c.container_authorization_token_url.unwrap().path, "/pod");
        assert_eq!(c.imds_endpoint_url.unwrap().authority, "[fd00:ec2::254]");
        let u = c.web_identity_token_url.unwrap();
        assert_eq!(u.endpoint.authority, "127.0.0.1:8099");
        assert_eq!(u.path, "/irsa?x=1");
        assert_eq!(c.sts_region.as_deref(), Some("eu-central-1"));
        assert_eq!(c.sts_endpoint_url.unwrap().authority, "127.0.0.1:5000");
        assert_eq!(c.sts_upstream.as_deref(), Some("sts"));
        for (name, src) in Source::ALL {
            let c = CredentialsConfig::from_json(&json!({ "source": name }), "c").unwrap();
            assert_eq!(c.source, src);
            assert_eq!(src.as_str(), name);
        }
        assert_eq!(CredentialsConfig::field_names().len(), 13);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!("env"), "credentials: expected an object, got a string"),
            (
                json!({"source": "x"}),
                "credentials.source: unknown source 'x' (expected one of: env, container, web_identity, imds, chain)",
            ),
            (json!({"source": 1}), "credentials.source: expected a string, got a number"),
            (json!({"sorce": "env"}), "credentials.sorce: unknown field (expected one of: source, timeout_ms,"),
            (json!({"timeout_ms": 0}), "credentials.timeout_ms: must be a whole number"),
            (json!({"imds_timeout_ms": 1.5}), "credentials.imds_timeout_ms: must be a whole number"),
            (json!({"timeout_ms": "5"}), "credentials.timeout_ms: expected a number, got a string"),
            (json!({"container_upstream": ""}), "credentials.container_upstream: must not be empty"),
            (json!({"imds_upstream": "a\nb"}), "credentials.imds_upstream: must not contain control"),
            (json!({"sts_region": "EU"}), "credentials.sts_region: invalid region 'EU'"),
            (json!({"sts_endpoint_url": "sts"}), "credentials.sts_endpoint_url: endpoint URL must start with"),
            (json!({"imds_endpoint_url": "http://h/x"}), "credentials.imds_endpoint_url: endpoint URL must not have a path"),
            (json!({"web_identity_token_url": "ftp://h/t"}), "credentials.web_identity_token_url: URL scheme must be http or https"),
            (json!({"container_authorization_token_url": "http://u:pw@h/t"}), "credentials.container_authorization_token_url: URL must not contain userinfo"),
        ];
        for (v, want) in cases {
            let e = CredentialsConfig::from_json(&v, "credentials").unwrap_err();
            assert!(e.starts_with(want), "{e}\n !~ {want}");
            assert!(!e.contains("pw"), "{e}");
        }
    }
}
