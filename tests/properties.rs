//! Property tests for every parser that sees untrusted input.
//!
//! A panic inside a proxy-wasm VM takes a whole Envoy worker down, so the first property
//! of each parser is "never panics" on arbitrary and on mutated-valid input. On top of
//! that: templates round-trip their text, non-2xx answers never yield a secret, errors
//! built from a 2xx body (which holds the secret) never quote it, and cache entries
//! round-trip. Deterministic regression tests for the edge cases found by fuzzing sit at
//! the end. Bounded: 256 cases per property (fewer for the slow strategies), the whole
//! file runs in a few seconds in debug.
//!
//! The fuzz targets in `fuzz/` cover the same parsers with coverage guidance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use aws_vault::aws::credentials::{parse_json_credentials, parse_timestamp, TimedCredentials};
use aws_vault::aws::secrets_manager::{
    extract_key, parse_get_secret_value, AwsError, ErrorKind, KeyError, SecretValue, MAX_BODY_BYTES,
};
use aws_vault::aws::sigv4::Credentials;
use aws_vault::aws::sts::{self, StsError};
use aws_vault::aws::HttpResponse;
use aws_vault::cache::{Entry, FORMAT};
use aws_vault::config::Config;
use aws_vault::reference::{self, ParseError};
use aws_vault::template::{self, Segment, TemplateError};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Number, Value};

const START: &str = "{vault://";

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking is only for failures; keep a failing run short as well.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

// ---------------------------------------------------------------------------------------
// Generic mutation of valid inputs
// ---------------------------------------------------------------------------------------

/// Pieces that matter to the parsers: delimiters, escapes, numbers, JSON punctuation,
/// non-ASCII, NUL and control characters.
const PIECES: &[&str] = &[
    "{",
    "}",
    "{vault://",
    "vault://",
    "{VAULT://",
    "/",
    "//",
    "%",
    "%2F",
    "%25",
    "%FF",
    "%C3",
    "%",
    "+",
    "#",
    "#1",
    "#2",
    "#0x2",
    "#1e0",
    "#-0",
    "#inf",
    "?",
    "&",
    "=",
    "?ttl=1",
    "&&",
    ";",
    "@",
    ":",
    "[",
    "]",
    "[::1]",
    " ",
    "\t",
    "\n",
    "\r",
    "\u{0}",
    "\u{7f}",
    "\u{feff}",
    "é",
    "\u{202e}",
    "😀",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    ",",
    "null",
    "true",
    "-1",
    "1e999",
    "0.5",
    "1.0e-400",
    "18446744073709551616",
    "{}",
    "[]",
    "aws",
    "env",
    "x",
    "",
];

/// One edit at a relative position (`at` in 0..=1000 per mille of the length).
#[derive(Debug, Clone)]
enum Edit {
    Insert(u16, String),
    Delete(u16, u8),
    Replace(u16, u8, String),
    Truncate(u16),
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(PIECES).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => "\\PC{0,6}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0u16..=1000;
    prop_oneof![
        4 => (at.clone(), piece()).prop_map(|(a, p)| Edit::Insert(a, p)),
        2 => (at.clone(), 1u8..8).prop_map(|(a, n)| Edit::Delete(a, n)),
        3 => (at.clone(), 1u8..8, piece()).prop_map(|(a, n, p)| Edit::Replace(a, n, p)),
        1 => at.prop_map(Edit::Truncate),
    ]
}

