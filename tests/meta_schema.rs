//! `kong/aws_vault.meta.json` (the JSON Schema Kong validates filter configs with)
//! against the filter's real parser, `aws_vault::config::Config::parse`.
//!
//! Kong checks a filter_chains/plugins `config` object with the schema, then hands it
//! JSON-encoded to on_configure, where the parser has the last word. So:
//! - the schema must accept everything the parser accepts (else Kong refuses a good config);
//! - it should reject what it can express (the operator gets a 400 from the Admin API
//!   instead of a filter that fails to load);
//! - what it cannot express is listed in its top-level `description`, and the
//!   fixtures in `tests/configs/invalid-parser-only/` pin those cases down.
//!
//! Every example configuration in the repository is checked against both.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use aws_vault::config::{Config, TOP_LEVEL_FIELDS};
use jsonschema::Validator;
use serde_json::{json, Value};

/// Keys that mark a JSON object as a filter configuration in examples.
const CONFIG_KEYS: &[&str] = &["aws", "vaults", "request_headers", "response_headers"];

/// Top-level schema properties the parser does not accept yet (being added to
/// src/config/ separately). Move a name out once the parser knows it.
const PENDING_TOP_LEVEL: &[&str] = &[];

/// Fields of a vault entity the parser accepts.
const ENTITY_FIELDS: &[&str] = aws_vault::config::ENTITY_FIELDS;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn meta() -> Value {
    let path = root().join("kong/aws_vault.meta.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

fn schema() -> Value {
    meta()["config_schema"].clone()
}

fn validator() -> Validator {
    jsonschema::draft4::new(&schema()).expect("config_schema compiles as draft-4")
}

/// The parser as on_configure runs it, with no environment variables.
fn parse(value: &Value) -> Result<Config, String> {
    Config::parse(&value.to_string(), &|_| None)
}

fn schema_errors(v: &Validator, value: &Value) -> Vec<String> {
    v.iter_errors(value)
        .map(|e| format!("{} at '{}'", e, e.instance_path()))
        .collect()
}

/// Both judges accept `config`; `origin` names it in failures.
fn assert_accepted_by_both(v: &Validator, config: &Value, origin: &str) {
    if let Err(e) = parse(config) {
        panic!("{origin}: parser rejects: {e}\n{config:#}");
    }
    let errors = schema_errors(v, config);
    assert!(
        errors.is_empty(),
        "{origin}: schema rejects: {errors:?}\n{config:#}"
    );
}

/// `dir`'s `*.json` files, sorted, as (name, value).
fn fixtures(dir: &str) -> Vec<(String, Value)> {
    let path = root().join("tests/configs").join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = format!("{dir}/{}", p.file_name().unwrap().to_string_lossy());
            let value = serde_json::from_str(&read(&p))
                .unwrap_or_else(|e| panic!("{name}: fixtures must be JSON: {e}"));
            (name, value)
        })
        .collect()
}

/// Filter configurations inside a JSON document: the document itself if it has a
/// config key at top level, else every `{"name": "aws_vault", "config": {...}}`
/// (a filter_chains filter or an Admin API body) at any depth.
fn find_configs(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            if map.get("name") == Some(&json!("aws_vault")) {
                if let Some(config) = map.get("config") {
                    out.push(config.clone());
                    return;
                }
            }
            if CONFIG_KEYS.iter().any(|k| map.contains_key(*k)) {
                out.push(value.clone());
                return;
            }
            map.values().for_each(|v| find_configs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| find_configs(v, out)),
        _ => {}
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines after `start` that are blank or indented deeper than `min_indent`
/// (a YAML block's body), dedented.
fn yaml_block(lines: &[&str], start: usize, min_indent: usize) -> String {
    let body: Vec<&str> = lines[start..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > min_indent)
        .copied()
        .collect();
    let cut = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(cut..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The JSON of every `value: |` block directly under a
/// `"@type": type.googleapis.com/google.protobuf.StringValue` line.
fn envoy_plugin_configs(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "value: |" {
            continue;
        }
        let previous = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
        if previous.is_some_and(|p| p.contains("google.protobuf.StringValue")) {
            out.push((i + 1, yaml_block(&lines, i + 1, indent(line))));
        }
    }
    out
}

/// Every `config:` value in a Kong declarative file. The filter configs in
/// kong/kong.yml are written in JSON flow style (YAML is a superset of JSON) so that
/// they can be checked here without a YAML parser.
fn kong_yaml_configs(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(rest) = trimmed.strip_prefix("config:") else {
            continue;
        };
        let key_indent = line.len() - trimmed.len();
        let body = yaml_block(&lines, i + 1, key_indent);
        out.push((i + 1, format!("{}\n{body}", rest.trim())));
    }
    out
}

/// Heredoc bodies `<<'JSON' ... JSON` of a shell script, with their line numbers.
fn heredocs(text: &str) -> Vec<(usize, String)> {
    delimited(text, |l| l.contains("<<'JSON'"), |l| l.trim() == "JSON")
}

/// The lines between an opening line and the next closing line, with the opening
/// line's number.
fn delimited(
    text: &str,
    opens: impl Fn(&str) -> bool,
    closes: impl Fn(&str) -> bool,
) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        current = match current {
            Some((start, body)) if closes(line) => {
                out.push((start, body.join("\n")));
                None
            }
            Some((start, mut body)) => {
                body.push(line);
                Some((start, body))
            }
            None if opens(line) => Some((i + 1, Vec::new())),
            None => None,
        };
    }
    assert!(current.is_none(), "unterminated block");
    out
}

