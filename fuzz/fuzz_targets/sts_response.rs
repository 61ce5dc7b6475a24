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
use libfuzzer_sys::fuzz_target;

fn split(data: &[u8]) -> HttpResponse {
    let line_end = data.iter().position(|&b| b == b'\n');
    let status = line_end
        .and_then(|i| std::str::from_utf8(&data[..i]).ok())
        .and_then(|l| l.trim().parse::<u16>().ok());
    let Some(status) = status else {
        let status = match data {
            [a, b, ..] => u16::from_le_bytes([*a, *b]),
            _ => 200,
        };
        return HttpResponse {
            status,
            headers: Vec::new(),
            body: data.get(2..).unwrap_or_default().to_vec(),
        };
    };
    let mut rest = &data[line_end.unwrap_or(0) + 1..];
    let mut headers = Vec::new();
    loop {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        if line.is_empty() || line == b"\r" {
            break;
        }
        let line = String::from_utf8_lossy(line);
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    HttpResponse {
        status,
        headers,
        body: rest.to_vec(),
    }
}

/// Letters and digits moved one step within their class; everything else kept.
fn rotate(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
            c => c,
        })
        .collect()
}

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
    let resp = split(data);
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
