//! `host::wire::deserialize_map` on any bytes (what a host hands the filter as a
//! header map); whatever decodes re-encodes to a prefix-compatible map.
#![no_main]

use aws_vault::host::wire::{deserialize_map, serialize_map};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let map = deserialize_map(data);
    let pairs: Vec<(&str, &str)> = map.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(deserialize_map(&serialize_map(&pairs)), map, "round-trip");
});