/// ```json fenced blocks of a Markdown file, with their line numbers.
fn markdown_json_blocks(text: &str) -> Vec<(usize, String)> {
    delimited(
        text,
        |l| l.trim_start().starts_with("```json"),
        |l| l.trim_start().starts_with("```"),
    )
}

/// Names listed by a parser error such as `x: unknown field (expected one of: a, b)`
/// or `x: unknown field (expected: a)`.
fn listed_fields(error: &str) -> BTreeSet<String> {
    let list = ["expected one of: ", "expected: "]
        .iter()
        .find_map(|marker| error.split_once(marker))
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("unexpected parser message format: {error}"));
    list.split(", ").map(str::to_string).collect()
}

fn schema_properties(schema: &Value, pointer: &str) -> BTreeSet<String> {
    schema
        .pointer(pointer)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("schema has no object at {pointer}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn meta_json_is_a_valid_draft4_filter_meta() {
    let meta = meta();
    let keys: BTreeSet<&str> = meta
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.iter()
            .all(|k| ["config_schema", "metrics"].contains(k)),
        "unexpected top-level keys in meta.json: {keys:?}"
    );
    let schema = schema();
    // Kong refuses a config_schema whose $schema is not draft-04.
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
    if let Err(e) = jsonschema::draft4::meta::validate(&schema) {
        panic!("config_schema is not a valid draft-4 schema: {e}");
    }
    validator();
    // Kong finds the meta file beside the module: <name>.wasm -> <name>.meta.json.
    assert!(root().join("kong/aws_vault.meta.json").is_file());
}

#[test]
fn schema_patterns_are_portable() {
    // Kong evaluates patterns with PCRE (ngx.re), this test with Rust's regex:
    // keep to the syntax both read alike.
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(p)) = map.get("pattern") {
                    out.push(p.clone());
                }
                if let Some(Value::Object(pp)) = map.get("patternProperties") {
                    out.extend(pp.keys().cloned());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut patterns = Vec::new();
    walk(&schema(), &mut patterns);
    assert!(patterns.len() >= 6, "{patterns:?}");
    for p in patterns {
        for bad in ["(?", "\\d", "\\w", "\\s", "\\u", "\\p", "\\z", "\\A", "\\b"] {
            assert!(!p.contains(bad), "pattern {p:?} uses non-portable {bad:?}");
        }
    }
}

#[test]
fn valid_fixtures_pass_both() {
    let v = validator();
    let all = fixtures("valid");
    assert!(all.len() >= 8, "only {} valid fixtures", all.len());
    for (name, config) in &all {
        assert_accepted_by_both(&v, config, name);
    }
}

#[test]
fn invalid_fixtures_fail_both() {
    let v = validator();
    let all = fixtures("invalid");
    assert!(all.len() >= 12, "only {} invalid fixtures", all.len());
    for (name, config) in &all {
        assert!(parse(config).is_err(), "{name}: parser accepts it");
        assert!(!v.is_valid(config), "{name}: schema accepts it");
    }
}

#[test]
fn parser_only_fixtures_fail_parser_but_pass_schema() {
    let v = validator();
    let all = fixtures("invalid-parser-only");
    assert!(!all.is_empty());
    for (name, config) in &all {
        assert!(parse(config).is_err(), "{name}: parser accepts it");
        let errors = schema_errors(&v, config);
        assert!(
            errors.is_empty(),
            "{name}: schema rejects it ({errors:?}): move it to tests/configs/invalid/"
        );
    }
}

