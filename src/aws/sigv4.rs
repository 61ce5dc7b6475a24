//! SigV4 header signing of an [`HttpRequest`](super::HttpRequest).
//!
//! The canonical request, string to sign and `Authorization` header are built
//! here, exactly as `aws-sigv4`'s HTTP signer builds them with its default
//! settings (non-S3: path normalized and double-encoded, query form-decoded,
//! re-encoded and sorted, signature in headers, no `x-amz-content-sha256`,
//! session token signed); the tests check this byte for byte against that
//! signer on generated requests, and against botocore. The hashes and the
//! HMAC chain use `sha2` and `hmac` (the crates `aws-sigv4` itself uses).
//! Not calling `aws_sigv4::http_request::sign` keeps the `http`/smithy/URI
//! machinery out of the `.wasm` (about 150 KB).
//!
//! The signer is given the exact `authority` (as the `host` header) so the
//! signature covers precisely what the host sends as `Host`, port included,
//! even a default port written out explicitly.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::SystemTime;

use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// AWS credentials. `Debug` redacts the secret key and the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

/// Why a request could not be signed. The message never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignError(pub String);

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot sign request: {}", self.0)
    }
}

impl std::error::Error for SignError {}

fn err(msg: impl Into<String>) -> SignError {
    SignError(msg.into())
}

/// Headers the signer adds (or computes); stale copies are removed first so
/// a request can be re-signed (e.g. on retry with fresh credentials).
const SIGNING_HEADERS: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    // `Host` is the request's `:authority`; a separate `host` header would be
    // a duplicate (or a conflicting) Host.
    "host",
];

/// Headers sent but not signed: aws-sigv4's default `excluded_headers`
/// (they may be changed by proxies). `authorization` is dropped anyway.
const UNSIGNED_HEADERS: &[&str] = &["user-agent", "x-amzn-trace-id", "transfer-encoding"];

/// 9999-12-31T23:59:59Z: the last instant SigV4's `YYYYMMDD` date can express
/// (and beyond which the signer's date arithmetic would overflow).
const MAX_UNIX_SECS: u64 = 253_402_300_799;

/// Longest `scheme://authority/path` the `http` crate's `Uri` accepts (the
/// limit the HTTP signer applied).
const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// Longest header name the `http` crate's `HeaderName` accepts.
const MAX_HEADER_NAME_LEN: usize = u16::MAX as usize;

/// What SigV4 leaves unencoded: letters, digits and `-._~` (RFC 3986
/// unreserved). Equal to aws-smithy-http's query `BASE_SET`.
const ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// [`ENCODE_SET`] keeping `/`, for the path (aws-smithy-http's `GREEDY`).
const PATH_ENCODE_SET: &AsciiSet = &ENCODE_SET.remove(b'/');

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Sign `req` in place with SigV4 (signature in headers).
///
/// Adds `x-amz-date`, `authorization` and, with a session token,
/// `x-amz-security-token` (which is also signed). No `x-amz-content-sha256`
/// (not wanted by Secrets Manager or STS). Every header already in `req` is
/// signed (except `user-agent`, `x-amzn-trace-id` and `transfer-encoding`,
/// which proxies may change), plus `host` = `req.authority` exactly as
/// written. Existing `authorization`, `x-amz-date`, `x-amz-security-token`,
/// `x-amz-content-sha256` and `host` headers are dropped first.
///
/// `now` is the host's current time; no clock is read here.
pub fn sign(
    req: &mut super::HttpRequest,
    creds: &Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), SignError> {
    validate_inputs(req, creds, region, service)?;
    validate_uri_and_header_limits(req)?;
    let secs = checked_secs(now)?;
    let (date, date_time) = amz_dates(secs);

    // Work on a copy of the headers: `req` is only changed on success.
    let mut headers = headers_to_sign(&req.headers);
    let (creq, signed_headers) =
        canonical_request(req, &headers, &date_time, creds.session_token.as_deref());

    let authorization = authorization(
        creds,
        [&date, region, service],
        &date_time,
        &creq,
        &signed_headers,
    )?;

    headers.push(("x-amz-date".into(), date_time));
    headers.push(("authorization".into(), authorization));
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token".into(), token.clone()));
    }
    req.headers = headers;
    Ok(())
}

/// The request's headers, names lower-cased, without the ones the signer
/// writes itself.
fn headers_to_sign(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !is_one_of(name, SIGNING_HEADERS))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// The `authorization` header: the credential scope, the signed headers and
/// the signature of the canonical request `creq`.
#[inline(never)] // see Config::fields
fn authorization(
    creds: &Credentials,
    [date, region, service]: [&str; 3],
    date_time: &str,
    creq: &str,
    signed_headers: &str,
) -> Result<String, SignError> {
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{date_time}\n{scope}\n{}",
        sha256_hex(creq.as_bytes())
    );
    let signature = signature(
        &creds.secret_access_key,
        [date, region, service],
        &string_to_sign,
    )?;
    Ok(format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key_id
    ))
}

