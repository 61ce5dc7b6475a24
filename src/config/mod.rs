//! JSON plugin configuration -> validated [`Config`].
//!
//! Parsing walks `serde_json::Value` by hand rather than deriving, so that every
//! error names the exact field (`vaults[1].config.region: ...`): that message is
//! what an operator sees from `envoy --mode validate`.
//!
//! This file holds [`Config`] and the top-level parse; by concern:
//! - `vault.rs`: one vault's settings (JSON, query overrides, environment),
//!   `env` vaults, vault entities and their prefixes;
//! - `headers.rs`: header templates and the incoming header names;
//! - `resolve.rs`: a reference resolved against its vault ([`SecretTarget`]);
//! - [`crate::json`] (not here: the credentials settings use it too): the
//!   JSON field helpers.

mod headers;
mod resolve;
mod vault;

use serde_json::{Map, Value};

use crate::aws::credentials::CredentialsConfig;
use crate::json::{json_type, list, object};
use headers::{headers, incoming_headers};
use vault::{env_prefix, vault_entity};

pub use crate::json::MAX_TIMEOUT_MS;
pub use headers::HeaderTemplate;
pub use resolve::{EnvRef, RefCheck, Resolved, ResolvedRef, SecretTarget};
pub use vault::{EnvSettings, VaultEntity, VaultSettings, ENTITY_FIELDS, ENV_FIELDS};

/// Callout timeout when none is configured.
pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;
/// Kong's `typedefs.ttl` upper bound, and its default `resurrect_ttl`.
pub const MAX_TTL: f64 = 1e8;
pub const DEFAULT_RESURRECT_TTL: f64 = 1e8;
pub const DEFAULT_ROLE_SESSION_NAME: &str = "KongVault";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Node-level defaults for `{vault://aws/...}` (env already applied).
    pub aws: VaultSettings,
    /// Node-level defaults for `{vault://env/...}` (`KONG_VAULT_ENV_PREFIX` applied).
    pub env: EnvSettings,
    /// Where AWS credentials come from (default: the SDK chain).
    pub credentials: CredentialsConfig,
    pub vaults: Vec<VaultEntity>,
    pub request_headers: Vec<HeaderTemplate>,
    pub response_headers: Vec<HeaderTemplate>,
    /// Lower-case names of incoming request headers whose `{vault://...}`
    /// references are resolved (placed there by a trusted earlier filter).
    /// Empty by default: references sent by clients are never resolved.
    pub resolve_incoming_headers: Vec<String>,
    /// Upstream statuses (100-599) that make the secrets a request carried be
    /// fetched again at once (a rotated secret). Empty: off.
    pub refresh_on_status: Vec<u16>,
    /// At most one such refresh per secret per this many ms, per proxy.
    pub refresh_min_interval_ms: u64,
}

/// `refresh_min_interval` when not set, in seconds.
pub const DEFAULT_REFRESH_MIN_INTERVAL_S: f64 = 10.0;

/// Top-level fields of the configuration.
pub const TOP_LEVEL_FIELDS: &[&str] = &[
    "aws",
    "env",
    "credentials",
    "vaults",
    "request_headers",
    "response_headers",
    "resolve_incoming_headers",
    "refresh_on_status",
    "refresh_min_interval",
];

impl Config {
    /// Parse and validate, reading environment variables through `env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let (config, checks) = Config::parse_report(text, env)?;
        for check in checks {
            if let Err(e) = check.result {
                return Err(format!("{}: {}: {e}", check.field, check.text));
            }
        }
        Ok(config)
    }

    /// Like [`Config::parse`], but reference errors do not stop parsing: every
    /// reference is reported with its resolution or its error (for the CLI).
    /// Headers holding a bad reference are left out of the returned config.
    pub fn parse_report(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<RefCheck>), String> {
        let mut checks = Vec::new();
        let mut config = Config::fields(text, env, &mut checks)?;
        config.check_references(&mut checks);
        Ok((config, checks))
    }

    // `fields` and `check_references` are kept out of line, and every function of ours is
    // kept under about 1 KB of wasm (the `#[inline(never)] // see Config::fields` helpers):
    // Envoy's V8 compiles the whole module with its optimizing compiler (TurboFan only) when
    // it loads it, and its allocator keeps what compiling the largest functions needed.
    // Cutting the functions over 1 KB took Envoy's RSS over the floor from +11.1 to about
    // +9.5 MiB (bench/README.md, "Results"; `bench/rss_shapes.py` shows why).
    #[inline(never)]
    fn fields(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        checks: &mut Vec<RefCheck>,
    ) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Err("configuration is empty: expected a JSON object".into());
        }
        let root: Value = serde_json::from_slice(text.as_bytes())
            .map_err(|e| format!("configuration is not JSON: {e}"))?;
        let top = object(&root, "configuration")?;
        check_top_level_names(top)?;
        // Fields are read in a fixed order: the first error found is the one reported.
        let mut config = Config::vault_fields(top, env)?;
        config.set_other_fields(top, checks)?;
        Ok(config)
    }

    /// `aws`, `env` and `vaults`; the other fields empty (`credentials`: the
    /// default) until [`Config::set_other_fields`].
    #[inline(never)] // see Config::fields
    fn vault_fields(
        top: &Map<String, Value>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        Ok(Config {
            aws: aws_defaults(top.get("aws"), env)?,
            env: env_defaults(top.get("env"), env)?,
            vaults: vaults(top.get("vaults"))?,
            credentials: CredentialsConfig::default(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            resolve_incoming_headers: Vec::new(),
            refresh_on_status: Vec::new(),
            refresh_min_interval_ms: 0,
        })
    }

    #[inline(never)] // see Config::fields
    fn set_other_fields(
        &mut self,
        top: &Map<String, Value>,
        checks: &mut Vec<RefCheck>,
    ) -> Result<(), String> {
        self.request_headers = headers(top.get("request_headers"), "request_headers", checks)?;
        self.resolve_incoming_headers =
            incoming_headers(top.get("resolve_incoming_headers"), &self.request_headers)?;
        if let Some(v) = top.get("credentials").filter(|v| !v.is_null()) {
            self.credentials = CredentialsConfig::from_json(v, "credentials")?;
        }
        self.refresh_on_status = statuses(top.get("refresh_on_status"))?;
        self.refresh_min_interval_ms = refresh_min_interval(top.get("refresh_min_interval"))?;
        self.response_headers = headers(top.get("response_headers"), "response_headers", checks)?;
        Ok(())
    }

    #[inline(never)]
    fn check_references(&mut self, checks: &mut Vec<RefCheck>) {
        // Resolve every reference now, so a bad one fails at load time.
        let mut bad_fields = Vec::new();
        for h in self.request_headers.iter().chain(&self.response_headers) {
            for (text, reference) in h.template.references() {
                let result = self.resolve(text, reference);
                if result.is_err() {
                    bad_fields.push(h.field.clone());
                }
                checks.push(RefCheck {
                    field: h.field.clone(),
                    text: text.to_string(),
                    result,
                });
            }
        }
        self.request_headers
            .retain(|h| !bad_fields.contains(&h.field));
        self.response_headers
            .retain(|h| !bad_fields.contains(&h.field));
    }
}

