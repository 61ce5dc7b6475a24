//! `Config::parse` / `parse_report` on any UTF-8 text.
//!
//! Input: `[<env value> NUL] <config text>`. With a NUL, the part before it is what
//! every environment variable the parser asks for holds (exercises the env fallbacks).
#![no_main]

use aws_vault::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (env_value, text) = match s.split_once('\0') {
        Some((e, t)) => (Some(e.to_owned()), t),
        None => (None, s),
    };
    let env = |_: &str| env_value.clone();
    match Config::parse(text, &env) {
        Ok(c) => {
            for h in c.request_headers.iter().chain(&c.response_headers) {
                assert_eq!(h.name, h.name.to_ascii_lowercase());
            }
            for (_, t, r) in c.references() {
                let resolved = c.resolve(t, r).expect("accepted configs resolve");
                if let Some(aws) = resolved.into_aws() {
                    let _ = aws.target.descriptor();
                }
            }
        }
        Err(e) => assert!(!e.trim().is_empty(), "empty error"),
    }
    if let Ok((c, checks)) = Config::parse_report(text, &env) {
        for check in checks {
            if let Err(e) = check.result {
                assert!(!e.is_empty());
            }
        }
        let _ = c.references().count();
    }
});
