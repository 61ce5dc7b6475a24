//! Kong vault references: `{vault://<name>/<resource>[/<key>][/][?<query>][#<version>]}`.
//!
//! Parsed exactly as Kong's `kong.vault.parse_reference` does (LuaSocket `url.parse` and
//! `url.parse_path`, OpenResty's `ngx.unescape_uri` / `ngx.decode_args`, LuaJIT `tonumber`),
//! so a reference that works in Kong works here unchanged. The spec, with measured examples,
//! is `shared/notes/reference-grammar.md`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use litemap::LiteMap;
use std::fmt;

use percent_encoding::percent_decode;

/// What every reference starts with.
pub const PREFIX: &str = "{vault://";

/// `ngx.decode_args` stops after this many `&`-separated pieces (OpenResty's default `max_args`).
const MAX_QUERY_ARGS: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Vault name: `aws`, `env`, or an entity prefix (the authority, `userinfo@` and `:port`
    /// stripped).
    pub name: String,
    /// Decoded resource (for AWS: the SecretId; may contain `/`).
    pub resource: String,
    /// Decoded key (last path segment) or None.
    pub key: Option<String>,
    /// The fragment as LuaJIT `tonumber` reads it; None when there is no `#`. Never NaN (may
    /// be infinite or negative: range checks belong to the vault).
    pub version: Option<f64>,
    /// Decoded query parameters (`+` -> space, `%XX` decoded). The value is None when
    /// `ngx.decode_args` would not give a single string (key repeated, or no `=`) or when the
    /// decoded value is not UTF-8: such an override fails validation, so it is unset.
    pub query: LiteMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    NotAReference,
    MissingHost,
    MissingPath,
    EmptyPath,
    InvalidPath,
    InvalidVersion,
    /// The decoded resource or key is not UTF-8. Kong would carry the raw bytes on, but no
    /// AWS secret name or JSON key can match them, so failing here only gives a clearer error.
    InvalidEncoding,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::NotAReference => "not a reference",
            ParseError::MissingHost => "missing host",
            ParseError::MissingPath => "missing path",
            ParseError::EmptyPath => "empty path",
            ParseError::InvalidPath => "invalid path",
            ParseError::InvalidVersion => "invalid version",
            ParseError::InvalidEncoding => "invalid encoding (decoded path is not UTF-8)",
        })
    }
}

impl std::error::Error for ParseError {}

/// True when `s` starts with `{vault://` and ends with `}` (Kong's `is_reference`).
pub fn is_reference(s: &str) -> bool {
    // The prefix holds no `}`, so the two checks can never share a byte.
    s.starts_with(PREFIX) && s.ends_with('}')
}

/// Parse one whole reference string `{vault://...}` (no trimming).
///
/// Errors come in Kong's order: host, path, empty path, version, invalid path (then
/// encoding, which Kong does not check).
pub fn parse(s: &str) -> Result<Reference, ParseError> {
    let rest = s
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix('}'))
        .ok_or(ParseError::NotAReference)?;

    // LuaSocket url.parse: fragment first (so `#` ends everything, even inside the
    // authority), then the authority up to the first `/`, then query, then params.
    let (rest, fragment) = split_first(rest, '#');
    let (authority, rest) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
        None => (rest, ""),
    };
    let (rest, query) = split_first(rest, '?');
    let (path, _params) = split_first(rest, ';');

    let name = host(authority).ok_or(ParseError::MissingHost)?;
    // Whatever is left starts with the `/` that ended the authority, or is empty.
    let resource = path.strip_prefix('/').ok_or(ParseError::MissingPath)?;
    if resource.is_empty() {
        return Err(ParseError::EmptyPath);
    }
    let version = match fragment {
        Some(f) => Some(lua_tonumber(f).ok_or(ParseError::InvalidVersion)?),
        None => None,
    };

    let (resource, key) = resource_and_key(resource)?;
    Ok(Reference {
        name,
        resource,
        key,
        version,
        query: query.map(decode_args).unwrap_or_default(),
    })
}

