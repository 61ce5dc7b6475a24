//! Secrets Manager `GetSecretValue` over the JSON 1.1 protocol: endpoint
//! parsing, the (unsigned) request, response and error parsing, and JSON key
//! extraction from a `SecretString`.
//!
//! Secrets never end up in an error message or a `Debug` output: errors
//! derived from a 2xx body (which holds the secret) use fixed texts only.

use std::fmt;

use serde_json::Value;

/// Which version of a secret to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VersionStage {
    Current,
    Previous,
}

impl VersionStage {
    /// The Secrets Manager staging label.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStage::Current => "AWSCURRENT",
            VersionStage::Previous => "AWSPREVIOUS",
        }
    }
}

/// Kong's mapping of a reference's `version`: none or 1 -> `AWSCURRENT`,
/// 2 -> `AWSPREVIOUS`, anything else is an error.
pub fn version_stage(version: Option<f64>) -> Result<VersionStage, String> {
    match version {
        None => Ok(VersionStage::Current),
        Some(1.0) => Ok(VersionStage::Current),
        Some(2.0) => Ok(VersionStage::Previous),
        Some(v) => {
            // Whole numbers as such; no float formatting code in the .wasm.
            let shown = if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                "that is not a whole number".to_string()
            };
            Err(format!(
                "invalid version {shown}: only 1 (AWSCURRENT) and 2 (AWSPREVIOUS) are supported"
            ))
        }
    }
}

/// A parsed endpoint URL such as `https://secretsmanager.us-east-1.amazonaws.com`
/// or `http://127.0.0.1:4566`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `http` or `https` (lower case).
    pub scheme: String,
    /// `host[:port]` as written; no port if the URL has none.
    pub authority: String,
    /// The host as written; an IPv6 literal keeps its brackets (`[::1]`).
    pub host: String,
    pub port: Option<u16>,
}

/// Parse an endpoint URL: `http` or `https`, a non-empty host (DNS name,
/// IPv4, or bracketed IPv6), an optional port 1-65535, and an optional path
/// of exactly `/`. No userinfo, query or fragment. Errors never quote the URL
/// (it could hold a password in userinfo).
pub fn parse_endpoint_url(url: &str) -> Result<Endpoint, String> {
    let (scheme, authority) = split_endpoint_url(url)?;
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => split_ipv6_authority(authority, bracketed)?,
        None => split_name_authority(authority)?,
    };
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p)?),
    };
    Ok(Endpoint {
        scheme,
        authority: authority.to_string(),
        host: host.to_string(),
        port,
    })
}

/// The lower-cased scheme and the non-empty authority of an endpoint URL.
#[inline(never)] // see Config::fields
fn split_endpoint_url(url: &str) -> Result<(String, &str), String> {
    if url.is_empty() {
        return Err("endpoint URL is empty".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("endpoint URL contains whitespace or control characters".into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "endpoint URL must start with http:// or https://".to_string())?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err("endpoint URL scheme must be http or https".into());
    }
    if rest.contains('#') {
        return Err("endpoint URL must not have a fragment (#...)".into());
    }
    if rest.contains('?') {
        return Err("endpoint URL must not have a query (?...)".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "/" {
        return Err("endpoint URL must not have a path other than /".into());
    }
    if authority.contains('@') {
        return Err("endpoint URL must not contain userinfo (user@...)".into());
    }
    if authority.is_empty() {
        return Err("endpoint URL has no host".into());
    }
    Ok((scheme, authority))
}

/// The host (brackets kept) and the port text of `[ipv6]` or `[ipv6]:port`;
/// `bracketed`: the authority after its `[`.
#[inline(never)] // see Config::fields
fn split_ipv6_authority<'a>(
    authority: &'a str,
    bracketed: &'a str,
) -> Result<(&'a str, Option<&'a str>), String> {
    let (inside, after) = bracketed
        .split_once(']')
        .ok_or_else(|| "endpoint URL has an unterminated IPv6 address".to_string())?;
    if inside.is_empty()
        || !inside.contains(':')
        || !inside
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        return Err("endpoint URL has an invalid IPv6 address".into());
    }
    let host = authority
        .get(..inside.len() + 2)
        .ok_or_else(|| "endpoint URL has an invalid IPv6 address".to_string())?;
    let port = if after.is_empty() {
        None
    } else {
        Some(after.strip_prefix(':').ok_or_else(|| {
            "endpoint URL has unexpected characters after the IPv6 address".to_string()
        })?)
    };
    Ok((host, port))
}

/// The host and the port text of `name` or `name:port` (a DNS name or an
/// IPv4 address).
#[inline(never)] // see Config::fields
fn split_name_authority(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.matches(':').count() > 1 {
        return Err("endpoint URL: an IPv6 address must be in brackets".into());
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err("endpoint URL has no host".into());
    }
    if !host.is_ascii() {
        return Err("endpoint URL host must be ASCII (use the punycode form)".into());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err("endpoint URL host may only contain letters, digits, '-', '.' and '_'".into());
    }
    Ok((host, port))
}

/// A port 1-65535, digits only.
fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() {
        return Err("endpoint URL has an empty port".into());
    }
    if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err("endpoint URL port must be a number from 1 to 65535".into());
    }
    match p.parse::<u16>() {
        Ok(n) if n != 0 => Ok(n),
        _ => Err("endpoint URL port must be a number from 1 to 65535".into()),
    }
}

/// `https://secretsmanager.<region>.amazonaws.com` (`.amazonaws.com.cn` for
/// the China regions `cn-*`).
pub fn default_endpoint(region: &str) -> Endpoint {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    let host = format!("secretsmanager.{region}.{suffix}");
    Endpoint {
        scheme: "https".into(),
        authority: host.clone(),
        host,
        port: None,
    }
}

/// The unsigned `GetSecretValue` request (sign it with
/// [`sigv4::sign`](super::sigv4::sign), service `secretsmanager`).
pub fn get_secret_value_request(
    endpoint: &Endpoint,
    secret_id: &str,
    stage: VersionStage,
) -> super::HttpRequest {
    // {"SecretId":<JSON string>,"VersionStage":"..."}: what a serde derive
    // writes, without its code in the .wasm.
    let mut body = Vec::with_capacity(secret_id.len() + 48);
    body.extend_from_slice(b"{\"SecretId\":");
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, secret_id);
    body.extend_from_slice(b",\"VersionStage\":\"");
    body.extend_from_slice(stage.as_str().as_bytes());
    body.extend_from_slice(b"\"}");
    super::HttpRequest {
        method: "POST".into(),
        scheme: endpoint.scheme.clone(),
        authority: endpoint.authority.clone(),
        path: "/".into(),
        headers: vec![
            ("content-type".into(), "application/x-amz-json-1.1".into()),
            (
                "x-amz-target".into(),
                "secretsmanager.GetSecretValue".into(),
            ),
        ],
        body,
    }
}

