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
use aws_vault_fuzz::http_response;
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

fuzz_target!(|data: &[u8]| {
    let resp = http_response(data);
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
