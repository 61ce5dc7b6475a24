//! URLs with a path (container endpoint, token URLs) and the `GET` that
//! fetches one.

use crate::aws::secrets_manager::{self, Endpoint};
use crate::aws::HttpRequest;

/// A URL with a path: `http[s]://host[:port]/path?query`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    pub endpoint: Endpoint,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parse a URL that may have a path and query (not a fragment or userinfo).
/// Errors never quote the URL.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("URL must start with http:// or https://".into());
    };
    let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = (rest.get(..cut).unwrap_or(""), rest.get(cut..).unwrap_or(""));
    if path.contains('#') {
        return Err("URL must not have a fragment (#...)".into());
    }
    let endpoint = secrets_manager::parse_endpoint_url(&format!("{scheme}://{authority}"))
        .map_err(|e| e.replace("endpoint URL", "URL"))?;
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if !valid_path(&path) {
        return Err("URL path must be printable ASCII without spaces".into());
    }
    Ok(Url { endpoint, path })
}

/// A request path: starts with `/`, printable ASCII, no spaces.
pub(crate) fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

pub(crate) fn get_request(url: &Url, headers: Vec<(String, String)>) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        scheme: url.endpoint.scheme.clone(),
        authority: url.endpoint.authority.clone(),
        path: url.path.clone(),
        headers,
        body: Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://169.254.170.2/v2/credentials/abc?x=1").unwrap();
        assert_eq!(u.endpoint.authority, "169.254.170.2");
        assert_eq!(u.path, "/v2/credentials/abc?x=1");
        let u = parse_url("https://[fd00:ec2::23]:8443").unwrap();
        assert_eq!(u.endpoint.authority, "[fd00:ec2::23]:8443");
        assert_eq!(u.path, "/");
        assert_eq!(parse_url("http://h?q").unwrap().path, "/?q");
        for bad in [
            "169.254.170.2/x",
            "ftp://h/x",
            "http://u:p@h/x",
            "http:///x",
            "http://h/a b",
            "http://h/x#f",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(!e.contains("u:p"), "{e}");
        }
    }
}
