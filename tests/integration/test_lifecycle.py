"""Cache lifecycle in a real Envoy (--concurrency 2): prefetch, background rotation, resurrect
window and recovery, backoff on throttling/5xx, one fetch per secret on a cold start, neg_ttl.

Timing assertions are lower bounds only (what the filter must wait at least); every wait is a
poll with a generous deadline."""

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import LOCALHOST, wait_until

GET = "secretsmanager.GetSecretValue"
SLACK = 0.1  # seconds of clock/tick tolerance on lower bounds
AWS_JSON = [("Content-Type", "application/x-amz-json-1.1")]
THROTTLED = dict(status=400, headers=AWS_JSON,
                 body=b'{"__type":"ThrottlingException","message":"Rate exceeded"}')
SERVER_ERROR = dict(status=500, headers=AWS_JSON,
                    body=b'{"__type":"InternalServiceError","message":"Internal failure"}')
REASONS = ["not_found", "access_denied", "decryption", "invalid_request", "throttling",
           "credentials", "server", "malformed", "callout", "other"]


def start(make_envoy, aws, secrets, **settings):
    """Envoy with request header -> whole SecretString of each secret ({"x-secret": name} for a
    plain name); `settings` (ttl, neg_ttl, ...) go into the vault config."""
    if isinstance(secrets, str):
        secrets = {"x-secret": secrets}
    headers = {name: f"{{vault://aws/{secret}}}" for name, secret in secrets.items()}
    return make_envoy({"aws": aws(**settings), "request_headers": headers}, concurrency=2)


def ask(envoy, *names):
    """One request on a fresh connection: (status, value of each header) - None unless 200."""
    names = names or ("x-secret",)
    conn = http.client.HTTPConnection(LOCALHOST, envoy.listen_port, timeout=30)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        return (resp.status, *[None] * len(names))
    seen = json.loads(body)["headers"]
    values = [seen.get(n, [None]) for n in names]
    return (200, *[v[0] if len(v) == 1 else v for v in values])


def watch(envoy, until, timeout, interval=0.1):
    """Ask every `interval` s until `until(samples)` or `timeout`: [(monotonic, status, value)]."""
    samples, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples.append((time.monotonic(), *ask(envoy)))
        if until(samples):
            break
        time.sleep(interval)
    return samples


def metric(envoy, name):
    return envoy.stats().get(f"wasmcustom.aws_vault.{name}", 0)


def wait_metric(envoy, name, at_least=1, timeout=30):
    """Wait until the counter reaches `at_least` (metrics are published from the tick)."""
    return wait_until(lambda: (v := metric(envoy, name)) >= at_least and v, timeout,
                      f"{name} >= {at_least}", envoy.proc)


def failures(envoy):
    stats = envoy.stats()
    return {r: stats.get(f"wasmcustom.aws_vault.fetches_failed.{r}", 0) for r in REASONS}


def assert_no_request_paused(envoy, served):
    """Once the `served` cache hits are published, no request ever paused."""
    wait_metric(envoy, "cache_hits", served)
    assert metric(envoy, "cache_misses") == 0


def gaps(calls):
    return [b.at - a.at for a, b in zip(calls, calls[1:])]


def test_prefetch_serves_first_request_from_cache(moto, proxy, make_envoy, aws):
    moto.put_secret("lc-prefetch", "prefetched-value")
    envoy = start(make_envoy, aws, "lc-prefetch")
    wait_metric(envoy, "fetches_succeeded")
    assert ask(envoy) == (200, "prefetched-value")
    assert_no_request_paused(envoy, 1)
    assert len(proxy.get_secret_value_calls("lc-prefetch")) == 1


def test_rotation_is_picked_up_in_background(moto, proxy, make_envoy, aws):
    ttl = 2
    moto.put_secret("lc-rotation", "old-value")
    envoy = start(make_envoy, aws, "lc-rotation", ttl=ttl)
    wait_metric(envoy, "fetches_succeeded")
    assert ask(envoy) == (200, "old-value")
    moto.put_secret("lc-rotation", "new-value")
    samples = watch(envoy, lambda s: sum(v == "new-value" for _, _, v in s) >= 5, timeout=15)

    assert all(st == 200 for _, st, _ in samples), samples
    values = [v for _, _, v in samples]
    assert "new-value" in values, values
    switch = values.index("new-value")
    assert values == ["old-value"] * switch + ["new-value"] * (len(values) - switch), values
    calls = proxy.get_secret_value_calls("lc-rotation")
    assert samples[switch][0] - calls[0].at >= ttl - SLACK  # not before the prefetch expired
    # Refreshes only once the ttl passed, by one VM: calls are at least a ttl apart.
    assert all(g >= ttl - SLACK for g in gaps(calls)), gaps(calls)
    wait_metric(envoy, "refreshes")
    assert_no_request_paused(envoy, 1 + len(samples))