#[test]
fn envoy_examples_pass_both() {
    let v = validator();
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("envoy"))
        .expect("envoy/")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut count = 0;
    for file in &files {
        let text = read(file);
        let blocks = envoy_plugin_configs(&text);
        if text.contains("envoy.filters.http.wasm") {
            assert!(
                !blocks.is_empty(),
                "{}: no StringValue config",
                file.display()
            );
        }
        for (line, block) in blocks {
            let origin = format!("{}:{line}", file.display());
            let config: Value = serde_json::from_str(&block)
                .unwrap_or_else(|e| panic!("{origin}: plugin configuration is not JSON: {e}"));
            assert_accepted_by_both(&v, &config, &origin);
            count += 1;
        }
    }
    assert!(count >= 1, "no Envoy example configuration found");
}

#[test]
fn kong_examples_pass_both() {
    let v = validator();
    let path = root().join("kong/kong.yml");
    let text = read(&path);
    let blocks = kong_yaml_configs(&text);
    assert!(!blocks.is_empty(), "kong/kong.yml: no filter config");
    for (line, block) in blocks {
        let origin = format!("kong/kong.yml:{line}");
        let config: Value = serde_json::from_str(&block).unwrap_or_else(|e| {
            panic!("{origin}: write filter configs in JSON flow style ({e})\n{block}")
        });
        assert_accepted_by_both(&v, &config, &origin);
    }

    let path = root().join("kong/admin-api.sh");
    let mut count = 0;
    for (line, body) in heredocs(&read(&path)) {
        let origin = format!("kong/admin-api.sh:{line}");
        let doc: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{origin}: heredoc is not JSON: {e}"));
        let mut configs = Vec::new();
        find_configs(&doc, &mut configs);
        for config in configs {
            assert_accepted_by_both(&v, &config, &origin);
            count += 1;
        }
    }
    assert!(count >= 1, "kong/admin-api.sh: no filter config");
}

#[test]
fn readme_examples_pass_both() {
    let v = validator();
    for readme in ["README.md", "kong/README.md"] {
        let path = root().join(readme);
        let Ok(text) = fs::read_to_string(&path) else {
            continue; // not written yet: zero blocks
        };
        for (line, block) in markdown_json_blocks(&text) {
            if !block.contains("\"request_headers\"") && !block.contains("\"vaults\"") {
                continue;
            }
            let origin = format!("{readme}:{line}");
            let doc: Value = serde_json::from_str(&block)
                .unwrap_or_else(|e| panic!("{origin}: example is not JSON: {e}"));
            let mut configs = Vec::new();
            find_configs(&doc, &mut configs);
            assert!(!configs.is_empty(), "{origin}: no configuration found");
            for config in configs {
                assert_accepted_by_both(&v, &config, &origin);
            }
        }
    }
}

