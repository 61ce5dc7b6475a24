//! STS over the query protocol: endpoint choice, `AssumeRole` and
//! `AssumeRoleWithWebIdentity` requests, and their XML answers, read with a
//! tiny tolerant scanner (no XML crate).
//!
//! Answers: `<AssumeRoleResponse><AssumeRoleResult><Credentials>` with
//! `AccessKeyId`, `SecretAccessKey`, `SessionToken`, `Expiration` (ISO 8601
//! UTC, with or without fractional seconds); errors
//! `<ErrorResponse><Error><Type/><Code/><Message/></Error>` or, from moto,
//! `<ErrorResponse><Errors><Error>...`. A success body holds credentials:
//! its problems are reported with fixed texts. Error messages are cut before
//! any canonical request or string-to-sign AWS echoes back (they carry the
//! session token) and capped.

use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::credentials::{self, TimedCredentials, MAX_BODY_LEN};
use super::secrets_manager::Endpoint;
use super::sigv4::Credentials;
use super::{HttpRequest, HttpResponse};

/// The STS API version.
pub const API_VERSION: &str = "2011-06-15";
/// The region the global endpoint is signed for.
pub const GLOBAL_REGION: &str = "us-east-1";
const MAX_MESSAGE_CHARS: usize = 200;

/// `AWS_STS_REGIONAL_ENDPOINTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum EndpointMode {
    /// `https://sts.<region>.amazonaws.com`, signed for `<region>` (the default).
    #[default]
    Regional,
    /// `https://sts.amazonaws.com`, signed for `us-east-1`.
    Legacy,
}

impl EndpointMode {
    /// `legacy` (any case) is [`Legacy`](EndpointMode::Legacy); unset,
    /// `regional` or anything else is [`Regional`](EndpointMode::Regional).
    pub fn from_env(env: credentials::Env) -> EndpointMode {
        match env("AWS_STS_REGIONAL_ENDPOINTS") {
            Some(v) if v.trim().eq_ignore_ascii_case("legacy") => EndpointMode::Legacy,
            _ => EndpointMode::Regional,
        }
    }
}

/// Where to send an STS call and which region to sign it for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StsEndpoint {
    pub endpoint: Endpoint,
    pub signing_region: String,
}

/// The STS endpoint for `region`:
/// - `override_url` (a configured `sts_endpoint_url`) wins, signed for
///   `region` (or `us-east-1` without one);
/// - else `Regional`: `https://sts.<region>.amazonaws.com`
///   (`.amazonaws.com.cn` for `cn-*`), signed for `region`;
/// - else (`Legacy`, or no region at all): the global
///   `https://sts.amazonaws.com`, signed for `us-east-1`. The China regions
///   have no global endpoint and stay regional.
pub fn endpoint(
    region: Option<&str>,
    mode: EndpointMode,
    override_url: Option<&Endpoint>,
) -> StsEndpoint {
    let signing = region.unwrap_or(GLOBAL_REGION).to_string();
    if let Some(ep) = override_url {
        return StsEndpoint {
            endpoint: ep.clone(),
            signing_region: signing,
        };
    }
    let host = match region {
        Some(r) if r.starts_with("cn-") => format!("sts.{r}.amazonaws.com.cn"),
        Some(r) if mode == EndpointMode::Regional => format!("sts.{r}.amazonaws.com"),
        _ => {
            return StsEndpoint {
                endpoint: https("sts.amazonaws.com"),
                signing_region: GLOBAL_REGION.into(),
            }
        }
    };
    StsEndpoint {
        endpoint: https(&host),
        signing_region: signing,
    }
}

fn https(host: &str) -> Endpoint {
    Endpoint {
        scheme: "https".into(),
        authority: host.into(),
        host: host.into(),
        port: None,
    }
}

/// `application/x-www-form-urlencoded` value encoding: all but `A-Za-z0-9-_.~`.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, FORM)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

