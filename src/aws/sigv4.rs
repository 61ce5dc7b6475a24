//! SigV4 header signing of an [`HttpRequest`](super::HttpRequest), on top of
//! `aws-sigv4`'s HTTP request signer.
//!
//! The signer is given the exact `authority` (as the `host` header) so the
//! signature covers precisely what the host sends as `Host`, port included,
//! even a default port written out explicitly.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;

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

/// 9999-12-31T23:59:59Z: the last instant SigV4's `YYYYMMDD` date can express
/// (and beyond which the signer's date arithmetic would overflow).
const MAX_UNIX_SECS: u64 = 253_402_300_799;

/// Sign `req` in place with SigV4 (signature in headers).
///
/// Adds `x-amz-date`, `authorization` and, with a session token,
/// `x-amz-security-token` (which is also signed). No `x-amz-content-sha256`
/// (not wanted by Secrets Manager or STS). Every header already in `req` is
/// signed, plus `host` = `req.authority` exactly as written. Existing
/// `authorization`, `x-amz-date`, `x-amz-security-token`,
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
    let now = checked_time(now)?;

    // Work on a copy of the headers: `req` is only changed on success.
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(name, _)| {
            !SIGNING_HEADERS
                .iter()
                .any(|drop| name.eq_ignore_ascii_case(drop))
        })
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
    // Defaults: signature in headers, no x-amz-content-sha256, session token
    // signed, path normalization + double encoding (right for non-S3).
    let settings = SigningSettings::default();
    let params = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| err(format!("signing parameters: {e}")))?
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
    .map_err(signing_error)?;

    let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(signing_error)?
        .into_parts();
    let (new_headers, _params) = instructions.into_parts();
    for header in new_headers {
        headers.push((
            header.name().to_ascii_lowercase(),
            header.value().to_string(),
        ));
    }
    req.headers = headers;
    Ok(())
}

/// aws-sigv4's error texts are fixed strings (no header values, no keys).
fn signing_error(e: aws_sigv4::http_request::SigningError) -> SignError {
    let mut msg = format!("SigV4 signer: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    err(msg)
}

fn checked_time(now: SystemTime) -> Result<SystemTime, SignError> {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| err("current time is before 1970"))?;
    if since_epoch.as_secs() > MAX_UNIX_SECS {
        return Err(err("current time is after year 9999"));
    }
    // SigV4 has one-second resolution; drop the sub-seconds.
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::HttpRequest;

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
}
