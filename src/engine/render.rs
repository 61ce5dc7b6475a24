//! The configured headers: templates compiled once into literal text and
//! references ([`CompiledHeader`]), each reference's header-safe value
//! derived when its secret's value changes, and the headers rendered once per
//! change ([`Engine::render`]). A secret's value goes into a header only
//! through [`header_safe`] and [`checked_header`].

use std::rc::Rc;

use super::{Engine, Rendered, MAX_HEADER_VALUE_LEN, MAX_SECRETS};
use crate::aws::secrets_manager;
use crate::config::{Config, EnvRef, HeaderTemplate, Resolved, SecretTarget};
use crate::reference::Reference;
use crate::template::Segment;

pub(super) struct RefSlot {
    text: String,
    secret: usize,
    key: Option<String>,
    /// Derived from the secret's value: the header-safe value, or why not.
    value: Result<String, String>,
}

pub(super) enum Part {
    Lit(String),
    Ref(usize),
}

pub(super) struct CompiledHeader {
    name: String,
    parts: Vec<Part>,
}

impl Engine {
    pub(super) fn compile(
        &mut self,
        config: &Config,
        h: &HeaderTemplate,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CompiledHeader, String> {
        self.compile_template(config, h, env)
            .map_err(|e| format!("{}: {e}", h.field))
    }

    /// Turn a configured template into parts, registering its secrets.
    #[inline(never)] // see Config::fields
    fn compile_template(
        &mut self,
        config: &Config,
        h: &HeaderTemplate,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CompiledHeader, String> {
        let mut parts = Vec::new();
        for segment in &h.template.segments {
            match segment {
                Segment::Literal(text) => parts.push(Part::Lit(text.clone())),
                Segment::Reference { text, reference } => {
                    parts.push(self.compile_reference(config, text, reference, env)?);
                }
            }
        }
        Ok(CompiledHeader {
            name: h.name.clone(),
            parts,
        })
    }

    /// A configured reference: an `env` one's value now, an AWS one's slot.
    #[inline(never)] // see Config::fields
    fn compile_reference(
        &mut self,
        config: &Config,
        text: &str,
        reference: &Reference,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Part, String> {
        let resolved = match config.resolve(text, reference) {
            Err(e) => return Err(format!("{text}: {e}")),
            Ok(Resolved::Aws(r)) => *r,
            Ok(Resolved::Env(r)) => {
                let value = env_value(&r, env).map_err(|e| format!("{text}: {e}"))?;
                return Ok(Part::Lit(value));
            }
        };
        let secret = self.configured_secret(text, resolved.target)?;
        Ok(Part::Ref(self.ref_slot(text, secret, resolved.key)))
    }

    /// The index of the secret `target` names, registered if new.
    #[inline(never)] // see Config::fields
    fn configured_secret(&mut self, text: &str, target: SecretTarget) -> Result<usize, String> {
        let descriptor = target.descriptor();
        if let Some(i) = self.secrets.iter().position(|s| s.descriptor == descriptor) {
            return Ok(i);
        }
        if self.secrets.len() >= MAX_SECRETS {
            return Err(format!(
                "{text}: too many distinct secrets (limit {MAX_SECRETS})"
            ));
        }
        let secret = self
            .new_secret(target, false, 0)
            .map_err(|e| format!("{text}: {e}"))?;
        self.secrets.push(secret);
        Ok(self.secrets.len() - 1)
    }

    /// The index of the reference slot for `key` of `secret`, added if new.
    fn ref_slot(&mut self, text: &str, secret: usize, key: Option<String>) -> usize {
        if let Some(i) = self
            .refs
            .iter()
            .position(|r| r.secret == secret && r.key == key)
        {
            return i;
        }
        self.refs.push(RefSlot {
            text: text.to_string(),
            secret,
            key,
            value: Err("not fetched yet".into()),
        });
        self.refs.len() - 1
    }

    /// Recompute the header-safe values of every configured reference to
    /// secret `i` (the JSON parsed once), and forget the keys derived for
    /// incoming references.
    #[inline(never)] // see Config::fields
    pub(super) fn derive(&mut self, i: usize) {
        let Some(s) = self.secrets.get_mut(i) else {
            return;
        };
        s.keys.clear();
        let value = s.entry.as_ref().and_then(|e| e.value.as_deref());
        let binary = s.entry.as_ref().is_some_and(|e| e.binary);
        let mut parsed = None;
        for slot in self.refs.iter_mut().filter(|r| r.secret == i) {
            slot.value = match (value, &slot.key) {
                (None, _) => Err("no value".into()),
                (Some(v), None) => header_safe(v.to_string()),
                (Some(_), Some(_)) if binary => Err(BINARY_KEY.into()),
                (Some(v), Some(key)) => parsed
                    .get_or_insert_with(|| secrets_manager::parse_object(v))
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|object| secrets_manager::key_of(object, key))
                    .map_err(|e| format!("key '{key}': {e}"))
                    .and_then(header_safe),
            };
        }
    }

    /// The secrets the configured request headers use.
    fn request_secrets(&self) -> Vec<usize> {
        let mut used: Vec<usize> = Vec::new();
        for part in self.request.iter().flat_map(|h| &h.parts) {
            if let Part::Ref(r) = part {
                if let Some(i) = self.refs.get(*r).map(|r| r.secret) {
                    if !used.contains(&i) {
                        used.push(i);
                    }
                }
            }
        }
        used
    }

    /// Render every configured header; cached until a secret value changes.
    pub(super) fn render(&mut self) -> Result<Rc<Rendered>, String> {
        if let Some(r) = &self.rendered {
            return r.clone();
        }
        let r = self.render_now().map(Rc::new);
        self.rendered = Some(r.clone());
        r
    }

    fn render_now(&self) -> Result<Rendered, String> {
        let used = if self.config.refresh_on_status.is_empty() {
            Vec::new()
        } else {
            self.request_secrets()
        };
        Ok(Rendered {
            used,
            gen: self.gen,
            request: self
                .request
                .iter()
                .map(|h| self.render_header(h))
                .collect::<Result<_, _>>()?,
            response: self
                .response
                .iter()
                .map(|h| self.render_header(h))
                .collect::<Result<_, _>>()?,
        })
    }

    fn render_header(&self, h: &CompiledHeader) -> Result<(String, String), String> {
        let mut value = String::new();
        for part in &h.parts {
            match part {
                Part::Lit(text) => value.push_str(text),
                Part::Ref(i) => {
                    let slot = self.refs.get(*i).ok_or("internal: unknown reference")?;
                    let v = slot
                        .value
                        .as_ref()
                        .map_err(|e| format!("reference {} failed: {e}", slot.text))?;
                    value.push_str(v);
                }
            }
        }
        checked_header(&h.name, value)
    }
}

/// Why a key reference to a SecretBinary secret fails.
pub(super) const BINARY_KEY: &str =
    "the secret holds SecretBinary: a key cannot be taken from it (reference the whole secret for its base64 text)";

/// A rendered header, if its value may be sent.
pub(super) fn checked_header(name: &str, value: String) -> Result<(String, String), String> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(format!(
            "header {name} would be longer than {MAX_HEADER_VALUE_LEN} bytes"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("header {name} would contain control characters"));
    }
    Ok((name.to_string(), value))
}

/// The value of an `env` vault reference, checked like a fetched secret.
#[inline(never)] // see Config::fields
pub(super) fn env_value(
    r: &EnvRef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let value = env(&r.variable).ok_or_else(|| {
        format!(
            "environment variable {} is not set or not visible to the filter (Envoy: vm_config.environment_variables; Kong: nginx env directive)",
            r.variable
        )
    })?;
    match &r.key {
        None => header_safe(value),
        Some(key) => secrets_manager::extract_key(&value, key)
            .map_err(|e| format!("key '{key}': {e}"))
            .and_then(header_safe),
    }
}

/// A value may go into a header only if it has no control characters (CR, LF,
/// NUL, TAB, DEL...) and is not too long: a secret must never split a header.
pub(super) fn header_safe(value: String) -> Result<String, String> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(format!("value is longer than {MAX_HEADER_VALUE_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(
            "value contains control characters (CR, LF, NUL, ...) and cannot go into a header"
                .into(),
        );
    }
    Ok(value)
}
