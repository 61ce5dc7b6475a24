"""Several aws_vault configurations in one VM (issue: a secret crossed routes).

Every filter config sharing `vm_id` gets its own root context in the same Wasm VM (per
worker); each must answer only with its own configuration, while the cache, the fetches and
the credentials are shared by all of them.
"""

from concurrent.futures import ThreadPoolExecutor


def headers_of(r):
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    return r.json()["headers"]


def test_two_listeners_each_see_only_their_own(moto, make_envoy, aws):
    moto.put_secret("route-a", "value-for-route-a")
    moto.put_secret("route-b", "value-for-route-b")
    moto.put_secret("route-c", "value-for-route-c")
    envoy = make_envoy(
        {"aws": aws(), "request_headers": {"x-a": "{vault://aws/route-a}"}},
        listeners=[[{"aws": aws(), "request_headers": {"x-b": "{vault://aws/route-b}"}}],
                   [{"aws": aws(), "request_headers": {"x-c": "{vault://aws/route-c}"},
                     "response_headers": {"x-resp-c": "{vault://aws/route-c}"}}]])
    mine = {0: ("x-a", "value-for-route-a"), 1: ("x-b", "value-for-route-b"),
            2: ("x-c", "value-for-route-c")}
    # Cold and warm, interleaved, from several clients at once (2 workers).
    jobs = [i % 3 for i in range(60)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: (i, envoy.get(listener=i)), jobs))
    for listener, r in results:
        seen = headers_of(r)
        name, value = mine[listener]
        assert seen.get(name) == [value], (listener, seen)
        for other, (other_name, _) in mine.items():
            if other != listener:
                assert other_name not in seen, (listener, seen)
        assert ("x-resp-c" in r.headers) == (listener == 2)


def test_two_filters_in_one_chain_each_from_its_own_config(moto, make_envoy, aws):
    moto.put_secret("chain-one", "first-filter-value")
    moto.put_secret("chain-two", "second-filter-value")
    envoy = make_envoy(None, listeners=[[
        {"aws": aws(), "request_headers": {"x-one": "{vault://aws/chain-one}"}},
        {"aws": aws(), "request_headers": {"x-two": "{vault://aws/chain-two}",
                                           "x-both": "second"}},
    ]])
    for _ in range(5):
        seen = headers_of(envoy.get(listener=1))
        assert seen["x-one"] == ["first-filter-value"]
        assert seen["x-two"] == ["second-filter-value"]
        assert seen["x-both"] == ["second"]


def test_same_name_in_two_regions_on_two_listeners(moto, make_envoy, aws):
    moto.put_secret("same-name", "us-east-value", region="us-east-1")
    moto.put_secret("same-name", "eu-central-value", region="eu-central-1")
    moto.put_secret("only-in-eu", "eu-only-value", region="eu-central-1")
    envoy = make_envoy(
        {"aws": aws("us-east-1"), "request_headers": {"x-s": "{vault://aws/same-name}"}},
        listeners=[[{"aws": aws("eu-central-1"),
                     "request_headers": {"x-s": "{vault://aws/same-name}"}}],
                   [{"aws": aws("us-east-1"),
                     "request_headers": {"x-s": "{vault://aws/only-in-eu}"}}],
                   [{"aws": aws("eu-central-1"),
                     "request_headers": {"x-s": "{vault://aws/only-in-eu}"}}]])
    for _ in range(3):
        assert headers_of(envoy.get(listener=0))["x-s"] == ["us-east-value"]
        assert headers_of(envoy.get(listener=1))["x-s"] == ["eu-central-value"]
        assert envoy.get(listener=2).status_code == 503  # us-east-1 has no such secret
        assert headers_of(envoy.get(listener=3))["x-s"] == ["eu-only-value"]


def test_same_secret_same_settings_fetched_once(moto, proxy, make_envoy, aws):
    moto.put_secret("shared-by-roots", {"k": "shared-root-value"})
    config_a = {"aws": aws(), "request_headers": {"x-a": "{vault://aws/shared-by-roots/k}"}}
    config_b = {"aws": aws(), "request_headers": {"x-b": "Bearer {vault://aws/shared-by-roots/k}"}}
    envoy = make_envoy(config_a, listeners=[[config_b], [config_a, config_b]])
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: (i % 3, envoy.get(listener=i % 3)), range(90)))
    for listener, r in results:
        seen = headers_of(r)
        if listener in (0, 2):
            assert seen["x-a"] == ["shared-root-value"]
        if listener in (1, 2):
            assert seen["x-b"] == ["Bearer shared-root-value"]
    assert len(proxy.get_secret_value_calls("shared-by-roots")) == 1
