"""Hardening in real Envoy against moto: configuration pushes while callouts are in flight,
client-chosen references, duplicate trusted headers, forged log lines."""

import http.client
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from harness import (LOCALHOST, Envoy, free_port, lds_bootstrap, port_open, wait_until,
                     write_config, write_lds)


def test_config_push_while_a_callout_is_in_flight(tmp_path, moto, proxy, echo, aws, wasm):
    """Old config asks sec-a (slow), the pushed one sec-b: each gets its own value, now and
    after the next refresh; the request paused under the old config ends within the bound."""
    moto.put_secret("push-sec-a", "value-of-push-sec-a")
    moto.put_secret("push-sec-b", "value-of-push-sec-b")
    proxy.inject(delay=3.0, secret_id="push-sec-a", target="secretsmanager.GetSecretValue")
    port, admin = free_port(), free_port()
    lds = tmp_path / "lds.json"
    vault = aws(ttl=2, timeout_ms=4000)
    write_lds(lds, "1", port, [{"aws": vault,
                                "request_headers": {"x-a": "{vault://aws/push-sec-a}"}}], wasm)
    bootstrap = write_config(lds_bootstrap(admin_port=admin, lds_path=lds, echo_port=echo.port,
                                           moto_port=proxy.port), tmp_path)
    envoy = Envoy(bootstrap, listen_port=port, admin_port=admin, concurrency=1,
                  env=moto.credentials_env, log_dir=tmp_path,
                  extra_args=("--drain-time-s", "30", "--drain-strategy", "immediate"))
    try:
        wait_until(lambda: proxy.get_secret_value_calls("push-sec-a"), 10, "sec-a in flight")
        old = {}

        def old_request():
            started = time.monotonic()
            try:
                old["r"] = envoy.get(timeout=30)
            except Exception as e:  # noqa: BLE001 - recorded for the assertion below
                old["error"] = e
            old["took"] = time.monotonic() - started

        waiter = threading.Thread(target=old_request)
        waiter.start()
        time.sleep(0.3)  # paused on the old configuration
        write_lds(lds, "2", port, [{"aws": vault,
                                    "request_headers": {"x-b": "{vault://aws/push-sec-b}"}}], wasm)
        wait_until(lambda: envoy.stats().get("listener_manager.lds.update_success", 0) >= 2,
                   10, "the push")
        # New connections get the new configuration.
        envoy.http.close()
        r = envoy.get()
        assert r.status_code == 200, r.text
        seen = r.json()["headers"]
        assert seen.get("x-b") == ["value-of-push-sec-b"], seen
        assert "x-a" not in seen
        waiter.join(20)
        assert not waiter.is_alive(), "the request paused under the old config hangs"
        assert "error" not in old, old
        assert old["r"].status_code in (200, 503), old["r"].text
        assert old["took"] < 2 * (4 + 2) + 1
        if old["r"].status_code == 200:
            assert old["r"].json()["headers"]["x-a"] == ["value-of-push-sec-a"]
        # After sec-a's late answer and the next refresh, x-b still carries sec-b.
        time.sleep(3.5)
        for _ in range(3):
            envoy.http.close()
            r = envoy.get()
            assert r.status_code == 200, r.text
            assert r.json()["headers"]["x-b"] == ["value-of-push-sec-b"]
            time.sleep(0.5)
    finally:
        envoy.stop()


def test_junk_references_do_not_lock_out_legitimate_ones(moto, proxy, make_envoy, aws):
    moto.put_secret("legit/ref", {"k": "legit-ref-value-3391"})
    moto.put_secret("configured-one", "configured-value-8812")
    envoy = make_envoy({"aws": aws(), "resolve_incoming_headers": ["x-ref"],
                        "request_headers": {"x-conf": "{vault://aws/configured-one}"}},
                       concurrency=1)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda i: envoy.get(headers={"x-ref": f"{{vault://aws/junk-{i}/k}}"}).status_code,
            range(260)))
    assert set(statuses) == {503}
    junk_calls = len([c for c in proxy.get_secret_value_calls() if c.secret_id.startswith("junk-")])
    assert junk_calls <= 260
    time.sleep(0.5)  # new names are admitted at 8 per second per worker
    r = envoy.get(headers={"x-ref": "{vault://aws/legit/ref/k}"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-ref"] == ["legit-ref-value-3391"]
    assert r.json()["headers"]["x-conf"] == ["configured-value-8812"]
    # Idle: the junk is never fetched again.
    before = len(proxy.get_secret_value_calls())
    time.sleep(5)
    idle = [c.secret_id for c in proxy.get_secret_value_calls()[before:]]
    assert not [s for s in idle if s.startswith("junk-")], idle


def _raw_get(port: int, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=10)
    try:
        conn.putrequest("GET", "/")
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_a_trusted_header_sent_twice_is_refused(moto, echo, make_envoy, aws):
    moto.put_secret("dup/victim", {"k": "victim-value-5120"})
    moto.put_secret("dup/allowed", {"k": "allowed-value-5121"})
    envoy = make_envoy({"aws": aws(), "resolve_incoming_headers": ["x-ref"]})
    status, body = _raw_get(envoy.listen_port, [("x-ref", "{vault://aws/dup/victim/k}"),
                                                ("x-ref", "{vault://aws/dup/allowed/k}")])
    assert status == 503, body
    assert not echo.requests
    envoy.wait_log("sent more than once")
    status, _ = _raw_get(envoy.listen_port, [("x-ref", "{vault://aws/dup/allowed/k}")])
    assert status == 200


def test_outside_text_forges_no_log_line(moto, proxy, make_envoy, aws):
    """A line break from a request or from AWS is logged escaped, never raw."""
    envoy = make_envoy({"aws": aws(), "resolve_incoming_headers": ["x-ref"],
                        "request_headers": {"x-conf": "{vault://aws/forging-target}"}})
    forged = "{vault://aws/x%0a[2099-01-01 00:00:00.000][1][critical][main] FORGED/k}"
    assert envoy.get(headers={"x-ref": forged}).status_code == 503
    envoy.wait_log("the secret id has control characters")
    long = "{vault://aws/" + "y" * 3000 + "/k} {vault://nope/x}"
    assert envoy.get(headers={"x-ref": long}).status_code == 503
    # AWS's error message, as AWS (here: the fault proxy) wrote it.
    proxy.inject(status=400, times=None, secret_id="forging-target", body=json.dumps({
        "__type": "ValidationException",
        "message": "bad\n[2099-01-01 00:00:00.000][1][critical][main] FORGED-BY-AWS"}).encode())
    assert envoy.get().status_code == 503
    envoy.wait_log("FORGED-BY-AWS")
    assert not re.search(r"^\[2099", envoy.log(), re.MULTILINE)
    assert "y" * 300 not in envoy.log()
