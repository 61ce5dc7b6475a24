//! Whole configurations parsed and resolved: field-named errors, env
//! defaults, query overrides, env vault variables, shared targets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::aws::secrets_manager::VersionStage;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, &no_env)
}

fn err(text: &str) -> String {
    parse(text).expect_err("config should be rejected")
}

#[test]
fn full_example_parses() {
    let c = parse(
        r#"{
          "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:4566", "ttl": 300},
          "vaults": [{"name": "aws", "prefix": "aws-sm-vault", "description": "eu",
                      "config": {"region": "eu-central-1", "ttl": 60, "upstream": "sm_eu"}}],
          "request_headers": {"Authorization": "Bearer {vault://aws/prod/api/token}"},
          "response_headers": {"x-tenant-key": "{vault://aws-sm-vault/tenant/key#2}"}
        }"#,
    )
    .unwrap();
    assert_eq!(c.request_headers[0].name, "authorization");
    let refs: Vec<_> = c.references().collect();
    assert_eq!(refs.len(), 2);
    let (h, text, r) = refs[0];
    let resolved = c.resolve(text, r).unwrap().into_aws().unwrap();
    assert_eq!(h.field, "request_headers.Authorization");
    assert_eq!(resolved.target.region, "us-east-1");
    assert_eq!(resolved.target.upstream, "127.0.0.1:4566");
    assert_eq!(resolved.target.endpoint.scheme, "http");
    assert_eq!(resolved.target.ttl, 300.0);
    assert_eq!(resolved.target.secret_id, "prod/api");
    assert_eq!(resolved.key.as_deref(), Some("token"));
    let (_, text, r) = refs[1];
    let resolved = c.resolve(text, r).unwrap().into_aws().unwrap();
    assert_eq!(resolved.target.region, "eu-central-1");
    assert_eq!(resolved.target.upstream, "sm_eu");
    assert_eq!(resolved.target.stage, VersionStage::Previous);
    assert_eq!(
        resolved.target.endpoint.authority,
        "secretsmanager.eu-central-1.amazonaws.com"
    );
    assert_eq!(
        resolved.target.upstream, "sm_eu",
        "entity config only: node defaults do not apply"
    );
    assert_eq!(resolved.target.resurrect_ttl, DEFAULT_RESURRECT_TTL);
    assert_eq!(resolved.target.timeout_ms, DEFAULT_TIMEOUT_MS);
    assert_eq!(resolved.target.role_session_name, "KongVault");
}