/// The char boundary nearest below `per_mille` of the way into `s`.
fn boundary(s: &str, per_mille: u16) -> usize {
    let mut at = s.len() * usize::from(per_mille) / 1000;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The char boundary at or after `from + n` chars.
fn advance(s: &str, from: usize, n: u8) -> usize {
    s[from..]
        .char_indices()
        .nth(usize::from(n))
        .map_or(s.len(), |(i, _)| from + i)
}

fn apply(mut s: String, edits: &[Edit]) -> String {
    for e in edits {
        match e {
            Edit::Insert(a, p) => {
                let at = boundary(&s, *a);
                s.insert_str(at, p);
            }
            Edit::Delete(a, n) => {
                let at = boundary(&s, *a);
                let to = advance(&s, at, *n);
                s.replace_range(at..to, "");
            }
            Edit::Replace(a, n, p) => {
                let at = boundary(&s, *a);
                let to = advance(&s, at, *n);
                s.replace_range(at..to, p);
            }
            Edit::Truncate(a) => {
                let at = boundary(&s, *a);
                s.truncate(at);
            }
        }
    }
    s
}

/// Byte-level mutation for byte parsers (can break UTF-8).
fn apply_bytes(mut b: Vec<u8>, edits: &[(u16, u8, u8)]) -> Vec<u8> {
    for &(a, op, byte) in edits {
        let at = b.len() * usize::from(a) / 1000;
        match op % 4 {
            0 => b.insert(at, byte),
            1 if at < b.len() => {
                b.remove(at);
            }
            2 if at < b.len() => b[at] = byte,
            3 => b.truncate(at),
            _ => {}
        }
    }
    b
}

// ---------------------------------------------------------------------------------------
// References and templates
// ---------------------------------------------------------------------------------------

const VALID_REFERENCES: &[&str] = &[
    "{vault://aws/secret-name/foo}",
    "{vault://aws/secret-name/foo#2}",
    "{vault://aws-sm-vault/secret-name/foo}",
    "{vault://aws/secret-name}",
    "{vault://aws/%2Fsecret/key}",
    "{vault://aws/prod/db/}",
    "{vault://env//////test-secret//////test-key}",
    "{vault://env/cert/key?prefix=SSL_#1}",
    "{vault://u:p@aws:1/a/b/?x=1&y#0x1.8p1}",
    "{vault://[::1]/a%2F;p/b%252B+c?k=v#1e0}",
    "{vault://aws/s?ttl=60&region=eu-west-1&neg_ttl=abc&foo=bar#0b10}",
];

fn valid_reference() -> impl Strategy<Value = String> {
    select(VALID_REFERENCES).prop_map(str::to_owned)
}

fn mutated_reference() -> impl Strategy<Value = String> {
    (valid_reference(), vec(edit(), 0..6)).prop_map(|(s, e)| apply(s, &e))
}

/// Checks every documented invariant of one reference parse.
fn check_reference(s: &str) {
    match reference::parse(s) {
        Ok(r) => {
            assert!(reference::is_reference(s), "{s:?}");
            assert!(!r.name.is_empty() && !r.resource.is_empty(), "{s:?}");
            assert!(r.version.is_none_or(|v| !v.is_nan()), "{s:?}");
            assert_eq!(r, r.clone());
            let _ = r.version_number();
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if !reference::is_reference(s) {
                assert_eq!(e, ParseError::NotAReference, "{s:?}");
            }
        }
    }
}

/// Concatenated segment texts.
fn unparse(t: &template::Template) -> String {
    t.segments
        .iter()
        .map(|s| match s {
            Segment::Literal(x) | Segment::Reference { text: x, .. } => x.as_str(),
        })
        .collect()
}

fn check_template(s: &str) {
    match template::parse(s) {
        Ok(t) => {
            assert_eq!(unparse(&t), s, "round-trip");
            for pair in t.segments.windows(2) {
                assert!(
                    !matches!(pair, [Segment::Literal(_), Segment::Literal(_)]),
                    "{s:?}"
                );
            }
            for seg in &t.segments {
                match seg {
                    Segment::Literal(x) => assert!(!x.is_empty() && !x.contains(START), "{s:?}"),
                    Segment::Reference { text, reference } => {
                        assert_eq!(reference::parse(text).as_ref(), Ok(reference), "{s:?}")
                    }
                }
            }
            // Rendering never panics and substitutes exactly the references.
            let rendered = t.render(|_| Some("")).unwrap();
            let literals: String = t
                .segments
                .iter()
                .filter_map(|x| match x {
                    Segment::Literal(l) => Some(l.as_str()),
                    Segment::Reference { .. } => None,
                })
                .collect();
            assert_eq!(rendered, literals);
            assert_eq!(t.render(|_| None::<&str>).is_err(), t.has_references());
        }
        Err(TemplateError::Unterminated { at }) => {
            let tail = s.get(at..).expect("offset is a char boundary");
            assert!(tail.starts_with(START) && !tail.contains('}'), "{s:?}");
        }
        Err(TemplateError::Reference { text, error }) => {
            assert!(s.contains(&text), "{s:?}");
            assert_eq!(reference::parse(&text), Err(error), "{s:?}");
        }
    }
}

/// A template known to be valid: literals without `{vault://`, references built from
/// unreserved characters (so the parsed fields are predictable).
fn structured_template() -> impl Strategy<Value = (String, Vec<(String, String, Option<String>)>)> {
    let literal = "\\PC{0,12}".prop_filter("no reference start", |l: &String| !l.contains(START));
    let name = "[a-z][a-z0-9-]{0,8}";
    let segment = "[A-Za-z0-9_.-]{1,8}";
    let reference = (
        name,
        vec(segment, 1..4),
        proptest::option::of(segment),
        select(&["", "#1", "#2", "?ttl=5", "?region=eu-west-1#2"][..]),
    );
    vec((literal, reference), 0..5).prop_map(|parts| {
        let mut text = String::new();
        let mut expected = Vec::new();
        for (lit, (name, dir, key, suffix)) in parts {
            text.push_str(&lit);
            let resource = dir.join("/");
            let path = match &key {
                Some(k) => format!("{resource}/{k}"),
                None => format!("{resource}/"),
            };
            text.push_str(&format!("{{vault://{name}/{path}{suffix}}}"));
            expected.push((name, resource, key));
        }
        (text, expected)
    })
}

proptest! {
    #![proptest_config(cfg(512))]

    #[test]
    fn reference_never_panics_on_arbitrary_strings(s in "\\PC{0,40}") {
        check_reference(&s);
        check_reference(&format!("{START}{s}}}"));
    }

    #[test]
    fn reference_never_panics_on_mutations(s in mutated_reference()) {
        check_reference(&s);
    }

    #[test]
    fn template_never_panics_and_round_trips(s in "\\PC{0,40}") {
        check_template(&s);
    }

    #[test]
    fn template_of_mutated_references(
        parts in vec(prop_oneof![mutated_reference(), "\\PC{0,8}"], 0..5)
    ) {
        check_template(&parts.concat());
    }

    #[test]
    fn template_of_valid_parts_parses_exactly((text, expected) in structured_template()) {
        let t = template::parse(&text).unwrap();
        prop_assert_eq!(unparse(&t), text.clone());
        let got: Vec<_> = t
            .references()
            .map(|(_, r)| (r.name.clone(), r.resource.clone(), r.key.clone()))
            .collect();
        prop_assert_eq!(got, expected);
    }
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

const VALID_CONFIGS: &[&str] = &[
    "{}",
    r#"{"aws": {"region": "us-east-1"}}"#,
    r#"{"aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "ttl": 300,
                "neg_ttl": 5, "resurrect_ttl": 60, "timeout_ms": 2000, "upstream": "sm",
                "assume_role_arn": "arn:aws:iam::1:role/r", "role_session_name": "s1",
                "sts_endpoint_url": "https://sts.amazonaws.com/"},
        "vaults": [{"name": "aws", "prefix": "aws-sm-vault", "description": "eu", "id": null,
                    "tags": null,
                    "config": {"region": "eu-central-1", "ttl": 60, "upstream": "sm_eu"}}],
        "request_headers": {"Authorization": "Bearer {vault://aws/prod/api/token}",
                            "x-both": "{vault://aws/db/user}:{vault://aws/db/pass#2}"},
        "response_headers": {"x-tenant-key": "{vault://aws-sm-vault/tenant/key?ttl=1#2}"}}"#,
    r#"{"aws": null, "vaults": null, "request_headers": null, "response_headers": {}}"#,
    r#"{"aws": {"region": "cn-north-1", "ttl": null},
        "request_headers": {"x": "plain {vault://aws/s?region=us-west-2&timeout_ms=9} }{"}}"#,
];

