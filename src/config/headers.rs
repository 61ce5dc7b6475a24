//! Headers: the `request_headers` / `response_headers` templates and the
//! `resolve_incoming_headers` names, with header-name rules.

use serde_json::Value;

use super::RefCheck;
use crate::json::{list, object, string};
use crate::template::{self, Template, TemplateError};

/// A header to set, from a template.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderTemplate {
    /// Lower-case header name.
    pub name: String,
    pub template: Template,
    /// Where it came from, for messages: `request_headers.authorization`.
    pub field: String,
}

#[inline(never)] // see Config::fields
pub(super) fn headers(
    value: Option<&Value>,
    path: &str,
    checks: &mut Vec<RefCheck>,
) -> Result<Vec<HeaderTemplate>, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<HeaderTemplate> = Vec::new();
    for (name, v) in object(value, path)? {
        if let Some(header) = header(path, name, v, &out, checks)? {
            out.push(header);
        }
    }
    Ok(out)
}

/// One `name: template` entry, given the headers before it. `None`: its template
/// holds a bad reference, recorded in `checks`.
#[inline(never)] // see Config::fields
fn header(
    path: &str,
    name: &str,
    v: &Value,
    before: &[HeaderTemplate],
    checks: &mut Vec<RefCheck>,
) -> Result<Option<HeaderTemplate>, String> {
    let field = format!("{path}.{name}");
    let lower = new_header_name(name, before, &field)?;
    let text = header_value(v, &field)?;
    let template = match template::parse(text) {
        Ok(t) => t,
        Err(TemplateError::Reference { text, error }) => {
            checks.push(RefCheck {
                field,
                text,
                result: Err(error.to_string()),
            });
            return Ok(None);
        }
        Err(e) => return Err(format!("{field}: {e}")),
    };
    Ok(Some(HeaderTemplate {
        name: lower,
        template,
        field,
    }))
}

/// A header's name, lower-cased, unless invalid or already in `before`.
#[inline(never)] // see Config::fields
fn new_header_name(name: &str, before: &[HeaderTemplate], field: &str) -> Result<String, String> {
    check_header_name(name).map_err(|e| format!("{field}: {e}"))?;
    let lower = name.to_ascii_lowercase();
    if before.iter().any(|h| h.name == lower) {
        return Err(format!(
            "{field}: header given twice (names are case-insensitive)"
        ));
    }
    Ok(lower)
}

/// A header's template text: a string without control characters.
#[inline(never)] // see Config::fields
fn header_value<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    let text = string(v).map_err(|e| format!("{field}: {e}"))?;
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{field}: control characters are not allowed in a header value"
        ));
    }
    Ok(text)
}

#[inline(never)] // see Config::fields
pub(super) fn incoming_headers(
    value: Option<&Value>,
    configured: &[HeaderTemplate],
) -> Result<Vec<String>, String> {
    const PATH: &str = "resolve_incoming_headers";
    let items = list(value, PATH, "an array of header names")?;
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let name = string(item).map_err(|e| format!("{PATH}[{i}]: {e}"))?;
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
