//! `Entry::decode` on any bytes; the expected key is the entry's own `key` field when
//! the bytes hold one (so decoding gets past the key check), else `k`.
#![no_main]

use aws_vault::cache::{Entry, FORMAT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("key")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "k".to_owned());
    if let Some(e) = Entry::decode(data, &key) {
        assert_eq!(e.v, FORMAT);
        assert_eq!(e.key, key);
        let _ = (
            e.usable(0),
            e.usable(u64::MAX),
            e.expired(0),
            format!("{e:?}"),
        );
        assert_eq!(
            Entry::decode(&e.encode(), &key).as_ref(),
            Some(&e),
            "round-trip"
        );
    }
});
