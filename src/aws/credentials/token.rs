//! Tokens fetched from a URL before every refresh (a projected token file
//! served over HTTP, see the module docs of [`credentials`](super)): the
//! callout, and the token in its answer.

use super::url::get_request;
use super::{scrub, valid_token, Outgoing, Url, MAX_BODY_LEN};
use crate::aws::HttpResponse;

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
