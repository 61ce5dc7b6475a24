"""Rotation-aware refresh in real Envoy against moto: an upstream that refuses a rotated-out
value makes the filter fetch the secret again at once, at most once per refresh_min_interval
per proxy whatever clients send."""

import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

from harness import Envoy, ThreadedHTTPService, read_body, send


class KeyCheckingUpstream(ThreadedHTTPService):
    """200 when `x-api-key` is the current key, else 401 (an API behind the proxy)."""

    def __init__(self):
        self.expected = None
        self.seen: list[tuple[float, str | None]] = []
        self._lock = threading.Lock()
        super().__init__()

    def handle(self, handler):
        read_body(handler)
        key = handler.headers.get("x-api-key")
        with self._lock:
            self.seen.append((time.monotonic(), key))
        if key is not None and key == self.expected:
            send(handler, 200, b"ok")
        else:
            send(handler, 401, b"unauthorized")


@contextmanager
def api_behind_envoy(tmp_path, moto, proxy, wasm, key: str, accepted: str, **plugin):
    """Secret `rotated-api-key` = `key`; an API accepting only `accepted` behind an Envoy
    whose filter sends the secret as x-api-key and watches for 401s."""
    moto.put_secret("rotated-api-key", key)
    config = {"aws": {"region": "us-east-1", "endpoint_url": proxy.url, "upstream": "moto",
                      "ttl": 3600},
              "request_headers": {"x-api-key": "{vault://aws/rotated-api-key}"},
              "refresh_on_status": [401], **plugin}
    with KeyCheckingUpstream() as upstream:
        upstream.expected = accepted
        envoy = Envoy.with_plugin(config, workdir=tmp_path / "envoy", echo_port=upstream.port,
                                  moto_port=proxy.port, wasm=wasm, env=moto.credentials_env)
        try:
            yield envoy, upstream
        finally:
            envoy.stop()


def wait_stat(envoy, name: str, timeout: float = 3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if envoy.stats().get(name, 0) >= 1:
            return True
        time.sleep(0.1)
    return False


def test_a_rotated_secret_is_picked_up_after_the_first_refusal(tmp_path, moto, proxy, wasm):
    with api_behind_envoy(tmp_path, moto, proxy, wasm, "api-key-version-one-5531",
                          accepted="api-key-version-one-5531") as (envoy, upstream):
        assert envoy.get().status_code == 200
        # AWS rotates the secret; the API accepts only the new key from now on.
        moto.put_secret("rotated-api-key", "api-key-version-two-5532")
        upstream.expected = "api-key-version-two-5532"
        first = envoy.get()
        assert first.status_code == 401  # not retried: proxy-wasm cannot resend it
        refused_at = time.monotonic()
        while envoy.get().status_code != 200:
            assert time.monotonic() - refused_at < 2, "new key not used within 2 s"
            time.sleep(0.05)
        assert time.monotonic() - refused_at < 2
        assert wait_stat(envoy, "wasmcustom.aws_vault.refreshes_on_status")


def test_a_burst_of_refusals_costs_at_most_one_fetch_per_interval(tmp_path, moto, proxy, wasm):
    with api_behind_envoy(tmp_path, moto, proxy, wasm, "api-key-that-never-works-7781",
                          accepted="something-else", refresh_min_interval=10) as (envoy, _):
        assert envoy.get().status_code == 401  # warm: prefetched, then refused
        time.sleep(0.5)
        before = len(proxy.get_secret_value_calls("rotated-api-key"))
        started = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda _: envoy.get().status_code, range(300)))
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # let a last refresh land
        assert set(statuses) == {401}
        during = len(proxy.get_secret_value_calls("rotated-api-key")) - before
        # The first refusal (before the burst) may already have used this interval.
        allowed = 1 + int((elapsed + 1) // 10)
        assert during <= allowed, (during, elapsed)