/// The hex signature of `string_to_sign` with the key derived from the
/// secret and the scope's date, region and service.
#[inline(never)] // see Config::fields
fn signature(
    secret_access_key: &str,
    [date, region, service]: [&str; 3],
    string_to_sign: &str,
) -> Result<String, SignError> {
    // kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")
    let mut key = hmac_sha256(
        format!("AWS4{secret_access_key}").as_bytes(),
        date.as_bytes(),
    )?;
    for part in [region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes())?;
    }
    Ok(hex(&hmac_sha256(&key, string_to_sign.as_bytes())?))
}

/// The canonical request and the signed header list.
#[inline(never)] // see Config::fields
fn canonical_request(
    req: &super::HttpRequest,
    headers: &[(String, String)],
    date_time: &str,
    session_token: Option<&str>,
) -> (String, String) {
    let trimmed: Vec<(&str, Cow<'_, str>)> = headers
        .iter()
        .filter(|(name, _)| !is_one_of(name, UNSIGNED_HEADERS))
        .map(|(n, v)| (n.as_str(), trim_all(v)))
        .collect();
    let canonical = canonical_headers(&trimmed, &req.authority, date_time, session_token);

    let (path, query) = split_path(&req.path);
    let mut creq = String::with_capacity(256 + req.path.len());
    creq.push_str(&req.method);
    creq.push('\n');
    creq.extend(utf8_percent_encode(&normalize_path(path), PATH_ENCODE_SET));
    creq.push('\n');
    creq.push_str(&canonical_query(query.unwrap_or_default()));
    creq.push('\n');
    let signed_headers = push_canonical_headers(&mut creq, &canonical);
    creq.push_str("\n\n");
    creq.push_str(&signed_headers);
    creq.push('\n');
    creq.push_str(&sha256_hex(&req.body));
    (creq, signed_headers)
}

/// Canonical headers: (name, position, normalized value), sorted by name
/// then position, so repeated names keep their request order (their values
/// are joined with ','). `host`, `x-amz-date` and the session token are
/// signed too.
#[inline(never)] // see Config::fields
fn canonical_headers<'a>(
    trimmed: &'a [(&'a str, Cow<'a, str>)],
    authority: &'a str,
    date_time: &'a str,
    session_token: Option<&'a str>,
) -> Vec<(&'a str, usize, &'a str)> {
    let mut canonical: Vec<(&str, usize, &str)> = trimmed
        .iter()
        .enumerate()
        .map(|(i, (n, v))| (*n, i, v.as_ref()))
        .collect();
    let n = canonical.len();
    canonical.push(("host", n, authority));
    canonical.push(("x-amz-date", n + 1, date_time));
    if let Some(token) = session_token {
        canonical.push(("x-amz-security-token", n + 2, token));
    }
    sort_entries(&mut canonical);
    canonical
}

/// Appends the sorted canonical headers (`name:value`, one line per name)
/// to `creq`; returns the signed header list (`name;name...`).
#[inline(never)] // see Config::fields
fn push_canonical_headers(creq: &mut String, canonical: &[(&str, usize, &str)]) -> String {
    let mut signed_headers = String::new();
    let mut previous: Option<&str> = None;
    for &(name, _, value) in canonical {
        if previous == Some(name) {
            creq.push(',');
        } else {
            if previous.is_some() {
                creq.push('\n');
                signed_headers.push(';');
            }
            creq.push_str(name);
            creq.push(':');
            signed_headers.push_str(name);
        }
        creq.push_str(value);
        previous = Some(name);
    }
    signed_headers
}

fn is_one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|l| name.eq_ignore_ascii_case(l))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<[u8; 32], SignError> {
    // HMAC takes keys of any length: the error cannot happen.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| err("HMAC key"))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Trims spaces (only spaces, as SigV4 does) at both ends and collapses runs
/// of spaces into one.
fn trim_all(value: &str) -> Cow<'_, str> {
    let value = value.trim_matches(' ');
    if !value.contains("  ") {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut after_space = false;
    for c in value.chars() {
        if c != ' ' || !after_space {
            out.push(c);
        }
        after_space = c == ' ';
    }
    Cow::Owned(out)
}

/// The path and the query (`None` without `?`) of a validated path; a
/// `#fragment` is not part of either.
fn split_path(path_and_query: &str) -> (&str, Option<&str>) {
    let without_fragment = path_and_query
        .split_once('#')
        .map_or(path_and_query, |(before, _)| before);
    match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (without_fragment, None),
    }
}

/// RFC 3986 dot-segment removal as aws-sigv4 does it: also drops empty
/// segments (`//`), keeps a trailing slash.
#[inline(never)] // see Config::fields
fn normalize_path(path: &str) -> Cow<'_, str> {
    if !path.contains('.') && !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing_slash = ["/", "/.", "/./", "/..", "/../"]
        .iter()
        .any(|end| path.ends_with(end));
    if out.is_empty() || (trailing_slash && !out.ends_with('/')) {
        out.push('/');
    }
    Cow::Owned(out)
}