@pytest.mark.parametrize("fault", [dict(status=503, body=b"unavailable"), dict(drop=True)],
                         ids=["http503", "dropped"])
def test_outage_serves_stale_then_fails_then_recovers(moto, proxy, make_envoy, aws, fault):
    ttl, resurrect = 1, 3
    name = f"lc-outage-{'drop' if fault.get('drop') else 'status'}"
    moto.put_secret(name, "steady-value")
    envoy = start(make_envoy, aws, name, ttl=ttl, resurrect_ttl=resurrect)
    wait_metric(envoy, "fetches_succeeded")
    proxy.inject(target=GET, times=None, **fault)
    outage_from = time.monotonic()
    samples = watch(envoy, lambda s: s[-1][1] == 503, timeout=30)

    first_503 = next((i for i, (_, st, _) in enumerate(samples) if st == 503), None)
    assert first_503 is not None, f"still served after 30 s: {samples[-3:]}"
    assert all(s[1:] == (200, "steady-value") for s in samples[:first_503]), samples
    calls = proxy.get_secret_value_calls(name)
    last_ok = max(c.at for c in calls if c.status == 200)
    assert samples[first_503][0] - last_ok >= ttl + resurrect - SLACK, (last_ok, samples)
    assert any(c.at > outage_from and c.status != 200 for c in calls)  # refreshes did fail
    wait_metric(envoy, "stale_served")
    wait_until(lambda: sum(failures(envoy).values()), 10, "fetches_failed.*", envoy.proc)

    proxy.clear_faults()
    recovered = watch(envoy, lambda s: s[-1][1] == 200, timeout=60, interval=0.2)
    assert recovered[-1][1:] == (200, "steady-value"), recovered[-3:]
    assert ask(envoy) == (200, "steady-value")


@pytest.mark.parametrize("fault, reason", [(THROTTLED, "throttling"), (SERVER_ERROR, "server")],
                         ids=["throttling", "server"])
def test_cold_start_retries_with_backoff(moto, proxy, make_envoy, aws, fault, reason):
    bursts = 3
    name = f"lc-burst-{reason}"
    moto.put_secret(name, "finally-value")
    proxy.inject(target=GET, secret_id=name, times=bursts, **fault)
    envoy = start(make_envoy, aws, name)
    wait_metric(envoy, "fetches_succeeded")
    assert ask(envoy) == (200, "finally-value")

    calls = proxy.get_secret_value_calls(name)
    assert [c.status for c in calls] == [fault["status"]] * bursts + [200]
    # Backoff after failure k is at least half its step: 0.5 s, 1 s, 2 s.
    minimum = [0.5 * 2 ** k - SLACK for k in range(bursts)]
    assert all(g >= m for g, m in zip(gaps(calls), minimum)), (gaps(calls), minimum)
    wait_metric(envoy, f"fetches_failed.{reason}", bursts)
    assert failures(envoy) == {r: bursts if r == reason else 0 for r in REASONS}


def test_cold_start_burst_fetches_each_secret_once(moto, proxy, make_envoy, aws):
    clients = 200
    moto.put_secret("lc-cold-a", "value-a")
    moto.put_secret("lc-cold-b", "value-b")
    envoy = start(make_envoy, aws, {"x-a": "lc-cold-a", "x-b": "lc-cold-b"})
    barrier = threading.Barrier(clients)

    def one(_):
        barrier.wait(timeout=60)
        return ask(envoy, "x-a", "x-b")

    with ThreadPoolExecutor(clients) as pool:
        results = Counter(pool.map(one, range(clients)))
    assert results == {(200, "value-a", "value-b"): clients}
    time.sleep(1)  # a late duplicate fetch would show up here
    assert Counter(c.secret_id for c in proxy.get_secret_value_calls()) == \
        {"lc-cold-a": 1, "lc-cold-b": 1}


def test_missing_secret_is_remembered_for_neg_ttl(proxy, make_envoy, aws):
    neg_ttl = 5
    envoy = start(make_envoy, aws, "lc-missing", neg_ttl=neg_ttl)
    assert ask(envoy) == (503, None)
    samples = watch(envoy, lambda s: s[-1][0] - s[0][0] >= 2, timeout=10, interval=0.05)
    assert all(st == 503 for _, st, _ in samples), samples
    assert 1 <= len(proxy.get_secret_value_calls("lc-missing")) <= 2
    wait_metric(envoy, "fetches_failed.not_found")
    # The next attempt waits for neg_ttl (longer than the 0.5-1 s first backoff).
    watch(envoy, lambda _: len(proxy.get_secret_value_calls("lc-missing")) >= 2, timeout=30,
          interval=0.2)
    calls = proxy.get_secret_value_calls("lc-missing")
    assert len(calls) >= 2 and not any(c.status == 200 for c in calls)
    assert gaps(calls)[0] >= neg_ttl - SLACK, gaps(calls)
