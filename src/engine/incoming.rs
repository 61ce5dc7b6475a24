//! References named by requests (`resolve_incoming_headers`): a client
//! chooses them, so everything they cost is bounded.
//!
//! - Per request: every allowlisted header at most once, each at most
//!   [`MAX_VALUE_LEN`] bytes, at most [`MAX_REFERENCES`] references in all.
//! - Secrets named only by requests live beside the configured ones in a
//!   table of their own of [`MAX_SECRETS`], least recently used evicted
//!   first; a name not cached anywhere yet is admitted at most
//!   [`NEW_PER_SECOND`] per second (bursts of [`NEW_BURST`]), so junk names
//!   cost a bounded number of GetSecretValue calls (one each); a name whose
//!   value is in shared data costs no fetch and is always admitted. Unused for [`IDLE_MS`], they are neither
//!   refreshed nor retried. They take no fetch lease and publish only
//!   values, never failures, so junk leaves nothing in shared data.
//! - Keys of a secret named by requests: derived on demand, at most
//!   [`MAX_KEYS`] kept per secret, dropped when the value changes.
//!
//! Configured secrets are never evicted and never locked out by these.

use std::rc::Rc;

use super::render::{checked_header, header_safe, BINARY_KEY};
use super::{Engine, Rendered};
use crate::aws::secrets_manager;
use crate::cache::SharedStore;
use crate::config::Resolved;
use crate::reference::Reference;
use crate::template::{Segment, Template};

/// Most secrets named only by requests, per root and worker.
pub const MAX_SECRETS: usize = 64;
/// Most references one request may carry in its trusted headers.
pub const MAX_REFERENCES: usize = 16;
/// Longest trusted incoming header value, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;
/// Most derived keys kept per secret for incoming references.
pub const MAX_KEYS: usize = 32;
/// A secret named only by requests and unused this long is not refreshed.
pub const IDLE_MS: u64 = 60_000;
/// Admission of secrets not seen before: a bucket of `NEW_BURST`,
/// refilled `NEW_PER_SECOND` per second.
pub const NEW_BURST: u32 = 32;
pub const NEW_PER_SECOND: u32 = 8;

/// A trusted incoming header to render for one request.
pub(super) struct IncomingHeader {
    name: String,
    parts: Vec<Part>,
}

enum Part {
    Lit(String),
    Ref {
        secret: usize,
        key: Option<String>,
        text: String,
    },
}

/// The admission bucket for new incoming secrets.
#[derive(Debug, Clone)]
pub(super) struct Admission {
    /// Thousandths of a token.
    milli_tokens: u64,
    at: u64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            milli_tokens: u64::from(NEW_BURST) * 1000,
            at: 0,
        }
    }
}