/// A secret's payload. `Debug` shows only the kind and length.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    String(String),
    /// `SecretBinary`: the base64 text exactly as AWS sent it (checked to be
    /// strict, canonical base64; [`decode_binary`] gives the bytes).
    Binary(String),
}

/// The bytes of a [`SecretValue::Binary`].
pub fn decode_binary(base64: &str) -> Option<Vec<u8>> {
    base64_decode(base64)
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::String(s) => write!(f, "SecretValue::String(<{} bytes>)", s.len()),
            SecretValue::Binary(b) => write!(f, "SecretValue::Binary(<{} bytes>)", b.len()),
        }
    }
}

/// A failed `GetSecretValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub kind: ErrorKind,
    /// HTTP status of the answer.
    pub status: u16,
    /// The AWS error code (`ResourceNotFoundException`), `HTTP<status>` when
    /// the answer had none, or `MalformedResponse`.
    pub code: String,
    /// Printable, at most 200 characters; empty if the answer had none.
    pub message: String,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AWS error {} {}", self.status, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for AwsError {}

/// What kind of failure an [`AwsError`] is, for retry decisions and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `ResourceNotFoundException`.
    NotFound,
    /// `AccessDeniedException`, or a 403 without a better code.
    AccessDenied,
    /// `DecryptionFailure` (KMS).
    Decryption,
    /// `InvalidRequestException` (e.g. a deleted secret), `InvalidParameterException`, ...
    InvalidRequest,
    /// `ThrottlingException`, or HTTP 429.
    Throttling,
    /// `UnrecognizedClientException`, `InvalidSignatureException`,
    /// `SignatureDoesNotMatch`, `ExpiredToken`, `IncompleteSignature`,
    /// `InvalidClientTokenId`, `MissingAuthenticationToken`, ...: refresh
    /// the credentials, then retry once.
    Credentials,
    /// `InternalServiceError`, `ServiceUnavailable`, ..., or any 5xx.
    Server,
    /// A 2xx answer we could not use.
    Malformed,
    Other,
}

impl ErrorKind {
    /// Worth retrying with backoff as is.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Throttling | ErrorKind::Server)
    }

    /// Stable snake_case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::Decryption => "decryption",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Throttling => "throttling",
            ErrorKind::Credentials => "credentials",
            ErrorKind::Server => "server",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bodies above this are not parsed.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Cap (in characters) on error messages and codes taken from a response.
const MAX_MESSAGE_CHARS: usize = 200;
const MALFORMED_CODE: &str = "MalformedResponse";

/// Parse a `GetSecretValue` answer: a 2xx JSON object with `SecretString`
/// (string) or `SecretBinary` (base64 string). Any content type is accepted
/// and unknown fields are ignored. Everything else is an [`AwsError`].
pub fn parse_get_secret_value(resp: &super::HttpResponse) -> Result<SecretValue, AwsError> {
    parse_answer(resp, None)
}

/// [`parse_get_secret_value`] for the request that asked for `secret_id`: an
/// answer whose `Name` or `ARN` does not name that secret is refused as
/// malformed, so one secret's value can never be taken for another's.
pub fn parse_get_secret_value_of(
    resp: &super::HttpResponse,
    secret_id: &str,
) -> Result<SecretValue, AwsError> {
    parse_answer(resp, Some(secret_id))
}

/// Does an answer's `Name`/`ARN` name the secret asked for as `id` (a name,
/// a full ARN, or a partial ARN: the full one without its `-` and six
/// random characters)?
pub fn names_secret(id: &str, name: Option<&str>, arn: Option<&str>) -> bool {
    if name == Some(id) || arn == Some(id) {
        return true;
    }
    let Some(arn) = arn else { return false };
    id.starts_with("arn:")
        && arn.strip_prefix(id).is_some_and(|rest| {
            rest.len() == 7
                && rest.starts_with('-')
                && rest.bytes().skip(1).all(|b| b.is_ascii_alphanumeric())
        })
}

fn parse_answer(
    resp: &super::HttpResponse,
    secret_id: Option<&str>,
) -> Result<SecretValue, AwsError> {
    if !(200..300).contains(&resp.status) {
        return Err(parse_error(resp));
    }
    // From here on the body holds the secret: fixed messages only, never
    // serde_json's error text (it can quote the input) nor an excerpt.
    let malformed = |message: &str| AwsError {
        kind: ErrorKind::Malformed,
        status: resp.status,
        code: MALFORMED_CODE.into(),
        message: message.into(),
    };
    if resp.body.len() > MAX_BODY_BYTES {
        return Err(malformed("response body is larger than 1 MiB"));
    }
    let value: Value =
        serde_json::from_slice(&resp.body).map_err(|_| malformed("response is not valid JSON"))?;
    let Value::Object(mut fields) = value else {
        return Err(malformed("response is not a JSON object"));
    };
    if let Some(id) = secret_id {
        let text = |k: &str| fields.get(k).and_then(Value::as_str);
        if !names_secret(id, text("Name"), text("ARN")) {
            return Err(malformed(
                "the answer's Name/ARN do not name the secret asked for",
            ));
        }
    }
    match fields.remove("SecretString") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => return Ok(SecretValue::String(s)),
        Some(_) => return Err(malformed("SecretString is not a string")),
    }
    match fields.remove("SecretBinary") {
        None | Some(Value::Null) => Err(malformed(
            "response has neither SecretString nor SecretBinary",
        )),
        Some(Value::String(b64)) => match base64_decode(&b64) {
            Some(_) => Ok(SecretValue::Binary(b64)),
            None => Err(malformed("SecretBinary is not valid base64")),
        },
        Some(_) => Err(malformed("SecretBinary is not a string")),
    }
}

/// Parse a non-2xx answer into an [`AwsError`]. Error bodies hold no
/// secrets, so their text may be excerpted (capped and made printable).
#[inline(never)] // see Config::fields
fn parse_error(resp: &super::HttpResponse) -> AwsError {
    let status = resp.status;
    let header_code = resp
        .header("x-amzn-errortype")
        .map(trim_error_code)
        .filter(|c| !c.is_empty());
    let parseable = resp.body.len() <= MAX_BODY_BYTES;
    // An answer that is not an error status, or that carries secret fields
    // (a misbehaving endpoint), is never quoted.
    let quotable = status >= 400
        && !contains(&resp.body, b"SecretString")
        && !contains(&resp.body, b"SecretBinary");
    let (code, message) = if parseable {
        body_error(&resp.body, header_code.is_some(), quotable)
    } else {
        (None, None)
    };
    let code = code
        .or(header_code)
        .unwrap_or_else(|| format!("HTTP{status}"));
    let message = message.unwrap_or_else(|| excerpt(&resp.body, quotable));
    AwsError {
        kind: classify(&code, status),
        status,
        code,
        message,
    }
}