#[test]
fn schema_fields_match_parser_fields() {
    let schema = schema();
    let pending: BTreeSet<String> = PENDING_TOP_LEVEL.iter().map(|s| s.to_string()).collect();

    // The parser's own lists: its public constant, and its "unknown field" messages.
    // TODO: use `pub` constants for the vault settings and entity fields too, once
    // src/config/ exposes them (VaultSettings::FIELDS is private today).
    let parser_top: BTreeSet<String> = TOP_LEVEL_FIELDS.iter().map(|s| s.to_string()).collect();
    let top_error = parse(&json!({"zz_unknown": 1})).unwrap_err();
    assert_eq!(listed_fields(&top_error), parser_top, "{top_error}");
    let settings_error = parse(&json!({"aws": {"zz_unknown": 1}})).unwrap_err();
    let parser_settings = listed_fields(&settings_error);
    let env_error = parse(&json!({"env": {"zz_unknown": 1}})).unwrap_err();
    let parser_env = listed_fields(&env_error);
    let env_entity_error =
        parse(&json!({"vaults": [{"name": "env", "prefix": "ee", "config": {"zz_unknown": 1}}]}))
            .unwrap_err();
    assert_eq!(
        listed_fields(&env_entity_error),
        parser_env,
        "{env_entity_error}"
    );
    let entity_error = parse(&json!({"vaults": [{"zz_unknown": 1}]})).unwrap_err();
    let entity_listed = listed_fields(&entity_error);
    let parser_entity: BTreeSet<String> = ENTITY_FIELDS.iter().map(|s| s.to_string()).collect();
    assert!(
        entity_listed.is_subset(&parser_entity),
        "parser lists entity fields {entity_listed:?}: update ENTITY_FIELDS and the schema"
    );

    // Each of them is really accepted (not "unknown field").
    for f in &parser_top {
        let e = parse(&json!({ f.as_str(): null }))
            .err()
            .unwrap_or_default();
        assert!(!e.contains("unknown field"), "top-level {f}: {e}");
    }
    for f in &parser_settings {
        let e = parse(&json!({"aws": { f.as_str(): null }}))
            .err()
            .unwrap_or_default();
        assert!(!e.contains("unknown field"), "aws.{f}: {e}");
    }
    for f in &parser_entity {
        let entity = json!({"name": "aws", "prefix": "ab", "config": {"region": "us-east-1"}});
        let mut entity = entity.as_object().unwrap().clone();
        entity.entry(f.clone()).or_insert(Value::Null);
        let e = parse(&json!({ "vaults": [entity] }))
            .err()
            .unwrap_or_default();
        assert!(!e.contains("unknown field"), "vaults[].{f}: {e}");
    }

    let top = schema_properties(&schema, "/properties");
    let settings = schema_properties(&schema, "/definitions/vault_settings/properties");
    let entity = schema_properties(&schema, "/definitions/vault_entity/properties");
    let env = schema_properties(&schema, "/definitions/env_settings/properties");

    // Everything the parser accepts is in the schema...
    assert!(
        parser_top.is_subset(&top),
        "schema lacks {:?}",
        &parser_top - &top
    );
    assert!(
        parser_settings.is_subset(&settings),
        "schema lacks {:?}",
        &parser_settings - &settings
    );
    assert!(
        parser_entity.is_subset(&entity),
        "schema lacks {:?}",
        &parser_entity - &entity
    );
    // ...and the schema has nothing else (except announced fields).
    let extra_top: BTreeSet<String> = &(&top - &parser_top) - &pending;
    assert!(
        extra_top.is_empty(),
        "schema-only top-level fields {extra_top:?}"
    );
    assert_eq!(settings, parser_settings);
    assert_eq!(entity, parser_entity);
    assert_eq!(env, parser_env);
}

