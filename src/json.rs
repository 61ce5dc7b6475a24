//! JSON field helpers for the configuration parsers.
//!
//! Both the plugin configuration ([`crate::config`]) and the credentials
//! settings in it ([`crate::aws::credentials::CredentialsConfig`]) walk
//! `serde_json::Value` by hand so that every error names its field. The
//! pieces they share live here, owned by neither: type names for messages,
//! objects, strings and lists with those messages (Kong's `{}` counting as an
//! empty list),
//! and the value rules both apply (region, timeout, echoed text).

use serde_json::{Map, Value};

/// Longest callout timeout accepted.
pub const MAX_TIMEOUT_MS: u32 = 60_000;

/// What a JSON value is, for messages: `expected a string, got a number`.
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

/// `value` as an object; the error starts with `path: `.
pub(crate) fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        v => Err(format!("{path}: expected an object, got {}", json_type(v))),
    }
}

/// `value` as a string; the caller prefixes the field.
pub(crate) fn string(v: &Value) -> Result<&str, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("expected a string, got {}", json_type(other))),
    }
}

/// Field `name` of the object at `path`, a string; the error starts with
/// `path.name: `.
pub(crate) fn string_field(v: &Value, path: &str, name: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "{path}.{name}: expected a string, got {}",
            json_type(other)
        )),
    }
}

/// A list field: absent, `null` or `{}` is the empty list; anything else must
/// be an array (`array` names it in the error: `an array of header names`).
pub(crate) fn list<'a>(
    value: Option<&'a Value>,
    path: &str,
    array: &str,
) -> Result<&'a [Value], String> {
    match value.and_then(empty_list_or) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(v) => Err(format!("{path}: expected {array}, got {}", json_type(v))),
    }
}

/// Kong encodes an empty Lua table (an empty list) as `{}`: accept it as `[]`.
fn empty_list_or(value: &Value) -> Option<&Value> {
    match value {
        Value::Null => None,
        Value::Object(map) if map.is_empty() => None,
        v => Some(v),
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

/// A callout timeout: whole milliseconds from 1 to [`MAX_TIMEOUT_MS`].
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
