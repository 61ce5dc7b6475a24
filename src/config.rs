//! JSON plugin configuration -> validated [`Config`].
//!
//! Parsing walks `serde_json::Value` by hand rather than deriving, so that every
//! error names the exact field (`vaults[1].config.region: ...`): that message is
//! what an operator sees from `envoy --mode validate`.

use litemap::LiteMap;

use serde_json::{Map, Value};

use crate::aws::credentials::CredentialsConfig;
use crate::aws::secrets_manager::{self, Endpoint, VersionStage};
use crate::reference::Reference;
use crate::template::{self, Template, TemplateError};

/// Callout timeout when none is configured.
pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;
/// Longest callout timeout accepted.
pub const MAX_TIMEOUT_MS: u32 = 60_000;
/// Kong's `typedefs.ttl` upper bound, and its default `resurrect_ttl`.
pub const MAX_TTL: f64 = 1e8;
pub const DEFAULT_RESURRECT_TTL: f64 = 1e8;
pub const DEFAULT_ROLE_SESSION_NAME: &str = "KongVault";

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
enum Raw<'a> {
    Json(&'a Value),
    Query(&'a str),
}

impl Raw<'_> {
    fn string(&self) -> Result<&str, String> {
        match self {
            Raw::Json(Value::String(s)) => Ok(s),
            Raw::Query(s) => Ok(s),
            Raw::Json(v) => Err(format!("expected a string, got {}", json_type(v))),
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
    fn set(&mut self, name: &str, raw: Raw) -> Result<(), String> {
        match name {
            "region" => self.region = Some(region(raw.string()?)?),
            "endpoint_url" => {
                self.endpoint_url = Some(secrets_manager::parse_endpoint_url(raw.string()?)?)
            }
            "upstream" => self.upstream = Some(non_empty(raw.string()?)?),
            "assume_role_arn" => self.assume_role_arn = Some(non_empty(raw.string()?)?),
            "role_session_name" => self.role_session_name = Some(session_name(raw.string()?)?),
            "sts_endpoint_url" => {
                self.sts_endpoint_url = Some(secrets_manager::parse_endpoint_url(raw.string()?)?)
            }
            "sts_upstream" => self.sts_upstream = Some(non_empty(raw.string()?)?),
            "ttl" => self.ttl = Some(ttl(raw.number()?)?),
            "neg_ttl" => self.neg_ttl = Some(ttl(raw.number()?)?),
            "resurrect_ttl" => self.resurrect_ttl = Some(ttl(raw.number()?)?),
            "timeout_ms" => self.timeout_ms = Some(timeout_ms(raw.number()?)?),
            _ => {
                return Err(format!(
                    "unknown field (expected one of: {})",
                    Self::FIELDS.join(", ")
                ))
            }
        }
        Ok(())
    }

    fn unset(&mut self, name: &str) {
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

    fn from_json(value: &Value, path: &str) -> Result<Self, String> {
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
    fn with_env(mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
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
    fn from_json(value: &Value, path: &str) -> Result<Self, String> {
        let mut settings = Self::default();
        for (name, v) in object(value, path)? {
            if v.is_null() {
                continue;
            }
            match name.as_str() {
                "prefix" => {
                    let Value::String(p) = v else {
                        return Err(format!(
                            "{path}.prefix: expected a string, got {}",
                            json_type(v)
                        ));
                    };
                    settings.prefix =
                        Some(env_prefix(p).map_err(|e| format!("{path}.prefix: {e}"))?);
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
fn env_prefix(p: &str) -> Result<String, String> {
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

/// A header to set, from a template.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderTemplate {
    /// Lower-case header name.
    pub name: String,
    pub template: Template,
    /// Where it came from, for messages: `request_headers.authorization`.
    pub field: String,
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

/// Fields of a vault entity.
pub const ENTITY_FIELDS: &[&str] = &["name", "prefix", "description", "config", "id", "tags"];
/// Fields of an `env` vault's settings.
pub const ENV_FIELDS: &[&str] = &["prefix"];

/// Kong encodes an empty Lua table (an empty list) as `{}`: accept it as `[]`.
fn empty_list_or(value: &Value) -> Option<&Value> {
    match value {
        Value::Null => None,
        Value::Object(map) if map.is_empty() => None,
        v => Some(v),
    }
}

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
        if text.trim().is_empty() {
            return Err("configuration is empty: expected a JSON object".into());
        }
        let root: Value =
            serde_json::from_str(text).map_err(|e| format!("configuration is not JSON: {e}"))?;
        let top = object(&root, "configuration")?;
        for name in top.keys() {
            if !TOP_LEVEL_FIELDS.contains(&name.as_str()) {
                return Err(format!(
                    "{name}: unknown field (expected one of: {})",
                    TOP_LEVEL_FIELDS.join(", ")
                ));
            }
        }
        let aws = match top.get("aws") {
            Some(v) if !v.is_null() => VaultSettings::from_json(v, "aws")?,
            _ => VaultSettings::default(),
        }
        .with_env(env)
        .map_err(|e| format!("aws: {e}"))?;

        let mut env_defaults = match top.get("env") {
            Some(v) if !v.is_null() => EnvSettings::from_json(v, "env")?,
            _ => EnvSettings::default(),
        };
        if env_defaults.prefix.is_none() {
            if let Some(p) = env("KONG_VAULT_ENV_PREFIX").filter(|p| !p.is_empty()) {
                env_defaults.prefix = Some(env_prefix(&p).map_err(|e| {
                    format!("env: environment variable KONG_VAULT_ENV_PREFIX: {e}")
                })?);
            }
        }
        let mut vaults = Vec::new();
        if let Some(list) = top.get("vaults").and_then(empty_list_or) {
            let Value::Array(items) = list else {
                return Err(format!(
                    "vaults: expected an array, got {}",
                    json_type(list)
                ));
            };
            for (i, item) in items.iter().enumerate() {
                let entity = vault_entity(item, &format!("vaults[{i}]"))?;
                if vaults
                    .iter()
                    .any(|v: &VaultEntity| v.prefix == entity.prefix)
                {
                    return Err(format!(
                        "vaults[{i}].prefix: duplicate prefix '{}'",
                        entity.prefix
                    ));
                }
                vaults.push(entity);
            }
        }
        let mut checks = Vec::new();
        let request_headers = headers(top.get("request_headers"), "request_headers", &mut checks)?;
        let resolve_incoming_headers =
            incoming_headers(top.get("resolve_incoming_headers"), &request_headers)?;
        let credentials = match top.get("credentials") {
            Some(v) if !v.is_null() => CredentialsConfig::from_json(v, "credentials")?,
            _ => CredentialsConfig::default(),
        };
        let refresh_on_status = statuses(top.get("refresh_on_status"))?;
        let refresh_min_interval_ms = match top.get("refresh_min_interval") {
            None | Some(Value::Null) => crate::cache::secs_to_ms(DEFAULT_REFRESH_MIN_INTERVAL_S),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() && (0.0..=MAX_TTL).contains(&v) => {
                    crate::cache::secs_to_ms(v)
                }
                _ => {
                    return Err(format!(
                        "refresh_min_interval: must be a number of seconds from 0 to {}",
                        MAX_TTL as u64
                    ))
                }
            },
            Some(other) => {
                return Err(format!(
                    "refresh_min_interval: expected a number, got {}",
                    json_type(other)
                ))
            }
        };
        let mut config = Config {
            credentials,
            env: env_defaults,
            resolve_incoming_headers,
            refresh_on_status,
            refresh_min_interval_ms,
            aws,
            vaults,
            request_headers,
            response_headers: headers(
                top.get("response_headers"),
                "response_headers",
                &mut checks,
            )?,
        };
        // Resolve every reference now, so a bad one fails at load time.
        let mut bad_fields = Vec::new();
        for h in config
            .request_headers
            .iter()
            .chain(&config.response_headers)
        {
            for (text, reference) in h.template.references() {
                let result = config.resolve(text, reference);
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
        config
            .request_headers
            .retain(|h| !bad_fields.contains(&h.field));
        config
            .response_headers
            .retain(|h| !bad_fields.contains(&h.field));
        Ok((config, checks))
    }

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
        let region = settings
            .region
            .clone()
            .ok_or_else(|| format!("vault '{}' has no region", reference.name))?;
        let stage = secrets_manager::version_stage(reference.version)?;
        let endpoint = settings
            .endpoint_url
            .clone()
            .unwrap_or_else(|| secrets_manager::default_endpoint(&region));
        let upstream = settings
            .upstream
            .clone()
            .unwrap_or_else(|| endpoint.authority.clone());
        if reference.resource.is_empty() {
            return Err("empty secret id".into());
        }
        Ok(ResolvedRef {
            text: text.to_string(),
            reference: reference.clone(),
            target: SecretTarget {
                vault: reference.name.clone(),
                secret_id: reference.resource.clone(),
                stage,
                region,
                endpoint,
                upstream,
                timeout_ms: settings.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
                assume_role_arn: settings.assume_role_arn.clone(),
                role_session_name: settings
                    .role_session_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_ROLE_SESSION_NAME.to_string()),
                sts_endpoint: settings.sts_endpoint_url.clone(),
                sts_upstream: settings.sts_upstream.clone(),
                ttl: settings.ttl.unwrap_or(0.0),
                neg_ttl: settings.neg_ttl.unwrap_or(0.0),
                resurrect_ttl: settings.resurrect_ttl.unwrap_or(DEFAULT_RESURRECT_TTL),
            },
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

fn vault_entity(value: &Value, path: &str) -> Result<VaultEntity, String> {
    let map = object(value, path)?;
    for name in map.keys() {
        if !ENTITY_FIELDS.contains(&name.as_str()) {
            return Err(format!(
                "{path}.{name}: unknown field (expected one of: name, prefix, description, config)"
            ));
        }
    }
    let name = match map.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(format!(
                "{path}.name: expected a string, got {}",
                json_type(v)
            ))
        }
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
    let prefix = match map.get("prefix") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(format!(
                "{path}.prefix: expected a string, got {}",
                json_type(v)
            ))
        }
        None => return Err(format!("{path}.prefix: required")),
    };
    check_prefix(&prefix).map_err(|e| format!("{path}.prefix: {e}"))?;
    let description = match map.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(format!(
                "{path}.description: expected a string, got {}",
                json_type(v)
            ))
        }
    };
    let config = map.get("config").filter(|v| !v.is_null());
    let config_path = format!("{path}.config");
    let (settings, env) = if name == "env" {
        let env = match config {
            Some(v) => EnvSettings::from_json(v, &config_path)?,
            None => EnvSettings::default(),
        };
        (VaultSettings::default(), env)
    } else {
        let settings = match config {
            Some(v) => VaultSettings::from_json(v, &config_path)?,
            None => VaultSettings::default(),
        };
        if settings.region.is_none() {
            return Err(format!(
                "{path}.config.region: required (a vault entity uses only its own config)"
            ));
        }
        (settings, EnvSettings::default())
    };
    Ok(VaultEntity {
        name,
        prefix,
        description,
        settings,
        env,
    })
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

fn headers(
    value: Option<&Value>,
    path: &str,
    checks: &mut Vec<RefCheck>,
) -> Result<Vec<HeaderTemplate>, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<HeaderTemplate> = Vec::new();
    for (name, v) in object(value, path)? {
        let field = format!("{path}.{name}");
        check_header_name(name).map_err(|e| format!("{field}: {e}"))?;
        let lower = name.to_ascii_lowercase();
        if out.iter().any(|h| h.name == lower) {
            return Err(format!(
                "{field}: header given twice (names are case-insensitive)"
            ));
        }
        let Value::String(text) = v else {
            return Err(format!("{field}: expected a string, got {}", json_type(v)));
        };
        if text.chars().any(char::is_control) {
            return Err(format!(
                "{field}: control characters are not allowed in a header value"
            ));
        }
        let template = match template::parse(text) {
            Ok(t) => t,
            Err(TemplateError::Reference { text, error }) => {
                checks.push(RefCheck {
                    field,
                    text,
                    result: Err(error.to_string()),
                });
                continue;
            }
            Err(e) => return Err(format!("{field}: {e}")),
        };
        out.push(HeaderTemplate {
            name: lower,
            template,
            field,
        });
    }
    Ok(out)
}

/// `refresh_on_status`: whole numbers from 100 to 599, each once.
fn statuses(value: Option<&Value>) -> Result<Vec<u16>, String> {
    const PATH: &str = "refresh_on_status";
    let Some(value) = value.and_then(empty_list_or) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "{PATH}: expected an array of HTTP status codes, got {}",
            json_type(value)
        ));
    };
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

fn incoming_headers(
    value: Option<&Value>,
    configured: &[HeaderTemplate],
) -> Result<Vec<String>, String> {
    const PATH: &str = "resolve_incoming_headers";
    let Some(value) = value.and_then(empty_list_or) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "{PATH}: expected an array of header names, got {}",
            json_type(value)
        ));
    };
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::String(name) = item else {
            return Err(format!(
                "{PATH}[{i}]: expected a string, got {}",
                json_type(item)
            ));
        };
        check_header_name(name).map_err(|e| format!("{PATH}[{i}]: {e}"))?;
        let lower = name.to_ascii_lowercase();
        if out.contains(&lower) {
            return Err(format!("{PATH}[{i}]: '{name}' given twice"));
        }
        if configured.iter().any(|h| h.name == lower) {
            return Err(format!(
                "{PATH}[{i}]: '{name}' is also in request_headers, which always replaces it"
            ));
        }
        out.push(lower);
    }
    Ok(out)
}

/// RFC 9110 token; pseudo-headers (`:path`) are not settable here.
fn check_header_name(name: &str) -> Result<(), String> {
    const EXTRA: &[u8] = b"!#$%&'*+-.^_`|~";
    if name.is_empty() {
        return Err("empty header name".into());
    }
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || EXTRA.contains(&b))
    {
        Ok(())
    } else {
        Err("invalid header name (letters, digits and !#$%&'*+-.^_`|~ only)".into())
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        v => Err(format!("{path}: expected an object, got {}", json_type(v))),
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// AWS region names: lower-case letters, digits and `-` (e.g. `eu-central-1`).
pub(crate) fn region(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("invalid region '{}'", printable(s)))
    }
}

