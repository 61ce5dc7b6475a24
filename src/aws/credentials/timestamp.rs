//! ISO 8601 timestamps (credential expirations) -> ms since the epoch.

/// ISO 8601 / RFC 3339 date-time -> ms since the epoch:
/// `2024-05-01T12:00:00Z`, with optional fractional seconds (any number of
/// digits; moto sends microseconds), `Z` or a `+hh:mm`/`-hh:mm` offset.
/// `None` for anything else or before 1970.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let [year, month, day, hour, minute, second] = date_time_fields(b)?;
    let (millis, end) = fraction_millis(b, 19)?;
    let offset_s = utc_offset_secs(b, end)?;
    // A leap second is counted as the last second of its minute.
    let second = second.min(59);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    if secs < 0 {
        return None;
    }
    u64::try_from(secs * 1000 + millis).ok()
}

/// The `len` ASCII digits at `from` as a number.
fn number(b: &[u8], from: usize, len: usize) -> Option<i64> {
    let part = b.get(from..from + len)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    part.iter()
        .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
}

/// Year, month, day, hour, minute and second of `YYYY-MM-DDThh:mm:ss`, in
/// range (second 60 allowed).
#[inline(never)] // see Config::fields
fn date_time_fields(b: &[u8]) -> Option<[i64; 6]> {
    let year = number(b, 0, 4)?;
    let month = number(b, 5, 2)?;
    let day = number(b, 8, 2)?;
    let hour = number(b, 11, 2)?;
    let minute = number(b, 14, 2)?;
    let second = number(b, 17, 2)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some([year, month, day, hour, minute, second])
}

/// The milliseconds of optional fractional seconds (`.` and 1-12 digits) at
/// `i`, and where they end.
fn fraction_millis(b: &[u8], mut i: usize) -> Option<(i64, usize)> {
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b.get(i).copied().unwrap_or(b'0') - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 12 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    Some((millis, i))
}

/// The seconds east of UTC of the zone at `i` (`Z`, `+hh:mm`, `-hhmm`...),
/// which must end the text.
#[inline(never)] // see Config::fields
fn utc_offset_secs(b: &[u8], i: usize) -> Option<i64> {
    match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => Some(0),
        Some(sign @ (b'+' | b'-')) => {
            let oh = number(b, i + 1, 2)?;
            let (om, end) = if b.get(i + 3) == Some(&b':') {
                (number(b, i + 4, 2)?, i + 6)
            } else {
                (number(b, i + 3, 2)?, i + 5)
            };
            if end != b.len() || oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            Some(if *sign == b'+' { off } else { -off })
        }
        _ => None,
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2024-01-01T00:00:00Z"), Some(T0));
        assert_eq!(parse_timestamp("2024-01-01T00:00:00.5Z"), Some(T0 + 500));
        assert_eq!(parse_timestamp("2024-01-01T00:00:00.123Z"), Some(T0 + 123));
        assert_eq!(
            parse_timestamp("2024-01-01T00:00:00.123456Z"),
            Some(T0 + 123)
        );
        assert_eq!(parse_timestamp(" 2024-01-01t00:00:00z "), Some(T0));
        assert_eq!(parse_timestamp("2024-01-01T02:00:00+02:00"), Some(T0));
        assert_eq!(parse_timestamp("2023-12-31T22:30:00-0130"), Some(T0));
        assert_eq!(
            parse_timestamp("2024-02-29T12:34:56Z"),
            Some(1_709_210_096_000)
        );
        assert_eq!(
            parse_timestamp("2019-11-09T13:34:41Z"),
            Some(1_573_306_481_000)
        );
        for bad in [
            "",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00ZZ",
            "2024-01-01T00:00:00+2:00",
            "1969-12-31T23:59:59Z",
            "2024-01-01T00:00:00Zjunk",
            "２０２４-01-01T00:00:00Z",
            "+024-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        for ms in [0, T0, T0 + 12 * HOUR + 34_000, 4_102_444_800_000] {
            assert_eq!(parse_timestamp(&iso(ms)), Some(ms));
        }
    }
}
