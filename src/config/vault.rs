//! Vaults: one vault's settings ([`VaultSettings`], from JSON, a reference's
//! query or the environment), `env` vault settings, and Kong vault entities
//! (`vaults[]`) with their prefix rules.

use serde_json::{Map, Value};

use super::MAX_TTL;
use crate::aws::credentials::valid_session_name;
use crate::aws::secrets_manager::{self, Endpoint};
use crate::json::{json_type, object, region, string, string_field, timeout_ms};

/// Vault types this filter implements; no entity prefix may equal one of them.
const VAULT_TYPES: &[&str] = &["aws", "env"];

/// One vault's config fields as written (Kong's AWS vault schema plus `upstream`
/// and `timeout_ms`). `None` = not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VaultSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<Endpoint>,
    pub upstream: Option<String>,
    pub assume_role_arn: Option<String>,
    pub role_session_name: Option<String>,
    pub sts_endpoint_url: Option<Endpoint>,
    /// Where the AssumeRole callout goes (Envoy cluster, Kong `host:port`).
    pub sts_upstream: Option<String>,
    pub ttl: Option<f64>,
    pub neg_ttl: Option<f64>,
    pub resurrect_ttl: Option<f64>,
    pub timeout_ms: Option<u32>,
}

/// A field value from JSON config or from a reference's query string.
pub(super) enum Raw<'a> {
    Json(&'a Value),
    Query(&'a str),
}

impl Raw<'_> {
    fn string(&self) -> Result<&str, String> {
        match self {
            Raw::Json(v) => string(v),
            Raw::Query(s) => Ok(s),
        }
    }

    fn number(&self) -> Result<f64, String> {
        match self {
            Raw::Json(Value::Number(n)) => n.as_f64().ok_or_else(|| "not a number".to_string()),
            Raw::Json(v) => Err(format!("expected a number, got {}", json_type(v))),
            Raw::Query(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| "expected a number".to_string()),
        }
    }
}

impl VaultSettings {
    /// Every settings field the parser accepts.
    pub const FIELDS: &'static [&'static str] = &[
        "region",
        "endpoint_url",
        "upstream",
        "assume_role_arn",
        "role_session_name",
        "sts_endpoint_url",
        "sts_upstream",
        "ttl",
        "neg_ttl",
        "resurrect_ttl",
        "timeout_ms",
    ];

    /// Set one field, validating it. Unknown names are an error here; query
    /// overrides filter them out first (Kong ignores unknown query keys).
    ///
    /// The Secrets Manager callout's fields; the others are set by group, each
    /// setter passing on the names it does not know (smaller functions).
    pub(super) fn set(&mut self, name: &str, raw: Raw) -> Result<(), String> {
        match name {
            "region" => self.region = Some(region(raw.string()?)?),
            "endpoint_url" => {
                self.endpoint_url = Some(secrets_manager::parse_endpoint_url(raw.string()?)?)
            }
            "upstream" => self.upstream = Some(non_empty(raw.string()?)?),
            "timeout_ms" => self.timeout_ms = Some(timeout_ms(raw.number()?)?),
            _ => return self.set_assume_role(name, raw),
        }
        Ok(())
    }

    #[inline(never)] // see Config::fields
    fn set_assume_role(&mut self, name: &str, raw: Raw) -> Result<(), String> {
        match name {
            "assume_role_arn" => self.assume_role_arn = Some(non_empty(raw.string()?)?),
            "role_session_name" => self.role_session_name = Some(session_name(raw.string()?)?),
            "sts_endpoint_url" => {
                self.sts_endpoint_url = Some(secrets_manager::parse_endpoint_url(raw.string()?)?)
            }
            "sts_upstream" => self.sts_upstream = Some(non_empty(raw.string()?)?),
            _ => return self.set_ttl(name, raw),
        }
        Ok(())
    }

    /// The cache lifetimes; other names are unknown.
    #[inline(never)] // see Config::fields
    fn set_ttl(&mut self, name: &str, raw: Raw) -> Result<(), String> {
        match name {
            "ttl" => self.ttl = Some(ttl(raw.number()?)?),
            "neg_ttl" => self.neg_ttl = Some(ttl(raw.number()?)?),
            "resurrect_ttl" => self.resurrect_ttl = Some(ttl(raw.number()?)?),
            _ => {
                return Err(format!(
                    "unknown field (expected one of: {})",
                    Self::FIELDS.join(", ")
                ))
            }
        }
        Ok(())
    }

    #[inline(never)] // see Config::fields
    pub(super) fn unset(&mut self, name: &str) {
        match name {
            "region" => self.region = None,
            "endpoint_url" => self.endpoint_url = None,
            "upstream" => self.upstream = None,
            "assume_role_arn" => self.assume_role_arn = None,
            "role_session_name" => self.role_session_name = None,
            "sts_endpoint_url" => self.sts_endpoint_url = None,
            "sts_upstream" => self.sts_upstream = None,
            "ttl" => self.ttl = None,
            "neg_ttl" => self.neg_ttl = None,
            "resurrect_ttl" => self.resurrect_ttl = None,
            "timeout_ms" => self.timeout_ms = None,
            _ => {}
        }
    }

    #[inline(never)] // see Config::fields
    pub(super) fn from_json(value: &Value, path: &str) -> Result<Self, String> {
        let mut settings = Self::default();
        for (name, v) in object(value, path)? {
            if v.is_null() {
                continue; // Kong's declarative config writes unset fields as null
            }
            settings
                .set(name, Raw::Json(v))
                .map_err(|e| format!("{path}.{name}: {e}"))?;
        }
        Ok(settings)
    }

    /// Fill unset fields from environment variables (config wins).
    #[inline(never)] // see Config::fields
    pub(super) fn with_env(mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let vars: &[(&str, &str)] = &[
            ("region", "KONG_VAULT_AWS_REGION"),
            ("region", "AWS_REGION"),
            ("region", "AWS_DEFAULT_REGION"),
            ("assume_role_arn", "KONG_VAULT_AWS_ASSUME_ROLE_ARN"),
            ("role_session_name", "KONG_VAULT_AWS_ROLE_SESSION_NAME"),
        ];
        for (field, var) in vars {
            let is_set = match *field {
                "region" => self.region.is_some(),
                "assume_role_arn" => self.assume_role_arn.is_some(),
                _ => self.role_session_name.is_some(),
            };
            if is_set {
                continue;
            }
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                self.set(field, Raw::Query(&value))
                    .map_err(|e| format!("environment variable {var}: {e}"))?;
            }
        }
        Ok(self)
    }
}