/// STS RoleSessionName: 2-64 chars of `[\w+=,.@-]`.
fn session_name(s: &str) -> Result<String, String> {
    let ok = (2..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
    if ok {
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

pub(crate) fn timeout_ms(n: f64) -> Result<u32, String> {
    if n >= 1.0 && n <= f64::from(MAX_TIMEOUT_MS) && n.fract() == 0.0 {
        // In range and integral, so the cast is exact.
        Ok(n as u32)
    } else {
        Err(format!(
            "must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}"
        ))
    }
}

/// Config text echoed in messages: control characters replaced, length capped.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, &no_env)
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("config should be rejected")
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"{
              "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "ttl": 300},
              "vaults": [{"name": "aws", "prefix": "aws-sm-vault", "description": "eu",
                          "config": {"region": "eu-central-1", "ttl": 60, "upstream": "sm_eu"}}],
              "request_headers": {"Authorization": "Bearer {vault://aws/prod/api/token}"},
              "response_headers": {"x-tenant-key": "{vault://aws-sm-vault/tenant/key#2}"}
            }"#,
        )
        .unwrap();
        assert_eq!(c.request_headers[0].name, "authorization");
        let refs: Vec<_> = c.references().collect();
        assert_eq!(refs.len(), 2);
        let (h, text, r) = refs[0];
        let resolved = c.resolve(text, r).unwrap().into_aws().unwrap();
        assert_eq!(h.field, "request_headers.Authorization");
        assert_eq!(resolved.target.region, "us-east-1");
        assert_eq!(resolved.target.upstream, "127.0.0.1:4566");
        assert_eq!(resolved.target.endpoint.scheme, "http");
        assert_eq!(resolved.target.ttl, 300.0);
        assert_eq!(resolved.target.secret_id, "prod/api");
        assert_eq!(resolved.key.as_deref(), Some("token"));
        let (_, text, r) = refs[1];
        let resolved = c.resolve(text, r).unwrap().into_aws().unwrap();
        assert_eq!(resolved.target.region, "eu-central-1");
        assert_eq!(resolved.target.upstream, "sm_eu");
        assert_eq!(resolved.target.stage, VersionStage::Previous);
        assert_eq!(
            resolved.target.endpoint.authority,
            "secretsmanager.eu-central-1.amazonaws.com"
        );
        assert_eq!(
            resolved.target.upstream, "sm_eu",
            "entity config only: node defaults do not apply"
        );
        assert_eq!(resolved.target.resurrect_ttl, DEFAULT_RESURRECT_TTL);
        assert_eq!(resolved.target.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(resolved.target.role_session_name, "KongVault");
    }

    #[test]
    fn env_fills_aws_defaults_but_config_wins() {
        let env = |k: &str| match k {
            "AWS_REGION" => Some("ap-south-1".to_string()),
            "KONG_VAULT_AWS_ROLE_SESSION_NAME" => Some("FromEnv".to_string()),
            _ => None,
        };
        let c = Config::parse(r#"{"request_headers": {"x": "{vault://aws/s}"}}"#, &env).unwrap();
        assert_eq!(c.aws.region.as_deref(), Some("ap-south-1"));
        assert_eq!(c.aws.role_session_name.as_deref(), Some("FromEnv"));
        let c = Config::parse(r#"{"aws": {"region": "us-west-2"}}"#, &env).unwrap();
        assert_eq!(c.aws.region.as_deref(), Some("us-west-2"));
        let kong_first = |k: &str| match k {
            "AWS_REGION" => Some("ap-south-1".to_string()),
            "KONG_VAULT_AWS_REGION" => Some("sa-east-1".to_string()),
            _ => None,
        };
        let c = Config::parse("{}", &kong_first).unwrap();
        assert_eq!(c.aws.region.as_deref(), Some("sa-east-1"));
    }

    #[test]
    fn query_overrides_apply_and_invalid_ones_unset() {
        let c = parse(
            r#"{"aws": {"region": "us-east-1", "ttl": 300, "neg_ttl": 5},
                "request_headers": {"a": "{vault://aws/s/k?ttl=60&region=eu-west-1&neg_ttl=abc&foo=bar}"}}"#,
        )
        .unwrap();
        let (_, text, r) = c.references().next().unwrap();
        let resolved = c.resolve(text, r).unwrap().into_aws().unwrap();
        assert_eq!(resolved.target.ttl, 60.0);
        assert_eq!(resolved.target.region, "eu-west-1");
        assert_eq!(
            resolved.target.neg_ttl, 0.0,
            "invalid override unsets the field"
        );
        assert_eq!(resolved.overrides.len(), 2);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"bogus": 1}"#, "bogus: unknown field"),
            (r#"{"aws": {"sts_upstream": ""}}"#, "aws.sts_upstream:"),
            (
                r#"{"aws": {"sts_upstream": 5}}"#,
                "aws.sts_upstream: expected a string",
            ),
            (
                r#"{"refresh_on_status": 401}"#,
                "refresh_on_status: expected an array",
            ),
            (
                r#"{"refresh_on_status": [401, 600]}"#,
                "refresh_on_status[1]: must be a whole number from 100 to 599",
            ),
            (
                r#"{"refresh_on_status": [401, 401]}"#,
                "refresh_on_status[1]: 401 given twice",
            ),
            (
                r#"{"refresh_min_interval": -1}"#,
                "refresh_min_interval: must be a number of seconds",
            ),
            (
                r#"{"refresh_min_interval": "10"}"#,
                "refresh_min_interval: expected a number",
            ),
            (r#"[]"#, "configuration: expected an object"),
            ("", "configuration is empty"),
            ("{", "configuration is not JSON"),
            (r#"{"aws": {"regoin": "x"}}"#, "aws.regoin: unknown field"),
            (r#"{"aws": {"ttl": -1}}"#, "aws.ttl: must be between"),
            (r#"{"aws": {"ttl": "60"}}"#, "aws.ttl: expected a number"),
            (r#"{"aws": {"timeout_ms": 0}}"#, "aws.timeout_ms: must be"),
            (
                r#"{"aws": {"endpoint_url": "ftp://x"}}"#,
                "aws.endpoint_url:",
            ),
            (
                r#"{"aws": {"region": "US EAST"}}"#,
                "aws.region: invalid region",
            ),
            (
                r#"{"request_headers": {"x": "{vault://aws/s}"}}"#,
                "request_headers.x: {vault://aws/s}: vault 'aws' has no region",
            ),
            (
                r#"{"aws": {"region": "us-east-1"}, "request_headers": {"authorization": "{vault://nope/x}"}}"#,
                "request_headers.authorization: {vault://nope/x}: could not find vault (nope)",
            ),
            (
                r#"{"aws": {"region": "us-east-1"}, "request_headers": {"x": "{vault://aws/s#3}"}}"#,
                "request_headers.x: {vault://aws/s#3}: invalid version",
            ),
            (
                r#"{"request_headers": {"x": "{vault://env}"}}"#,
                "request_headers.x:",
            ),
            (
                r#"{"request_headers": {"bad name": "v"}}"#,
                "request_headers.bad name: invalid header name",
            ),
            (
                r#"{"request_headers": {":path": "v"}}"#,
                "request_headers.:path: invalid header name",
            ),
            (
                r#"{"request_headers": {"x": 1}}"#,
                "request_headers.x: expected a string",
            ),
            (
                r#"{"request_headers": {"X": "a", "x": "b"}}"#,
                "request_headers.x: header given twice",
            ),
            (r#"{"vaults": {"a": 1}}"#, "vaults: expected an array"),
            (
                r#"{"resolve_incoming_headers": "x"}"#,
                "resolve_incoming_headers: expected an array",
            ),
            (
                r#"{"resolve_incoming_headers": ["a b"]}"#,
                "resolve_incoming_headers[0]: invalid header name",
            ),
            (
                r#"{"resolve_incoming_headers": ["X", "x"]}"#,
                "resolve_incoming_headers[1]: 'x' given twice",
            ),
            (
                r#"{"request_headers": {"x": "v"}, "resolve_incoming_headers": ["X"]}"#,
                "resolve_incoming_headers[0]: 'X' is also in request_headers",
            ),
            (
                r#"{"vaults": [{"name": "aws", "prefix": "ok-vault"}]}"#,
                "vaults[0].config.region: required",
            ),
            (
                r#"{"vaults": [{"name": "hcv", "prefix": "ok", "config": {"region": "us-east-1"}}]}"#,
                "vaults[0].name: unsupported vault type",
            ),
            (
                r#"{"vaults": [{"name": "aws", "prefix": "aws", "config": {"region": "us-east-1"}}]}"#,
                "vaults[0].prefix: prefix 'aws' is a vault type name",
            ),
            (
                r#"{"vaults": [{"name": "aws", "prefix": "Bad", "config": {"region": "us-east-1"}}]}"#,
                "vaults[0].prefix: invalid prefix",
            ),
            (
                r#"{"vaults": [{"name": "aws", "prefix": "a-", "config": {"region": "us-east-1"}}]}"#,
                "vaults[0].prefix: invalid prefix",
            ),
            (
                r#"{"vaults": [{"name": "aws", "prefix": "ab", "config": {"region": "us-east-1"}}, {"name": "aws", "prefix": "ab", "config": {"region": "us-east-1"}}]}"#,
                "vaults[1].prefix: duplicate",
            ),
            (
                r#"{"vaults": [{"name": "aws", "prefix": "ab", "config": {"region": "us-east-1", "x": 1}}]}"#,
                "vaults[0].config.x: unknown field",
            ),
            (
                r#"{"vaults": [{"name": "aws", "prefix": "ab", "confg": {}}]}"#,
                "vaults[0].confg: unknown field",
            ),
        ];
        for (text, expected) in cases {
            let e = err(text);
            assert!(
                e.starts_with(expected),
                "{text}\n  gave: {e}\n  want: {expected}"
            );
        }
    }

    #[test]
    fn env_vault_variables() {
        let c = parse(
            r#"{"env": {"prefix": "app_"},
                "vaults": [{"name": "env", "prefix": "ssl-env", "config": {"prefix": "ssl_"}}],
                "request_headers": {"a": "{vault://env/my-secret}", "b": "{vault://env/db-creds/user#2}",
                                    "c": "{vault://ssl-env/cert}", "d": "{vault://env/cert/key?prefix=TLS_#1}"}}"#,
        )
        .unwrap();
        let vars: Vec<(String, Option<String>)> = c
            .references()
            .map(|(_, t, r)| match c.resolve(t, r).unwrap() {
                Resolved::Env(e) => (e.variable, e.key),
                Resolved::Aws(_) => panic!("env expected"),
            })
            .collect();
        assert_eq!(
            vars,
            vec![
                ("APP_MY_SECRET".to_string(), None),
                (
                    "APP_DB_CREDS_PREVIOUS".to_string(),
                    Some("user".to_string())
                ),
                ("SSL_CERT".to_string(), None),
                ("TLS_CERT".to_string(), Some("key".to_string())),
            ]
        );
        let env = |k: &str| (k == "KONG_VAULT_ENV_PREFIX").then(|| "NODE_".to_string());
        let c = Config::parse(r#"{"request_headers": {"a": "{vault://env/x}"}}"#, &env).unwrap();
        assert_eq!(c.env.prefix.as_deref(), Some("NODE_"));
    }

    #[test]
    fn prefix_rules() {
        for ok in ["ab", "aws-sm-vault", "a1", "x-y-2"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["a", "1a", "-a", "a-", "A1", "a_b", "env", "aws", ""] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared_secret_targets_have_one_descriptor() {
        let c = parse(
            r#"{"aws": {"region": "us-east-1"},
                "request_headers": {"x": "{vault://aws/db/user}:{vault://aws/db/pass}", "y": "{vault://aws/db/pass#2}"}}"#,
        )
        .unwrap();
        let d: Vec<String> = c
            .references()
            .map(|(_, t, r)| {
                c.resolve(t, r)
                    .unwrap()
                    .into_aws()
                    .unwrap()
                    .target
                    .descriptor()
            })
            .collect();
        assert_eq!(d[0], d[1]);
        assert_ne!(d[0], d[2]);
    }
}