fn post(endpoint: &Endpoint, body: Vec<u8>) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        scheme: endpoint.scheme.clone(),
        authority: endpoint.authority.clone(),
        path: "/".into(),
        headers: vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded; charset=utf-8".into(),
        )],
        body,
    }
}

/// The unsigned `AssumeRole` request (sign it with
/// [`sigv4::sign`](super::sigv4::sign), service `sts`).
pub fn assume_role_request(
    endpoint: &Endpoint,
    role_arn: &str,
    session_name: &str,
    duration_seconds: Option<u32>,
) -> HttpRequest {
    let duration = duration_seconds.map(|d| d.to_string());
    let mut pairs = vec![
        ("Action", "AssumeRole"),
        ("Version", API_VERSION),
        ("RoleArn", role_arn),
        ("RoleSessionName", session_name),
    ];
    if let Some(d) = &duration {
        pairs.push(("DurationSeconds", d));
    }
    post(endpoint, form(&pairs))
}

/// The `AssumeRoleWithWebIdentity` request; it is sent unsigned.
pub fn assume_role_with_web_identity_request(
    endpoint: &Endpoint,
    role_arn: &str,
    session_name: &str,
    web_identity_token: &str,
) -> HttpRequest {
    post(
        endpoint,
        form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", API_VERSION),
            ("RoleArn", role_arn),
            ("RoleSessionName", session_name),
            ("WebIdentityToken", web_identity_token),
        ]),
    )
}

/// A failed STS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsError {
    pub status: u16,
    /// The AWS error code (`AccessDenied`, `ExpiredToken`, ...), if any.
    pub code: Option<String>,
    /// Printable, capped; never from a success body.
    pub message: String,
}

impl StsError {
    /// The credentials used to sign were refused (expired, unknown, bad
    /// signature): refresh them before retrying.
    pub fn is_credentials_problem(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some(
                "ExpiredToken"
                    | "ExpiredTokenException"
                    | "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
                    | "IncompleteSignature"
                    | "InvalidSignatureException"
                    | "UnrecognizedClientException"
                    | "MissingAuthenticationToken"
                    | "AuthFailure"
            )
        )
    }

    /// Worth retrying as is (throttling, server trouble).
    pub fn is_retryable(&self) -> bool {
        self.status >= 500
            || self.status == 429
            || matches!(
                self.code.as_deref(),
                Some("Throttling" | "ThrottlingException" | "IDPCommunicationError")
            )
    }

    fn fixed(status: u16, message: &str) -> StsError {
        StsError {
            status,
            code: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for StsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "STS error {code} (HTTP {})", self.status)?,
            None => write!(f, "STS answered HTTP {}", self.status)?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for StsError {}

/// Parse the answer to `AssumeRole` or `AssumeRoleWithWebIdentity`.
pub fn parse_credentials_response(resp: &HttpResponse) -> Result<TimedCredentials, StsError> {
    let status = resp.status;
    if resp.body.len() > MAX_BODY_LEN {
        return Err(StsError::fixed(
            status,
            "response body is larger than 64 KiB",
        ));
    }
    let body = String::from_utf8_lossy(&resp.body);
    if !(200..300).contains(&status) {
        return Err(parse_error(status, &body));
    }
    // A 2xx body holds the credentials: fixed messages only from here.
    match element(&body, "Credentials") {
        Some(creds) => credentials_of(creds).map_err(|why| StsError::fixed(status, &why)),
        None => Err(no_credentials_error(status, &body)),
    }
}

/// A 2xx answer without `Credentials`. Some proxies answer errors with 200.
/// The body may still hold credentials: keep only a code that looks like
/// one, no message.
#[inline(never)] // see Config::fields
fn no_credentials_error(status: u16, body: &str) -> StsError {
    if let Some(err) = element(body, "Error") {
        let code = error_from(status, err).code.filter(|c| looks_like_code(c));
        return StsError {
            status,
            code,
            message: String::new(),
        };
    }
    StsError::fixed(status, "response has no Credentials")
}

/// The credentials in the `Credentials` element of a 2xx answer; the error
/// is a fixed text.
#[inline(never)] // see Config::fields
fn credentials_of(creds: &str) -> Result<TimedCredentials, String> {
    let access_key_id = required_field(creds, "AccessKeyId")?;
    let secret_access_key = required_field(creds, "SecretAccessKey")?;
    let session_token = required_field(creds, "SessionToken")?;
    let expiration = required_field(creds, "Expiration")?;
    let expires_at = credentials::parse_timestamp(&expiration)
        .ok_or("response has an invalid Expiration (expected ISO 8601 UTC)")?;
    credentials::check_credentials(&access_key_id, &secret_access_key, Some(&session_token))?;
    Ok(TimedCredentials {
        credentials: Credentials {
            access_key_id,
            secret_access_key,
            session_token: Some(session_token),
        },
        expires_at: Some(expires_at),
    })
}

/// The non-empty text of the element `name` of `Credentials`.
#[inline(never)] // see Config::fields
fn required_field(creds: &str, name: &str) -> Result<String, String> {
    element(creds, name)
        .map(text)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("response has no {name}"))
}

