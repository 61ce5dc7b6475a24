//! Shared test helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use super::{HttpRequest, HttpResponse, Poll, TimedCredentials};

pub const AKID: &str = "ASIAEXAMPLEKEYID";
pub const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzSECRETKEY";
pub const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKENvalue";

pub fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

pub fn resp(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

/// `2024-01-01T00:00:00Z` in ms.
pub const T0: u64 = 1_704_067_200_000;
pub const HOUR: u64 = 3_600_000;

pub fn iso(ms: u64) -> String {
    // Inverse of days_from_civil for tests (civil_from_days).
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn creds_json(expires_at: u64) -> String {
    format!(
        r#"{{"AccessKeyId":"{AKID}","SecretAccessKey":"{SECRET}","Token":"{TOKEN}","Expiration":"{}"}}"#,
        iso(expires_at)
    )
}

pub fn imds_json(expires_at: u64) -> String {
    format!(
        r#"{{"Code":"Success","LastUpdated":"2024-01-01T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"{AKID}","SecretAccessKey":"{SECRET}","Token":"{TOKEN}","Expiration":"{}"}}"#,
        iso(expires_at)
    )
}

pub fn sts_xml(action: &str, expires_at: u64) -> String {
    format!(
        r#"<{action}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <{action}Result>
<AssumedRoleUser><AssumedRoleId>AROA:s</AssumedRoleId><Arn>arn:aws:sts::1:assumed-role/r/s</Arn></AssumedRoleUser>
<Credentials>
  <AccessKeyId>{AKID}</AccessKeyId>
  <SecretAccessKey>{SECRET}</SecretAccessKey>
  <SessionToken>{TOKEN}</SessionToken>
  <Expiration>{}</Expiration>
</Credentials>
  </{action}Result>
  <ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>
</{action}Response>"#,
        iso(expires_at)
    )
}

/// Unwrap a Dispatch.
pub fn dispatched(p: Poll) -> (u64, String, HttpRequest, u32) {
    match p {
        Poll::Dispatch {
            id,
            upstream,
            request,
            timeout_ms,
        } => (id, upstream, request, timeout_ms),
        other => panic!("expected Dispatch, got {other:?}"),
    }
}

pub fn ready(p: Poll) -> TimedCredentials {
    match p {
        Poll::Ready(c) => c,
        other => panic!("expected Ready, got {other:?}"),
    }
}

pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// No secret in `text`.
pub fn assert_clean(text: &str) {
    for s in [SECRET, TOKEN, "wJalrXUtnFEMI", "IQoJb3JpZ2lu"] {
        assert!(!text.contains(s), "secret leaked in: {text}");
    }
}