/// JSON strings that are meaningful somewhere in a config.
const CONFIG_STRINGS: &[&str] = &[
    "aws",
    "env",
    "aws-sm-vault",
    "us-east-1",
    "US EAST",
    "http://127.0.0.1:4566",
    "https://[::1]:443/",
    "ftp://x",
    "http://u@h",
    "{vault://aws/s/k}",
    "{vault://aws/s#2}",
    "{vault://aws-sm-vault/s/k?ttl=1}",
    "{vault://nope/x}",
    "{vault://",
    "{vault://env}",
    "Bearer {vault://aws/a/b}:{vault://aws/c}",
    "",
    " ",
    "\u{0}",
    "é",
    "60",
];

const CONFIG_KEYS: &[&str] = &[
    "aws",
    "vaults",
    "request_headers",
    "response_headers",
    "region",
    "endpoint_url",
    "upstream",
    "assume_role_arn",
    "role_session_name",
    "sts_endpoint_url",
    "ttl",
    "neg_ttl",
    "resurrect_ttl",
    "timeout_ms",
    "name",
    "prefix",
    "description",
    "config",
    "id",
    "tags",
    "authorization",
    "x-a",
    "X-A",
    ":path",
    "bad name",
    "",
];

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        select(&[0.0, 1.0, 2.0, -1.0, 0.5, 1e8, 1e8 + 1.0, 60_000.0, 60_001.0][..])
            .prop_map(Value::from),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(CONFIG_STRINGS).prop_map(str::to_owned),
        1 => "\\PC{0,16}",
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(CONFIG_KEYS).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(json_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects shaped like a config (right top-level keys, settings-like objects), with
/// arbitrary JSON in the leaves: gets past the first checks far more often.
fn settings_object() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        3 => json_string().prop_map(Value::String),
        2 => json_number(),
        1 => arb_json(),
    ];
    btree_map(json_key(), value, 0..5).prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn headers_object() -> impl Strategy<Value = Value> {
    btree_map(json_key(), json_string().prop_map(Value::String), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Objects shaped like a config (right top-level keys, settings-like objects), with
/// arbitrary JSON in the leaves: gets past the first checks far more often.
fn config_shaped() -> impl Strategy<Value = Value> {
    let vault = (
        json_string(),
        json_string(),
        proptest::option::of(settings_object()),
    )
        .prop_map(|(name, prefix, config)| {
            let mut m = Map::new();
            m.insert("name".into(), Value::String(name));
            m.insert("prefix".into(), Value::String(prefix));
            if let Some(c) = config {
                m.insert("config".into(), c);
            }
            Value::Object(m)
        });
    (
        proptest::option::of(settings_object()),
        proptest::option::of(vec(vault, 0..3)),
        proptest::option::of(headers_object()),
        proptest::option::of(headers_object()),
    )
        .prop_map(|(aws, vaults, req, resp)| {
            let mut m = Map::new();
            if let Some(a) = aws {
                m.insert("aws".into(), a);
            }
            if let Some(v) = vaults {
                m.insert("vaults".into(), Value::Array(v));
            }
            if let Some(h) = req {
                m.insert("request_headers".into(), h);
            }
            if let Some(h) = resp {
                m.insert("response_headers".into(), h);
            }
            Value::Object(m)
        })
}

fn check_config(text: &str) {
    match Config::parse(text, &no_env) {
        Ok(c) => {
            for h in c.request_headers.iter().chain(&c.response_headers) {
                assert_eq!(h.name, h.name.to_ascii_lowercase(), "{text}");
            }
            // Every reference of an accepted config resolves.
            for (_, t, r) in c.references() {
                assert!(c.resolve(t, r).is_ok(), "{text}");
            }
        }
        Err(e) => assert!(!e.trim().is_empty(), "empty error for {text:?}"),
    }
    // The report variant agrees on whether the text is a config at all.
    let _ = Config::parse_report(text, &no_env);
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn config_never_panics_on_arbitrary_json(v in arb_json()) {
        check_config(&v.to_string());
    }

    #[test]
    fn config_never_panics_on_config_shaped_json(v in config_shaped()) {
        check_config(&v.to_string());
    }

    #[test]
    fn config_never_panics_on_mutated_valid_configs(
        base in select(VALID_CONFIGS),
        edits in vec(edit(), 0..6),
    ) {
        check_config(&apply(base.to_owned(), &edits));
    }

    #[test]
    fn config_never_panics_on_arbitrary_text(s in "\\PC{0,64}") {
        check_config(&s);
    }
}

#[test]
fn valid_configs_parse() {
    for text in VALID_CONFIGS {
        Config::parse(text, &no_env).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// GetSecretValue responses
// ---------------------------------------------------------------------------------------

/// A marker that cannot occur in any fixed message text.
fn marker() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{16,24}".prop_map(|s| format!("mk{s}"))
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => select(&[200u16, 201, 204, 299][..]),
        3 => select(&[400u16, 403, 404, 429, 500, 502, 503][..]),
        1 => select(&[0u16, 100, 199, 300, 302, 399, 600, 999, u16::MAX][..]),
        1 => any::<u16>(),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        select(
            &[
                "content-type",
                "x-amzn-errortype",
                "X-Amzn-ErrorType",
                "x-amzn-requestid"
            ][..]
        )
        .prop_map(str::to_owned),
        "\\PC{0,10}",
    ];
    let value = prop_oneof![
        select(
            &[
                "application/x-amz-json-1.1",
                "application/json",
                "text/html",
                "text/xml",
                "application/octet-stream",
                "ResourceNotFoundException:http://internal.amazon.com/",
                "com.amazonaws#ThrottlingException",
                "",
                ":",
                "#",
            ][..]
        )
        .prop_map(str::to_owned),
        "\\PC{0,40}",
    ];
    vec((name, value), 0..4)
}

/// Bodies without a marker: valid shapes, error shapes, garbage.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let canned = select(
        &[
            r#"{"ARN":"arn","Name":"n","SecretString":"s","VersionId":"v"}"#,
            r#"{"SecretBinary":"AAEC"}"#,
            r#"{"SecretString":null,"SecretBinary":"AA=="}"#,
            r#"{"__type":"ResourceNotFoundException","message":"not found"}"#,
            r#"{"__type":"com.amazonaws#AccessDeniedException:x","Message":"no"}"#,
            r#"{"Output":{"__type":"x"}}"#,
            "<ErrorResponse><Error><Code>InvalidClientTokenId</Code><Message>a &amp; b &#x41; &#99999999; &</Message></Error></ErrorResponse>",
            "<Response><Errors><Error><Code>X</Code></Error></Errors></Response>",
            "\u{feff}  <Error ><Code>",
            "<html><body>502</body></html>",
            "",
            "null",
            "[]",
            "\"str\"",
            "1e999",
        ][..],
    )
    .prop_map(|s| s.as_bytes().to_vec());
    let mutated = (
        canned.clone(),
        vec((0u16..=1000, any::<u8>(), any::<u8>()), 0..6),
    )
        .prop_map(|(b, e)| apply_bytes(b, &e));
    prop_oneof![
        2 => canned,
        3 => mutated,
        1 => vec(any::<u8>(), 0..200),
        1 => arb_json().prop_map(|v| v.to_string().into_bytes()),
        1 => "[&<>;#a-zA-Z0-9]{0,300}".prop_map(|s| format!("<Error><Code>C</Code><Message>{s}</Message></Error>").into_bytes()),
        // A big one now and then (not over the 1 MiB cap: that is a unit test).
        1 => (1usize..200_000, any::<u8>()).prop_map(|(n, b)| {
            let mut v = br#"{"SecretString":""#.to_vec();
            v.extend(std::iter::repeat_n(b'a' + b % 26, n));
            v.extend_from_slice(b"\"}");
            v
        }),
    ]
}

