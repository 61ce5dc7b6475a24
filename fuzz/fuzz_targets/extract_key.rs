//! `extract_key` on `<key> NUL <secret string>` (no NUL: key `password`).
#![no_main]

use aws_vault::aws::secrets_manager::{extract_key, KeyError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (key, secret) = s.split_once('\0').unwrap_or(("password", s));
    match extract_key(secret, key) {
        Ok(v) => {
            let parsed: Value = serde_json::from_str(secret).expect("Ok means JSON");
            assert_eq!(parsed.get(key), Some(&Value::String(v)));
        }
        Err(e) => {
            // Every error text is fixed: nothing from the secret can be in it.
            let text = e.to_string();
            let fixed = match e {
                KeyError::NotJson => text == "secret is not valid JSON",
                KeyError::NotAnObject => text == "secret is not a JSON object",
                KeyError::Missing => text == "key not found in secret",
                KeyError::NotAString { json_type } => {
                    ["object", "array", "number", "boolean", "null"].contains(&json_type)
                        && text
                            == format!("key's value in secret is a JSON {json_type}, not a string")
                }
            };
            assert!(fixed, "{text}");
        }
    }
});
