//! `reference::parse` on any UTF-8 text, as is and wrapped in `{vault://...}`.
#![no_main]

use aws_vault::reference::{self, ParseError};
use libfuzzer_sys::fuzz_target;

fn check(s: &str) {
    match reference::parse(s) {
        Ok(r) => {
            assert!(reference::is_reference(s));
            assert!(!r.name.is_empty() && !r.resource.is_empty());
            assert!(r.version.is_none_or(|v| !v.is_nan()));
            assert_eq!(r, r.clone());
            let _ = r.version_number();
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if !reference::is_reference(s) {
                assert_eq!(e, ParseError::NotAReference);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
        check(&format!("{{vault://{s}}}"));
    }
});
