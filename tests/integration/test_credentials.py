"""Credential sources in a real Envoy (--concurrency 2) against moto (SigV4 + IAM checks on):
AssumeRole through STS, container (ECS) and IMDS (v2, v1 fallback) credentials, refresh of
expiring credentials, a forced refresh after ExpiredToken, and the `env` vault.

Credentials from the container/IMDS fixtures are temporary ones minted by moto's STS; the
IAM user's keys are removed from Envoy's environment, so a 200 from moto proves the filter
signed with what the fixture served."""

import re
import time
import urllib.parse

import pytest

from fixtures_credentials import ContainerEndpoint, ImdsEndpoint, Mint
from harness import remember_secret, wait_until

GET = "secretsmanager.GetSecretValue"
NO_USER_KEYS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
ECS_TOKEN = "ecs-auth-token-6d1f0c9a"


def start(moto, make_envoy, aws, name, *, env=None, credentials=None, clusters=None, **vault):
    """Store secret `name` ({"v": value}) and start Envoy with header x-secret <- its "v"."""
    value = f"{name.replace('/', '-')}-value-5e2b"
    moto.put_secret(name, {"v": value})
    plugin = {"aws": aws(**vault), "request_headers": {"x-secret": f"{{vault://aws/{name}/v}}"}}
    if credentials:
        plugin["credentials"] = credentials
    return make_envoy(plugin, env=env, clusters=clusters), value


def assert_resolved(envoy, value, header="x-secret"):
    r = envoy.get()
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    assert r.json()["headers"].get(header) == [value]


def answered(proxy, target, secret_id=None):
    """The proxy's calls of `target`, once every one of them has been answered (a worker may
    still be fetching when the first request returns)."""
    def done():
        calls = proxy.find(target, secret_id)
        return all(c.status is not None for c in calls) and calls
    return wait_until(done, 30, f"{target} calls answered")


def signing_key(call) -> str:
    """The access key id of a SigV4 Authorization header."""
    m = re.search(r"Credential=([^/,\s]+)/", call.header("Authorization") or "")
    assert m, call.headers
    return m.group(1)


def assert_signed_with_temporary(moto, calls, mint=None):
    """Every call succeeded, signed with temporary credentials (not the user's key, with a
    session token); with `mint`: credentials it issued, used before their Expiration."""
    assert calls
    for call in calls:
        assert call.status == 200, (call.status, call.target)
        key = signing_key(call)
        assert key != moto.access_key and call.header("X-Amz-Security-Token"), call.headers
        if mint is not None:
            issued = mint.key(key)
            assert issued is not None, f"signed with {key}, not a key the fixture served"
            assert call.at < issued.expires, "signed with credentials past their Expiration"


def container_env(endpoint):
    return {**NO_USER_KEYS, "AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.full_uri,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": endpoint.token}


def start_on_container(moto, make_envoy, aws, endpoint, name, **vault):
    """Envoy on the default chain: no env keys, so the container source is chosen."""
    return start(moto, make_envoy, aws, name, env=container_env(endpoint),
                 credentials={"container_upstream": "ecs"}, clusters={"ecs": endpoint.port},
                 **vault)


@pytest.fixture
def serve(moto):
    """serve(ContainerEndpoint | ImdsEndpoint, *args, lifetime=3600): a credentials endpoint
    handing out moto credentials valid `lifetime` s. Ask for this fixture before make_envoy:
    endpoints then stop after Envoy (a VM may still be fetching)."""
    started = []

    def make(cls, *args, lifetime=3600):
        started.append(cls(Mint(moto, lifetime), *args))
        return started[-1]
    yield make
    for endpoint in started:
        endpoint.stop()


def test_assume_role_through_sts(moto, proxy, make_envoy, aws):
    authority = urllib.parse.urlsplit(proxy.url).netloc  # the default STS upstream
    envoy, value = start(moto, make_envoy, aws, "cred/assumed", clusters={authority: proxy.port},
                         assume_role_arn=moto.role_arn, sts_endpoint_url=proxy.url)
    assert_resolved(envoy, value)
    targets = [c.target for c in proxy.calls]
    assert "AssumeRole" in targets and targets.index("AssumeRole") < targets.index(GET), targets
    assumed = answered(proxy, "AssumeRole")
    assert 1 <= len(assumed) <= 3, targets  # at most one per VM: main thread + 2 workers
    for call in assumed:
        assert call.status == 200
        assert urllib.parse.parse_qs(call.body.decode())["RoleArn"] == [moto.role_arn]
        assert signing_key(call) == moto.access_key  # signed with the base (user) keys
        assert call.header("X-Amz-Security-Token") is None
    assert_signed_with_temporary(moto, answered(proxy, GET, "cred/assumed"))


def test_assume_role_through_a_named_sts_upstream(moto, proxy, make_envoy, aws):
    """`sts_upstream` routes AssumeRole to a cluster of any name: none is named after the
    STS endpoint's host:port."""
    envoy, value = start(moto, make_envoy, aws, "cred/assumed-named", clusters={"sts": proxy.port},
                         assume_role_arn=moto.role_arn, sts_endpoint_url=proxy.url,
                         sts_upstream="sts")
    assert_resolved(envoy, value)
    assert answered(proxy, "AssumeRole")
    assert_signed_with_temporary(moto, answered(proxy, GET, "cred/assumed-named"))