#[test]
fn env_fills_aws_defaults_but_config_wins() {
    let env = |k: &str| match k {
        "AWS_REGION" => Some("ap-south-1".to_string()),
        "KONG_VAULT_AWS_ROLE_SESSION_NAME" => Some("FromEnv".to_string()),
        _ => None,
    };
    let c = Config::parse(r#"{"request_headers": {"x": "{vault://aws/s}"}}"#, &env).unwrap();
    assert_eq!(c.aws.region.as_deref(), Some("ap-south-1"));
    assert_eq!(c.aws.role_session_name.as_deref(), Some("FromEnv"));
    let c = Config::parse(r#"{"aws": {"region": "us-west-2"}}"#, &env).unwrap();
    assert_eq!(c.aws.region.as_deref(), Some("us-west-2"));
    let kong_first = |k: &str| match k {
        "AWS_REGION" => Some("ap-south-1".to_string()),
        "KONG_VAULT_AWS_REGION" => Some("sa-east-1".to_string()),
        _ => None,
    };
    let c = Config::parse("{}", &kong_first).unwrap();
    assert_eq!(c.aws.region.as_deref(), Some("sa-east-1"));
}

#[test]
fn query_overrides_apply_and_invalid_ones_unset() {
    let c = parse(
        r#"{"aws": {"region": "us-east-1", "ttl": 300, "neg_ttl": 5},
            "request_headers": {"a": "{vault://aws/s/k?ttl=60&region=eu-west-1&neg_ttl=abc&foo=bar}"}}"#,
    )
    .unwrap();
    let (_, text, r) = c.references().next().unwrap();
    let resolved = c.resolve(text, r).unwrap().into_aws().unwrap();
    assert_eq!(resolved.target.ttl, 60.0);
    assert_eq!(resolved.target.region, "eu-west-1");
    assert_eq!(
        resolved.target.neg_ttl, 0.0,
        "invalid override unsets the field"
    );
    assert_eq!(resolved.overrides.len(), 2);
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (r#"{"bogus": 1}"#, "bogus: unknown field"),
        (r#"{"aws": {"sts_upstream": ""}}"#, "aws.sts_upstream:"),
        (
            r#"{"aws": {"sts_upstream": 5}}"#,
            "aws.sts_upstream: expected a string",
        ),
        (
            r#"{"refresh_on_status": 401}"#,
            "refresh_on_status: expected an array",
        ),
        (
            r#"{"refresh_on_status": [401, 600]}"#,
            "refresh_on_status[1]: must be a whole number from 100 to 599",
        ),
        (
            r#"{"refresh_on_status": [401, 401]}"#,
            "refresh_on_status[1]: 401 given twice",
        ),
        (
            r#"{"refresh_min_interval": -1}"#,
            "refresh_min_interval: must be a number of seconds",
        ),
        (
            r#"{"refresh_min_interval": "10"}"#,
            "refresh_min_interval: expected a number",
        ),
        (r#"[]"#, "configuration: expected an object"),
        ("", "configuration is empty"),
        ("{", "configuration is not JSON"),
        (r#"{"aws": {"regoin": "x"}}"#, "aws.regoin: unknown field"),
        (r#"{"aws": {"ttl": -1}}"#, "aws.ttl: must be between"),
        (r#"{"aws": {"ttl": "60"}}"#, "aws.ttl: expected a number"),
        (r#"{"aws": {"timeout_ms": 0}}"#, "aws.timeout_ms: must be"),
        (
            r#"{"aws": {"endpoint_url": "ftp://x"}}"#,
            "aws.endpoint_url:",
        ),
        (
            r#"{"aws": {"region": "US EAST"}}"#,
            "aws.region: invalid region",
        ),
        (
            r#"{"request_headers": {"x": "{vault://aws/s}"}}"#,
            "request_headers.x: {vault://aws/s}: vault 'aws' has no region",
        ),
        (
            r#"{"aws": {"region": "us-east-1"}, "request_headers": {"authorization": "{vault://nope/x}"}}"#,
            "request_headers.authorization: {vault://nope/x}: could not find vault (nope)",
        ),
        (
            r#"{"aws": {"region": "us-east-1"}, "request_headers": {"x": "{vault://aws/s#3}"}}"#,
            "request_headers.x: {vault://aws/s#3}: invalid version",
        ),
        (
            r#"{"request_headers": {"x": "{vault://env}"}}"#,
            "request_headers.x:",
        ),
        (
            r#"{"request_headers": {"bad name": "v"}}"#,
            "request_headers.bad name: invalid header name",
        ),
        (
            r#"{"request_headers": {":path": "v"}}"#,
            "request_headers.:path: invalid header name",
        ),
        (
            r#"{"request_headers": {"x": 1}}"#,
            "request_headers.x: expected a string",
        ),
        (
            r#"{"request_headers": {"X": "a", "x": "b"}}"#,
            "request_headers.x: header given twice",
        ),
        (r#"{"vaults": {"a": 1}}"#, "vaults: expected an array"),
        (
            r#"{"resolve_incoming_headers": "x"}"#,
            "resolve_incoming_headers: expected an array",
        ),
        (
            r#"{"resolve_incoming_headers": ["a b"]}"#,
            "resolve_incoming_headers[0]: invalid header name",
        ),
        (
            r#"{"resolve_incoming_headers": ["X", "x"]}"#,
            "resolve_incoming_headers[1]: 'x' given twice",
        ),
        (
            r#"{"request_headers": {"x": "v"}, "resolve_incoming_headers": ["X"]}"#,
            "resolve_incoming_headers[0]: 'X' is also in request_headers",
        ),
        (
            r#"{"vaults": [{"name": "aws", "prefix": "ok-vault"}]}"#,
            "vaults[0].config.region: required",
        ),
        (
            r#"{"vaults": [{"name": "hcv", "prefix": "ok", "config": {"region": "us-east-1"}}]}"#,
            "vaults[0].name: unsupported vault type",
        ),
        (
            r#"{"vaults": [{"name": "aws", "prefix": "aws", "config": {"region": "us-east-1"}}]}"#,
            "vaults[0].prefix: prefix 'aws' is a vault type name",
        ),
        (
            r#"{"vaults": [{"name": "aws", "prefix": "Bad", "config": {"region": "us-east-1"}}]}"#,
            "vaults[0].prefix: invalid prefix",
        ),
        (
            r#"{"vaults": [{"name": "aws", "prefix": "a-", "config": {"region": "us-east-1"}}]}"#,
            "vaults[0].prefix: invalid prefix",
        ),
        (
            r#"{"vaults": [{"name": "aws", "prefix": "ab", "config": {"region": "us-east-1"}}, {"name": "aws", "prefix": "ab", "config": {"region": "us-east-1"}}]}"#,
            "vaults[1].prefix: duplicate",
        ),
        (
            r#"{"vaults": [{"name": "aws", "prefix": "ab", "config": {"region": "us-east-1", "x": 1}}]}"#,
            "vaults[0].config.x: unknown field",
        ),
        (
            r#"{"vaults": [{"name": "aws", "prefix": "ab", "confg": {}}]}"#,
            "vaults[0].confg: unknown field",
        ),
    ];
    for (text, expected) in cases {
        let e = err(text);
        assert!(
            e.starts_with(expected),
            "{text}\n  gave: {e}\n  want: {expected}"
        );
    }
}

#[test]
fn env_vault_variables() {
    let c = parse(
        r#"{"env": {"prefix": "app_"},
            "vaults": [{"name": "env", "prefix": "ssl-env", "config": {"prefix": "ssl_"}}],
            "request_headers": {"a": "{vault://env/my-secret}", "b": "{vault://env/db-creds/user#2}",
                                "c": "{vault://ssl-env/cert}", "d": "{vault://env/cert/key?prefix=TLS_#1}"}}"#,
    )
    .unwrap();
    let vars: Vec<(String, Option<String>)> = c
        .references()
        .map(|(_, t, r)| match c.resolve(t, r).unwrap() {
            Resolved::Env(e) => (e.variable, e.key),
            Resolved::Aws(_) => panic!("env expected"),
        })
        .collect();
    assert_eq!(
        vars,
        vec![
            ("APP_MY_SECRET".to_string(), None),
            (
                "APP_DB_CREDS_PREVIOUS".to_string(),
                Some("user".to_string())
            ),
            ("SSL_CERT".to_string(), None),
            ("TLS_CERT".to_string(), Some("key".to_string())),
        ]
    );
    let env = |k: &str| (k == "KONG_VAULT_ENV_PREFIX").then(|| "NODE_".to_string());
    let c = Config::parse(r#"{"request_headers": {"a": "{vault://env/x}"}}"#, &env).unwrap();
    assert_eq!(c.env.prefix.as_deref(), Some("NODE_"));
}

#[test]
fn shared_secret_targets_have_one_descriptor() {
    let c = parse(
        r#"{"aws": {"region": "us-east-1"},
            "request_headers": {"x": "{vault://aws/db/user}:{vault://aws/db/pass}", "y": "{vault://aws/db/pass#2}"}}"#,
    )
    .unwrap();
    let d: Vec<String> = c
        .references()
        .map(|(_, t, r)| {
            c.resolve(t, r)
                .unwrap()
                .into_aws()
                .unwrap()
                .target
                .descriptor()
        })
        .collect();
    assert_eq!(d[0], d[1]);
    assert_ne!(d[0], d[2]);
}
