//! `parse_get_secret_value` on a whole HTTP answer, written like HTTP:
//!
//! ```text
//! <status>\n
//! <name>: <value>\n      (any number of header lines)
//! \n
//! <body bytes>
//! ```
//!
//! A first line that is not a number makes the status the first two bytes
//! (little-endian) and everything after them the body, so raw bytes still reach
//! both the success and the error paths.
#![no_main]

use aws_vault::aws::secrets_manager::{parse_get_secret_value, ErrorKind};
use aws_vault::aws::HttpResponse;
use libfuzzer_sys::fuzz_target;

/// The only messages an error built from a 2xx body (which holds the secret) may
/// carry: fixed texts, never an excerpt. Add here when src/ adds one.
const FIXED_2XX_MESSAGES: &[&str] = &[
    "response body is larger than 1 MiB",
    "response is not valid JSON",
    "response is not a JSON object",
    "SecretString is not a string",
    "response has neither SecretString nor SecretBinary",
    "SecretBinary is not valid base64",
    "SecretBinary is not a string",
];

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

fuzz_target!(|data: &[u8]| {
    let resp = split(data);
    let ok_status = (200..300).contains(&resp.status);
    match parse_get_secret_value(&resp) {
        Ok(v) => {
            assert!(ok_status, "a non-2xx answer must never yield a secret");
            let _ = format!("{v:?}");
        }
        Err(e) => {
            assert_eq!(e.status, resp.status);
            assert!(!e.code.is_empty());
            for text in [&e.code, &e.message] {
                assert!(text.chars().count() <= 200, "uncapped: {e:?}");
                assert!(!text.chars().any(char::is_control), "unprintable: {e:?}");
            }
            if ok_status {
                assert_eq!(e.kind, ErrorKind::Malformed);
                assert_eq!(e.code, "MalformedResponse");
                assert!(
                    FIXED_2XX_MESSAGES.contains(&e.message.as_str()),
                    "a 2xx error must use a fixed text: {:?}",
                    e.message
                );
            } else {
                assert_ne!(e.kind, ErrorKind::Malformed);
            }
            let _ = (e.to_string(), format!("{e:?}"), e.kind.is_retryable());
        }
    }
});