def test_container_credentials(moto, proxy, serve, make_envoy, aws):
    ecs = serve(ContainerEndpoint, ECS_TOKEN)
    envoy, value = start_on_container(moto, make_envoy, aws, ecs, "cred/container")
    assert_resolved(envoy, value)
    asked = ecs.requests
    assert asked and all((r.method, r.path, r.status) == ("GET", ecs.PATH, 200) for r in asked)
    assert all(r.headers.get("authorization") == ECS_TOKEN for r in asked)
    assert_signed_with_temporary(moto, answered(proxy, GET, "cred/container"), ecs.mint)


@pytest.mark.parametrize("v1_only", [False, True], ids=["v2", "v1-fallback"])
def test_imds_credentials(moto, proxy, serve, make_envoy, aws, v1_only):
    imds = serve(ImdsEndpoint, v1_only)
    envoy, value = start(
        moto, make_envoy, aws, "cred/imds", env=NO_USER_KEYS,
        credentials={"source": "imds", "imds_endpoint_url": imds.url, "imds_upstream": "imds"},
        clusters={"imds": imds.port})
    assert_resolved(envoy, value)
    puts, gets = imds.find("PUT"), imds.find("GET")
    assert puts and all(r.path == imds.TOKEN_PATH and r.headers[imds.TTL_HEADER].isdigit()
                        and r.status == (403 if v1_only else 200) for r in puts)
    assert {r.path for r in gets} == {imds.ROLE_PATH, imds.ROLE_PATH + imds.ROLE}
    assert all(r.status == 200 for r in gets), [(r.path, r.status) for r in gets]
    tokens = {r.headers.get(imds.TOKEN_HEADER) for r in gets}
    assert (tokens == {None}) if v1_only else (tokens <= imds.tokens), tokens
    assert_signed_with_temporary(moto, answered(proxy, GET, "cred/imds"), imds.mint)


def test_expiring_credentials_are_refreshed_without_a_failed_request(moto, proxy, serve,
                                                                      make_envoy, aws):
    # Refresh at half the remaining lifetime (15 s); the old credentials stay usable until
    # 10 s before expiry, so the refresh has a 5 s head start. The secret's ttl of 2 s keeps
    # GetSecretValue (signed) going.
    ecs = serve(ContainerEndpoint, ECS_TOKEN, lifetime=30)
    envoy, value = start_on_container(moto, make_envoy, aws, ecs, "cred/expiring", ttl=2)
    statuses = []

    def refreshed_and_used():  # and at least 25 s after the first credentials
        statuses.append(envoy.get().status_code)
        first = ecs.mint.issued[0].at
        refreshed = {i.access_key_id for i in ecs.mint.issued if i.at >= first + 10}
        used = {signing_key(c) for c in proxy.get_secret_value_calls("cred/expiring")
                if c.status == 200}
        return refreshed & used and time.monotonic() > first + 25

    wait_until(refreshed_and_used, 90, "a GetSecretValue signed with refreshed credentials",
               envoy.proc, interval=0.25)
    assert len(statuses) > 20 and set(statuses) == {200}, statuses
    assert len(ecs.requests) > 1 and all(r.status == 200 for r in ecs.requests)
    # Every GetSecretValue was accepted, and signed before its credentials' Expiration.
    assert_signed_with_temporary(moto, answered(proxy, GET, "cred/expiring"), ecs.mint)


def test_expired_token_forces_refresh_and_retry(moto, proxy, serve, make_envoy, aws):
    ecs = serve(ContainerEndpoint, ECS_TOKEN)
    envoy, value = start_on_container(moto, make_envoy, aws, ecs, "cred/rejected", ttl=1)
    assert_resolved(envoy, value)
    asked = len(ecs.requests)
    proxy.inject(status=400, target=GET, headers=[("Content-Type", "application/x-amz-json-1.1")],
                 body=b'{"__type":"ExpiredTokenException",'
                      b'"message":"The security token included in the request is expired"}')

    def first_call(check):
        return next((c for c in proxy.get_secret_value_calls("cred/rejected") if check(c)), None)

    # The background refresh (ttl 1 s) meets the fault; the filter gets new credentials from
    # the endpoint and retries with them.
    rejected = wait_until(lambda: first_call(lambda c: c.status == 400), 30,
                          "the injected ExpiredToken", envoy.proc)
    retry = wait_until(lambda: first_call(lambda c: c.at > rejected.at and c.status == 200 and
                                          ecs.mint.key(signing_key(c)).at > rejected.at),
                       30, "a retry signed with new credentials", envoy.proc)
    assert signing_key(retry) != signing_key(rejected)
    assert len(ecs.requests) > asked
    assert_resolved(envoy, value)


def test_env_vault(make_envoy, validate_plugin):
    token = "demo-token-from-env-77c1"
    remember_secret(token)
    plugin = {"request_headers": {"x-demo": "Bearer {vault://env/demo-token}"}}
    envoy = make_envoy(plugin, env={"DEMO_TOKEN": token}, env_keys=["DEMO_TOKEN"])
    assert_resolved(envoy, f"Bearer {token}", header="x-demo")
    rc, out = validate_plugin(plugin, env={"DEMO_TOKEN": None}, env_keys=["DEMO_TOKEN"])
    assert rc != 0, out
    errors = "\n".join(re.findall(r".*\[(?:warning|error|critical)\].*", out))
    assert "DEMO_TOKEN" in errors, out
