//! `sts::parse_credentials_response` (AssumeRole / AssumeRoleWithWebIdentity XML) on a
//! whole HTTP answer, framed like the `secret_response` target:
//! `<status>\n<name>: <value>\n...\n\n<body>` (a first line that is not a number makes
//! the status the first two bytes, little-endian).
//!
//! Secrets oracle (differential, so it cannot be fooled by a secret that happens to
//! spell a word of a fixed message): the answer is parsed again with the letters and
//! digits of `SecretAccessKey` and `SessionToken` rotated (same length, same validity);
//! errors and the `Debug` of the credentials must come out identical.
#![no_main]

use aws_vault::aws::credentials::TimedCredentials;
use aws_vault::aws::sts::{self, parse_credentials_response, StsError};
use aws_vault::aws::HttpResponse;
use aws_vault_fuzz::{http_response, rotate};
use libfuzzer_sys::fuzz_target;

/// The body with the secret elements' content rotated, or None when a secret holds
/// markup (`<`, `&`) that rotating could turn into other structure.
fn with_rotated_secrets(body: &str) -> Option<String> {
    let creds = sts::element(body, "Credentials")?;
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for name in ["SecretAccessKey", "SessionToken"] {
        let Some(inner) = sts::element(creds, name) else {
            continue;
        };
        if inner.contains(['<', '&', ']']) {
            return None;
        }
        // `element` gives a slice of `body` (or a static "" for `<name/>`).
        let Some(start) = (inner.as_ptr() as usize).checked_sub(body.as_ptr() as usize) else {
            continue;
        };
        let end = start + inner.len();
        if inner.is_empty() || body.get(start..end) != Some(inner) {
            continue;
        }
        ranges.push((start, end));
    }
    let mut out = body.to_owned();
    for (start, end) in ranges {
        out.replace_range(start..end, &rotate(&body[start..end]));
    }
    Some(out)
}

fn check(resp: &HttpResponse) -> Result<TimedCredentials, StsError> {
    let out = parse_credentials_response(resp);
    match &out {
        Ok(c) => {
            assert!(
                (200..300).contains(&resp.status),
                "a non-2xx answer must never yield credentials"
            );
            let _ = format!("{c:?}");
        }
        Err(e) => {
            assert_eq!(e.status, resp.status);
            if let Some(code) = &e.code {
                assert!(!code.is_empty() && code.chars().count() <= 67, "{e:?}");
                assert!(!code.chars().any(char::is_control), "{e:?}");
            }
            assert!(e.message.chars().count() <= 203, "uncapped: {e:?}");
            assert!(
                !e.message.chars().any(char::is_control),
                "unprintable: {e:?}"
            );
            let _ = (e.is_retryable(), e.is_credentials_problem());
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let resp = http_response(data);
    let out = check(&resp);
    if !(200..300).contains(&resp.status) {
        return;
    }
    let Ok(body) = std::str::from_utf8(&resp.body) else {
        return;
    };
    let Some(rotated) = with_rotated_secrets(body) else {
        return;
    };
    let other = check(&HttpResponse {
        body: rotated.into_bytes(),
        ..resp.clone()
    });
    match (&out, &other) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "Debug shows a secret"),
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "error depends on a secret");
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "error depends on a secret"
            );
        }
        _ => panic!("rotating secrets changed the outcome: {out:?} vs {other:?}"),
    }
});
