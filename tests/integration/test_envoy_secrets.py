"""The aws_vault filter in a real Envoy, against moto (SigV4 + IAM checks on) via the proxy."""

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import REPO, clean_env, validate


def start(make_envoy, aws, request_headers=None, **plugin):
    return make_envoy({"aws": aws(), "request_headers": request_headers or {}, **plugin})


def assert_upstream_saw(envoy, expected: dict[str, str]):
    """One request through Envoy; the echo upstream got each header exactly once, as given."""
    r = envoy.get()
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    headers = r.json()["headers"]
    assert {name: headers.get(name) for name in expected} == \
        {name: [value] for name, value in expected.items()}


def test_json_key(moto, make_envoy, aws):
    moto.put_secret("prod/api", {"token": "s3cr3t-token"})
    envoy = start(make_envoy, aws, {"authorization": "Bearer {vault://aws/prod/api/token}"})
    assert_upstream_saw(envoy, {"authorization": "Bearer s3cr3t-token"})


def test_whole_secret_string(moto, make_envoy, aws):
    moto.put_secret("plain-secret", "plain-value")
    envoy = start(make_envoy, aws, {"x-plain": "{vault://aws/plain-secret}"})
    assert_upstream_saw(envoy, {"x-plain": "plain-value"})


def test_previous_version(moto, make_envoy, aws):
    moto.put_secret("rot", {"key": "old-value"})
    moto.put_secret("rot", {"key": "new-value"})
    envoy = start(make_envoy, aws, {"x-prev": "{vault://aws/rot/key#2}",
                                    "x-cur": "{vault://aws/rot/key}"})
    assert_upstream_saw(envoy, {"x-prev": "old-value", "x-cur": "new-value"})


def test_names_with_slashes(moto, make_envoy, aws):
    moto.put_secret("prod/db/creds", {"password": "db-pw"})
    moto.put_secret("/leading/slash", {"key": "slash-value"})
    envoy = start(make_envoy, aws, {"x-db": "{vault://aws/prod/db/creds/password}",
                                    "x-slash": "{vault://aws/%2Fleading%2Fslash/key}"})
    assert_upstream_saw(envoy, {"x-db": "db-pw", "x-slash": "slash-value"})


def test_vault_entities_in_two_regions(moto, make_envoy, aws):
    moto.put_secret("regional/cfg", {"k": "us-value"}, region="us-east-1")
    moto.put_secret("regional/cfg", {"k": "eu-value"}, region="eu-central-1")
    envoy = start(make_envoy, aws, {"x-us": "{vault://aws/regional/cfg/k}",
                                    "x-eu": "{vault://aws-eu/regional/cfg/k}"},
                  vaults=[{"name": "aws", "prefix": "aws-eu", "description": "EU secrets",
                           "config": aws("eu-central-1")}])
    assert_upstream_saw(envoy, {"x-us": "us-value", "x-eu": "eu-value"})


def test_two_references_share_one_fetch(moto, proxy, make_envoy, aws):
    moto.put_secret("a", {"user": "alice", "pass": "pw"})
    envoy = start(make_envoy, aws, {"x-two": "{vault://aws/a/user}:{vault://aws/a/pass}"})
    assert_upstream_saw(envoy, {"x-two": "alice:pw"})
    assert 1 <= len(proxy.get_secret_value_calls("a")) <= 2  # at most one per worker


def test_secret_binary_whole_and_keyed(moto, make_envoy, aws):
    """A SecretBinary secret: the whole secret is injected as the base64 text AWS returns;
    a key on it is an error (503, nothing injected)."""
    moto.put_secret("bin-secret", b"\x00\x01binary-value-8841\xff", binary=True)
    envoy = start(make_envoy, aws, {"x-bin": "{vault://aws/bin-secret}"})
    text = moto.client().get_secret_value(SecretId="bin-secret")["SecretBinary"]
    import base64
    assert_upstream_saw(envoy, {"x-bin": base64.b64encode(text).decode()})
    keyed = start(make_envoy, aws, {"x-bin": "{vault://aws/bin-secret/key}"})
    r = keyed.get()
    assert r.status_code == 503
    keyed.wait_log("holds SecretBinary: a key cannot be taken from it")


def test_response_header(moto, make_envoy, aws):
    moto.put_secret("tenant", {"key": "tenant-key-1"})
    envoy = start(make_envoy, aws, response_headers={"x-tenant-key": "{vault://aws/tenant/key}"})
    r = envoy.get()
    assert r.status_code == 200, r.text
    assert r.headers["x-tenant-key"] == "tenant-key-1"
    assert "x-tenant-key" not in r.json()["headers"]


