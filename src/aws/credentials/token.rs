//! Tokens a source sends along (the web identity token, the container
//! authorization token): where they come from ([`TokenSettings`] ->
//! [`TokenSource`]), and, for a token URL (a projected token file served over
//! HTTP, see the module docs of [`credentials`](super)), the callout fetching
//! it and the token in its answer.

use super::url::get_request;
use super::{scrub, valid_token, var, Env, Outgoing, Url, MAX_BODY_LEN};
use crate::aws::HttpResponse;

/// Where a source's token comes from.
pub(crate) enum TokenSource {
    /// The token itself, read once from an environment variable.
    Static(String),
    /// Fetched from a URL before every refresh.
    Url { url: Url, upstream: String },
}

impl TokenSource {
    /// What `Debug` shows: never the token.
    pub(crate) fn describe(&self) -> String {
        match self {
            TokenSource::Static(_) => "static (redacted)".to_string(),
            TokenSource::Url { url, .. } => format!("from {}", url.endpoint.authority),
        }
    }
}

/// A source's token settings, in order of precedence: a token URL, the
/// token in a variable, a token file (which a filter cannot read).
pub(crate) struct TokenSettings<'a> {
    /// `credentials.*_token_url` and its upstream (default: its `host[:port]`).
    pub url: Option<&'a Url>,
    pub upstream: Option<&'a str>,
    /// The variable holding the token itself, the check its trimmed value
    /// must pass, and the error when it does not.
    pub var: &'static str,
    pub valid: fn(&str) -> bool,
    pub invalid: &'static str,
    /// The `_FILE` variable, and the error when it is the only one set.
    pub file_var: &'static str,
    pub file_error: &'static str,
}

impl TokenSettings<'_> {
    /// The token source; `Ok(None)` when nothing is set, `Err` when what is
    /// set cannot be used.
    pub(crate) fn source(&self, env: Env) -> Result<Option<TokenSource>, String> {
        if let Some(url) = self.url {
            return Ok(Some(TokenSource::Url {
                url: url.clone(),
                upstream: self
                    .upstream
                    .map_or_else(|| url.endpoint.authority.clone(), str::to_string),
            }));
        }
        if let Some(token) = var(env, self.var) {
            let token = token.trim().to_string();
            if !(self.valid)(&token) {
                return Err(self.invalid.to_string());
            }
            return Ok(Some(TokenSource::Static(token)));
        }
        if var(env, self.file_var).is_some() {
            return Err(self.file_error.to_string());
        }
        Ok(None)
    }
}

/// The callout fetching a token from a URL (a projected token file served
/// over HTTP, see the module docs).
pub(crate) fn token_request(url: &Url, upstream: &str, timeout_ms: u32) -> Outgoing {
    Outgoing {
        upstream: upstream.to_string(),
        request: get_request(url, Vec::new()),
        timeout_ms,
    }
}

/// The token in a token URL's answer: a 200 whose body, trimmed, is
/// printable ASCII without spaces. The body is the token: never excerpted.
pub(crate) fn token_from(
    result: Result<HttpResponse, String>,
    what: &str,
) -> Result<String, String> {
    let resp =
        result.map_err(|e| format!("callout to the {what} URL failed: {}", scrub(&e, &[], 200)))?;
    if resp.status != 200 {
        return Err(format!("the {what} URL answered HTTP {}", resp.status));
    }
    if resp.body.len() > MAX_BODY_LEN {
        return Err(format!("the {what} URL answered more than 64 KiB"));
    }
    let token = std::str::from_utf8(&resp.body)
        .map(str::trim)
        .map_err(|_| format!("the {what} URL answered a body that is not UTF-8"))?;
    if token.is_empty() {
        return Err(format!("the {what} URL answered an empty body"));
    }
    if !valid_token(token) {
        return Err(format!(
            "the {what} URL answered a body that is not a token (printable ASCII without spaces)"
        ));
    }
    Ok(token.to_string())
}