/// The decoded resource and key out of the path (its leading `/` removed).
#[inline(never)] // see Config::fields
fn resource_and_key(path: &str) -> Result<(String, Option<String>), ParseError> {
    // url.parse_path: split on `/` before decoding (so `%2F` stays inside a segment), drop
    // empty segments, `%XX`-decode each. A trailing `/` means "no key" (Kong's spec tests).
    let segments: Vec<Vec<u8>> = path
        .split('/')
        .filter(|seg| !seg.is_empty())
        .map(|seg| percent_decode(seg.as_bytes()).collect())
        .collect();
    let (dir, last) = match segments.split_last() {
        None => return Err(ParseError::InvalidPath),
        Some((_, [])) => (segments.as_slice(), None),
        Some(_) if path.ends_with('/') => (segments.as_slice(), None),
        Some((last, dir)) => (dir, Some(last)),
    };
    // Kong then runs ngx.unescape_uri on the joined segments: a second decode plus `+`.
    let resource = utf8(unescape_uri(&dir.join(&b'/')))?;
    let key = last.map(|k| utf8(unescape_uri(k))).transpose()?;

    Ok((resource, key))
}

impl Reference {
    /// The version as an integer when it is integral and within u32, for display; 2.0 -> 2.
    pub fn version_number(&self) -> Option<u32> {
        let v = self.version?;
        (v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v)).then_some(v as u32)
    }
}