/// The code and message of a JSON or XML error body, if it is one.
#[inline(never)] // see Config::fields
fn body_error(
    body: &[u8],
    has_header_code: bool,
    quotable: bool,
) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return match xml_error(&String::from_utf8_lossy(body)) {
            Some((c, m)) => (Some(c), Some(m)),
            None => (None, None),
        };
    };
    let code = fields
        .get("__type")
        .and_then(Value::as_str)
        .map(trim_error_code)
        .filter(|c| !c.is_empty());
    // botocore: `message` wins over `Message`.
    let message = ["message", "Message"]
        .iter()
        .find_map(|k| fields.get(*k).and_then(Value::as_str))
        .map(printable)
        .unwrap_or_else(|| {
            if code.is_none() && !has_header_code {
                // JSON without any error fields: show it.
                excerpt(body, quotable)
            } else {
                String::new()
            }
        });
    (code, Some(message))
}

/// The body excerpt of a `quotable` answer.
fn excerpt(body: &[u8], quotable: bool) -> String {
    if quotable {
        body_excerpt(body)
    } else {
        "(body not shown)".to_string()
    }
}

/// botocore's trimming: drop anything after `:`, then anything up to the
/// last `#`. The result is made printable and capped.
fn trim_error_code(raw: &str) -> String {
    let code = raw.split(':').next().unwrap_or("");
    let code = code.rsplit('#').next().unwrap_or("");
    printable(code.trim())
}

/// Kind from the code first, then from the status.
#[inline(never)] // see Config::fields
fn classify(code: &str, status: u16) -> ErrorKind {
    match code {
        "ResourceNotFoundException" => return ErrorKind::NotFound,
        "AccessDeniedException" | "AccessDenied" => return ErrorKind::AccessDenied,
        "DecryptionFailure" => return ErrorKind::Decryption,
        "InvalidRequestException"
        | "InvalidParameterException"
        | "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "MissingParameter"
        | "ValidationException"
        | "SerializationException" => return ErrorKind::InvalidRequest,
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" => {
            return ErrorKind::Throttling
        }
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "IncompleteSignature"
        | "IncompleteSignatureException"
        | "InvalidClientTokenId"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException" => return ErrorKind::Credentials,
        "InternalServiceError"
        | "InternalFailure"
        | "InternalServerError"
        | "InternalError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException" => return ErrorKind::Server,
        _ => {}
    }
    match status {
        429 => ErrorKind::Throttling,
        500..=599 => ErrorKind::Server,
        403 => ErrorKind::AccessDenied,
        _ => ErrorKind::Other,
    }
}

/// A tolerant scan for the XML error shapes (`<ErrorResponse><Error>`,
/// `<ErrorResponse><Errors><Error>`, `<Response><Errors><Error>`): the
/// `Code` and `Message` inside the first `<Error>` element.
#[inline(never)] // see Config::fields
fn xml_error(body: &str) -> Option<(String, String)> {
    let body = body.trim_start_matches('\u{feff}').trim_start();
    if !body.starts_with('<') {
        return None;
    }
    let start = ["<Error>", "<Error "]
        .iter()
        .filter_map(|tag| body.find(tag))
        .min()?;
    let scope = body.get(start..)?;
    let scope = match scope.find("</Error>") {
        Some(end) => scope.get(..end)?,
        None => scope,
    };
    let code = xml_element_text(scope, "Code")
        .map(|c| trim_error_code(&c))
        .filter(|c| !c.is_empty())?;
    let message = xml_element_text(scope, "Message")
        .map(|m| printable(&m))
        .unwrap_or_default();
    Some((code, message))
}

fn xml_element_text(scope: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let from = scope.find(&open)? + open.len();
    let rest = scope.get(from..)?;
    let text = rest.get(..rest.find(&close)?)?;
    Some(xml_unescape(text))
}

#[inline(never)] // see Config::fields
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(rest.get(..amp).unwrap_or(""));
        let after = rest.get(amp..).unwrap_or("");
        // Look only 11 bytes ahead: scanning the rest of the text for every
        // `&` made a body of many `&` quadratic (a minute for 1 MiB).
        let entity_end = after.bytes().take(11).position(|b| b == b';');
        let decoded = entity_end.and_then(|end| {
            let name = after.get(1..end)?;
            let c = match name {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let num = name.strip_prefix('#')?;
                    let n = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse::<u32>().ok()?,
                    };
                    char::from_u32(n)?
                }
            };
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = after.get(len..).unwrap_or("");
            }
            None => {
                out.push('&');
                rest = after.get(1..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out
}

/// The start of an error body, made printable.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn body_excerpt(body: &[u8]) -> String {
    // Decoding a little more than needed is enough for 200 characters.
    let head = body.get(..MAX_MESSAGE_CHARS * 4 + 4).unwrap_or(body);
    printable(&String::from_utf8_lossy(head))
}

/// Control and bidi/invisible formatting characters become spaces, runs of
/// whitespace collapse to one space, and the result is capped at 200
/// characters (ending in `...` when cut).
fn printable(text: &str) -> String {
    let cleaned = text.chars().map(|c| {
        if c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
        {
            ' '
        } else {
            c
        }
    });
    let mut out = String::new();
    let mut count = 0usize;
    let mut pending_space = false;
    let mut truncated = false;
    for c in cleaned {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        let needed = usize::from(pending_space) + 1;
        if count + needed > MAX_MESSAGE_CHARS {
            truncated = true;
            break;
        }
        if pending_space {
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        out.push(c);
        count += 1;
    }
    if truncated {
        // Make room for the ellipsis within the cap.
        while count > MAX_MESSAGE_CHARS - 3 {
            out.pop();
            count -= 1;
        }
        out.push_str("...");
    }
    out
}

/// Strict standard base64 (RFC 4648 alphabet `+/`, `=` padding required,
/// no whitespace, zero trailing bits). `None` if invalid.
#[inline(never)] // see Config::fields
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = input.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let chunks = bytes.len() / 4;
    let mut out = Vec::with_capacity(chunks * 3);
    for (i, chunk) in bytes.chunks_exact(4).enumerate() {
        let last = i + 1 == chunks;
        let &[a, b, c, d] = chunk else {
            return None;
        };
        let a = sextet(a)?;
        let b = sextet(b)?;
        match (c, d) {
            (b'=', b'=') if last => {
                if b & 0x0f != 0 {
                    return None;
                }
                out.push(((a << 2) | (b >> 4)) as u8);
            }
            (c, b'=') if last && c != b'=' => {
                let c = sextet(c)?;
                if c & 0x03 != 0 {
                    return None;
                }
                let n = (a << 18) | (b << 12) | (c << 6);
                out.push((n >> 16) as u8);
                out.push((n >> 8) as u8);
            }
            (c, d) => {
                let n = (a << 18) | (b << 12) | (sextet(c)? << 6) | sextet(d)?;
                out.push((n >> 16) as u8);
                out.push((n >> 8) as u8);
                out.push(n as u8);
            }
        }
    }
    Some(out)
}