/// Settings of an `env` vault (Kong's env vault): variable name =
/// upper(prefix + resource with `-` -> `_`), plus `_PREVIOUS` for version 2.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvSettings {
    pub prefix: Option<String>,
}

impl EnvSettings {
    #[inline(never)] // see Config::fields
    pub(super) fn from_json(value: &Value, path: &str) -> Result<Self, String> {
        let mut settings = Self::default();
        for (name, v) in object(value, path)? {
            if v.is_null() {
                continue;
            }
            match name.as_str() {
                "prefix" => {
                    let p = string_field(v, path, "prefix")?;
                    settings.prefix =
                        Some(env_prefix(&p).map_err(|e| format!("{path}.prefix: {e}"))?);
                }
                _ => return Err(format!("{path}.{name}: unknown field (expected: prefix)")),
            }
        }
        Ok(settings)
    }

    /// The environment variable a reference names.
    pub fn variable(&self, resource: &str, version: Option<f64>) -> String {
        let mut name = self.prefix.clone().unwrap_or_default();
        name.push_str(&resource.replace('-', "_"));
        // Lua's string.upper (C toupper, C locale): ASCII letters only.
        let mut name = name.to_ascii_uppercase();
        if version == Some(2.0) {
            name.push_str("_PREVIOUS");
        }
        name
    }
}

/// Kong's env vault prefix pattern: `^[%a_-][%a%d_-]*$`.
pub(super) fn env_prefix(p: &str) -> Result<String, String> {
    let mut bytes = p.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        Ok(p.to_string())
    } else {
        Err("invalid prefix (letters, digits, '_' and '-', not starting with a digit)".into())
    }
}

/// A Kong vault entity.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultEntity {
    /// The vault type: `aws` or `env`.
    pub name: String,
    pub prefix: String,
    pub description: Option<String>,
    /// For `aws` entities.
    pub settings: VaultSettings,
    /// For `env` entities.
    pub env: EnvSettings,
}

