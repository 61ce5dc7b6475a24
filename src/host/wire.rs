//! The proxy-wasm header-map wire format (count, size pairs, NUL-terminated
//! names and values), decoded without trusting the host: malformed input
//! yields what parsed, never a panic.

pub fn serialize_map(map: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (n, v) in map {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in map {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// proxy-wasm map format: count, (name size, value size) pairs, then
/// NUL-terminated names and values. Malformed input yields what parsed.
pub fn deserialize_map(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut data = 4usize.saturating_add(count.saturating_mul(8));
    for i in 0..count {
        let at = 4 + i * 8;
        let (Some(n), Some(v)) = (word(at), word(at + 4)) else {
            break;
        };
        let name_end = data.saturating_add(n);
        let value_start = name_end.saturating_add(1);
        let value_end = value_start.saturating_add(v);
        let (Some(name), Some(value)) =
            (bytes.get(data..name_end), bytes.get(value_start..value_end))
        else {
            break;
        };
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        data = value_end.saturating_add(1);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        let map = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("x", ""),
        ];
        let bytes = serialize_map(&map);
        let back = deserialize_map(&bytes);
        let want: Vec<(String, String)> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(back, want);
        for cut in 0..bytes.len() {
            let _ = deserialize_map(bytes.get(..cut).unwrap());
        }
        assert!(deserialize_map(&[0xff, 0xff, 0xff, 0xff]).is_empty());
        let mut bad = bytes.clone();
        bad[4] = 0xff; // a name size far past the end
        assert!(deserialize_map(&bad).is_empty());
        let mut latin = serialize_map(&[("k", "v")]);
        let last = latin.len() - 2;
        latin[last] = 0xe9; // not UTF-8
        assert_eq!(
            deserialize_map(&latin),
            vec![("k".to_string(), "\u{fffd}".to_string())]
        );
    }
}
