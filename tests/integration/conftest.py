"""Fixtures: moto (session), counting proxy + echo upstream (per test), Envoy factory, wasm."""

from __future__ import annotations

import os

import pytest

from counting_proxy import CountingProxy
import harness
from harness import (WASM, EchoUpstream, Envoy, Moto, build_wasm, envoy_config, validate,
                     write_config)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture(scope="session")
def wasm() -> str:
    """build/aws_vault.wasm, rebuilt by `make build` unless AWS_VAULT_SKIP_BUILD=1.

    AWS_VAULT_WASM=/path/x.wasm tests another module (no build)."""
    if os.environ.get("AWS_VAULT_WASM"):
        return os.environ["AWS_VAULT_WASM"]
    if os.environ.get("AWS_VAULT_SKIP_BUILD") == "1":
        assert WASM.exists(), f"{WASM} missing: run `make build`"
        return str(WASM)
    return str(build_wasm())


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    server = Moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(moto):
    with CountingProxy(moto.port) as p:
        yield p


@pytest.fixture
def echo():
    with EchoUpstream() as e:
        yield e


@pytest.fixture
def aws(proxy):
    """aws(region="us-east-1", **extra) -> vault config pointing at moto via the proxy."""
    def make(region: str = "us-east-1", **extra) -> dict:
        return {"region": region, "endpoint_url": proxy.url, "upstream": "moto", **extra}
    return make


@pytest.fixture
def make_envoy(request, tmp_path, moto, proxy, echo):
    """make_envoy(plugin_config | None, env=None, wasm=None, concurrency=2, log_level="info",
    clusters={name: port}, env_keys=[...]).

    Envoy gets the moto IAM user's keys in its environment, overridable by `env` (a None value
    unsets). `clusters`/`env_keys`: see harness.envoy_config.
    plugin_config None = no wasm filter. The log is printed when the test failed."""
    started: list[Envoy] = []

    def make(plugin_config: dict | None, *, env: dict | None = None, wasm: str | None = None,
             **kwargs) -> Envoy:
        if plugin_config is not None and wasm is None:
            wasm = request.getfixturevalue("wasm")
        envoy = Envoy.with_plugin(
            plugin_config, workdir=tmp_path / f"envoy{len(started)}", echo_port=echo.port,
            moto_port=proxy.port, wasm=wasm or WASM, env={**moto.credentials_env, **(env or {})},
            **kwargs)
        started.append(envoy)
        return envoy

    yield make
    for envoy in started:
        envoy.stop()
        if _failed(request):
            print(f"----- {envoy.proc.log_path}\n{envoy.log()[-20000:]}")


@pytest.fixture
def validate_plugin(tmp_path, wasm):
    """validate_plugin(plugin_config, env=None, env_keys=()) -> (exit code, output) of
    envoy --mode validate."""
    def run(plugin_config: dict, env: dict | None = None, env_keys=()):
        config = envoy_config(plugin_config, listen_port=10000, admin_port=9901, echo_port=18080,
                              moto_port=15000, wasm=wasm, env_keys=env_keys)
        return validate(write_config(config, tmp_path / "validate"), env)
    return run


# Values this short could occur in a log by chance; every test secret is longer.
LEAK_MIN_LEN = 8


@pytest.fixture(scope="session", autouse=True)
def leak_guard():
    """After all integration tests: no secret value in any Envoy log (wasm at trace level)
    or any error response body."""
    yield
    values = {v for v in harness.SECRET_VALUES if len(v) >= LEAK_MIN_LEN}
    leaks = []
    for path in harness.ENVOY_LOGS:
        text = path.read_text(errors="replace") if path.exists() else ""
        leaks += [f"{path}: {v!r}" for v in values if v in text]
    for body in harness.ERROR_BODIES:
        leaks += [f"error response body: {v!r}" for v in values if v in body]
    assert not leaks, "secret values leaked:\n" + "\n".join(leaks)