/// Fields of a vault entity.
pub const ENTITY_FIELDS: &[&str] = &["name", "prefix", "description", "config", "id", "tags"];
/// Fields of an `env` vault's settings.
pub const ENV_FIELDS: &[&str] = &["prefix"];

#[inline(never)] // see Config::fields
pub(super) fn vault_entity(value: &Value, path: &str) -> Result<VaultEntity, String> {
    let map = object(value, path)?;
    check_entity_names(map, path)?;
    let name = entity_type(map, path)?;
    let prefix = entity_prefix(map, path)?;
    let description = match map.get("description") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_field(v, path, "description")?),
    };
    let (settings, env) = entity_config(&name, map.get("config"), path)?;
    Ok(VaultEntity {
        name,
        prefix,
        description,
        settings,
        env,
    })
}

#[inline(never)] // see Config::fields
fn check_entity_names(map: &Map<String, Value>, path: &str) -> Result<(), String> {
    for name in map.keys() {
        if !ENTITY_FIELDS.contains(&name.as_str()) {
            return Err(format!(
                "{path}.{name}: unknown field (expected one of: name, prefix, description, config)"
            ));
        }
    }
    Ok(())
}

/// The entity's `name`: the vault type.
#[inline(never)] // see Config::fields
fn entity_type(map: &Map<String, Value>, path: &str) -> Result<String, String> {
    let name = match map.get("name") {
        Some(v) => string_field(v, path, "name")?,
        None => {
            return Err(format!(
                "{path}.name: required (the vault type, \"aws\" or \"env\")"
            ))
        }
    };
    if name != "aws" && name != "env" {
        return Err(format!(
            "{path}.name: unsupported vault type '{name}' (supported: aws, env)"
        ));
    }
    Ok(name)
}

#[inline(never)] // see Config::fields
fn entity_prefix(map: &Map<String, Value>, path: &str) -> Result<String, String> {
    let prefix = match map.get("prefix") {
        Some(v) => string_field(v, path, "prefix")?,
        None => return Err(format!("{path}.prefix: required")),
    };
    check_prefix(&prefix).map_err(|e| format!("{path}.prefix: {e}"))?;
    Ok(prefix)
}

/// The entity's `config`: an `env` vault's settings, or an `aws` vault's,
/// which must name the region.
#[inline(never)] // see Config::fields
fn entity_config(
    name: &str,
    config: Option<&Value>,
    path: &str,
) -> Result<(VaultSettings, EnvSettings), String> {
    let config = config.filter(|v| !v.is_null());
    let config_path = format!("{path}.config");
    if name == "env" {
        let env = match config {
            Some(v) => EnvSettings::from_json(v, &config_path)?,
            None => EnvSettings::default(),
        };
        return Ok((VaultSettings::default(), env));
    }
    let settings = match config {
        Some(v) => VaultSettings::from_json(v, &config_path)?,
        None => VaultSettings::default(),
    };
    if settings.region.is_none() {
        return Err(format!(
            "{path}.config.region: required (a vault entity uses only its own config)"
        ));
    }
    Ok((settings, EnvSettings::default()))
}

/// Kong's prefix rule: lower case, starts with a letter, letters/digits/`-`,
/// at least 2 chars, not ending in `-`, not a vault type name.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let bytes = prefix.as_bytes();
    let ok = bytes.len() >= 2
        && bytes.first().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.last().is_some_and(|b| *b != b'-')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !ok {
        return Err(format!(
            "invalid prefix '{prefix}' (lower-case letters, digits and '-', starting with a letter, at least 2 characters, not ending with '-')"
        ));
    }
    if VAULT_TYPES.contains(&prefix) {
        return Err(format!("prefix '{prefix}' is a vault type name"));
    }
    Ok(())
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// STS RoleSessionName: 2-64 chars of `[\w+=,.@-]`.
fn session_name(s: &str) -> Result<String, String> {
    if valid_session_name(s) {
        Ok(s.to_string())
    } else {
        Err("must be 2-64 characters of letters, digits and _+=,.@-".into())
    }
}

fn ttl(n: f64) -> Result<f64, String> {
    if (0.0..=MAX_TTL).contains(&n) {
        Ok(n)
    } else {
        Err("must be between 0 and 100000000 seconds".into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rules() {
        for ok in ["ab", "aws-sm-vault", "a1", "x-y-2"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["a", "1a", "-a", "a-", "A1", "a_b", "env", "aws", ""] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
