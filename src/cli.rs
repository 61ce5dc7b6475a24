//! The native `aws-vault` command: validate a configuration or one reference
//! exactly as the filter does, and say what each reference resolves to.

use litemap::LiteMap;
use serde_json::{json, Map, Value};

use crate::aws::secrets_manager;
use crate::config::{Config, Resolved, ResolvedRef};
use crate::engine::Engine;
use crate::reference::{self, Reference};

pub const USAGE: &str = "usage:
  aws-vault check <config.json>   validate a filter configuration (\"-\" reads stdin)
  aws-vault parse '<reference>'   parse one reference, e.g. '{vault://aws/prod/db/password#2}'

Prints one JSON object per line per reference; exit status 1 on any error.";

/// Run with the arguments after the program name. Returns the lines to print
/// and the exit status.
pub fn run(
    args: &[String],
    read_file: &dyn Fn(&str) -> Result<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Vec<String>, i32) {
    match args {
        [cmd, path] if cmd == "check" => match read_file(path) {
            Ok(text) => check(&text, env),
            Err(e) => (vec![error_line(None, &format!("{path}: {e}"))], 1),
        },
        [cmd, text] if cmd == "parse" => parse(text),
        _ => (vec![USAGE.to_string()], 2),
    }
}

/// Validate a whole configuration.
pub fn check(text: &str, env: &dyn Fn(&str) -> Option<String>) -> (Vec<String>, i32) {
    let (config, checks) = match Config::parse_report(text, env) {
        Ok(r) => r,
        Err(e) => return (vec![error_line(None, &e)], 1),
    };
    let mut status = 0;
    let mut lines: Vec<String> = checks
        .iter()
        .map(|c| match &c.result {
            Ok(Resolved::Aws(r)) => {
                let mut obj = resolved_json(r);
                obj.insert("field".into(), json!(c.field));
                Value::Object(obj).to_string()
            }
            Ok(Resolved::Env(r)) => {
                let mut obj = reference_json(&r.text, &r.reference);
                obj.insert("field".into(), json!(c.field));
                obj.insert("variable".into(), json!(r.variable));
                obj.insert("overrides".into(), overrides_json(&r.overrides));
                Value::Object(obj).to_string()
            }
            Err(e) => {
                status = 1;
                let mut obj = Map::new();
                obj.insert("reference".into(), json!(c.text));
                obj.insert("field".into(), json!(c.field));
                obj.insert("error".into(), json!(e));
                Value::Object(obj).to_string()
            }
        })
        .collect();
    // What only the filter's start can tell: env vault values (variables
    // present, keys found, header-safe). Values are never printed.
    if status == 0 {
        if let Err(e) = Engine::new(&config, env, 0) {
            lines.push(error_line(None, &e));
            status = 1;
        }
    }
    (lines, status)
}

/// Parse one reference (no vault config: overrides are shown as given).
pub fn parse(text: &str) -> (Vec<String>, i32) {
    match reference::parse(text) {
        Err(e) => (vec![error_line(Some(text), &e.to_string())], 1),
        Ok(r) => match secrets_manager::version_stage(r.version) {
            Err(e) => (vec![error_line(Some(text), &e)], 1),
            Ok(stage) => {
                let overrides: Map<String, Value> = r
                    .query
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, |v| json!(v))))
                    .collect();
                let mut obj = reference_json(text, &r);
                obj.insert("version_stage".into(), json!(stage.as_str()));
                obj.insert("overrides".into(), Value::Object(overrides));
                (vec![Value::Object(obj).to_string()], 0)
            }
        },
    }
}

fn reference_json(text: &str, r: &Reference) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert("reference".into(), json!(text));
    obj.insert("vault".into(), json!(r.name));
    obj.insert("resource".into(), json!(r.resource));
    obj.insert("key".into(), json!(r.key));
    let version = match (r.version_number(), r.version) {
        (Some(n), _) => json!(n),
        (None, Some(f)) => json!(f),
        (None, None) => Value::Null,
    };
    obj.insert("version".into(), version);
    obj
}

fn resolved_json(r: &ResolvedRef) -> Map<String, Value> {
    let mut obj = reference_json(&r.text, &r.reference);
    let t = &r.target;
    obj.insert("version_stage".into(), json!(t.stage.as_str()));
    obj.insert("overrides".into(), overrides_json(&r.overrides));
    obj.insert("region".into(), json!(t.region));
    obj.insert(
        "endpoint".into(),
        json!(format!("{}://{}", t.endpoint.scheme, t.endpoint.authority)),
    );
    obj.insert("upstream".into(), json!(t.upstream));
    obj.insert("ttl".into(), json!(t.ttl));
    obj
}

/// The query overrides a resolution applied, by name.
fn overrides_json(overrides: &LiteMap<String, String>) -> Value {
    json!(overrides
        .iter()
        .collect::<std::collections::BTreeMap<_, _>>())
}

fn error_line(reference: Option<&str>, error: &str) -> String {
    let mut obj = Map::new();
    if let Some(r) = reference {
        obj.insert("reference".into(), json!(r));
    }
    obj.insert("error".into(), json!(error));
    Value::Object(obj).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn lines(out: &[String]) -> Vec<Value> {
        out.iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn parse_prints_the_pieces() {
        let (out, status) = parse("{vault://aws/prod/db/password?ttl=60#2}");
        assert_eq!(status, 0);
        let v = &lines(&out)[0];
        assert_eq!(v["vault"], "aws");
        assert_eq!(v["resource"], "prod/db");
        assert_eq!(v["key"], "password");
        assert_eq!(v["version"], 2);
        assert_eq!(v["version_stage"], "AWSPREVIOUS");
        assert_eq!(v["overrides"]["ttl"], "60");
    }

    #[test]
    fn parse_errors_exit_1() {
        for bad in ["{vault://env}", "nope", "{vault://aws/x#3}"] {
            let (out, status) = parse(bad);
            assert_eq!(status, 1, "{bad}");
            assert!(lines(&out)[0]["error"].is_string());
        }
    }

    #[test]
    fn check_reports_every_reference() {
        let cfg = r#"{"aws": {"region": "us-east-1"},
            "request_headers": {"a": "{vault://aws/s/k}", "b": "{vault://nope/x}", "c": "{vault://env}"}}"#;
        let (out, status) = check(cfg, &no_env);
        assert_eq!(status, 1);
        let v = lines(&out);
        assert_eq!(v.len(), 3);
        assert!(v
            .iter()
            .any(|l| l["resource"] == "s" && l["version_stage"] == "AWSCURRENT"));
        assert!(v
            .iter()
            .any(|l| l["reference"] == "{vault://nope/x}"
                && l["error"] == "could not find vault (nope)"));
        assert!(v
            .iter()
            .any(|l| l["reference"] == "{vault://env}" && l["field"] == "request_headers.c"));
    }

    #[test]
    fn check_structural_error() {
        let (out, status) = check(r#"{"bogus": 1}"#, &no_env);
        assert_eq!(status, 1);
        assert!(lines(&out)[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("bogus"));
        let (out, status) = run(&["x".into()], &|_| Err("".into()), &no_env);
        assert_eq!(status, 2);
        assert!(out[0].starts_with("usage"));
    }
}