/// `(before, Some(after))` around the first `c`, or `(s, None)`.
fn split_first(s: &str, c: char) -> (&str, Option<&str>) {
    match s.split_once(c) {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

/// LuaSocket's host out of an authority: drop `userinfo@` (up to the first `@`), then a
/// `:port` (the last `:` when no `:` or `]` follows it), then IPv6 brackets. Empty -> None.
#[inline(never)] // see Config::fields
fn host(authority: &str) -> Option<String> {
    let a = authority.split_once('@').map_or(authority, |(_, h)| h);
    let a = match a.rfind(':') {
        Some(i) if !a.get(i..).unwrap_or("").contains(']') => a.get(..i).unwrap_or(""),
        _ => a,
    };
    let a = a
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .filter(|x| !x.is_empty())
        .unwrap_or(a);
    (!a.is_empty()).then(|| a.to_owned())
}

/// OpenResty's `ngx.unescape_uri`: `%XX` decoded (invalid escapes kept literally) and a
/// literal `+` becomes a space. Replacing `+` first is equivalent: `+` is never a hex digit,
/// and a decoded `%2B` must stay `+`.
#[inline(never)] // see Config::fields
fn unescape_uri(bytes: &[u8]) -> Vec<u8> {
    let plus: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&plus).collect()
}

fn utf8(bytes: Vec<u8>) -> Result<String, ParseError> {
    String::from_utf8(bytes).map_err(|_| ParseError::InvalidEncoding)
}

/// `ngx.decode_args`: `&`-separated pieces, split at the first `=`, both sides unescaped;
/// empty keys ignored. A key seen twice becomes a Lua table and a key without `=` becomes
/// `true`: neither is a string, so both are None here. Keys are compared after a lossy UTF-8
/// conversion; a key that is not UTF-8 can never name a config field anyway.
#[inline(never)] // see Config::fields
fn decode_args(query: &str) -> LiteMap<String, Option<String>> {
    let mut args: LiteMap<String, Option<String>> = LiteMap::new();
    for piece in query.split('&').take(MAX_QUERY_ARGS) {
        let (k, v) = split_first(piece, '=');
        let k = String::from_utf8_lossy(&unescape_uri(k.as_bytes())).into_owned();
        if k.is_empty() {
            continue;
        }
        let v = v.and_then(|v| String::from_utf8(unescape_uri(v.as_bytes())).ok());
        args.entry(k).and_modify(|old| *old = None).or_insert(v);
    }
    args
}

/// LuaJIT's `tonumber(s)` (what Kong's `tonumber(s, 10)` is): surrounding whitespace, a sign,
/// then decimal (`1`, `1.`, `.5`, `1e2`), hex (`0x1A`, `0x1.8p1`) or binary (`0b10`).
/// LuaJIT also reads `inf`/`nan`; they are rejected here (PUC Lua 5.3 does too) because no
/// vault accepts them anyway and a NaN would make `Reference` unequal to itself.
#[inline(never)] // see Config::fields
fn lua_tonumber(s: &str) -> Option<f64> {
    // C isspace: space, \t, \n, \v, \f, \r (Rust's trim_ascii would miss \v).
    let t = s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r'));
    let (negative, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let prefixed = |p: &str| {
        body.get(..2)
            .filter(|x| x.eq_ignore_ascii_case(p))
            .and_then(|_| body.get(2..))
    };
    let magnitude = if let Some(hex) = prefixed("0x") {
        lua_hex(hex)?
    } else if let Some(bin) = prefixed("0b") {
        lua_bin(bin)?
    } else {
        lua_dec(body)?
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// Decimal: digits with at most one `.`, at least one digit, optional `e[+-]digits`.
fn lua_dec(s: &str) -> Option<f64> {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (s.get(..i)?, Some(s.get(i + 1..)?)),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return None;
    }
    if let Some(e) = exp {
        exponent(e)?;
    }
    // The grammar is checked, so Rust's correctly rounded parser reads the same value.
    s.parse().ok()
}

/// Hex: hex digits with at most one `.`, at least one digit, optional `p[+-]digits`.
#[inline(never)] // see Config::fields
fn lua_hex(s: &str) -> Option<f64> {
    let (mantissa, exp) = match s.find(['p', 'P']) {
        Some(i) => (s.get(..i)?, exponent(s.get(i + 1..)?)?),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.len() + frac.len() == 0 {
        return None;
    }
    // Accumulate while exact-ish; past 2^60 only the binary exponent moves, so the value
    // stays finite and the product below can never be 0 * inf = NaN.
    let (mut value, mut exp2) = (0f64, exp);
    for (digits, in_frac) in [(int, false), (frac, true)] {
        for c in digits.chars() {
            let d = f64::from(c.to_digit(16)?);
            if value < (1u64 << 60) as f64 {
                value = value * 16.0 + d;
                exp2 -= if in_frac { 4 } else { 0 };
            } else if !in_frac {
                exp2 += 4;
            }
        }
    }
    if value == 0.0 {
        return Some(0.0);
    }
    Some(value * 2f64.powi(exp2.clamp(-2200, 2200) as i32))
}

/// Binary (a LuaJIT 2.1 extension): 0/1 digits, up to 64 significant, no exponent; a `.` is
/// accepted only when the fraction is all zeros.
fn lua_bin(s: &str) -> Option<f64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let significant = int.trim_start_matches('0');
    if int.len() + frac.len() == 0
        || !frac.bytes().all(|b| b == b'0')
        || significant.len() > 64
        || !int.bytes().all(|b| b == b'0' || b == b'1')
    {
        return None;
    }
    Some(
        significant
            .bytes()
            .fold(0f64, |v, b| v * 2.0 + f64::from(b - b'0')),
    )
}

/// `[+-]digits` of a decimal exponent, saturated far beyond any finite double.
fn exponent(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits
        .bytes()
        .fold(0i64, |n, b| (n * 10 + i64::from(b - b'0')).min(1_000_000));
    Some(if negative { -n } else { n })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Reference {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// (name, resource, key, version)
    fn parts(s: &str) -> (String, String, Option<String>, Option<f64>) {
        let r = ok(s);
        (r.name, r.resource, r.key, r.version)
    }

    fn p(
        name: &str,
        resource: &str,
        key: Option<&str>,
        version: Option<f64>,
    ) -> (String, String, Option<String>, Option<f64>) {
        (name.into(), resource.into(), key.map(Into::into), version)
    }

    fn err(s: &str) -> ParseError {
        parse(s).expect_err(s)
    }

    fn query(s: &str) -> Vec<(String, Option<String>)> {
        ok(s).query.into_iter().collect()
    }

    fn q(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.into(), v.map(Into::into))
    }

    #[test]
    fn note_examples() {
        // (input, name, resource, key, version): the grammar note's table, row by row.
        #[rustfmt::skip]
        let cases = [
            ("{vault://aws/secret-name/foo}", "aws", "secret-name", Some("foo"), None),
            ("{vault://aws/secret-name/foo#2}", "aws", "secret-name", Some("foo"), Some(2.0)),
            ("{vault://aws-sm-vault/secret-name/foo}", "aws-sm-vault", "secret-name", Some("foo"), None),
            ("{vault://aws/secret-name}", "aws", "secret-name", None, None),
            ("{vault://aws/%2Fsecret/key}", "aws", "/secret", Some("key"), None),
            ("{vault://aws/secret/path/%2Faaa/key}", "aws", "secret/path//aaa", Some("key"), None),
            ("{vault://aws/prod/db/}", "aws", "prod/db", None, None),
            ("{vault://env/test-secret/test-key/}", "env", "test-secret/test-key", None, None),
            ("{vault://env//////test-secret//////test-key}", "env", "test-secret", Some("test-key"), None),
            ("{vault://env/test%3Asecret/test%3Akey}", "env", "test:secret", Some("test:key"), None),
            ("{vault://env/cert/key?prefix=SSL_#1}", "env", "cert", Some("key"), Some(1.0)),
        ];
        for (input, name, resource, key, version) in cases {
            assert_eq!(parts(input), p(name, resource, key, version), "{input}");
        }
        assert_eq!(
            query("{vault://env/cert/key?prefix=SSL_#1}"),
            [q("prefix", Some("SSL_"))]
        );
        assert_eq!(err("{vault://env}"), ParseError::MissingPath);
        assert_eq!(err("{vault://env/}"), ParseError::EmptyPath);
        assert_eq!(err("{vault://env/////}"), ParseError::InvalidPath);
        assert_eq!(
            err("{vault://aws/secret-name#}"),
            ParseError::InvalidVersion
        );
    }

    #[test]
    fn kong_spec_extras() {
        assert_eq!(
            parts("{vault://env//////test-secret//////test-key//////}"),
            p("env", "test-secret/test-key", None, None)
        );
        assert_eq!(
            query("{vault://env/test?opt1=val1&opt2=val2}"),
            [q("opt1", Some("val1")), q("opt2", Some("val2"))]
        );
        assert_eq!(
            parts("{vault://env/test#1}"),
            p("env", "test", None, Some(1.0))
        );
        assert!(ok("{vault://env/test}").query.is_empty());
    }

    #[test]
    fn is_reference_and_prefix() {
        for s in ["{vault://x/x}", "{vault://;/xx-x}", "{vault://}"] {
            assert!(is_reference(s), "{s}");
        }
        for s in [
            "vault:/xx-x}",
            "{vault:/xx-x",
            "{valut:/xx-x}",
            "{vault:/xx-x}",
            "{VAULT://aws/x}",
            "{ vault://aws/x}",
            " {vault://aws/x}",
            "{vault://aws/x} ",
            "",
            "{",
            "}",
        ] {
            assert!(!is_reference(s), "{s:?}");
            assert_eq!(parse(s), Err(ParseError::NotAReference), "{s:?}");
        }
    }

    #[test]
    fn query_and_fragment_order() {
        let r = ok("{vault://aws/s/k?ttl=5#1}");
        assert_eq!(r.version, Some(1.0));
        assert_eq!(r.query.get("ttl"), Some(&Some("5".into())));
        // After `#` everything is the version.
        assert_eq!(err("{vault://aws/s/k#1?ttl=5}"), ParseError::InvalidVersion);
        // `#` is cut first, even out of the authority.
        assert_eq!(err("{vault://aws#1}"), ParseError::MissingPath);
        assert_eq!(err("{vault://aws#1/s}"), ParseError::MissingPath);
        // Version is checked before the segment count.
        assert_eq!(err("{vault://env/////#x}"), ParseError::InvalidVersion);
        // An empty query is no query.
        assert!(ok("{vault://aws/s?}").query.is_empty());
        assert!(ok("{vault://aws/s?&&=x}").query.is_empty());
        // Query text may hold `/`, `;`, `?` and `=`.
        assert_eq!(
            query("{vault://aws/s?a=b/c;d?e=f}"),
            [q("a", Some("b/c;d?e=f"))]
        );
    }

    #[test]
    fn query_values() {
        assert_eq!(
            query("{vault://aws/s?a=1&a=2&b&c=&d=x+y%2B%25&e%20f=%zz}"),
            [
                q("a", None),
                q("b", None),
                q("c", Some("")),
                q("d", Some("x y+%")),
                q("e f", Some("%zz")),
            ]
        );
        // `a` and `%61` are the same key once decoded.
        assert_eq!(query("{vault://aws/s?a=1&%61=2}"), [q("a", None)]);
        // A value that is not UTF-8 is not a usable override.
        assert_eq!(query("{vault://aws/s?region=%FF}"), [q("region", None)]);
        // ngx.decode_args reads 100 pieces at most.
        let many: String = (0..150).map(|i| format!("k{i}=v&")).collect();
        let r = ok(&format!("{{vault://aws/s?{many}}}"));
        assert_eq!(r.query.len(), 100);
        assert!(r.query.contains_key("k99") && !r.query.contains_key("k100"));
    }

    #[test]
    fn params_and_authority() {
        assert_eq!(
            parts("{vault://aws/secret;x/key}"),
            p("aws", "secret", None, None)
        );
        assert_eq!(parts("{vault://aws/a/b;p?x=1}").2, Some("b".into()));
        assert_eq!(query("{vault://aws/a;p?x=1}"), [q("x", Some("1"))]);
        assert_eq!(err("{vault://aws/;x}"), ParseError::EmptyPath);
        assert_eq!(err("{vault://aws;x}"), ParseError::MissingPath);
        assert_eq!(parts("{vault://user:pw@aws:8080/s/k}").0, "aws");
        assert_eq!(parts("{vault://a@b@aws/s}").0, "b@aws");
        assert_eq!(parts("{vault://aws:x:y/s}").0, "aws:x");
        assert_eq!(parts("{vault://aws:/s}").0, "aws");
        assert_eq!(parts("{vault://[::1]/s}").0, "::1");
        assert_eq!(parts("{vault://[::1]:80/s}").0, "::1");
        assert_eq!(parts("{vault://[]/s}").0, "[]");
        assert_eq!(parts("{vault://AWS/s}").0, "AWS");
        // The authority runs to the first `/`, `?` included.
        assert_eq!(parts("{vault://aws?x=1/s}").0, "aws?x=1");
        assert_eq!(err("{vault://}"), ParseError::MissingHost);
        assert_eq!(err("{vault:///s}"), ParseError::MissingHost);
        assert_eq!(err("{vault://user@/s}"), ParseError::MissingHost);
        assert_eq!(err("{vault://:443/s}"), ParseError::MissingHost);
        // Host is checked before path.
        assert_eq!(err("{vault://@}"), ParseError::MissingHost);
    }

    #[test]
    fn decoding() {
        let res = |s: &str| ok(&format!("{{vault://aws/{s}}}")).resource;
        assert_eq!(res("a%252Bb"), "a+b");
        assert_eq!(res("a+b"), "a b");
        assert_eq!(res("a%2Bb"), "a b");
        assert_eq!(res("a%25b"), "a%b");
        assert_eq!(res("a%2525"), "a%");
        assert_eq!(res("%zz%"), "%zz%");
        assert_eq!(res("a%4"), "a%4");
        assert_eq!(res("%%41"), "%A");
        assert_eq!(res("%+"), "% ");
        assert_eq!(res("a%2fb"), "a/b");
        assert_eq!(res("./../x/"), "./../x");
        assert_eq!(res(" sp "), " sp ");
        assert_eq!(res("caf%C3%A9"), "café");
        assert_eq!(res("café"), "café");
        let r = ok("{vault://aws/a%2F/b%2F}");
        assert_eq!((r.resource.as_str(), r.key.as_deref()), ("a/", Some("b/")));
        assert_eq!(err("{vault://aws/%FF}"), ParseError::InvalidEncoding);
        assert_eq!(err("{vault://aws/s/%C3}"), ParseError::InvalidEncoding);
    }

    #[test]
    fn versions() {
        let v = |f: &str| parse(&format!("{{vault://aws/s#{f}}}")).map(|r| r.version);
        #[rustfmt::skip]
        let cases = [
            ("1", 1.0), ("2", 2.0), ("1.0", 1.0), ("1.", 1.0), (".5", 0.5), ("1.e1", 10.0),
            ("1e0", 1.0), ("1E2", 100.0), ("2e-1", 0.2), ("+2", 2.0), ("-1", -1.0), ("-0", 0.0),
            ("007", 7.0), (" 2 ", 2.0), ("\t\n\x0b\x0c\r2\r\n", 2.0),
            ("0x2", 2.0), ("0X1a", 26.0), ("0x1e", 30.0), ("-0x10", -16.0), ("0x.8", 0.5),
            ("0x1.8p1", 3.0), ("0x1P-1", 0.5), ("0x1p+2", 4.0), ("0x1.8e", 1.5546875),
            ("0b10", 2.0), ("0B1.0", 1.0), ("0b0.0", 0.0), ("0b011.00", 3.0),
            ("1e999", f64::INFINITY), ("1e99999999999999999999", f64::INFINITY),
            ("0x0p99999", 0.0),
        ];
        for (f, want) in cases {
            assert_eq!(v(f), Ok(Some(want)), "{f:?}");
        }
        for f in [
            "", " ", ".", "e1", "1e", "1e+", "1..2", "1.2.3", "1 2", "- 1", "--1", "+-1", "0x",
            "0x.", "0xg", "0x1p", "0x1.8p", "0b", "0b2", "0b1.1", "0b1e1", "1f", "1L", "1i", "1u",
            "inf", "-inf", "nan", "infinity", "INF", "one", "1\0", "\u{a0}1", "٣",
        ] {
            assert_eq!(v(f), Err(ParseError::InvalidVersion), "{f:?}");
        }
        assert_eq!(
            v(&format!("0b{}", "1".repeat(64))),
            Ok(Some(u64::MAX as f64))
        );
        assert_eq!(
            v(&format!("0b{}", "1".repeat(65))),
            Err(ParseError::InvalidVersion)
        );
        assert_eq!(
            v(&format!("0x{}", "f".repeat(300))).unwrap().unwrap(),
            f64::INFINITY
        );
        assert!(v(&format!("0x{}p-5000", "f".repeat(300))).unwrap().unwrap() >= 0.0);
    }

    #[test]
    fn version_number() {
        let n = |f: &str| ok(&format!("{{vault://aws/s#{f}}}")).version_number();
        assert_eq!(n("2.0"), Some(2));
        assert_eq!(n("0x1"), Some(1));
        assert_eq!(n("4294967295"), Some(u32::MAX));
        assert_eq!(n("4294967296"), None);
        assert_eq!(n("1.5"), None);
        assert_eq!(n("-1"), None);
        assert_eq!(n("1e999"), None);
        assert_eq!(ok("{vault://aws/s}").version_number(), None);
    }

    #[test]
    fn errors_display() {
        assert_eq!(ParseError::NotAReference.to_string(), "not a reference");
        assert_eq!(ParseError::MissingHost.to_string(), "missing host");
        assert_eq!(ParseError::MissingPath.to_string(), "missing path");
        assert_eq!(ParseError::EmptyPath.to_string(), "empty path");
        assert_eq!(ParseError::InvalidPath.to_string(), "invalid path");
        assert_eq!(ParseError::InvalidVersion.to_string(), "invalid version");
    }

    /// Deterministic LCG (Knuth's MMIX constants); no extra crates.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.next() % xs.len()]
        }
    }

    #[rustfmt::skip]
    const PIECES: &[&str] = &[
        "{", "}", "{vault://", "vault", ":", "//", "/", "%", "%2", "%2F", "%25", "%FF", "%C3",
        "+", "#", "?", "&", "=", ";", "@", "[", "]", "0x", "0b", ".", "e", "p", "-", "1", "2",
        "aws", "env", " ", "\t", "\u{b}", "é", "\u{0}", "\u{FFFD}", "inf", "nan", "x",
    ];

    #[test]
    fn never_panics() {
        let seeds = [
            "{vault://aws/secret-name/foo#2}",
            "{vault://u:p@aws:1/a/b/?x=1&y#0x1.8p1}",
            "{vault://[::1]/a%2F;p/b%252B+c?k=v#1e0}",
        ];
        let mut rng = Lcg(0x5eed);
        let (mut parsed, mut versioned, mut queried) = (0, 0, 0);
        for i in 0..20_000usize {
            let mut s: String = if i.is_multiple_of(2) {
                rng.pick(&seeds).to_owned()
            } else {
                "{vault://".to_owned()
            };
            for _ in 0..rng.next() % 6 {
                // Mutate at a char boundary: insert, delete or replace a run.
                let bounds: Vec<usize> =
                    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
                let at = bounds[rng.next() % bounds.len()];
                let run = rng.next() % 4;
                let to = bounds
                    .iter()
                    .copied()
                    .find(|&b| b >= at + run)
                    .unwrap_or(s.len());
                let piece = rng.pick(PIECES);
                match rng.next() % 3 {
                    0 => s.insert_str(at, piece),
                    1 => s.replace_range(at..to, ""),
                    _ => s.replace_range(at..to, piece),
                }
            }
            if rng.next().is_multiple_of(2) && !s.ends_with('}') {
                s.push('}');
            }
            if let Ok(r) = parse(&s) {
                parsed += 1;
                versioned += usize::from(r.version.is_some());
                queried += usize::from(!r.query.is_empty());
                assert!(is_reference(&s), "{s:?}");
                assert!(!r.name.is_empty() && !r.resource.is_empty(), "{s:?}");
                assert!(r.version.is_none_or(|v| !v.is_nan()), "{s:?}");
                assert_eq!(r, r.clone());
                let _ = r.version_number();
            }
        }
        // The mutations must keep enough inputs valid to exercise the decoders.
        assert!(
            parsed > 2_000 && versioned > 500 && queried > 500,
            "parsed={parsed} versioned={versioned} queried={queried}"
        );
    }
}
