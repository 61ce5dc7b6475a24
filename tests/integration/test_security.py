"""Security boundary in real Envoy: client-sent references, trusted headers, header injection.

The leak guard in conftest.py checks, after every test, that no secret value reached any
Envoy log (wasm at trace level) or error response body."""

SECRET = {"password": "p4ss-Secret-9931"}


def test_client_references_are_never_resolved(moto, echo, make_envoy, aws):
    moto.put_secret("sec/db", SECRET)
    envoy = make_envoy({"aws": aws(), "request_headers": {"x-db": "{vault://aws/sec/db/password}"}})
    ref = "{vault://aws/sec/db/password}"
    r = envoy.get(headers={"x-client": ref, "x-client-two": f"Bearer {ref}"})
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-client"] == [ref]
    assert seen["x-client-two"] == [f"Bearer {ref}"]
    assert seen["x-db"] == ["p4ss-Secret-9931"]  # the configured header still works
    # A client cannot override a configured header either: it is replaced.
    r = envoy.get(headers={"x-db": "client-value"})
    assert r.json()["headers"]["x-db"] == ["p4ss-Secret-9931"]


def test_trusted_incoming_header_is_resolved_without_overrides(moto, echo, make_envoy, aws):
    moto.put_secret("sec/api", {"token": "trusted-token-5521"})
    envoy = make_envoy({"aws": aws(), "resolve_incoming_headers": ["x-backend-auth"]})
    r = envoy.get(headers={"x-backend-auth": "Bearer {vault://aws/sec/api/token}",
                           "x-other": "{vault://aws/sec/api/token}"})
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-backend-auth"] == ["Bearer trusted-token-5521"]
    assert seen["x-other"] == ["{vault://aws/sec/api/token}"]  # not allowlisted
    # Query overrides would let the sender choose endpoint, region, role or cache settings.
    n = len(echo.requests)
    r = envoy.get(headers={"x-backend-auth": "{vault://aws/sec/api/token?endpoint_url=http://127.0.0.1:1}"})
    assert r.status_code == 503
    assert len(echo.requests) == n
    envoy.wait_log("query overrides are not allowed")


def test_secret_with_crlf_is_never_injected(moto, echo, make_envoy, aws):
    moto.put_secret("sec/split", {"v": "ok\r\nx-injected: evil-9913"})
    moto.put_secret("sec/nul", "nul\x00byte-value-77")
    envoy = make_envoy({"aws": aws(), "request_headers": {"x-split": "{vault://aws/sec/split/v}"}})
    r = envoy.get()
    assert r.status_code == 503
    assert "evil" not in r.text
    assert not echo.requests, "nothing reaches the upstream"
    envoy.wait_log("control characters")
    envoy = make_envoy({"aws": aws(), "request_headers": {"x-nul": "{vault://aws/sec/nul}"}})
    assert envoy.get().status_code == 503
    assert not echo.requests