impl Admission {
    fn take(&mut self, now: u64) -> bool {
        let refill = now.saturating_sub(self.at) * u64::from(NEW_PER_SECOND);
        self.milli_tokens = (self.milli_tokens + refill).min(u64::from(NEW_BURST) * 1000);
        self.at = now;
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

impl Engine {
    /// Compile the templates found in trusted incoming headers.
    #[inline(never)] // see Config::fields
    pub(super) fn compile_incoming(
        &mut self,
        incoming: &[(&str, &str)],
        now: u64,
        store: &dyn SharedStore,
    ) -> Result<Vec<IncomingHeader>, String> {
        refuse_repeated(incoming)?;
        let mut extra = Vec::new();
        let mut references = 0usize;
        let mut pinned = Vec::new();
        for (name, value) in incoming {
            let header = self.compile_incoming_header(
                name,
                value,
                now,
                store,
                &mut references,
                &mut pinned,
            )?;
            extra.extend(header);
        }
        Ok(extra)
    }

    /// One trusted incoming header compiled; `None` when it has no reference.
    /// `references`: counted across the request; `pinned`: its secrets so far.
    #[inline(never)] // see Config::fields
    fn compile_incoming_header(
        &mut self,
        name: &str,
        value: &str,
        now: u64,
        store: &dyn SharedStore,
        references: &mut usize,
        pinned: &mut Vec<usize>,
    ) -> Result<Option<IncomingHeader>, String> {
        let name = name.to_ascii_lowercase();
        let template = incoming_template(&name, value)?;
        if !template.has_references() {
            return Ok(None);
        }
        let mut parts = Vec::new();
        for segment in template.segments {
            let (text, reference) = match segment {
                Segment::Literal(text) => {
                    parts.push(Part::Lit(text));
                    continue;
                }
                Segment::Reference { text, reference } => (text, reference),
            };
            *references += 1;
            if *references > MAX_REFERENCES {
                return Err(format!(
                    "more than {MAX_REFERENCES} references in the request's headers"
                ));
            }
            let (secret, key) =
                self.incoming_reference(&name, &text, &reference, now, pinned, store)?;
            pinned.push(secret);
            parts.push(Part::Ref { secret, key, text });
        }
        Ok(Some(IncomingHeader { name, parts }))
    }

    /// The secret (tracked from now on) and key that reference `text` in
    /// incoming header `name` names; `Err` when a request may not name it.
    #[inline(never)] // see Config::fields
    fn incoming_reference(
        &mut self,
        name: &str,
        text: &str,
        reference: &Reference,
        now: u64,
        pinned: &[usize],
        store: &dyn SharedStore,
    ) -> Result<(usize, Option<String>), String> {
        let field = format!("incoming header {name}: {}", crate::text::quoted(text));
        if !reference.query.is_empty() {
            return Err(format!(
                "{field}: query overrides are not allowed in request headers"
            ));
        }
        let resolved = match self.config.resolve(text, reference) {
            Err(e) => return Err(format!("{field}: {e}")),
            Ok(Resolved::Env(_)) => {
                return Err(format!(
                    "{field}: env vault references are not allowed in request headers"
                ))
            }
            Ok(Resolved::Aws(r)) => *r,
        };
        if resolved.target.secret_id.chars().any(char::is_control) {
            // No secret has such a name: not worth a call to AWS.
            return Err(format!("{field}: the secret id has control characters"));
        }
        let secret = self
            .incoming_secret(resolved.target, now, pinned, store)
            .map_err(|e| format!("{field}: {e}"))?;
        Ok((secret, resolved.key))
    }

    /// The secret `target` names, tracked from now on if it is not yet.
    /// `pinned`: secrets this request already uses (never evicted for it).
    #[inline(never)] // see Config::fields
    fn incoming_secret(
        &mut self,
        target: crate::config::SecretTarget,
        now: u64,
        pinned: &[usize],
        store: &dyn SharedStore,
    ) -> Result<usize, String> {
        let descriptor = target.descriptor();
        if let Some(i) = self.secrets.iter().position(|s| s.descriptor == descriptor) {
            if let Some(s) = self.secrets.get_mut(i) {
                s.last_used = now;
            }
            return Ok(i);
        }
        let tracked = self.secrets.iter().filter(|s| s.incoming).count();
        let victim = if tracked < MAX_SECRETS {
            None
        } else {
            let victim = (self.configured..self.secrets.len())
                .filter(|i| !pinned.contains(i) && self.evictable(*i))
                .min_by_key(|&i| self.secrets.get(i).map_or(0, |s| s.last_used));
            match victim {
                Some(i) => Some(i),
                None => {
                    return Err(format!(
                        "too many secrets named by requests in use (limit {MAX_SECRETS})"
                    ))
                }
            }
        };
        let cached = crate::cache::load(store, &crate::cache::shared_key(&descriptor), &descriptor)
            .is_some_and(|e| e.value.is_some());
        if !cached && !self.admission.take(now) {
            return Err(format!(
                "too many new secrets named by requests (at most {NEW_PER_SECOND} per second)"
            ));
        }
        let secret = self.new_secret(target, true, now)?;
        match victim.and_then(|i| self.secrets.get_mut(i).map(|s| (i, s))) {
            Some((i, slot)) => {
                *slot = secret;
                Ok(i)
            }
            None => {
                self.secrets.push(secret);
                Ok(self.secrets.len() - 1)
            }
        }
    }

    /// May secret `i` be forgotten? Only one named by requests, with no
    /// fetch in flight and no paused request waiting for it.
    fn evictable(&self, i: usize) -> bool {
        let Some(s) = self.secrets.get(i) else {
            return false;
        };
        s.incoming
            && s.fetch.is_none()
            && !self
                .fetches
                .values()
                .any(|f| matches!(f.kind, super::FetchKind::Secret { secret, .. } if secret == i))
            && !self
                .waiters
                .values()
                .any(|w| w.extra.iter().any(|h| h.uses(i)))
    }

    /// Secrets beyond the configured ones that `extra` headers need.
    pub(super) fn extra_secrets(&self, extra: &[IncomingHeader]) -> Vec<usize> {
        let mut needs: Vec<usize> = Vec::new();
        let refs = extra.iter().flat_map(|h| &h.parts).filter_map(|p| match p {
            Part::Ref { secret, .. } => Some(*secret),
            Part::Lit(_) => None,
        });
        // At most MAX_REFERENCES: a linear check beats a sort.
        for i in refs.filter(|i| *i >= self.configured) {
            if !needs.contains(&i) {
                needs.push(i);
            }
        }
        needs
    }

    /// Is secret `i` named only by requests, and unused for [`IDLE_MS`]?
    pub(super) fn idle(&self, i: usize, now: u64) -> bool {
        self.secrets
            .get(i)
            .is_some_and(|s| s.incoming && now.saturating_sub(s.last_used) >= IDLE_MS)
    }

    /// Is secret `i` named only by requests and without a value (junk, or
    /// failing)?
    pub(super) fn unvalued_incoming(&self, i: usize) -> bool {
        self.secrets
            .get(i)
            .is_some_and(|s| s.incoming && s.entry.as_ref().is_none_or(|e| e.value.is_none()))
    }

    /// The configured headers plus `extra` ones (which replace a configured
    /// header of the same name).
    pub(super) fn render_with(&mut self, extra: &[IncomingHeader]) -> Result<Rc<Rendered>, String> {
        let base = self.render()?;
        if extra.is_empty() {
            return Ok(base);
        }
        let mut rendered = (*base).clone();
        if !self.config.refresh_on_status.is_empty() {
            add_used(&mut rendered.used, extra);
        }
        for h in extra {
            let value = self.incoming_value(h)?;
            let (name, value) = checked_header(&h.name, value)?;
            rendered.request.retain(|(n, _)| *n != name);
            rendered.request.push((name, value));
        }
        Ok(Rc::new(rendered))
    }

    /// Incoming header `h` rendered (before [`checked_header`]).
    #[inline(never)] // see Config::fields
    fn incoming_value(&mut self, h: &IncomingHeader) -> Result<String, String> {
        let mut value = String::new();
        for part in &h.parts {
            match part {
                Part::Lit(text) => value.push_str(text),
                Part::Ref { secret, key, text } => {
                    let v = self.key_value(*secret, key.as_deref()).map_err(|e| {
                        format!("reference {} failed: {e}", crate::text::quoted(text))
                    })?;
                    value.push_str(&v);
                }
            }
        }
        Ok(value)
    }

    /// The header-safe value of `key` (or the whole value) of secret `i`.
    #[inline(never)] // see Config::fields
    fn key_value(&mut self, i: usize, key: Option<&str>) -> Result<String, String> {
        let s = self.secrets.get_mut(i).ok_or("internal: unknown secret")?;
        let value = s
            .entry
            .as_ref()
            .and_then(|e| e.value.as_deref())
            .ok_or("no value")?;
        let Some(key) = key else {
            return header_safe(value.to_string());
        };
        if s.entry.as_ref().is_some_and(|e| e.binary) {
            return Err(BINARY_KEY.into());
        }
        if let Some((_, v)) = s.keys.iter().find(|(k, _)| k == key) {
            return v.clone();
        }
        let derived = secrets_manager::extract_key(value, key)
            .map_err(|e| format!("key '{}': {e}", crate::text::quoted(key)))
            .and_then(header_safe);
        if s.keys.len() >= MAX_KEYS {
            let _oldest = s.keys.remove(0);
        }
        s.keys.push((key.to_string(), derived.clone()));
        derived
    }
}

/// Refuse a request that sends one trusted header more than once.
#[inline(never)] // see Config::fields
fn refuse_repeated(incoming: &[(&str, &str)]) -> Result<(), String> {
    for (k, (name, _)) in incoming.iter().enumerate() {
        let again = incoming
            .iter()
            .skip(k + 1)
            .any(|(other, _)| other.eq_ignore_ascii_case(name));
        if again {
            // Which value would the upstream see? Refuse rather than guess.
            return Err(format!(
                "incoming header {} was sent more than once",
                crate::text::quoted(&name.to_ascii_lowercase())
            ));
        }
    }
    Ok(())
}

/// The template in the value of trusted incoming header `name`.
#[inline(never)] // see Config::fields
fn incoming_template(name: &str, value: &str) -> Result<Template, String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "incoming header {name} is longer than {MAX_VALUE_LEN} bytes"
        ));
    }
    crate::template::parse(value).map_err(|e| format!("incoming header {name}: {e}"))
}

/// Add the secrets `extra` headers use to `used` (once each).
#[inline(never)] // see Config::fields
fn add_used(used: &mut Vec<usize>, extra: &[IncomingHeader]) {
    for secret in extra.iter().flat_map(|h| &h.parts).filter_map(|p| match p {
        Part::Ref { secret, .. } => Some(*secret),
        Part::Lit(_) => None,
    }) {
        if !used.contains(&secret) {
            used.push(secret);
        }
    }
}

impl IncomingHeader {
    fn uses(&self, secret: usize) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Ref { secret: s, .. } if *s == secret))
    }
}