/// Why a key could not be taken from a `SecretString`. Messages never
/// contain any part of the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    NotJson,
    NotAnObject,
    Missing,
    /// `json_type`: "object", "array", "number", "boolean" or "null".
    NotAString {
        json_type: &'static str,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotJson => f.write_str("secret is not valid JSON"),
            KeyError::NotAnObject => f.write_str("secret is not a JSON object"),
            KeyError::Missing => f.write_str("key not found in secret"),
            KeyError::NotAString { json_type } => {
                write!(
                    f,
                    "key's value in secret is a JSON {json_type}, not a string"
                )
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// The string value of `key` in a `SecretString` holding a JSON object.
pub fn extract_key(secret_string: &str, key: &str) -> Result<String, KeyError> {
    key_of(&parse_object(secret_string)?, key)
}

/// A `SecretString` holding a JSON object, parsed (to take several keys).
pub fn parse_object(secret_string: &str) -> Result<serde_json::Map<String, Value>, KeyError> {
    match serde_json::from_slice(secret_string.as_bytes()).map_err(|_| KeyError::NotJson)? {
        Value::Object(fields) => Ok(fields),
        _ => Err(KeyError::NotAnObject),
    }
}

/// The string value of `key` in a parsed secret.
pub fn key_of(fields: &serde_json::Map<String, Value>, key: &str) -> Result<String, KeyError> {
    match fields.get(key) {
        None => Err(KeyError::Missing),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(KeyError::NotAString {
            json_type: json_type(other),
        }),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::HttpResponse;

    fn resp(status: u16, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }

    fn err_of(r: &HttpResponse) -> AwsError {
        parse_get_secret_value(r).unwrap_err()
    }

    // ---- version_stage ----

    #[test]
    fn answers_with_secret_fields_or_odd_statuses_are_never_quoted() {
        for (status, body) in [
            (302u16, r#"{"Name":"n","SecretString":"hunter2-x"}"#),
            (400, r#"{"SecretString":"hunter2-x"}"#),
            (304, "hunter2-x"),
        ] {
            let resp = super::super::HttpResponse {
                status,
                headers: vec![],
                body: body.as_bytes().to_vec(),
            };
            let e = parse_get_secret_value(&resp).unwrap_err();
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{status}: {e}");
        }
    }

    #[test]
    fn version_stage_table() {
        assert_eq!(version_stage(None), Ok(VersionStage::Current));
        assert_eq!(version_stage(Some(1.0)), Ok(VersionStage::Current));
        assert_eq!(version_stage(Some(2.0)), Ok(VersionStage::Previous));
        assert_eq!(
            version_stage(Some(3.0)),
            Err("invalid version 3: only 1 (AWSCURRENT) and 2 (AWSPREVIOUS) are supported".into())
        );
        for bad in [0.0, -1.0, 1.5, 2.0000001, f64::NAN, f64::INFINITY] {
            let e = version_stage(Some(bad)).unwrap_err();
            assert!(e.starts_with("invalid version "), "{e}");
        }
        assert_eq!(VersionStage::Current.as_str(), "AWSCURRENT");
        assert_eq!(VersionStage::Previous.as_str(), "AWSPREVIOUS");
    }

    // ---- endpoints ----

    fn ep(scheme: &str, authority: &str, host: &str, port: Option<u16>) -> Endpoint {
        Endpoint {
            scheme: scheme.into(),
            authority: authority.into(),
            host: host.into(),
            port,
        }
    }

    #[test]
    fn endpoint_urls_good() {
        let cases = [
            (
                "https://secretsmanager.us-east-1.amazonaws.com",
                ep(
                    "https",
                    "secretsmanager.us-east-1.amazonaws.com",
                    "secretsmanager.us-east-1.amazonaws.com",
                    None,
                ),
            ),
            (
                "https://secretsmanager.us-east-1.amazonaws.com/",
                ep(
                    "https",
                    "secretsmanager.us-east-1.amazonaws.com",
                    "secretsmanager.us-east-1.amazonaws.com",
                    None,
                ),
            ),
            (
                "http://127.0.0.1:4566",
                ep("http", "127.0.0.1:4566", "127.0.0.1", Some(4566)),
            ),
            (
                "http://localhost:4566/",
                ep("http", "localhost:4566", "localhost", Some(4566)),
            ),
            (
                "HTTPS://vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com:443",
                ep(
                    "https",
                    "vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com:443",
                    "vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com",
                    Some(443),
                ),
            ),
            (
                "http://[::1]:4566",
                ep("http", "[::1]:4566", "[::1]", Some(4566)),
            ),
            (
                "https://[fd00:ec2::23]/",
                ep("https", "[fd00:ec2::23]", "[fd00:ec2::23]", None),
            ),
            (
                "http://moto_server:1",
                ep("http", "moto_server:1", "moto_server", Some(1)),
            ),
            ("http://h:65535", ep("http", "h:65535", "h", Some(65535))),
        ];
        for (url, want) in cases {
            assert_eq!(parse_endpoint_url(url), Ok(want), "{url}");
        }
    }

    #[test]
    fn endpoint_urls_bad() {
        let cases = [
            ("", "empty"),
            (
                "secretsmanager.us-east-1.amazonaws.com",
                "http:// or https://",
            ),
            ("ftp://host", "scheme"),
            ("://host", "scheme"),
            ("https://", "no host"),
            ("https:///", "no host"),
            ("https://:443", "no host"),
            ("https://user:pass@host", "userinfo"),
            ("https://host/path", "path"),
            ("https://host//", "path"),
            ("https://host?x=1", "query"),
            ("https://host/?x=1", "query"),
            ("https://host#frag", "fragment"),
            ("https://host:", "empty port"),
            ("https://host:0", "port"),
            ("https://host:65536", "port"),
            ("https://host:123456", "port"),
            ("https://host:+80", "port"),
            ("https://host:8o", "port"),
            ("https://ho st", "whitespace"),
            (" https://host", "whitespace"),
            ("https://host\n", "whitespace"),
            ("https://hôst", "ASCII"),
            ("https://ho%73t", "letters, digits"),
            ("https://::1", "brackets"),
            ("https://[::1", "unterminated"),
            ("https://[]:80", "IPv6"),
            ("https://[zz::1]", "IPv6"),
            ("https://[::1]x", "after the IPv6"),
            ("https://[::1]:", "empty port"),
            ("https://a:1:2", "brackets"),
        ];
        for (url, needle) in cases {
            let e = parse_endpoint_url(url).unwrap_err();
            assert!(e.contains(needle), "{url:?}: {e}");
        }
        // The URL (which may hold a password) is never echoed.
        let e = parse_endpoint_url("https://admin:hunter2@host").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn default_endpoints() {
        let want = "secretsmanager.eu-central-1.amazonaws.com";
        assert_eq!(
            default_endpoint("eu-central-1"),
            ep("https", want, want, None)
        );
        assert_eq!(
            parse_endpoint_url(&format!("https://{want}")),
            Ok(default_endpoint("eu-central-1"))
        );
        let cn = "secretsmanager.cn-north-1.amazonaws.com.cn";
        assert_eq!(default_endpoint("cn-north-1"), ep("https", cn, cn, None));
    }

    // ---- request ----

    #[test]
    fn request_exact_bytes() {
        let endpoint = parse_endpoint_url("http://127.0.0.1:4566").unwrap();
        let req = get_secret_value_request(&endpoint, "prod/db-password", VersionStage::Current);
        assert_eq!(req.method, "POST");
        assert_eq!(req.scheme, "http");
        assert_eq!(req.authority, "127.0.0.1:4566");
        assert_eq!(req.path, "/");
        assert_eq!(
            req.headers,
            vec![
                (
                    "content-type".to_string(),
                    "application/x-amz-json-1.1".to_string()
                ),
                (
                    "x-amz-target".to_string(),
                    "secretsmanager.GetSecretValue".to_string()
                ),
            ]
        );
        assert_eq!(
            req.body,
            br#"{"SecretId":"prod/db-password","VersionStage":"AWSCURRENT"}"#
        );

        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:a\"b\\c\n-AbCdEf";
        let req =
            get_secret_value_request(&default_endpoint("us-east-1"), arn, VersionStage::Previous);
        assert_eq!(req.scheme, "https");
        assert_eq!(req.authority, "secretsmanager.us-east-1.amazonaws.com");
        assert_eq!(
            String::from_utf8(req.body).unwrap(),
            r#"{"SecretId":"arn:aws:secretsmanager:us-east-1:123456789012:secret:a\"b\\c\n-AbCdEf","VersionStage":"AWSPREVIOUS"}"#
        );
    }

    #[test]
    fn request_signs_like_botocore() {
        // Same request and expected signature as sigv4's botocore test.
        let endpoint = parse_endpoint_url("http://127.0.0.1:4566").unwrap();
        let mut req =
            get_secret_value_request(&endpoint, "prod/db-password", VersionStage::Current);
        let creds = super::super::sigv4::Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_715_938_200);
        super::super::sigv4::sign(&mut req, &creds, "us-east-1", "secretsmanager", now).unwrap();
        let auth = &req
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .unwrap()
            .1;
        assert!(auth.ends_with(
            "Signature=ac43b4b1ec760b65bcc45688c5aaba7ab27d6742503fba5044eb92d7671a03e9"
        ));
    }

    // ---- success parsing ----

    #[test]
    fn success_secret_string() {
        let body = br#"{"ARN":"arn:aws:secretsmanager:us-east-1:1:secret:x","Name":"x",
            "VersionId":"v1","SecretString":"p\u00e4ss \"w\" \n","VersionStages":["AWSCURRENT"],
            "CreatedDate":1.523477145713E9}"#;
        let r = resp(200, &[("content-type", "application/x-amz-json-1.1")], body);
        assert_eq!(
            parse_get_secret_value(&r),
            Ok(SecretValue::String("päss \"w\" \n".into()))
        );
    }

    #[test]
    fn success_moto_shape() {
        // moto: text/html, integer CreatedDate, both fields with one null.
        let body = br#"{"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
            "Name": "db", "VersionId": "a1b2", "SecretString": "{\"password\":\"s3cr3t\"}",
            "VersionStages": ["AWSCURRENT"], "CreatedDate": 1700000000, "SecretBinary": null}"#;
        let r = resp(200, &[("content-type", "text/html; charset=utf-8")], body);
        assert_eq!(
            parse_get_secret_value(&r),
            Ok(SecretValue::String(r#"{"password":"s3cr3t"}"#.into()))
        );
    }

    #[test]
    fn success_secret_binary() {
        let cases: [(&str, &[u8]); 5] = [
            ("", b""),
            ("AA==", &[0]),
            ("AAE=", &[0, 1]),
            ("/+8A", &[0xff, 0xef, 0]),
            ("aGVsbG8gd29ybGQ=", b"hello world"),
        ];
        for (b64, want) in cases {
            let body = format!(r#"{{"Name":"b","SecretBinary":"{b64}","CreatedDate":1}}"#);
            let r = resp(200, &[], body.as_bytes());
            assert_eq!(
                parse_get_secret_value(&r),
                Ok(SecretValue::Binary(b64.to_string())),
                "{b64}"
            );
            assert_eq!(decode_binary(b64).as_deref(), Some(want));
        }
        // Every byte value round-trips (checked against Python's base64 module:
        // base64.b64encode(bytes(range(256)))).
        let all: Vec<u8> = (0..=255).collect();
        let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmqq6ytrq+wsbKztLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7/P3+/w==";
        assert_eq!(base64_decode(b64), Some(all));
    }

    #[test]
    fn base64_is_strict() {
        for bad in [
            "A", "AA", "AAA", "AA=", "A===", "====", "AA==AA==", "AB==", "AAF=", "AA =", "AA\n==",
            "AA-_", "AAA*", "=AAA", "AA=A",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
        let r = resp(200, &[], br#"{"SecretBinary":"c2VjcmV0!"}"#);
        let e = err_of(&r);
        assert_eq!(e.kind, ErrorKind::Malformed);
        assert_eq!(e.message, "SecretBinary is not valid base64");
        assert!(!format!("{e} {e:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn success_body_problems_are_malformed_without_secret() {
        let secret = "TOPSECRET-xyz";
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "response is not valid JSON"),
            (
                format!(r#"{{"SecretString":"{secret}""#).into_bytes(),
                "response is not valid JSON",
            ),
            (
                format!(r#"{{"SecretString":"{secret}\q"}}"#).into_bytes(),
                "response is not valid JSON",
            ),
            (
                format!(r#"["{secret}"]"#).into_bytes(),
                "response is not a JSON object",
            ),
            (
                format!(r#""{secret}""#).into_bytes(),
                "response is not a JSON object",
            ),
            (
                format!(r#"{{"SecretString":["{secret}"]}}"#).into_bytes(),
                "SecretString is not a string",
            ),
            (
                format!(r#"{{"SecretBinary":{{"x":"{secret}"}}}}"#).into_bytes(),
                "SecretBinary is not a string",
            ),
            (
                format!(r#"{{"Name":"{secret}"}}"#).into_bytes(),
                "response has neither SecretString nor SecretBinary",
            ),
            (
                br#"{"SecretString":null,"SecretBinary":null}"#.to_vec(),
                "response has neither SecretString nor SecretBinary",
            ),
            (
                format!("<html>{secret}</html>").into_bytes(),
                "response is not valid JSON",
            ),
        ];
        for (body, message) in cases {
            let e = err_of(&resp(200, &[], &body));
            assert_eq!(
                e,
                AwsError {
                    kind: ErrorKind::Malformed,
                    status: 200,
                    code: "MalformedResponse".into(),
                    message: message.into(),
                }
            );
            assert!(!format!("{e} {e:?}").contains(secret));
        }
    }

    #[test]
    fn invalid_utf8_bodies() {
        // 2xx: invalid UTF-8 inside the secret string -> fixed message.
        let mut body = br#"{"SecretString":"ab"#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#"cd"}"#);
        let e = err_of(&resp(200, &[], &body));
        assert_eq!(e.kind, ErrorKind::Malformed);
        assert_eq!(e.message, "response is not valid JSON");
        // Error body: excerpted lossily.
        let e = err_of(&resp(502, &[], b"bad \xff gateway"));
        assert_eq!(e.kind, ErrorKind::Server);
        assert_eq!(e.code, "HTTP502");
        assert_eq!(e.message, "bad \u{fffd} gateway");
    }

    #[test]
    fn huge_bodies() {
        let mut body = br#"{"SecretString":""#.to_vec();
        body.resize(MAX_BODY_BYTES + 1 - 2, b'a');
        body.extend_from_slice(br#""}"#);
        assert_eq!(body.len(), MAX_BODY_BYTES + 1);
        let e = err_of(&resp(200, &[], &body));
        assert_eq!(e.kind, ErrorKind::Malformed);
        assert_eq!(e.message, "response body is larger than 1 MiB");

        // Exactly 1 MiB is still parsed.
        let mut body = br#"{"SecretString":""#.to_vec();
        body.resize(MAX_BODY_BYTES - 2, b'a');
        body.extend_from_slice(br#""}"#);
        match parse_get_secret_value(&resp(200, &[], &body)) {
            Ok(SecretValue::String(s)) => assert_eq!(s.len(), MAX_BODY_BYTES - 19),
            other => panic!("{other:?}"),
        }

        // A huge error body is not parsed, only excerpted.
        let mut body = br#"{"__type":"ThrottlingException","message":""#.to_vec();
        body.resize(2 * MAX_BODY_BYTES, b'x');
        let e = err_of(&resp(400, &[], &body));
        assert_eq!(e.code, "HTTP400");
        assert_eq!(e.kind, ErrorKind::Other);
        assert_eq!(e.message.chars().count(), 200);
        assert!(e.message.ends_with("..."));
    }

    #[test]
    fn secret_value_debug_hides_value() {
        let s = format!("{:?}", SecretValue::String("hunter2".into()));
        assert_eq!(s, "SecretValue::String(<7 bytes>)");
        let b = format!("{:?}", SecretValue::Binary("aHVudGVyMg==".into()));
        assert_eq!(b, "SecretValue::Binary(<12 bytes>)");
    }

    // ---- error shapes ----

    #[test]
    fn json_error_shapes() {
        let cases: [(u16, &str, &str, &str, ErrorKind); 8] = [
            (
                400,
                r#"{"__type":"ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#,
                "ResourceNotFoundException",
                "Secrets Manager can't find the specified secret.",
                ErrorKind::NotFound,
            ),
            (
                400,
                r#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","message":"gone"}"#,
                "ResourceNotFoundException",
                "gone",
                ErrorKind::NotFound,
            ),
            (
                400,
                r#"{"__type":"AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/","Message":"no"}"#,
                "AccessDeniedException",
                "no",
                ErrorKind::AccessDenied,
            ),
            (
                400,
                r#"{"__type":"aws.protocoltests#DecryptionFailure:http://internal.amazon.com/","message":"kms"}"#,
                "DecryptionFailure",
                "kms",
                ErrorKind::Decryption,
            ),
            (
                400,
                r#"{"__type":"InvalidRequestException","message":"m1","Message":"m2"}"#,
                "InvalidRequestException",
                "m1",
                ErrorKind::InvalidRequest,
            ),
            (
                400,
                r#"{"__type":"ThrottlingException"}"#,
                "ThrottlingException",
                "",
                ErrorKind::Throttling,
            ),
            (
                400,
                r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                ErrorKind::Credentials,
            ),
            (
                500,
                r#"{"__type":"InternalServiceError","Message":"oops\n\tline2"}"#,
                "InternalServiceError",
                "oops line2",
                ErrorKind::Server,
            ),
        ];
        for (status, body, code, message, kind) in cases {
            let e = err_of(&resp(status, &[], body.as_bytes()));
            assert_eq!(
                e,
                AwsError {
                    kind,
                    status,
                    code: code.into(),
                    message: message.into()
                },
                "{body}"
            );
        }
        // moto: ResourceNotFound as HTTP 404.
        let e = err_of(&resp(
            404,
            &[("content-type", "text/html; charset=utf-8")],
            br#"{"__type": "ResourceNotFoundException", "message": "Secrets Manager can't find the specified secret."}"#,
        ));
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "AWS error 404 ResourceNotFoundException: Secrets Manager can't find the specified secret."
        );
    }

    #[test]
    fn display_format() {
        let e = err_of(&resp(
            400,
            &[],
            br#"{"__type":"ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#,
        ));
        assert_eq!(
            e.to_string(),
            "AWS error 400 ResourceNotFoundException: Secrets Manager can't find the specified secret."
        );
        let e = err_of(&resp(503, &[], b""));
        assert_eq!(e.to_string(), "AWS error 503 HTTP503");
    }

    #[test]
    fn header_only_error_code() {
        let e = err_of(&resp(
            400,
            &[(
                "x-amzn-errortype",
                "ExpiredTokenException:http://internal.amazon.com/coral/com.amazon.coral.service/",
            )],
            b"",
        ));
        assert_eq!(e.code, "ExpiredTokenException");
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert_eq!(e.message, "");
        // Header names are matched case-insensitively; a JSON message is kept.
        let e = err_of(&resp(
            400,
            &[("X-Amzn-ErrorType", "com.amazonaws#ThrottlingException")],
            br#"{"message":"Rate exceeded"}"#,
        ));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("ThrottlingException", "Rate exceeded")
        );
        assert_eq!(e.kind, ErrorKind::Throttling);
        // __type wins over the header.
        let e = err_of(&resp(
            400,
            &[("x-amzn-errortype", "ThrottlingException")],
            br#"{"__type":"AccessDeniedException"}"#,
        ));
        assert_eq!(e.code, "AccessDeniedException");
    }

    #[test]
    fn moto_xml_errors() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse>
  <Errors>
    <Error>
      <Code>SignatureDoesNotMatch</Code>
      <Message>The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key &amp; signing method.</Message>
    </Error>
  </Errors>
  <RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId>
</ErrorResponse>"#;
        let e = err_of(&resp(403, &[("content-type", "text/xml")], body));
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert!(
            e.message
                .contains("does not match the signature you provided"),
            "{}",
            e.message
        );
        assert!(e.message.contains("Key & signing"), "{}", e.message);

        let sts = br#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>InvalidClientTokenId</Code><Message>The security token &lt;x&gt; is invalid&#46;&#x21;</Message></Error>
  <RequestId>abc</RequestId></ErrorResponse>"#;
        let e = err_of(&resp(403, &[], sts));
        assert_eq!(
            (e.kind, e.code.as_str(), e.message.as_str()),
            (
                ErrorKind::Credentials,
                "InvalidClientTokenId",
                "The security token <x> is invalid.!"
            )
        );

        let ec2 = b"<Response><Errors><Error><Code>AuthFailure</Code></Error></Errors><RequestID>1</RequestID></Response>";
        let e = err_of(&resp(401, &[], ec2));
        assert_eq!((e.code.as_str(), e.message.as_str()), ("AuthFailure", ""));
        assert_eq!(e.kind, ErrorKind::Other);

        // An unknown code with 403 is access denied.
        let e = err_of(&resp(
            403,
            &[],
            b"<ErrorResponse><Error><Code>Forbidden</Code><Message>nope</Message></Error></ErrorResponse>",
        ));
        assert_eq!(
            (e.kind, e.code.as_str()),
            (ErrorKind::AccessDenied, "Forbidden")
        );
    }

    #[test]
    fn html_and_other_bodies() {
        let html = b"<!DOCTYPE html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>\n<p>The server encountered an internal error\x1b[31m.</p>\n";
        let e = err_of(&resp(500, &[("content-type", "text/html")], html));
        assert_eq!(e.kind, ErrorKind::Server);
        assert_eq!(e.code, "HTTP500");
        assert_eq!(
            e.message,
            "<!DOCTYPE html> <html lang=en> <title>500 Internal Server Error</title> <h1>Internal Server Error</h1> <p>The server encountered an internal error [31m.</p>"
        );
        assert!(!e.message.chars().any(char::is_control));

        let e = err_of(&resp(503, &[], b""));
        assert_eq!(
            (e.kind, e.code.as_str(), e.message.as_str()),
            (ErrorKind::Server, "HTTP503", "")
        );

        let e = err_of(&resp(429, &[], b"slow down"));
        assert_eq!(
            (e.kind, e.code.as_str(), e.message.as_str()),
            (ErrorKind::Throttling, "HTTP429", "slow down")
        );

        // JSON without error fields is excerpted.
        let e = err_of(&resp(400, &[], br#"{"error":"bad"}"#));
        assert_eq!(
            (e.kind, e.code.as_str(), e.message.as_str()),
            (ErrorKind::Other, "HTTP400", r#"{"error":"bad"}"#)
        );

        // JSON that is not an object, or XML without an <Error>.
        let e = err_of(&resp(400, &[], br#"["x"]"#));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("HTTP400", r#"["x"]"#)
        );
        let e = err_of(&resp(400, &[], b"<a><Code>X</Code></a>"));
        assert_eq!(e.code, "HTTP400");

        // Status 3xx/1xx and odd codes.
        assert_eq!(err_of(&resp(301, &[], b"")).kind, ErrorKind::Other);
        assert_eq!(err_of(&resp(0, &[], b"")).code, "HTTP0");

        // Long messages are capped at 200 chars; bidi controls removed.
        let long = format!(
            r#"{{"__type":"X","message":"{}\u202e{}"}}"#,
            "a".repeat(10),
            "b".repeat(500)
        );
        let e = err_of(&resp(400, &[], long.as_bytes()));
        assert_eq!(e.message.chars().count(), 200);
        assert!(e.message.starts_with("aaaaaaaaaa bbb"));
        assert!(e.message.ends_with("b..."));
        let long_code = format!(r#"{{"__type":"{}"}}"#, "C".repeat(500));
        assert_eq!(
            err_of(&resp(400, &[], long_code.as_bytes()))
                .code
                .chars()
                .count(),
            200
        );
    }

    #[test]
    fn classification_table() {
        let table: &[(&str, u16, ErrorKind)] = &[
            ("ResourceNotFoundException", 400, ErrorKind::NotFound),
            ("ResourceNotFoundException", 404, ErrorKind::NotFound),
            ("AccessDeniedException", 400, ErrorKind::AccessDenied),
            ("AccessDenied", 403, ErrorKind::AccessDenied),
            ("DecryptionFailure", 400, ErrorKind::Decryption),
            ("InvalidRequestException", 400, ErrorKind::InvalidRequest),
            ("InvalidParameterException", 400, ErrorKind::InvalidRequest),
            ("ValidationException", 400, ErrorKind::InvalidRequest),
            ("ThrottlingException", 400, ErrorKind::Throttling),
            ("Throttling", 400, ErrorKind::Throttling),
            ("UnrecognizedClientException", 400, ErrorKind::Credentials),
            ("InvalidSignatureException", 400, ErrorKind::Credentials),
            ("SignatureDoesNotMatch", 403, ErrorKind::Credentials),
            ("ExpiredToken", 400, ErrorKind::Credentials),
            ("ExpiredTokenException", 400, ErrorKind::Credentials),
            ("IncompleteSignature", 400, ErrorKind::Credentials),
            ("InvalidClientTokenId", 403, ErrorKind::Credentials),
            ("MissingAuthenticationToken", 403, ErrorKind::Credentials),
            ("InternalServiceError", 500, ErrorKind::Server),
            ("InternalFailure", 500, ErrorKind::Server),
            ("ServiceUnavailable", 503, ErrorKind::Server),
            // code wins over status
            ("ResourceNotFoundException", 500, ErrorKind::NotFound),
            ("ThrottlingException", 403, ErrorKind::Throttling),
            // then status
            ("SomethingNew", 429, ErrorKind::Throttling),
            ("SomethingNew", 500, ErrorKind::Server),
            ("SomethingNew", 599, ErrorKind::Server),
            ("SomethingNew", 403, ErrorKind::AccessDenied),
            ("SomethingNew", 400, ErrorKind::Other),
            ("HTTP404", 404, ErrorKind::Other),
            ("HTTP401", 401, ErrorKind::Other),
        ];
        for &(code, status, kind) in table {
            assert_eq!(classify(code, status), kind, "{code} {status}");
        }
        let retryable: Vec<_> = [
            ErrorKind::NotFound,
            ErrorKind::AccessDenied,
            ErrorKind::Decryption,
            ErrorKind::InvalidRequest,
            ErrorKind::Throttling,
            ErrorKind::Credentials,
            ErrorKind::Server,
            ErrorKind::Malformed,
            ErrorKind::Other,
        ]
        .into_iter()
        .map(|k| (k.as_str(), k.is_retryable()))
        .collect();
        assert_eq!(
            retryable,
            vec![
                ("not_found", false),
                ("access_denied", false),
                ("decryption", false),
                ("invalid_request", false),
                ("throttling", true),
                ("credentials", false),
                ("server", true),
                ("malformed", false),
                ("other", false),
            ]
        );
    }

    #[test]
    fn error_code_trimming() {
        for (raw, want) in [
            ("ResourceNotFoundException", "ResourceNotFoundException"),
            (
                "com.amazonaws.secretsmanager#ResourceNotFoundException",
                "ResourceNotFoundException",
            ),
            ("X:http://internal.amazon.com/coral/", "X"),
            ("a.b#c#D:http://x#y", "D"),
            (" Padded ", "Padded"),
            ("#", ""),
            (":x", ""),
        ] {
            assert_eq!(trim_error_code(raw), want, "{raw}");
        }
        // An empty __type falls back to the header, then to the status.
        let e = err_of(&resp(
            400,
            &[("x-amzn-errortype", "ThrottlingException")],
            br#"{"__type":""}"#,
        ));
        assert_eq!(e.code, "ThrottlingException");
        let e = err_of(&resp(400, &[], br##"{"__type":"#","message":"m"}"##));
        assert_eq!((e.code.as_str(), e.message.as_str()), ("HTTP400", "m"));
    }

    #[test]
    fn printable_helper() {
        assert_eq!(printable("  a\r\n\tb  \u{7f}c\u{85}d "), "a b c d");
        assert_eq!(printable(""), "");
        let s = "é".repeat(300);
        let p = printable(&s);
        assert_eq!(p.chars().count(), 200);
        assert!(p.ends_with("..."));
        assert_eq!(printable(&"x".repeat(200)), "x".repeat(200));
    }

    #[test]
    fn xml_unescape_tolerant() {
        assert_eq!(xml_unescape("a &lt;b&gt; &amp;&quot;&apos;"), "a <b> &\"'");
        assert_eq!(xml_unescape("&#65;&#x42;&#X43;"), "ABC");
        assert_eq!(
            xml_unescape("& &foo; &#xZZ; &#1114112; &"),
            "& &foo; &#xZZ; &#1114112; &"
        );
        assert_eq!(xml_unescape("&amp"), "&amp");
    }

    // ---- extract_key ----

    #[test]
    fn extract_key_cases() {
        let secret = r#"{"username":"admin","password":"s3cr3t-Pa55","port":5432,"nested":{"k":"v"},"list":["v"],"flag":true,"nothing":null}"#;
        assert_eq!(extract_key(secret, "username"), Ok("admin".into()));
        assert_eq!(extract_key(secret, "password"), Ok("s3cr3t-Pa55".into()));
        assert_eq!(
            extract_key(secret, "port"),
            Err(KeyError::NotAString {
                json_type: "number"
            })
        );
        assert_eq!(
            extract_key(secret, "nested"),
            Err(KeyError::NotAString {
                json_type: "object"
            })
        );
        assert_eq!(
            extract_key(secret, "list"),
            Err(KeyError::NotAString { json_type: "array" })
        );
        assert_eq!(
            extract_key(secret, "flag"),
            Err(KeyError::NotAString {
                json_type: "boolean"
            })
        );
        assert_eq!(
            extract_key(secret, "nothing"),
            Err(KeyError::NotAString { json_type: "null" })
        );
        assert_eq!(extract_key(secret, "missing"), Err(KeyError::Missing));
        assert_eq!(extract_key(secret, "k"), Err(KeyError::Missing));
        assert_eq!(
            extract_key("s3cr3t-Pa55", "password"),
            Err(KeyError::NotJson)
        );
        assert_eq!(
            extract_key(r#"{"password":"s3cr3t-Pa55""#, "password"),
            Err(KeyError::NotJson)
        );
        assert_eq!(
            extract_key(r#""s3cr3t-Pa55""#, "password"),
            Err(KeyError::NotAnObject)
        );
        assert_eq!(
            extract_key(r#"["s3cr3t-Pa55"]"#, "0"),
            Err(KeyError::NotAnObject)
        );
        assert_eq!(extract_key(r#"{"a\"b":"v"}"#, "a\"b"), Ok("v".into()));
        assert_eq!(extract_key(r#"{"k":"\u00e9\n"}"#, "k"), Ok("é\n".into()));
    }

    #[test]
    fn key_errors_never_show_secret() {
        let secret = r#"{"port":5432,"nested":{"pw":"s3cr3t-Pa55"}}"#;
        let errors = [
            extract_key(secret, "nested").unwrap_err(),
            extract_key(secret, "port").unwrap_err(),
            extract_key(secret, "nope").unwrap_err(),
            extract_key("s3cr3t-Pa55 {", "pw").unwrap_err(),
            extract_key(r#"["s3cr3t-Pa55"]"#, "pw").unwrap_err(),
        ];
        for e in errors {
            let text = format!("{e} {e:?}");
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(!text.contains("5432"), "{text}");
        }
        assert_eq!(
            KeyError::NotAString {
                json_type: "object"
            }
            .to_string(),
            "key's value in secret is a JSON object, not a string"
        );
    }
}