/// The query as `application/x-www-form-urlencoded` pairs (`+` is a space,
/// invalid UTF-8 becomes U+FFFD), each name and value re-encoded, sorted by
/// encoded name then value, joined as `name=value&...`.
fn canonical_query(query: &str) -> String {
    let decode = |s: &str| -> String {
        let plus_as_space = s.replace('+', " ");
        let bytes: Vec<u8> = percent_decode(plus_as_space.as_bytes()).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        utf8_percent_encode(&text, ENCODE_SET).to_string()
    };
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect();
    let mut sorted: Vec<(&str, usize, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), 0, v.as_str()))
        .collect();
    sort_entries(&mut sorted);
    let mut out = String::with_capacity(query.len());
    for (name, _, value) in sorted {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// Sorts (name, number, value) entries: canonical headers number their
/// entries by position (repeated names keep their order, values are not
/// compared), query parameters use 0 (sorted by name, then value). A single
/// sort instantiation for both keeps the `.wasm` smaller.
fn sort_entries(entries: &mut [(&str, usize, &str)]) {
    entries.sort_unstable();
}

/// (`YYYYMMDD`, `YYYYMMDDTHHMMSSZ`) in UTC for seconds since the epoch.
#[inline(never)] // see Config::fields
fn amz_dates(secs: u64) -> (String, String) {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    let date = format!("{year:04}{month:02}{day:02}");
    let date_time = format!(
        "{date}T{:02}{:02}{:02}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    );
    (date, date_time)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Whole seconds since the epoch (SigV4 has one-second resolution).
fn checked_secs(now: SystemTime) -> Result<u64, SignError> {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| err("current time is before 1970"))?;
    if since_epoch.as_secs() > MAX_UNIX_SECS {
        return Err(err("current time is after year 9999"));
    }
    Ok(since_epoch.as_secs())
}

/// `host[:port]` with a reg-name, IPv4 or bracketed IPv6 host and an
/// optional port 1-65535.
fn valid_authority(authority: &str) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("[]", Some(port)),
            None if after.is_empty() => ("[]", None),
            None => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = host == "[]"
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)));
    let port_ok = match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n != 0)
        }
    };
    host_ok && port_ok
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_visible_ascii(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// Checks everything that ends up in a header we write or in the URI, so a
/// bad value is reported as such (never quoted: it may be a credential)
/// instead of producing an unusable or injected header.
fn validate_inputs(
    req: &super::HttpRequest,
    creds: &Credentials,
    region: &str,
    service: &str,
) -> Result<(), SignError> {
    validate_scope_and_credentials(creds, region, service)?;
    validate_request(req)
}

/// The region and service (they are part of the credential scope) and the
/// credentials (they end up in `authorization` and `x-amz-security-token`).
#[inline(never)] // see Config::fields
fn validate_scope_and_credentials(
    creds: &Credentials,
    region: &str,
    service: &str,
) -> Result<(), SignError> {
    let scope_part = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !scope_part(region) {
        return Err(err(
            "region must be 1-64 characters of letters, digits, '-' or '_'",
        ));
    }
    if !scope_part(service) {
        return Err(err(
            "service must be 1-64 characters of letters, digits, '-' or '_'",
        ));
    }
    let key_id = creds.access_key_id.as_bytes();
    if key_id.is_empty()
        || !key_id
            .iter()
            .all(|&b| is_visible_ascii(b) && b != b'/' && b != b',')
    {
        return Err(err(
            "access key id must be non-empty printable ASCII without '/' or ','",
        ));
    }
    if creds.secret_access_key.is_empty() {
        return Err(err("secret access key is empty"));
    }
    if let Some(token) = &creds.session_token {
        if token.is_empty() || !token.bytes().all(is_visible_ascii) {
            return Err(err("session token must be non-empty printable ASCII"));
        }
    }
    Ok(())
}

/// The method, scheme, authority, path and headers of the request.
#[inline(never)] // see Config::fields
fn validate_request(req: &super::HttpRequest) -> Result<(), SignError> {
    if req.method.is_empty() || !req.method.bytes().all(is_token_char) {
        return Err(err("invalid HTTP method"));
    }
    if req.scheme != "http" && req.scheme != "https" {
        return Err(err("scheme must be http or https"));
    }
    if !valid_authority(&req.authority) {
        return Err(err("invalid authority (host[:port])"));
    }
    if !req.path.starts_with('/') || !req.path.bytes().all(is_visible_ascii) {
        return Err(err("path must start with '/' and be printable ASCII"));
    }
    for (name, value) in &req.headers {
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(err("invalid header name"));
        }
        if !value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || is_visible_ascii(b))
        {
            return Err(err(format!("invalid value for header {name}")));
        }
    }
    Ok(())
}