#[inline(never)] // see Config::fields
fn check_top_level_names(top: &Map<String, Value>) -> Result<(), String> {
    for name in top.keys() {
        if !TOP_LEVEL_FIELDS.contains(&name.as_str()) {
            return Err(format!(
                "{name}: unknown field (expected one of: {})",
                TOP_LEVEL_FIELDS.join(", ")
            ));
        }
    }
    Ok(())
}

/// `aws`, with environment variables filling the fields it leaves unset.
#[inline(never)] // see Config::fields
fn aws_defaults(
    value: Option<&Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<VaultSettings, String> {
    match value {
        Some(v) if !v.is_null() => VaultSettings::from_json(v, "aws")?,
        _ => VaultSettings::default(),
    }
    .with_env(env)
    .map_err(|e| format!("aws: {e}"))
}

/// `env`, its prefix from `KONG_VAULT_ENV_PREFIX` when it sets none.
#[inline(never)] // see Config::fields
fn env_defaults(
    value: Option<&Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<EnvSettings, String> {
    let mut settings = match value {
        Some(v) if !v.is_null() => EnvSettings::from_json(v, "env")?,
        _ => EnvSettings::default(),
    };
    if settings.prefix.is_none() {
        if let Some(p) = env("KONG_VAULT_ENV_PREFIX").filter(|p| !p.is_empty()) {
            settings.prefix =
                Some(env_prefix(&p).map_err(|e| {
                    format!("env: environment variable KONG_VAULT_ENV_PREFIX: {e}")
                })?);
        }
    }
    Ok(settings)
}

/// `vaults`: Kong vault entities, each prefix at most once.
#[inline(never)] // see Config::fields
fn vaults(value: Option<&Value>) -> Result<Vec<VaultEntity>, String> {
    let mut vaults: Vec<VaultEntity> = Vec::new();
    for (i, item) in list(value, "vaults", "an array")?.iter().enumerate() {
        let entity = vault_entity(item, &format!("vaults[{i}]"))?;
        if vaults.iter().any(|v| v.prefix == entity.prefix) {
            return Err(format!(
                "vaults[{i}].prefix: duplicate prefix '{}'",
                entity.prefix
            ));
        }
        vaults.push(entity);
    }
    Ok(vaults)
}

/// `refresh_min_interval`: seconds from 0 to [`MAX_TTL`], in milliseconds.
#[inline(never)] // see Config::fields
fn refresh_min_interval(value: Option<&Value>) -> Result<u64, String> {
    match value {
        None | Some(Value::Null) => Ok(crate::cache::secs_to_ms(DEFAULT_REFRESH_MIN_INTERVAL_S)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && (0.0..=MAX_TTL).contains(&v) => {
                Ok(crate::cache::secs_to_ms(v))
            }
            _ => Err(format!(
                "refresh_min_interval: must be a number of seconds from 0 to {}",
                MAX_TTL as u64
            )),
        },
        Some(other) => Err(format!(
            "refresh_min_interval: expected a number, got {}",
            json_type(other)
        )),
    }
}

/// `refresh_on_status`: whole numbers from 100 to 599, each once.
#[inline(never)] // see Config::fields
fn statuses(value: Option<&Value>) -> Result<Vec<u16>, String> {
    const PATH: &str = "refresh_on_status";
    let items = list(value, PATH, "an array of HTTP status codes")?;
    let mut out: Vec<u16> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let status = item
            .as_u64()
            .filter(|s| (100..=599).contains(s))
            .and_then(|s| u16::try_from(s).ok())
            .ok_or_else(|| format!("{PATH}[{i}]: must be a whole number from 100 to 599"))?;
        if out.contains(&status) {
            return Err(format!("{PATH}[{i}]: {status} given twice"));
        }
        out.push(status);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
