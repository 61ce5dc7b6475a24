//! Resolving a reference against its vault: query overrides applied, defaults
//! filled in, the result a [`SecretTarget`] (the fetch and its cache key) or an
//! env variable name.

use litemap::LiteMap;

use super::vault::{env_prefix, Raw};
use super::{
    Config, EnvSettings, HeaderTemplate, VaultSettings, DEFAULT_RESURRECT_TTL,
    DEFAULT_ROLE_SESSION_NAME, DEFAULT_TIMEOUT_MS,
};
use crate::aws::secrets_manager::{self, Endpoint, VersionStage};
use crate::reference::Reference;

/// What a reference resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// A Secrets Manager secret.
    Aws(Box<ResolvedRef>),
    /// An environment variable (the `env` vault).
    Env(EnvRef),
}

impl Resolved {
    pub fn into_aws(self) -> Option<ResolvedRef> {
        match self {
            Resolved::Aws(r) => Some(*r),
            Resolved::Env(_) => None,
        }
    }
}

/// A reference to the `env` vault.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvRef {
    pub text: String,
    pub reference: Reference,
    pub variable: String,
    pub key: Option<String>,
    pub overrides: LiteMap<String, String>,
}

/// Everything needed to fetch one secret and cache it: the cache key.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretTarget {
    /// `aws` or the entity prefix the reference named.
    pub vault: String,
    pub secret_id: String,
    pub stage: VersionStage,
    pub region: String,
    pub endpoint: Endpoint,
    /// Envoy cluster name or Kong `host:port` the callout goes to.
    pub upstream: String,
    pub timeout_ms: u32,
    pub assume_role_arn: Option<String>,
    pub role_session_name: String,
    pub sts_endpoint: Option<Endpoint>,
    /// The AssumeRole callout's upstream; `None`: the STS endpoint's `host[:port]`.
    pub sts_upstream: Option<String>,
    /// Seconds; 0 = never refreshed.
    pub ttl: f64,
    /// Seconds; 0 = misses not cached.
    pub neg_ttl: f64,
    pub resurrect_ttl: f64,
}

impl SecretTarget {
    /// A stable string naming everything that makes two targets different
    /// fetches; also stored inside shared-data entries to detect key collisions.
    pub fn descriptor(&self) -> String {
        format!(
            "{}|{}|{}://{}|{}|{}|{}|{}|{}|{}|{}",
            self.vault,
            self.region,
            self.endpoint.scheme,
            self.endpoint.authority,
            self.upstream,
            self.assume_role_arn.as_deref().unwrap_or(""),
            // Milliseconds as integers: no float formatting in the .wasm.
            crate::cache::secs_to_ms(self.ttl),
            crate::cache::secs_to_ms(self.neg_ttl),
            crate::cache::secs_to_ms(self.resurrect_ttl),
            self.stage.as_str(),
            self.secret_id,
        )
    }
}

/// A reference from the configuration, resolved against its vault.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRef {
    /// The reference as written, `{vault://...}`.
    pub text: String,
    pub reference: Reference,
    pub target: SecretTarget,
    pub key: Option<String>,
    /// Query overrides that were applied (valid ones).
    pub overrides: LiteMap<String, String>,
}

/// One reference of the configuration and how it resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RefCheck {
    /// `request_headers.authorization`
    pub field: String,
    /// The reference as written.
    pub text: String,
    pub result: Result<Resolved, String>,
}

impl Config {
    /// Resolve a parsed reference against its vault, applying query overrides.
    pub fn resolve(&self, text: &str, reference: &Reference) -> Result<Resolved, String> {
        let name = reference.name.as_str();
        if name == "aws" {
            return self
                .resolve_aws(&self.aws, text, reference)
                .map(|r| Resolved::Aws(Box::new(r)));
        }
        if name == "env" {
            return Ok(Resolved::Env(resolve_env(&self.env, text, reference)));
        }
        match self.vaults.iter().find(|v| v.prefix == name) {
            Some(v) if v.name == "env" => Ok(Resolved::Env(resolve_env(&v.env, text, reference))),
            Some(v) => self
                .resolve_aws(&v.settings, text, reference)
                .map(|r| Resolved::Aws(Box::new(r))),
            None => Err(format!("could not find vault ({name})")),
        }
    }