/// What the `http` crate refused when aws-sigv4's HTTP signer parsed the URI
/// and header names, on top of [`validate_inputs`] (the tests check the two
/// signers accept and refuse the same requests).
#[inline(never)] // see Config::fields
fn validate_uri_and_header_limits(req: &super::HttpRequest) -> Result<(), SignError> {
    if req.authority.contains('%') {
        return Err(err("invalid authority (host[:port])"));
    }
    // An IPv6 literal with more than 8 colons.
    let before_bracket = req.authority.split(']').next().unwrap_or_default();
    if before_bracket.bytes().filter(|&b| b == b':').count() > 8 {
        return Err(err("invalid authority (host[:port])"));
    }
    if req.scheme.len() + "://".len() + req.authority.len() + req.path.len() > MAX_URI_LEN {
        return Err(err("request URI is too long"));
    }
    let mut in_query = false;
    for b in req.path.bytes() {
        let allowed = match b {
            b'#' => break,
            b'?' if !in_query => {
                in_query = true;
                true
            }
            b'<' | b'>' => false,
            b'`' => in_query,
            b'"' => !in_query,
            _ => true,
        };
        if !allowed {
            return Err(err("path has a character not allowed in a URI"));
        }
    }
    if req
        .headers
        .iter()
        .any(|(name, _)| name.len() > MAX_HEADER_NAME_LEN)
    {
        return Err(err("header name is too long"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::HttpRequest;
    use std::time::Duration;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    fn creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: AKID.into(),
            secret_access_key: SECRET.into(),
            session_token: token.map(String::from),
        }
    }

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
        req.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn signature(req: &HttpRequest) -> &str {
        let auth = header(req, "authorization").unwrap();
        auth.rsplit("Signature=").next().unwrap()
    }

    /// 20150830T123600Z
    const SUITE_TIME: u64 = 1_440_938_160;

    #[test]
    fn aws_test_suite_get_vanilla() {
        let mut req = HttpRequest {
            method: "GET".into(),
            scheme: "https".into(),
            authority: "example.amazonaws.com".into(),
            path: "/".into(),
            headers: vec![],
            body: vec![],
        };
        sign(
            &mut req,
            &creds(None),
            "us-east-1",
            "service",
            at(SUITE_TIME),
        )
        .unwrap();
        assert_eq!(
            req.headers,
            vec![
                ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
                (
                    "authorization".to_string(),
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, \
                     Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn subseconds_are_ignored_and_resigning_replaces_headers() {
        let mut req = HttpRequest {
            method: "GET".into(),
            scheme: "https".into(),
            authority: "example.amazonaws.com".into(),
            path: "/".into(),
            headers: vec![
                ("Authorization".into(), "stale".into()),
                ("x-amz-date".into(), "19990101T000000Z".into()),
                ("host".into(), "other.example".into()),
            ],
            body: vec![],
        };
        let now = at(SUITE_TIME) + Duration::from_millis(999);
        sign(&mut req, &creds(None), "us-east-1", "service", now).unwrap();
        assert_eq!(req.headers.len(), 2);
        assert_eq!(
            signature(&req),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    // Expected signatures computed independently with botocore 1.44.8
    // (the same script reproduces the get-vanilla signature above):
    //
    // ```python
    // import datetime
    // from unittest import mock
    // from botocore.auth import SigV4Auth
    // from botocore.awsrequest import AWSRequest
    // from botocore.credentials import Credentials
    // AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    // TOKEN = "AQoDYXdzEPT//////////wEXAMPLE..."  # the full TOKEN constant above
    // BODY = b'{"SecretId":"prod/db-password","VersionStage":"AWSCURRENT"}'
    // fixed = datetime.datetime(2024, 5, 17, 9, 30, 0)  # 20240517T093000Z
    // def go(url, token, host=None):
    //     h = {"content-type": "application/x-amz-json-1.1",
    //          "x-amz-target": "secretsmanager.GetSecretValue"}
    //     if host: h["host"] = host  # botocore signs a given Host header as is
    //     r = AWSRequest(method="POST", url=url, data=BODY, headers=h)
    //     with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
    //         SigV4Auth(Credentials(AK, SK, token), "secretsmanager", "us-east-1").add_auth(r)
    //     print(url, token is not None, r.headers["Authorization"])
    // for url in ["https://secretsmanager.us-east-1.amazonaws.com/", "http://127.0.0.1:4566/"]:
    //     for token in [None, TOKEN]:
    //         go(url, token)
    // go("https://secretsmanager.us-east-1.amazonaws.com:443/", None,
    //    "secretsmanager.us-east-1.amazonaws.com:443")
    // ```
    const BODY: &[u8] = br#"{"SecretId":"prod/db-password","VersionStage":"AWSCURRENT"}"#;
    /// 20240517T093000Z
    const SM_TIME: u64 = 1_715_938_200;

    fn get_secret_value(scheme: &str, authority: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            scheme: scheme.into(),
            authority: authority.into(),
            path: "/".into(),
            headers: vec![
                ("content-type".into(), "application/x-amz-json-1.1".into()),
                (
                    "x-amz-target".into(),
                    "secretsmanager.GetSecretValue".into(),
                ),
            ],
            body: BODY.to_vec(),
        }
    }

    fn check_botocore(scheme: &str, authority: &str, token: Option<&str>, expected: &str) {
        let mut req = get_secret_value(scheme, authority);
        sign(
            &mut req,
            &creds(token),
            "us-east-1",
            "secretsmanager",
            at(SM_TIME),
        )
        .unwrap();
        assert_eq!(header(&req, "authorization").unwrap(), expected);
        assert_eq!(header(&req, "x-amz-date"), Some("20240517T093000Z"));
        assert_eq!(header(&req, "x-amz-security-token"), token);
        assert_eq!(header(&req, "x-amz-content-sha256"), None);
        assert_eq!(header(&req, "host"), None);
        assert_eq!(req.body, BODY);
    }

    #[test]
    fn botocore_aws_endpoint() {
        check_botocore(
            "https",
            "secretsmanager.us-east-1.amazonaws.com",
            None,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240517/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, \
             Signature=2fe8cd09fb33b6fa99a39eb88e9ca256b4e73c97f5c0f9256d99d01948a342db",
        );
    }

    #[test]
    fn botocore_aws_endpoint_session_token() {
        check_botocore(
            "https",
            "secretsmanager.us-east-1.amazonaws.com",
            Some(TOKEN),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240517/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=e741477acecb3b74d2c2a6b9613856b57c942faba2ce7d55e512d1273e552748",
        );
    }

    #[test]
    fn botocore_local_endpoint_with_port() {
        check_botocore(
            "http",
            "127.0.0.1:4566",
            None,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240517/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, \
             Signature=ac43b4b1ec760b65bcc45688c5aaba7ab27d6742503fba5044eb92d7671a03e9",
        );
    }

    #[test]
    fn botocore_local_endpoint_with_port_session_token() {
        check_botocore(
            "http",
            "127.0.0.1:4566",
            Some(TOKEN),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240517/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=b213fbdf97aed0209fda8b5b9da3983acd4c9d50b8ffbeda809b3db832cecb92",
        );
    }

    #[test]
    fn explicit_default_port_is_signed_as_written() {
        // The host sends `:authority` unchanged, so `host:443` must be signed
        // with the port, unlike aws-sigv4's URI-derived Host.
        let mut with_port = get_secret_value("https", "secretsmanager.us-east-1.amazonaws.com:443");
        let mut without = get_secret_value("https", "secretsmanager.us-east-1.amazonaws.com");
        let c = creds(None);
        sign(
            &mut with_port,
            &c,
            "us-east-1",
            "secretsmanager",
            at(SM_TIME),
        )
        .unwrap();
        sign(&mut without, &c, "us-east-1", "secretsmanager", at(SM_TIME)).unwrap();
        assert_ne!(signature(&with_port), signature(&without));
        // botocore, url "https://secretsmanager.us-east-1.amazonaws.com:443/" with the
        // Host header forced to "secretsmanager.us-east-1.amazonaws.com:443".
        assert_eq!(
            signature(&with_port),
            "ddba52126d8ce508bb26a519c60acb5ce20ee2af7b02565363c748601a81cc68"
        );
    }

    #[test]
    fn credentials_debug_redacts_secrets() {
        let c = creds(Some(TOKEN));
        let dbg = format!("{c:?}");
        assert!(dbg.contains(AKID));
        assert!(!dbg.contains(SECRET));
        assert!(!dbg.contains("wJalrXUtnFEMI"));
        assert!(!dbg.contains(TOKEN));
        assert!(!dbg.contains("AQoDYXdz"));
        assert!(dbg.contains("redacted"));
        let no_token = format!("{:?}", creds(None));
        assert!(no_token.contains("session_token: None"));
    }

    #[test]
    fn bad_inputs_are_errors_without_secrets() {
        let base = get_secret_value("https", "secretsmanager.us-east-1.amazonaws.com");
        let now = at(SM_TIME);
        let secret_token = "SECRET\nTOKEN";
        let cases: Vec<(HttpRequest, Credentials, &str, &str, SystemTime)> = vec![
            (base.clone(), creds(None), "", "secretsmanager", now),
            (
                base.clone(),
                creds(None),
                "us-east-1\n",
                "secretsmanager",
                now,
            ),
            (base.clone(), creds(None), "us-east-1", "", now),
            (
                base.clone(),
                Credentials {
                    access_key_id: "AKID/X".into(),
                    ..creds(None)
                },
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                base.clone(),
                Credentials {
                    secret_access_key: String::new(),
                    ..creds(None)
                },
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                base.clone(),
                creds(Some(secret_token)),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                HttpRequest {
                    scheme: "ftp".into(),
                    ..base.clone()
                },
                creds(None),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                HttpRequest {
                    authority: String::new(),
                    ..base.clone()
                },
                creds(None),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                HttpRequest {
                    authority: "user@host".into(),
                    ..base.clone()
                },
                creds(None),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                HttpRequest {
                    authority: "host:99999999999".into(),
                    ..base.clone()
                },
                creds(None),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                HttpRequest {
                    path: "no-slash".into(),
                    ..base.clone()
                },
                creds(None),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                HttpRequest {
                    method: String::new(),
                    ..base.clone()
                },
                creds(None),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                HttpRequest {
                    headers: vec![("bad name".into(), "v".into())],
                    ..base.clone()
                },
                creds(None),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                HttpRequest {
                    headers: vec![("x-a".into(), "line\r\nbreak".into())],
                    ..base.clone()
                },
                creds(None),
                "us-east-1",
                "secretsmanager",
                now,
            ),
            (
                base.clone(),
                creds(None),
                "us-east-1",
                "secretsmanager",
                SystemTime::UNIX_EPOCH - Duration::from_secs(1),
            ),
            (
                base.clone(),
                creds(None),
                "us-east-1",
                "secretsmanager",
                at(MAX_UNIX_SECS + 1),
            ),
        ];
        for (i, (mut req, c, region, service, t)) in cases.into_iter().enumerate() {
            let before = req.clone();
            let e = sign(&mut req, &c, region, service, t).unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(!text.contains(SECRET), "case {i}: {text}");
            assert!(!text.contains("SECRET"), "case {i}: {text}");
            assert_eq!(req, before, "case {i}: request changed on error");
        }
    }

    #[test]
    fn extreme_but_valid_times_sign() {
        for t in [at(0), at(MAX_UNIX_SECS)] {
            let mut req = get_secret_value("http", "127.0.0.1:4566");
            sign(&mut req, &creds(None), "us-east-1", "secretsmanager", t).unwrap();
        }
    }

    #[test]
    fn authority_validation() {
        for ok in [
            "example.com",
            "secretsmanager.us-east-1.amazonaws.com",
            "127.0.0.1:4566",
            "localhost:1",
            "host:65535",
            "[::1]",
            "[::1]:4566",
            "[fd00:ec2::23]:80",
        ] {
            assert!(valid_authority(ok), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "host:",
            "host:0",
            "host:65536",
            "host:+80",
            "host:8o",
            "a b",
            "user@host",
            "host/path",
            "host?q",
            "[::1",
            "[]:80",
            "[::1]x",
            "[::1]:",
            "a:1:2",
            "h\\x",
        ] {
            assert!(!valid_authority(bad), "{bad:?}");
        }
    }

    /// The previous `sign()`: the same validation, then aws-sigv4's full HTTP
    /// signer with default settings. Returns the request's new headers.
    fn reference_sign(
        req: &HttpRequest,
        creds: &Credentials,
        region: &str,
        service: &str,
        now: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
        use aws_sigv4::sign::v4::SigningParams;

        validate_inputs(req, creds, region, service).map_err(|e| e.0)?;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(checked_secs(now).map_err(|e| e.0)?);
        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .filter(|(name, _)| !is_one_of(name, SIGNING_HEADERS))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        let identity = aws_credential_types::Credentials::new(
            creds.access_key_id.as_str(),
            creds.secret_access_key.as_str(),
            creds.session_token.clone(),
            None,
            "aws-vault",
        )
        .into();
        let params = SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let uri = format!("{}://{}{}", req.scheme, req.authority, req.path);
        let signable_headers = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(std::iter::once(("host", req.authority.as_str())));
        let signable = SignableRequest::new(
            req.method.as_str(),
            uri,
            signable_headers,
            SignableBody::Bytes(&req.body),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let (new_headers, _) = instructions.into_parts();
        for header in new_headers {
            headers.push((
                header.name().to_ascii_lowercase(),
                header.value().to_string(),
            ));
        }
        Ok(headers)
    }

    /// Signs with both signers; both must fail, or both succeed with the
    /// same headers. Returns the new signer's result.
    fn same_as_aws_sigv4(
        req: &HttpRequest,
        c: &Credentials,
        region: &str,
        service: &str,
        now: SystemTime,
    ) -> Result<HttpRequest, SignError> {
        let expected = reference_sign(req, c, region, service, now);
        let mut signed = req.clone();
        let got = sign(&mut signed, c, region, service, now);
        match (&got, &expected) {
            (Ok(()), Ok(headers)) => assert_eq!(
                &signed.headers, headers,
                "{req:?} path {:?} headers {:?}",
                req.path, req.headers
            ),
            (Err(_), Err(_)) => assert_eq!(&signed, req, "request changed on error"),
            _ => panic!(
                "{req:?} path {:?} headers {:?}: new {got:?}, aws-sigv4 {expected:?}",
                req.path, req.headers
            ),
        }
        got.map(|()| signed)
    }

    #[test]
    fn path_encoding_and_query_botocore() {
        // The two requests of the botocore script above, with
        // go(method, url, headers, body) for:
        //   GET  https://example.amazonaws.com/x/prod%2Fdb/a:b@c=d/./e/../f~g?b=2&a=1&a=0&c=x~y-z_.
        //        {"x-custom": "  a   b  c ", "X-Other": "v"}, b""
        //   POST http://127.0.0.1:4566/%E2%82%AC/$&'()*+,;=!?Action=GetSecretValue&Version=2017-10-17
        //        {"content-type": "application/x-www-form-urlencoded"}, b"SecretId=prod%2Fdb"
        // Canonical URIs: /x/prod%252Fdb/a%3Ab%40c%3Dd/f~g and
        // /%25E2%2582%25AC/%24%26%27%28%29%2A%2B%2C%3B%3D%21 (double encoded).
        let get = HttpRequest {
            method: "GET".into(),
            scheme: "https".into(),
            authority: "example.amazonaws.com".into(),
            path: "/x/prod%2Fdb/a:b@c=d/./e/../f~g?b=2&a=1&a=0&c=x~y-z_.".into(),
            headers: vec![
                ("x-custom".into(), "  a   b  c ".into()),
                ("X-Other".into(), "v".into()),
            ],
            body: vec![],
        };
        let signed = same_as_aws_sigv4(
            &get,
            &creds(None),
            "us-east-1",
            "secretsmanager",
            at(SM_TIME),
        )
        .unwrap();
        assert_eq!(
            header(&signed, "authorization").unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240517/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=host;x-amz-date;x-custom;x-other, \
             Signature=387d52bfbf0493739be53c2e44efc136646eab3d8051a1465ab6383687443846"
        );
        // Values are sent as given; only the signature normalizes them.
        assert_eq!(header(&signed, "x-custom"), Some("  a   b  c "));

        let post = HttpRequest {
            method: "POST".into(),
            scheme: "http".into(),
            authority: "127.0.0.1:4566".into(),
            path: "/%E2%82%AC/$&'()*+,;=!?Action=GetSecretValue&Version=2017-10-17".into(),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: b"SecretId=prod%2Fdb".to_vec(),
        };
        let signed = same_as_aws_sigv4(
            &post,
            &creds(None),
            "us-east-1",
            "secretsmanager",
            at(SM_TIME),
        )
        .unwrap();
        assert_eq!(
            signature(&signed),
            "e424947300dd5b8769ccef08a3a874f08bb66833d562d8949bd255d942e8fa5e"
        );
    }

    #[test]
    fn query_decoding_and_sorting() {
        // aws-sigv4 form-decodes the query (`+` is a space, bad UTF-8 is
        // U+FFFD) and re-encodes it, sorting on the encoded pairs.
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_query("&&x&=y&"), "=y&x=");
        assert_eq!(canonical_query("a+b=c%20d%2b"), "a%20b=c%20d%2B");
        assert_eq!(canonical_query("k=%FF%zz%4"), "k=%EF%BF%BD%25zz%254");
        assert_eq!(canonical_query("Z=1&a=2&%5F=3"), "Z=1&_=3&a=2");
        assert_eq!(canonical_query("a=b=c&~=!"), "a=b%3Dc&~=%21");
        for pq in ["/", "/?", "/?a=1&b", "/x?y=1#frag", "/x#frag?y=1"] {
            let req = HttpRequest {
                path: pq.into(),
                ..get_secret_value("https", "example.amazonaws.com")
            };
            same_as_aws_sigv4(&req, &creds(None), "us-east-1", "service", at(SUITE_TIME)).unwrap();
        }
    }

    #[test]
    fn path_normalization() {
        for (path, normalized) in [
            ("/", "/"),
            ("/a/b/", "/a/b/"),
            ("/a/./b/../c", "/a/c"),
            ("/a//b", "/a/b"),
            ("/..", "/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a.b/c..d", "/a.b/c..d"),
            ("//", "/"),
        ] {
            assert_eq!(normalize_path(path), normalized, "{path}");
        }
    }

    #[test]
    fn amz_dates_in_utc() {
        for (secs, date_time) in [
            (0, "19700101T000000Z"),
            (SUITE_TIME, "20150830T123600Z"),
            (SM_TIME, "20240517T093000Z"),
            (951_868_799, "20000229T235959Z"),
            (951_868_800, "20000301T000000Z"),
            (4_107_542_400, "21000301T000000Z"),
            (MAX_UNIX_SECS, "99991231T235959Z"),
        ] {
            let (date, dt) = amz_dates(secs);
            assert_eq!(dt, date_time);
            assert_eq!(date, date_time[..8]);
        }
    }

    #[test]
    fn uri_and_header_name_limits_match_aws_sigv4() {
        let c = creds(None);
        let base = get_secret_value("https", "example.amazonaws.com");
        let prefix = "https://example.amazonaws.com".len();
        for extra in [0, 1] {
            let path = format!("/{}", "a".repeat(MAX_URI_LEN - prefix - 1 + extra));
            let req = HttpRequest {
                path,
                ..base.clone()
            };
            let r = same_as_aws_sigv4(&req, &c, "us-east-1", "service", at(SM_TIME));
            assert_eq!(r.is_ok(), extra == 0);
        }
        for extra in [0, 1] {
            let req = HttpRequest {
                headers: vec![("x".repeat(MAX_HEADER_NAME_LEN + extra), "v".into())],
                ..base.clone()
            };
            let r = same_as_aws_sigv4(&req, &c, "us-east-1", "service", at(SM_TIME));
            assert_eq!(r.is_ok(), extra == 0);
        }
        for (authority, ok) in [
            ("[1:2:3:4:5:6:7:8:9]:1", true),
            ("[1:2:3:4:5:6:7:8:9:a]", false),
            ("a%41b", false),
            ("x!$&'()*+,;=y:8", true),
        ] {
            let req = get_secret_value("https", authority);
            let r = same_as_aws_sigv4(&req, &c, "us-east-1", "service", at(SM_TIME));
            assert_eq!(r.is_ok(), ok, "{authority}");
        }
    }

    /// splitmix64: a deterministic generator for the cross-check.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        /// Mostly from `good`, one time in 40 from `bad`.
        fn pick_mostly(&mut self, good: &[&'static str], bad: &[&'static str]) -> &'static str {
            let items = if self.below(40) == 0 { bad } else { good };
            items[self.below(items.len())]
        }

        fn text(&mut self, alphabet: &[u8], max_len: usize) -> String {
            let len = self.below(max_len + 1);
            (0..len).map(|_| char::from(*self.pick(alphabet))).collect()
        }
    }

    #[test]
    fn byte_identical_to_aws_sigv4_on_generated_requests() {
        const PATHS: &[&str] = &[
            "/",
            "/?",
            "/a/./b/../c",
            "//x//y/",
            "/..",
            "/%2e%2E/",
            "/prod%2Fdb",
            "/?b=2&a=1&a=0",
            "/?a=%FF%FE&b=%zz&c=%4",
            "/?a+b=c+d&%3D=%26",
            "/x#frag?y",
            "/p?q=1#f<>`",
            "/?&&a&=b&",
            "/{\"json\":[1]}",
            "/a`b",
            "/?q=\"x\"",
            "/<x>",
        ];
        const PATH_CHARS: &[u8] = b"//////....aaabbZ09-_~%%%2F4e??&&==++##;,:@!$'()*[]{}|\\^`\"";
        // (`<` and `>` are refused anywhere, so only in PATHS)
        const AUTHORITIES: &[&str] = &[
            "example.amazonaws.com",
            "secretsmanager.us-east-1.amazonaws.com:443",
            "h:80",
            "EXAMPLE.com:8080",
            "127.0.0.1:4566",
            "[::1]",
            "[::1]:443",
            "[fd00:ec2::23]:80",
            "[1:2:3:4:5:6:7:8:9]",
            "x!$&'()*+,;=y",
        ];
        const BAD_AUTHORITIES: &[&str] = &["[1:2:3:4:5:6:7:8:9:a]:1", "a%41b", "bad host", ""];
        const HEADER_NAMES: &[&str] = &[
            "content-type",
            "X-Amz-Target",
            "x-custom",
            "X-CUSTOM",
            "user-agent",
            "X-Amzn-Trace-Id",
            "Transfer-Encoding",
            "Authorization",
            "Host",
            "x-amz-date",
            "X-Amz-Security-Token",
            "x-amz-content-sha256",
            "a",
            "zz",
            "x!#$%&'*+-.^_`|~",
        ];
        const BAD_HEADER_NAMES: &[&str] = &["bad name", "", "x:y"];
        const VALUE_CHARS: &[u8] = b"     \t\tabcXYZ019,;=\"'/:()";
        const METHODS: &[&str] = &["GET", "POST", "PUT", "get", "X-Y!"];
        const BAD_METHODS: &[&str] = &["", "GET /"];
        const REGIONS: &[&str] = &["us-east-1", "eu-west-3", "x_y"];
        const BAD_SCOPE_PARTS: &[&str] = &["us east", "", "a/b"];
        const SERVICES: &[&str] = &["secretsmanager", "sts", "service", "s3"];
        const TIMES: &[u64] = &[0, 951_868_799, 951_868_800, 4_107_542_400, MAX_UNIX_SECS];

        const ROUNDS: usize = 10_000;
        let mut rng = Rng(20_240_517);
        let mut signed = 0;
        for _ in 0..ROUNDS {
            let path = match rng.below(3) {
                0 => rng.pick(PATHS).to_string(),
                1 => format!("/{}", rng.text(PATH_CHARS, 24)),
                _ => format!("{}{}", rng.pick(PATHS), rng.text(PATH_CHARS, 12)),
            };
            let headers = (0..rng.below(5))
                .map(|_| {
                    let name = rng.pick_mostly(HEADER_NAMES, BAD_HEADER_NAMES).to_string();
                    (name, rng.text(VALUE_CHARS, 10))
                })
                .collect();
            let body = match rng.below(3) {
                0 => vec![],
                1 => BODY.to_vec(),
                _ => (0..rng.below(100)).map(|_| rng.next() as u8).collect(),
            };
            let req = HttpRequest {
                method: rng.pick_mostly(METHODS, BAD_METHODS).to_string(),
                scheme: rng.pick(&["http", "https"]).to_string(),
                authority: rng.pick_mostly(AUTHORITIES, BAD_AUTHORITIES).to_string(),
                path,
                headers,
                body,
            };
            let c = match rng.below(3) {
                0 => creds(None),
                1 => creds(Some(TOKEN)),
                _ => Credentials {
                    access_key_id: "AKIA0123456789".into(),
                    secret_access_key: rng.text(VALUE_CHARS, 40) + "k",
                    session_token: Some("tok".into()),
                },
            };
            let secs = if rng.below(4) == 0 {
                *rng.pick(TIMES)
            } else {
                rng.next() % (MAX_UNIX_SECS + 1)
            };
            let now = at(secs) + Duration::from_nanos(rng.next() % 1_000_000_000);
            let region = rng.pick_mostly(REGIONS, BAD_SCOPE_PARTS);
            let service = rng.pick_mostly(SERVICES, BAD_SCOPE_PARTS);
            if same_as_aws_sigv4(&req, &c, region, service, now).is_ok() {
                signed += 1;
            }
        }
        // Most generated requests are valid: the comparison is not vacuous.
        assert!(signed > ROUNDS / 2, "only {signed} of {ROUNDS} signed");
    }
}