/// Sample values per field: the schema and the parser must agree on each (the field
/// rules the schema states exactly), or at least the schema must accept whatever the
/// parser accepts (endpoint URLs, header values).
#[test]
fn field_rules_agree_with_parser() {
    let v = validator();
    let agree = |config: Value, exact: bool| {
        let by_parser = parse(&config).is_ok();
        let by_schema = v.is_valid(&config);
        if exact {
            assert_eq!(
                by_parser, by_schema,
                "parser {by_parser}, schema {by_schema}: {config}"
            );
        } else if by_parser {
            assert!(by_schema, "parser accepts, schema rejects: {config}");
        }
    };
    let entity = |prefix: &Value| json!({"vaults": [{"name": "aws", "prefix": prefix, "config": {"region": "us-east-1"}}]});
    let prefixes = [
        "ab", "a1", "a-b", "x-y-2", "a--b", "aws-x", "env1", "", "a", "1a", "-a", "a-", "A1", "aB",
        "a_b", "a b", "ab\n", "aws", "env", "é1", "ab-",
    ];
    for p in prefixes {
        agree(entity(&json!(p)), true);
    }
    agree(entity(&json!(12)), true);
    agree(entity(&Value::Null), true);

    for p in [
        "app_", "A", "_", "-", "a-B_9", "", "1a", "a.b", "a b", "é", "a\n",
    ] {
        agree(json!({"env": {"prefix": p}}), true);
        agree(
            json!({"vaults": [{"name": "env", "prefix": "ee", "config": {"prefix": p}}]}),
            true,
        );
    }
    for name in ["aws", "env", "hcv", "AWS", ""] {
        for config in [
            json!(null),
            json!({}),
            json!({"region": "r"}),
            json!({"prefix": "p"}),
        ] {
            agree(
                json!({"vaults": [{"name": name, "prefix": "ab", "config": config}]}),
                true,
            );
        }
        agree(json!({"vaults": [{"name": name, "prefix": "ab"}]}), true);
    }

    let long = "a".repeat(64);
    let too_long = "a".repeat(65);
    for r in [
        "us-east-1",
        "a",
        "0",
        "-",
        long.as_str(),
        too_long.as_str(),
        "",
        "US",
        "us_east",
        "us east",
        "é",
        "us-east-1\n",
    ] {
        agree(json!({"aws": {"region": r}}), true);
    }
    let session_long = "S".repeat(64);
    let session_too_long = "S".repeat(65);
    for s in [
        "ab",
        "Kong_Vault+=,.@-9",
        "a",
        "",
        "a b",
        "a/b",
        "ä1",
        session_long.as_str(),
        session_too_long.as_str(),
    ] {
        agree(json!({"aws": {"role_session_name": s}}), true);
    }
    for n in [
        json!(0),
        json!(-0.0),
        json!(1e8),
        json!(100000000.5),
        json!(-1),
        json!(0.001),
        json!("1"),
        json!(true),
    ] {
        agree(
            json!({"aws": {"ttl": n.clone(), "neg_ttl": n.clone(), "resurrect_ttl": n}}),
            true,
        );
    }
    for n in [
        json!(1),
        json!(60000),
        json!(2.0),
        json!(0),
        json!(60001),
        json!(1.5),
        json!(-5),
        json!("100"),
    ] {
        agree(json!({"aws": {"timeout_ms": n}}), true);
    }
    for s in ["", "x", "sm_eu", "host:443", "[::1]:80"] {
        agree(json!({"aws": {"upstream": s, "assume_role_arn": s}}), true);
    }
    let names = [
        "x",
        "X-Key",
        "x!#$%&'*+-.^_`|~",
        "0",
        "",
        " x",
        "x y",
        ":path",
        "x:y",
        "x\"",
        "x(",
        "x/",
        "x@",
        "é",
        "x\u{0}",
        "x\u{7f}",
        "x,y",
        "x;y",
        "x=y",
        "x{",
        "x}",
        "x[",
        "x\\",
    ];
    for n in names {
        agree(json!({"response_headers": { n: "v" }}), true);
        agree(json!({"resolve_incoming_headers": [n]}), true);
    }
    let values = [
        "",
        "v",
        "a b",
        "\t",
        "a\u{1}",
        "\u{7f}",
        "\u{80}",
        "\u{9f}",
        "\u{a0}",
        "a\nb",
        "{",
        "}",
        "{vault://",
        "{vault://aws/s",
        "{vault://aws/s}",
        "{vault://aws/s}}",
        "{{vault://aws/s}",
        "{vault://aws/s} {vault://aws/t",
        "{vault://aws/s {vault://aws/t}",
        "{VAULT://aws/s",
        "{vault:/aws/s",
        "x{vault://}",
        "{vault://aws/s#2}",
        "{vault://aws/s#3}",
        "{vault://nope/s}",
        "{vault://aws/}",
    ];
    for val in values {
        let config = json!({"aws": {"region": "us-east-1"}, "request_headers": {"x": val}});
        // Control characters and unterminated references are exact; the rest of the
        // reference grammar is the parser's alone.
        let exact = !val.contains('}') || val.chars().any(|c| c.is_control());
        agree(
            config,
            exact && !val.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)),
        );
    }
    let urls = [
        "http://127.0.0.1:4566",
        "https://secretsmanager.us-east-1.amazonaws.com",
        "https://secretsmanager.us-east-1.amazonaws.com/",
        "HTTPS://X.example",
        "http://[::1]",
        "http://[::1]:8080/",
        "http://h_1.example:65535",
        "http://h:00080",
        "ftp://h",
        "http:/h",
        "http://",
        "http:///",
        "http://h/p",
        "http://h?x",
        "http://h#x",
        "http://u@h",
        "http://h:",
        "http://h:x",
        "http://h:123456",
        "http://[::1",
        "http://[]",
        "http://h h",
        "http://a:b:c",
        "https://é.example",
        "http://h:0",
        "http://h:65536",
        "http://[abc]",
        "http://[::1]x",
        " http://h",
        "http://h ",
    ];
    for u in urls {
        // Exact except the port range and IPv6 literal details (parser only).
        let exact = !["h:0", "h:65536", "[abc]"].iter().any(|s| u.ends_with(s));
        agree(json!({"aws": {"endpoint_url": u}}), exact);
        agree(
            json!({"vaults": [{"name": "aws", "prefix": "ab", "config": {"region": "r", "sts_endpoint_url": u}}]}),
            exact,
        );
    }
}