    fn resolve_aws(
        &self,
        vault: &VaultSettings,
        text: &str,
        reference: &Reference,
    ) -> Result<ResolvedRef, String> {
        let (settings, overrides) = with_overrides(vault, reference);
        let target = secret_target(settings, reference)?;
        Ok(ResolvedRef {
            text: text.to_string(),
            reference: reference.clone(),
            target,
            key: reference.key.clone(),
            overrides,
        })
    }

    /// Every reference in the headers, in order, each once per place it appears.
    pub fn references(&self) -> impl Iterator<Item = (&HeaderTemplate, &str, &Reference)> {
        self.request_headers
            .iter()
            .chain(&self.response_headers)
            .flat_map(|h| h.template.references().map(move |(t, r)| (h, t, r)))
    }
}

/// `vault` with the reference's query overrides applied, and the overrides
/// that were valid.
#[inline(never)] // see Config::fields
fn with_overrides(
    vault: &VaultSettings,
    reference: &Reference,
) -> (VaultSettings, LiteMap<String, String>) {
    let mut settings = vault.clone();
    let mut overrides = LiteMap::new();
    for (name, value) in &reference.query {
        if !VaultSettings::FIELDS.contains(&name.as_str()) {
            continue; // Kong ignores unknown query keys
        }
        // Kong: an override that fails validation leaves the field unset.
        let applied = match value {
            Some(v) => settings.set(name, Raw::Query(v)).is_ok(),
            None => false,
        };
        if applied {
            if let Some(v) = value {
                overrides.insert(name.clone(), v.clone());
            }
        } else {
            settings.unset(name);
        }
    }
    (settings, overrides)
}

/// The fetch a reference names, defaults filled in for what `settings` leaves unset.
#[inline(never)] // see Config::fields
fn secret_target(settings: VaultSettings, reference: &Reference) -> Result<SecretTarget, String> {
    let region = settings
        .region
        .ok_or_else(|| format!("vault '{}' has no region", reference.name))?;
    let stage = secrets_manager::version_stage(reference.version)?;
    let (endpoint, upstream) = destination(settings.endpoint_url, settings.upstream, &region);
    if reference.resource.is_empty() {
        return Err("empty secret id".into());
    }
    Ok(SecretTarget {
        vault: reference.name.clone(),
        secret_id: reference.resource.clone(),
        stage,
        region,
        endpoint,
        upstream,
        timeout_ms: settings.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        assume_role_arn: settings.assume_role_arn,
        role_session_name: settings
            .role_session_name
            .unwrap_or_else(|| DEFAULT_ROLE_SESSION_NAME.to_string()),
        sts_endpoint: settings.sts_endpoint_url,
        sts_upstream: settings.sts_upstream,
        ttl: settings.ttl.unwrap_or(0.0),
        neg_ttl: settings.neg_ttl.unwrap_or(0.0),
        resurrect_ttl: settings.resurrect_ttl.unwrap_or(DEFAULT_RESURRECT_TTL),
    })
}

/// Where the Secrets Manager callout goes: the endpoint (default: the region's)
/// and the upstream (default: the endpoint's `host[:port]`).
#[inline(never)] // see Config::fields
fn destination(
    endpoint: Option<Endpoint>,
    upstream: Option<String>,
    region: &str,
) -> (Endpoint, String) {
    let endpoint = endpoint.unwrap_or_else(|| secrets_manager::default_endpoint(region));
    let upstream = upstream.unwrap_or_else(|| endpoint.authority.clone());
    (endpoint, upstream)
}

/// An env vault reference: `prefix` may be overridden by the query (Kong);
/// an invalid override leaves it unset.
fn resolve_env(vault: &EnvSettings, text: &str, reference: &Reference) -> EnvRef {
    let mut settings = vault.clone();
    let mut overrides = LiteMap::new();
    if let Some(value) = reference.query.get("prefix") {
        settings.prefix = value.as_deref().and_then(|p| env_prefix(p).ok());
        if let Some(p) = &settings.prefix {
            overrides.insert("prefix".to_string(), p.clone());
        }
    }
    EnvRef {
        text: text.to_string(),
        reference: reference.clone(),
        variable: settings.variable(&reference.resource, reference.version),
        key: reference.key.clone(),
        overrides,
    }
}