def test_missing_secret_fails_closed(moto, echo, make_envoy, aws):
    moto.put_secret("present", {"key": "visible-only-upstream-7f3a"})
    envoy = start(make_envoy, aws, {"x-ok": "{vault://aws/present/key}",
                                    "x-missing": "{vault://aws/does-not-exist/key}"})
    r = envoy.get()
    assert r.status_code == 503
    assert "visible-only-upstream-7f3a" not in r.text
    assert not any("x-missing" in req["headers"] or "x-ok" in req["headers"]
                   for req in echo.requests)
    envoy.wait_log(r"does-not-exist")
    log = envoy.log()
    assert re.search(r"ResourceNotFound|not found", log, re.I), log[-4000:]
    assert "visible-only-upstream-7f3a" not in log
    assert moto.secret_key not in log


def test_wrong_credentials(moto, proxy, echo, make_envoy, aws):
    moto.put_secret("creds-test", {"key": "v"})
    envoy = make_envoy({"aws": aws(), "request_headers": {"x-k": "{vault://aws/creds-test/key}"}},
                       env={"AWS_SECRET_ACCESS_KEY": "not-the-right-secret"})
    assert envoy.get().status_code == 503
    calls = proxy.get_secret_value_calls("creds-test")
    assert calls and all(c.status == 403 for c in calls)  # moto refused the signature
    assert not any("x-k" in req["headers"] for req in echo.requests)


def test_concurrent_cold_cache_fetches_once_per_worker(moto, proxy, make_envoy, aws):
    moto.put_secret("hot", {"key": "hot-value"})
    envoy = start(make_envoy, aws, {"x-hot": "{vault://aws/hot/key}"})

    def one(_):
        r = envoy.http.get(envoy.url + "/", timeout=30, headers={"Connection": "close"})
        return r.status_code, r.json()["headers"].get("x-hot") if r.status_code == 200 else r.text

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert results == [(200, ["hot-value"])] * 50
    assert 1 <= len(proxy.get_secret_value_calls("hot")) <= 2  # concurrency 2


GOOD_CONFIG = {"aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:1",
                       "upstream": "moto"},
               "request_headers": {"authorization": "Bearer {vault://aws/a/b}"}}
BAD_CONFIGS = pytest.mark.parametrize("plugin, words", [
    ({"request_headers": {"authorization": "{vault://nope/x}"}}, ["request_headers", "nope"]),
    ({"vaults": [{"name": "aws", "prefix": "aws-eu",
                  "config": {"endpoint_url": "http://127.0.0.1:1", "upstream": "moto"}}],
      "request_headers": {"x": "{vault://aws-eu/s/k}"}}, ["region"]),
    ({"bogus": 1}, ["bogus"]),
], ids=["unknown-prefix", "vault-without-region", "unknown-field"])


@BAD_CONFIGS
def test_bad_config_rejected(validate_plugin, plugin, words):
    rc, out = validate_plugin({"aws": {"region": "us-east-1"}, **plugin})
    assert rc != 0, out
    errors = "\n".join(re.findall(r".*\[(?:warning|error|critical)\].*", out))
    for word in words:
        assert word in errors, out


def test_good_config_validates(validate_plugin):
    rc, out = validate_plugin(GOOD_CONFIG)
    assert rc == 0, out


def cli_check(plugin: dict, tmp_path) -> tuple[int, str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(plugin))
    argv = ["cargo", "run", "--quiet", "--bin", "aws-vault", "--", "check", str(path)]
    out = subprocess.run(argv, cwd=REPO, env=clean_env(), capture_output=True, text=True,
                         timeout=600)
    return out.returncode, out.stdout + out.stderr


@BAD_CONFIGS
def test_cli_check_agrees_with_envoy(tmp_path, plugin, words):
    rc, out = cli_check(GOOD_CONFIG, tmp_path)
    assert rc == 0, out
    rc, out = cli_check({"aws": {"region": "us-east-1"}, **plugin}, tmp_path)
    assert rc != 0, out
    assert all(word in out for word in words), out


@pytest.mark.parametrize("name", ["envoy.yaml", "envoy-production.yaml"])
def test_shipped_configs_validate(wasm, name):
    rc, out = validate(REPO / "envoy" / name)
    assert rc == 0, out