/// A 2xx body holding `m` that must not parse: truncations, wrong types, invalid
/// UTF-8, invalid base64, the marker as a key or in another field.
fn malformed_secret_body(m: &str) -> impl Strategy<Value = Vec<u8>> {
    let shapes: Vec<Vec<u8>> = vec![
        format!(r#"{{"SecretString":"{m}"#).into_bytes(),
        format!(r#"{{"SecretString":"{m}""#).into_bytes(),
        format!(r#"{{"SecretString":"{m}","#).into_bytes(),
        format!(r#"{{"SecretString":["{m}"]}}"#).into_bytes(),
        format!(r#"{{"SecretString":{{"{m}":1}}}}"#).into_bytes(),
        format!(r#"{{"SecretString":1,"Name":"{m}"}}"#).into_bytes(),
        format!(r#"{{"SecretString":{m}}}"#).into_bytes(),
        format!(r#"{{"SecretBinary":"{m}!"}}"#).into_bytes(),
        format!(r#"{{"SecretBinary":"{m}"#).into_bytes(),
        format!(r#"{{"SecretBinary":["{m}"]}}"#).into_bytes(),
        format!(r#"{{"{m}":"x"}}"#).into_bytes(),
        format!(r#"{{"Name":"{m}"}}"#).into_bytes(),
        format!(r#"["{m}"]"#).into_bytes(),
        format!(r#""{m}""#).into_bytes(),
        m.as_bytes().to_vec(),
        format!("<Error><Code>{m}</Code><Message>{m}</Message></Error>").into_bytes(),
        format!(r#"{{"__type":"{m}","message":"{m}"}}"#).into_bytes(),
        [
            format!(r#"{{"SecretString":"{m}"#).as_bytes(),
            b"\xff\xfe\"}",
        ]
        .concat(),
        [
            b"\xef\xbb\xbf".as_slice(),
            format!(r#"{{"SecretString":"{m}"}}"#).as_bytes(),
        ]
        .concat(),
        format!(r#"{{"SecretString":"{m}\u00"}}"#).into_bytes(),
        format!(r#"{{"SecretString":"{m}\ud800"}}"#).into_bytes(),
        format!("{{\"SecretString\":\"{m}\u{0}\"}}").into_bytes(),
        format!(r#"{{"SecretString":"{m}"}} trailing"#).into_bytes(),
        format!(r#"{{"SecretString":"{m}"}}{{"#).into_bytes(),
    ];
    select(shapes)
}

fn response(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> HttpResponse {
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Invariants every answer keeps, whatever the input.
fn check_response(r: &HttpResponse) -> Result<SecretValue, AwsError> {
    let out = parse_get_secret_value(r);
    if !(200..300).contains(&r.status) {
        let e = out
            .as_ref()
            .expect_err("a non-2xx answer never yields a secret");
        assert_eq!(e.status, r.status);
        assert_ne!(e.kind, ErrorKind::Malformed);
    }
    if let Err(e) = &out {
        assert!(!e.code.is_empty(), "{e:?}");
        for text in [&e.code, &e.message] {
            assert!(text.chars().count() <= 200, "{e:?}");
            assert!(!text.chars().any(char::is_control), "{e:?}");
        }
        if (200..300).contains(&r.status) {
            assert_eq!(e.kind, ErrorKind::Malformed);
            assert_eq!(e.code, "MalformedResponse");
        }
        let _ = (e.to_string(), format!("{e:?}"), e.kind.is_retryable());
    }
    out
}

/// Standard base64 with padding, for building valid `SecretBinary` bodies.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn secret_response_never_panics(s in status(), h in headers(), b in body()) {
        let _ = check_response(&response(s, h, b));
    }

    #[test]
    fn non_2xx_never_yields_a_secret(
        s in any::<u16>().prop_filter("non-2xx", |s| !(200..300).contains(s)),
        h in headers(),
        secret in "\\PC{0,40}",
    ) {
        // Even a perfect success body.
        let body = serde_json::to_vec(&serde_json::json!({"SecretString": secret})).unwrap();
        prop_assert!(check_response(&response(s, h, body)).is_err());
    }

    #[test]
    fn malformed_2xx_never_shows_the_secret(
        (m, b) in marker().prop_flat_map(|m| (Just(m.clone()), malformed_secret_body(&m))),
        s in 200u16..300,
        h in headers(),
    ) {
        let r = response(s, h, b);
        // Every shape is malformed: an error, and one that does not quote the body.
        let e = check_response(&r).expect_err("malformed 2xx body must be an error");
        prop_assert!(!e.to_string().contains(&m), "Display leaks: {}", e);
        let debug = format!("{e:?}");
        prop_assert!(!debug.contains(&m), "Debug leaks: {}", debug);
    }

    #[test]
    fn valid_2xx_round_trips(
        s in 200u16..300,
        h in headers(),
        secret in "\\PC{0,64}",
        binary in vec(any::<u8>(), 0..64),
        extra in btree_map("[A-Z][a-zA-Z]{0,8}", arb_json(), 0..3),
        use_binary in any::<bool>(),
    ) {
        let mut obj: Map<String, Value> = extra
            .into_iter()
            .filter(|(k, _)| k != "SecretString" && k != "SecretBinary")
            .collect();
        let want = if use_binary {
            obj.insert("SecretBinary".into(), Value::String(base64(&binary)));
            SecretValue::Binary(base64(&binary))
        } else {
            obj.insert("SecretString".into(), Value::String(secret.clone()));
            SecretValue::String(secret)
        };
        let body = serde_json::to_vec(&Value::Object(obj)).unwrap();
        prop_assert_eq!(check_response(&response(s, h, body)).unwrap(), want);
    }
}

// ---------------------------------------------------------------------------------------
// extract_key
// ---------------------------------------------------------------------------------------

/// The Display of each error is one fixed text (so no secret data can be in it).
fn fixed_key_error_text(e: &KeyError) -> bool {
    let s = e.to_string();
    [
        "secret is not valid JSON",
        "secret is not a JSON object",
        "key not found in secret",
    ]
    .contains(&s.as_str())
        || ["object", "array", "number", "boolean", "null"]
            .iter()
            .any(|t| s == format!("key's value in secret is a JSON {t}, not a string"))
}

fn check_extract(secret: &str, key: &str) -> Result<String, KeyError> {
    let out = extract_key(secret, key);
    if let Err(e) = &out {
        assert!(fixed_key_error_text(e), "{e:?}");
    }
    out
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn extract_key_never_panics_on_arbitrary_text(secret in "\\PC{0,64}", key in "\\PC{0,8}") {
        let _ = check_extract(&secret, &key);
    }

    #[test]
    fn extract_key_on_json_objects(
        m in marker(),
        fields in btree_map("[a-z]{1,4}", arb_json(), 0..6),
        key in prop_oneof!["[a-z]{1,4}", Just("k".to_string())],
        put_marker in any::<bool>(),
    ) {
        let mut obj: Map<String, Value> = fields.into_iter().collect();
        if put_marker {
            obj.insert("k".into(), Value::String(m.clone()));
        }
        // Markers everywhere else too (as values of other types the error names).
        obj.insert("n".into(), serde_json::json!([m.clone(), {"x": m.clone()}]));
        let secret = Value::Object(obj.clone()).to_string();
        match check_extract(&secret, &key) {
            Ok(v) => prop_assert_eq!(Some(&Value::String(v)), obj.get(&key)),
            Err(e) => {
                let debug = format!("{e:?}");
                prop_assert!(!e.to_string().contains(&m));
                prop_assert!(!debug.contains(&m));
                match e {
                    KeyError::Missing => prop_assert!(!obj.contains_key(&key)),
                    KeyError::NotAString { .. } => prop_assert!(!obj[&key].is_string()),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }

    #[test]
    fn extract_key_on_mutated_json(
        m in marker(),
        edits in vec(edit(), 1..6),
    ) {
        let secret = apply(format!(r#"{{"k":"{m}","n":["{m}",1,{{"x":null}}]}}"#), &edits);
        if let Err(e) = check_extract(&secret, "k") {
            let debug = format!("{e:?}");
            prop_assert!(!e.to_string().contains(&m));
            prop_assert!(!debug.contains(&m));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cache entries
// ---------------------------------------------------------------------------------------

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        (
            any::<u8>(),
            "\\PC{0,32}",
            any::<u64>(),
            proptest::option::of("\\PC{0,32}"),
        ),
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        ),
        (
            proptest::option::of("\\PC{0,32}"),
            any::<u32>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (v, key, updated_at, value),
                (fetched_at, expires_at, resurrect_until),
                (error, failures, retry_at),
            )| Entry {
                v,
                key,
                updated_at,
                value,
                fetched_at,
                expires_at,
                resurrect_until,
                error,
                failures,
                retry_at,
                forced_at: retry_at ^ 0x5a5a,
                binary: failures % 2 == 1,
            },
        )
}

fn check_decode(bytes: &[u8], key: &str) {
    if let Some(e) = Entry::decode(bytes, key) {
        assert_eq!(e.v, FORMAT);
        assert_eq!(e.key, key);
        let _ = (
            e.usable(0),
            e.usable(u64::MAX),
            e.expired(u64::MAX),
            format!("{e:?}"),
        );
    }
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn entry_decode_never_panics_on_garbage(bytes in vec(any::<u8>(), 0..256), key in "\\PC{0,8}") {
        check_decode(&bytes, &key);
    }

    #[test]
    fn entry_decode_never_panics_on_json(v in arb_json(), key in json_string()) {
        check_decode(v.to_string().as_bytes(), &key);
    }

    #[test]
    fn entry_round_trips_and_decodes_mutations(
        mut entry in arb_entry(),
        edits in vec((0u16..=1000, any::<u8>(), any::<u8>()), 0..6),
        m in marker(),
    ) {
        entry.v = FORMAT;
        entry.value = Some(m.clone());
        let bytes = entry.encode();
        prop_assert_eq!(Entry::decode(&bytes, &entry.key), Some(entry.clone()));
        let debug = format!("{entry:?}");
        prop_assert!(!debug.contains(&m), "Debug hides the value");
        check_decode(&apply_bytes(bytes, &edits), &entry.key);
    }

    #[test]
    fn entry_of_other_format_or_key_is_rejected(entry in arb_entry(), other in "\\PC{0,8}") {
        let bytes = entry.encode();
        let got = Entry::decode(&bytes, &other);
        prop_assert_eq!(got.is_some(), entry.v == FORMAT && entry.key == other);
    }
}

// ---------------------------------------------------------------------------------------
// STS XML and IMDS / container JSON credentials
// ---------------------------------------------------------------------------------------

/// An STS success document; `secret` and `token` are put in as given (not escaped),
/// `expiration` likewise, so callers can break them.
fn sts_doc(akid: &str, secret: &str, token: &str, expiration: &str) -> String {
    format!(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
         <AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/s</Arn></AssumedRoleUser>\
         <Credentials><AccessKeyId>{akid}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
         <SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration></Credentials>\
         </AssumeRoleResult></AssumeRoleResponse>"
    )
}

/// What the Debug of credentials may show anyway: itself with the secrets emptied.
fn creds_skeleton(c: &TimedCredentials) -> String {
    let blank = TimedCredentials {
        credentials: Credentials {
            access_key_id: c.credentials.access_key_id.clone(),
            secret_access_key: String::new(),
            session_token: c.credentials.session_token.as_ref().map(|_| String::new()),
        },
        expires_at: c.expires_at,
    };
    format!("{blank:?}")
}

fn check_sts(r: &HttpResponse, secrets: &[&str]) -> Result<TimedCredentials, StsError> {
    let out = sts::parse_credentials_response(r);
    match &out {
        Ok(c) => {
            assert!((200..300).contains(&r.status), "non-2xx gave credentials");
            let (debug, skeleton) = (format!("{c:?}"), creds_skeleton(c));
            for s in secrets {
                assert!(
                    !debug.contains(s) || skeleton.contains(s),
                    "Debug leaks {s}"
                );
            }
        }
        Err(e) => {
            assert_eq!(e.status, r.status);
            assert!(e.message.chars().count() <= 203, "{e:?}");
            assert!(!e.message.chars().any(char::is_control), "{e:?}");
            if let Some(code) = &e.code {
                assert!(!code.is_empty() && code.chars().count() <= 67, "{e:?}");
            }
            let (display, debug) = (e.to_string(), format!("{e:?}"));
            if (200..300).contains(&r.status) {
                for s in secrets {
                    assert!(
                        !display.contains(s) && !debug.contains(s),
                        "error leaks {s}: {display}"
                    );
                }
            }
            let _ = (e.is_retryable(), e.is_credentials_problem());
        }
    }
    out
}

fn check_json_credentials(body: &[u8], secrets: &[&str]) {
    for require_code in [false, true] {
        match parse_json_credentials(body, require_code) {
            Ok(c) => {
                let (debug, skeleton) = (format!("{c:?}"), creds_skeleton(&c));
                for s in secrets {
                    assert!(
                        !debug.contains(s) || skeleton.contains(s),
                        "Debug leaks {s}"
                    );
                }
            }
            Err(e) => {
                assert!(!e.is_empty());
                for s in secrets {
                    assert!(!e.contains(s), "error leaks {s}: {e}");
                }
            }
        }
    }
}

/// Ways to spoil one field of a credentials document while keeping the secrets in it.
const SPOIL_EXPIRATION: &[&str] = &[
    "2024-01-01T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "2024-01-01T00:00:00",
    "2024-01-01T00:00:00.Z",
    "1969-12-31T23:59:59Z",
    "2024-01-01T24:00:00Z",
    "2024-01-01T00:00:00+24:00",
    "2024-01-01 00:00:00.1234567890123Z",
    "",
    "soon",
];

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn sts_never_panics(s in status(), h in headers(), b in prop_oneof![
        body(),
        (vec(edit(), 0..6), select(SPOIL_EXPIRATION)).prop_map(|(e, x)| {
            apply(sts_doc("ASIA1", "wJalrXUtnFEMIK7MDENG", "IQoJb3JpZ2lu&amp;x", x), &e).into_bytes()
        }),
        "[<>/&;#a-zA-Z ]{0,80}".prop_map(String::into_bytes),
    ]) {
        let _ = check_sts(&response(s, h, b), &[]);
    }

    #[test]
    fn sts_secrets_never_in_errors(
        secret in marker(),
        token in marker(),
        s in prop_oneof![3 => 200u16..300, 1 => 300u16..600],
        expiration in select(SPOIL_EXPIRATION),
        spoil in 0usize..7,
        edits in vec(edit(), 0..3),
    ) {
        // A space makes a secret unusable (fixed error), a missing or broken field too.
        let (sec, tok) = match spoil {
            0 => (format!("{secret} x"), token.clone()),
            1 => (secret.clone(), format!("{token}\u{1}")),
            2 => (format!("<![CDATA[{secret}"), token.clone()),
            _ => (secret.clone(), token.clone()),
        };
        let mut doc = sts_doc("ASIA1", &sec, &tok, expiration);
        if spoil == 3 {
            doc = doc.replace("<SessionToken>", "<SessionTokn>");
        }
        if spoil == 4 {
            doc = doc.replace("</Credentials>", "<Error><Code>X</Code><Message>m</Message></Error>");
        }
        let doc = apply(doc, &edits);
        let out = check_sts(&response(s, vec![], doc.into_bytes()), &[&secret, &token]);
        if !(200..300).contains(&s) {
            prop_assert!(out.is_err());
        }
    }

    #[test]
    fn sts_xml_helpers_never_panic(xml in "[<>/!\\[\\]CDATa-z&;# ]{0,60}", name in "[a-zA-Z]{0,4}") {
        if let Some(inner) = sts::element(&xml, &name) {
            prop_assert!(xml.contains(inner));
            let _ = sts::text(inner);
        }
        let _ = sts::text(&xml);
    }

    #[test]
    fn json_credentials_never_leak(
        secret in marker(),
        token in marker(),
        fields in btree_map(
            select(&["Code", "AccessKeyId", "Expiration", "Type", "Message", "Token", "SecretAccessKey"][..]),
            arb_json(),
            0..5,
        ),
        put in any::<[bool; 2]>(),
        expiration in select(SPOIL_EXPIRATION),
        spoil_secret in any::<bool>(),
        edits in vec(edit(), 0..3),
    ) {
        let mut obj: Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        obj.insert("Expiration".into(), Value::String(expiration.into()));
        if put[0] {
            let sec = if spoil_secret { format!("{secret} x") } else { secret.clone() };
            obj.insert("SecretAccessKey".into(), Value::String(sec));
        }
        if put[1] {
            obj.insert("Token".into(), Value::String(token.clone()));
        }
        let text = apply(Value::Object(obj).to_string(), &edits);
        check_json_credentials(text.as_bytes(), &[&secret, &token]);
    }

    #[test]
    fn json_credentials_never_panic_on_garbage(b in body()) {
        check_json_credentials(&b, &[]);
    }

    #[test]
    fn timestamps_never_panic(s in prop_oneof![
        "\\PC{0,40}",
        (select(SPOIL_EXPIRATION), vec(edit(), 1..4)).prop_map(|(x, e)| apply(x.to_owned(), &e)),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,14})?([Zz]|[+-][0-9]{2}:?[0-9]{2})",
    ]) {
        if let Some(ms) = parse_timestamp(&s) {
            prop_assert!(ms < 253_402_387_200_000, "{s:?} -> {ms}");
        }
    }

    #[test]
    fn timestamps_order_and_offsets(
        (y, mo, d) in (1970i64..=9998, 1i64..=12, 1i64..=27),
        (h, mi, sec) in (0i64..24, 0i64..60, 0i64..60),
        (oh, om) in (0i64..24, 0i64..60),
    ) {
        let z = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}Z");
        let base = parse_timestamp(&z).unwrap();
        // One second later is 1000 ms later; the next day 86 400 000 ms later.
        let next_day = format!("{y:04}-{mo:02}-{:02}T{h:02}:{mi:02}:{sec:02}Z", d + 1);
        prop_assert_eq!(parse_timestamp(&next_day).unwrap(), base + 86_400_000);
        if sec < 59 {
            let later = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{:02}.5Z", sec + 1);
            prop_assert_eq!(parse_timestamp(&later).unwrap(), base + 1_500);
        }
        // A +hh:mm offset is that much earlier in UTC (unless before 1970).
        let off_ms = (oh * 3600 + om * 60) as u64 * 1000;
        let plus = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}+{oh:02}:{om:02}");
        prop_assert_eq!(parse_timestamp(&plus), base.checked_sub(off_ms));
        let minus = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}-{oh:02}{om:02}");
        prop_assert_eq!(parse_timestamp(&minus), Some(base + off_ms));
    }
}

// ---------------------------------------------------------------------------------------
// Deterministic edge cases and regressions
// ---------------------------------------------------------------------------------------

/// serde_json's recursion limit (128) must hold for every JSON parser: no stack overflow.
#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    for open in ["[", "{\"a\":"] {
        let deep = open.repeat(100_000);
        assert!(Config::parse(&deep, &no_env).is_err());
        assert!(extract_key(&deep, "a").is_err());
        assert_eq!(Entry::decode(deep.as_bytes(), "k"), None);
        for status in [200, 400] {
            let r = response(status, vec![], deep.clone().into_bytes());
            assert!(check_response(&r).is_err());
        }
    }
}

#[test]
fn bodies_at_the_size_cap() {
    let body_of = |n: usize| {
        let mut b = br#"{"SecretString":""#.to_vec();
        b.resize(n - 2, b'a');
        b.extend_from_slice(b"\"}");
        b
    };
    let at = response(200, vec![], body_of(MAX_BODY_BYTES));
    assert!(
        matches!(check_response(&at), Ok(SecretValue::String(s)) if s.len() == MAX_BODY_BYTES - 19)
    );
    let over = response(200, vec![], body_of(MAX_BODY_BYTES + 1));
    assert!(check_response(&over).is_err());
    let over_error = response(500, vec![], vec![b'x'; 3 * MAX_BODY_BYTES]);
    let e = check_response(&over_error).unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Server, "HTTP500"));
}

#[test]
fn numbers_at_the_edges_of_reference_versions() {
    for v in [
        "#",
        "#-",
        "#+",
        "#.",
        "#e",
        "#0x",
        "#0x.",
        "#0xp1",
        "#0b",
        "#0b2",
        "#1e",
        "#1e+",
        "#0x1p99999999999999999999",
        "#0x1p-99999999999999999999",
        "#1e99999999999999999999",
        "#0x",
        "#0b1111111111111111111111111111111111111111111111111111111111111111",
        "#0b11111111111111111111111111111111111111111111111111111111111111111",
        "# 1 ",
        "#\u{b}2\u{b}",
        "#0X0.00000000000000000000000000000000000000000000000001p-2000",
        "#0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ] {
        check_reference(&format!("{{vault://aws/s{v}}}"));
    }
}

/// A long run of `&` inside an XML error `<Message>`: `xml_unescape` looks for the `;`
/// ending each entity in the whole remaining text, so it is quadratic: a 1 MiB error
/// body (under the cap) of `&` takes over a minute of CPU in release. A 256 KiB one
/// must parse in well under a second even in debug.
#[test]
fn xml_error_with_many_ampersands_is_fast() {
    let n = 256 * 1024;
    let body = format!(
        "<Error><Code>X</Code><Message>{}</Message></Error>",
        "&".repeat(n)
    );
    let started = std::time::Instant::now();
    let e = check_response(&response(400, vec![], body.into_bytes())).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code, "X");
    assert!(took.as_secs_f64() < 1.0, "took {took:?}");
}

/// The same quadratic scan was in the STS XML unescaper (`sts::unescape`, fixed: it now
/// looks for the `;` in the next few bytes only). Bodies are capped at 64 KiB, so it cost
/// ~0.2 s per answer rather than a minute; linear, this takes a few milliseconds.
#[test]
fn sts_error_with_many_ampersands_is_fast() {
    let body = format!(
        "<ErrorResponse><Error><Code>X</Code><Message>{}</Message></Error></ErrorResponse>",
        "&".repeat(60 * 1024)
    );
    let started = std::time::Instant::now();
    let e = check_sts(&response(400, vec![], body.into_bytes()), &[]).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code.as_deref(), Some("X"));
    assert!(took.as_secs_f64() < 0.1, "took {took:?}");
}

#[test]
fn template_offsets_are_byte_offsets_at_char_boundaries() {
    for s in ["é{vault://", "😀😀{vault://a", "{vault://a/b}é{vault://"] {
        check_template(s);
    }
}

#[test]
fn reference_query_args_cap() {
    let q: String = (0..1000).map(|i| format!("k{i}=v&")).collect();
    let r = reference::parse(&format!("{{vault://aws/s?{q}}}")).unwrap();
    assert_eq!(r.query.len(), 100);
    assert_eq!(r.query.get("k99"), Some(&Some("v".to_string())));
}