fn parse_error(status: u16, body: &str) -> StsError {
    match element(body, "Error") {
        Some(err) => error_from(status, err),
        None => {
            let trimmed = body.trim_start();
            let message = if trimmed.starts_with('<') {
                // An HTML or unknown XML page: no useful text.
                String::new()
            } else {
                message_text(trimmed)
            };
            StsError {
                status,
                code: None,
                message,
            }
        }
    }
}

fn error_from(status: u16, err: &str) -> StsError {
    let code = element(err, "Code")
        .map(|c| text(prefix(c, 256)))
        .map(|c| credentials::scrub(&c, &[], 64))
        .filter(|c| !c.is_empty());
    // Only the start of a message is shown: decode no more than that.
    let message = element(err, "Message")
        .map(|m| text(prefix(m, 4 * MAX_MESSAGE_CHARS)))
        .map(|m| message_text(&m))
        .unwrap_or_default();
    StsError {
        status,
        code,
        message,
    }
}

/// `AccessDenied`, `Sender.Throttling`...: letters, digits, `.`, `_`, `-`.
fn looks_like_code(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// An error message safe to log: cut before an echoed canonical request or
/// string-to-sign (which would show the session token), or any blank line,
/// then made printable and capped.
fn message_text(m: &str) -> String {
    let mut cut = m.len();
    for marker in [
        "The Canonical String",
        "The String-to-Sign",
        "\n\n",
        "\r\n\r\n",
    ] {
        if let Some(i) = m.find(marker) {
            cut = cut.min(i);
        }
    }
    let head = m.get(..cut).unwrap_or(m);
    credentials::scrub(head, &[], MAX_MESSAGE_CHARS)
}

/// The content of the first element `<name ...>...</name>` in `xml` (empty
/// for `<name/>`). Tolerant: attributes and whitespace allowed; no nesting
/// of same-named elements expected.
pub fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}");
    let mut from = 0;
    loop {
        let at = from + xml.get(from..)?.find(&open)?;
        let after = at + open.len();
        let rest = xml.get(after..)?;
        match rest.chars().next() {
            Some('>') | Some('/') => {}
            Some(c) if c.is_whitespace() => {}
            _ => {
                from = after;
                continue;
            }
        }
        let gt = rest.find('>')?;
        let tag = rest.get(..gt)?;
        if tag.trim_end().ends_with('/') {
            return Some("");
        }
        let inner_start = after + gt + 1;
        let inner = xml.get(inner_start..)?;
        let close = format!("</{name}");
        let mut search = 0;
        loop {
            let end = search + inner.get(search..)?.find(&close)?;
            let tail = inner.get(end + close.len()..)?;
            if tail.trim_start().starts_with('>') {
                return inner.get(..end);
            }
            search = end + close.len();
        }
    }
}

