//! The JSON credentials document of IMDS and the ECS/EKS container endpoint
//! (`credentials::parse_json_credentials`, with and without the IMDS `Code` check),
//! and `parse_timestamp` on the same text.
//!
//! Secrets oracle (differential, so it cannot be fooled by a secret that happens to
//! spell a word of a fixed message): the document is parsed again with the letters and
//! digits of `SecretAccessKey` and `Token` rotated (same length, same validity); errors
//! and the `Debug` of the credentials must come out identical.
#![no_main]

use aws_vault::aws::credentials::{parse_json_credentials, parse_timestamp};
use aws_vault_fuzz::rotate;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Both results rendered (Ok as its Debug, Err as the message).
fn render(body: &[u8], require_code: bool) -> String {
    match parse_json_credentials(body, require_code) {
        Ok(c) => format!("ok {c:?}"),
        Err(e) => {
            assert!(!e.is_empty());
            assert!(!e.chars().any(char::is_control), "unprintable: {e:?}");
            format!("err {e}")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for require_code in [false, true] {
        let _ = render(data, require_code);
    }
    if let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(data) {
        let plain = serde_json::to_vec(&fields).expect("serializes");
        for name in ["SecretAccessKey", "Token"] {
            if let Some(Value::String(s)) = fields.get_mut(name) {
                *s = rotate(s);
            }
        }
        let rotated = serde_json::to_vec(&fields).expect("serializes");
        for require_code in [false, true] {
            assert_eq!(
                render(&plain, require_code),
                render(&rotated, require_code),
                "the result's text depends on a secret"
            );
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(ms) = parse_timestamp(s) {
            // Four-digit years only: before 10000-01-02 whatever the offset.
            assert!(ms < 253_402_387_200_000, "{s:?} -> {ms}");
        }
    }
});
