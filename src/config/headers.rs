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
        let field = format!("{path}.{name}");
        check_header_name(name).map_err(|e| format!("{field}: {e}"))?;
        let lower = name.to_ascii_lowercase();
        if out.iter().any(|h| h.name == lower) {
            return Err(format!(
                "{field}: header given twice (names are case-insensitive)"
            ));
        }
        let text = string(v).map_err(|e| format!("{field}: {e}"))?;
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