/// Element text: CDATA sections kept as is, entities decoded, trimmed.
pub fn text(inner: &str) -> String {
    let mut out = String::new();
    let mut rest = inner;
    while let Some(start) = rest.find("<![CDATA[") {
        out.push_str(&unescape(rest.get(..start).unwrap_or("")));
        let after = rest.get(start + 9..).unwrap_or("");
        match after.find("]]>") {
            Some(end) => {
                out.push_str(after.get(..end).unwrap_or(""));
                rest = after.get(end + 3..).unwrap_or("");
            }
            None => {
                out.push_str(after);
                rest = "";
            }
        }
    }
    out.push_str(&unescape(rest));
    out.trim().to_string()
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(rest.get(..amp).unwrap_or(""));
        let after = rest.get(amp + 1..).unwrap_or("");
        // Entities are short: look for the `;` in the next few bytes only
        // (a scan of the whole rest would be quadratic on a run of `&`).
        let semi = after.bytes().take(12).position(|b| b == b';');
        let decoded = semi.and_then(|semi| {
            let entity = after.get(..semi)?;
            let c = match entity {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let num = entity.strip_prefix('#')?;
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse::<u32>().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, semi))
        });
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = after.get(semi + 1..).unwrap_or("");
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::aws::credentials::testing::*;
    use crate::aws::secrets_manager::parse_endpoint_url;

    fn body(req: &HttpRequest) -> String {
        String::from_utf8(req.body.clone()).unwrap()
    }

    #[test]
    fn endpoints() {
        let e = endpoint(Some("eu-west-1"), EndpointMode::Regional, None);
        assert_eq!(e.endpoint.authority, "sts.eu-west-1.amazonaws.com");
        assert_eq!(e.endpoint.scheme, "https");
        assert_eq!(e.signing_region, "eu-west-1");
        let e = endpoint(Some("eu-west-1"), EndpointMode::Legacy, None);
        assert_eq!(e.endpoint.authority, "sts.amazonaws.com");
        assert_eq!(e.signing_region, "us-east-1");
        let e = endpoint(None, EndpointMode::Regional, None);
        assert_eq!(e.endpoint.authority, "sts.amazonaws.com");
        assert_eq!(e.signing_region, "us-east-1");
        let e = endpoint(Some("cn-north-1"), EndpointMode::Legacy, None);
        assert_eq!(e.endpoint.authority, "sts.cn-north-1.amazonaws.com.cn");
        assert_eq!(e.signing_region, "cn-north-1");
        let o = parse_endpoint_url("http://127.0.0.1:5000").unwrap();
        let e = endpoint(Some("eu-west-1"), EndpointMode::Legacy, Some(&o));
        assert_eq!(e.endpoint.authority, "127.0.0.1:5000");
        assert_eq!(e.signing_region, "eu-west-1");
    }

    #[test]
    fn mode_from_env() {
        assert_eq!(EndpointMode::from_env(&env_of(&[])), EndpointMode::Regional);
        for (v, want) in [
            ("legacy", EndpointMode::Legacy),
            (" LEGACY ", EndpointMode::Legacy),
            ("regional", EndpointMode::Regional),
            ("junk", EndpointMode::Regional),
        ] {
            let env = env_of(&[("AWS_STS_REGIONAL_ENDPOINTS", v)]);
            assert_eq!(EndpointMode::from_env(&env), want, "{v}");
        }
    }

    #[test]
    fn requests_are_form_encoded() {
        let ep = https("sts.us-east-1.amazonaws.com");
        let r = assume_role_request(&ep, "arn:aws:iam::123:role/a+b", "Kong Vault", Some(900));
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/");
        assert_eq!(r.authority, "sts.us-east-1.amazonaws.com");
        assert_eq!(
            body(&r),
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123%3Arole%2Fa%2Bb&RoleSessionName=Kong%20Vault&DurationSeconds=900"
        );
        assert_eq!(
            header(&r, "content-type"),
            Some("application/x-www-form-urlencoded; charset=utf-8")
        );
        let r = assume_role_request(&ep, "arn", "s", None);
        assert!(!body(&r).contains("Duration"));
        let r = assume_role_with_web_identity_request(&ep, "arn", "s", "ey.J=");
        assert_eq!(
            body(&r),
            "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn&RoleSessionName=s&WebIdentityToken=ey.J%3D"
        );
        assert!(r.headers.iter().all(|(n, _)| n != "authorization"));
        // The token is not in Debug.
        assert!(!format!("{r:?}").contains("ey.J"));
    }

    #[test]
    fn success_both_actions_and_time_formats() {
        for action in ["AssumeRole", "AssumeRoleWithWebIdentity"] {
            let c = parse_credentials_response(&resp(200, &sts_xml(action, T0))).unwrap();
            assert_eq!(c.credentials.access_key_id, AKID);
            assert_eq!(c.credentials.secret_access_key, SECRET);
            assert_eq!(c.credentials.session_token.as_deref(), Some(TOKEN));
            assert_eq!(c.expires_at, Some(T0));
        }
        let xml = sts_xml("AssumeRole", T0).replace("00:00:00Z", "00:00:00.250Z");
        let c = parse_credentials_response(&resp(200, &xml)).unwrap();
        assert_eq!(c.expires_at, Some(T0 + 250));
        // moto: microseconds.
        let xml = sts_xml("AssumeRole", T0).replace("00:00:00Z", "00:00:00.123456Z");
        let c = parse_credentials_response(&resp(200, &xml)).unwrap();
        assert_eq!(c.expires_at, Some(T0 + 123));
        // Tolerated: attributes, CDATA, entities, whitespace, no namespace.
        let xml = format!(
            "<AssumeRoleResponse><AssumeRoleResult><Credentials a='1'>\n<AccessKeyId>{AKID}</AccessKeyId ><SecretAccessKey><![CDATA[{SECRET}]]></SecretAccessKey><SessionToken>a&amp;b</SessionToken><Expiration> 2024-01-01T00:00:00Z </Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>"
        );
        let c = parse_credentials_response(&resp(200, &xml)).unwrap();
        assert_eq!(c.credentials.secret_access_key, SECRET);
        assert_eq!(c.credentials.session_token.as_deref(), Some("a&b"));
    }

    #[test]
    fn malformed_success_uses_fixed_texts() {
        let full = sts_xml("AssumeRole", T0);
        let cases = [
            ("<html>ok</html>".to_string(), "no Credentials"),
            (
                full.replace("<AccessKeyId>", "<X>")
                    .replace("</AccessKeyId>", "</X>"),
                "no AccessKeyId",
            ),
            (full.replace("SecretAccessKey>", "X>"), "no SecretAccessKey"),
            (full.replace("SessionToken>", "X>"), "no SessionToken"),
            (full.replace("Expiration>", "X>"), "no Expiration"),
            (
                full.replace("2024-01-01T00:00:00Z", "soon"),
                "invalid Expiration",
            ),
            (
                full.replace(SECRET, "has space"),
                "invalid secret access key",
            ),
        ];
        for (xml, want) in cases {
            let e = parse_credentials_response(&resp(200, &xml)).unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains(want), "{shown} !~ {want}");
            assert_clean(&shown);
            assert_clean(&format!("{e:?}"));
        }
        let big = format!("{full}{}", " ".repeat(MAX_BODY_LEN));
        let e = parse_credentials_response(&resp(200, &big)).unwrap_err();
        assert!(e.message.contains("64 KiB"));
    }

    #[test]
    fn errors_aws_and_moto_shapes() {
        let aws = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code>
    <Message>User: arn:aws:iam::1:user/u is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::1:role/r</Message>
  </Error><RequestId>x</RequestId></ErrorResponse>"#;
        let e = parse_credentials_response(&resp(403, aws)).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("AccessDenied"));
        assert!(e.message.starts_with("User: arn:aws:iam::1:user/u is not"));
        assert!(!e.is_credentials_problem());
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            format!("STS error AccessDenied (HTTP 403): {}", e.message)
        );

        let moto = r#"<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse><Errors><Error><Code>ExpiredToken</Code><Message>The security token included in the request is expired</Message></Error></Errors></ErrorResponse>"#;
        let e = parse_credentials_response(&resp(400, moto)).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("ExpiredToken"));
        assert_eq!(
            e.message,
            "The security token included in the request is expired"
        );
        assert!(e.is_credentials_problem());

        // The echoed canonical request (with the session token) is cut off.
        let sig = format!(
            "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.\n\nThe Canonical String for this request should have been\n'POST\n/\n\nx-amz-security-token:{TOKEN}\n'</Message></Error></ErrorResponse>"
        );
        let e = parse_credentials_response(&resp(403, &sig)).unwrap_err();
        assert!(e.is_credentials_problem());
        assert_eq!(
            e.message,
            "The request signature we calculated does not match the signature you provided."
        );
        assert_clean(&e.to_string());

        // Not XML at all; an HTML page; throttling; an error inside a 200.
        let e = parse_credentials_response(&resp(503, "Service Unavailable\r\n")).unwrap_err();
        assert_eq!(e.to_string(), "STS answered HTTP 503: Service Unavailable");
        assert!(e.is_retryable());
        let e =
            parse_credentials_response(&resp(500, "<html><body>boom</body></html>")).unwrap_err();
        assert_eq!(e.to_string(), "STS answered HTTP 500");
        let e = parse_credentials_response(&resp(
            400,
            "<ErrorResponse><Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>",
        ))
        .unwrap_err();
        assert!(e.is_retryable());
        let e = parse_credentials_response(&resp(
            200,
            "<ErrorResponse><Error><Code>RegionDisabledException</Code></Error></ErrorResponse>",
        ))
        .unwrap_err();
        assert_eq!(e.code.as_deref(), Some("RegionDisabledException"));
        assert_eq!(e.message, "");
    }

    #[test]
    fn many_ampersands_are_linear() {
        let body = format!(
            "<ErrorResponse><Error><Code>X</Code><Message>{}</Message></Error></ErrorResponse>",
            "&".repeat(60 * 1024)
        );
        let started = std::time::Instant::now();
        let e = parse_credentials_response(&resp(400, &body)).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("X"));
        assert!(started.elapsed().as_secs_f64() < 0.5);
        // An error inside a 2xx: a code only if it looks like one, no message.
        let weird = format!("<Error><Code>{SECRET}</Code><Message>{TOKEN}</Message></Error>");
        let e = parse_credentials_response(&resp(200, &weird)).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (None, ""));
    }

    #[test]
    fn element_scanner() {
        assert_eq!(element("<a>1</a>", "a"), Some("1"));
        assert_eq!(element("<ab>2</ab><a x='y'>1</a >", "a"), Some("1"));
        assert_eq!(
            element("<Errors><Error>e</Error></Errors>", "Error"),
            Some("e")
        );
        assert_eq!(element("<a/>", "a"), Some(""));
        assert_eq!(element("<a />", "a"), Some(""));
        assert_eq!(element("<a>1</ab></a>", "a"), Some("1</ab>"));
        assert_eq!(element("<a>unterminated", "a"), None);
        assert_eq!(element("<a", "a"), None);
        assert_eq!(element("", "a"), None);
        assert_eq!(element("<é>x</é><a>ü</a>", "a"), Some("ü"));
        assert_eq!(text(" &lt;&#65;&#x42;&bogus;&amp "), "<AB&bogus;&amp");
        assert_eq!(text("a<![CDATA[<&>]]>b<![CDATA[open"), "a<&>bopen");
    }
}
