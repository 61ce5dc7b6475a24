"""The harness itself: moto with auth, the counting proxy, the echo upstream, the Envoy launcher.

These do not need a working filter."""

import http.client
import json

import pytest
from botocore.exceptions import ClientError, HTTPClientError

from harness import envoy_config, validate, write_config

GET = "secretsmanager.GetSecretValue"


def test_moto_checks_signatures_and_policies(moto):
    moto.put_secret("harness/auth", {"k": "v"})
    value = moto.client().get_secret_value(SecretId="harness/auth")["SecretString"]
    assert json.loads(value) == {"k": "v"}

    wrong = moto.client(aws_access_key_id=moto.access_key, aws_secret_access_key="wrong")
    with pytest.raises(ClientError) as e:
        wrong.get_secret_value(SecretId="harness/auth")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    unknown = moto.client(aws_access_key_id="AKIAUNKNOWN000000000", aws_secret_access_key="x")
    with pytest.raises(ClientError) as e:
        unknown.get_secret_value(SecretId="harness/auth")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    with pytest.raises(ClientError) as e:  # outside the user's policy
        moto.client("iam").list_users()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_moto_regions_and_versions(moto):
    moto.put_secret("harness/regional", "us", region="us-east-1")
    moto.put_secret("harness/regional", "eu", region="eu-central-1")
    moto.put_secret("harness/regional", "us-2", region="us-east-1")
    us, eu = moto.client(region="us-east-1"), moto.client(region="eu-central-1")
    assert eu.get_secret_value(SecretId="harness/regional")["SecretString"] == "eu"
    assert us.get_secret_value(SecretId="harness/regional")["SecretString"] == "us-2"
    previous = us.get_secret_value(SecretId="harness/regional", VersionStage="AWSPREVIOUS")
    assert previous["SecretString"] == "us"


def test_moto_assume_role(moto):
    creds = moto.client("sts").assume_role(RoleArn=moto.role_arn,
                                           RoleSessionName="harness")["Credentials"]
    moto.put_secret("harness/role", "via-role")
    sm = moto.client(aws_access_key_id=creds["AccessKeyId"],
                     aws_secret_access_key=creds["SecretAccessKey"],
                     aws_session_token=creds["SessionToken"])
    assert sm.get_secret_value(SecretId="harness/role")["SecretString"] == "via-role"


def test_counting_proxy_forwards_signed_requests_and_counts(moto, proxy):
    moto.put_secret("harness/proxied", "value")
    client = moto.client(endpoint_url=proxy.url)  # signed for the proxy's Host, which it keeps
    assert client.get_secret_value(SecretId="harness/proxied")["SecretString"] == "value"
    assert client.get_secret_value(SecretId="harness/proxied", VersionStage="AWSCURRENT")
    calls = proxy.get_secret_value_calls("harness/proxied")
    assert [(c.status, c.version_stage) for c in calls] == [(200, None), (200, "AWSCURRENT")]
    assert proxy.counts()[GET] == 2
    assert calls[0].header("host") == f"127.0.0.1:{proxy.port}"

    proxy.inject(status=503, body=b'{"__type":"ServiceUnavailable","message":"x"}', target=GET)
    with pytest.raises(ClientError) as e:
        client.get_secret_value(SecretId="harness/proxied")
    assert e.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert client.get_secret_value(SecretId="harness/proxied")["SecretString"] == "value"

    proxy.inject(drop=True)
    with pytest.raises(HTTPClientError):  # connection closed without a response
        client.get_secret_value(SecretId="harness/proxied")
    proxy.inject(delay=0.3)
    assert client.get_secret_value(SecretId="harness/proxied")["SecretString"] == "value"
    assert [c.status for c in proxy.calls[-2:]] == [None, 200]

    bad = moto.client(endpoint_url=proxy.url, aws_access_key_id=moto.access_key,
                      aws_secret_access_key="wrong")
    with pytest.raises(ClientError):
        bad.get_secret_value(SecretId="harness/proxied")
    assert proxy.calls[-1].status == 403
    proxy.reset()
    assert proxy.counts() == {}


def test_echo_upstream_lists_every_header(echo):
    conn = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=5)
    conn.putrequest("POST", "/p?q=1")
    for name, value in [("X-Multi", "a"), ("X-Multi", "b"), ("Content-Length", "2")]:
        conn.putheader(name, value)
    conn.endheaders(b"hi")
    seen = json.loads(conn.getresponse().read())
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/p?q=1", "hi")
    assert seen["headers"]["x-multi"] == ["a", "b"]
    assert echo.requests == [seen]


def test_envoy_launcher_without_filter(make_envoy, echo, tmp_path):
    envoy = make_envoy(None)
    r = envoy.get("/hello", headers={"x-test": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-test"] == ["1"]
    assert echo.requests[-1]["path"] == "/hello"
    assert envoy.stats()["cluster.echo.upstream_rq_200"] == 1
    assert "starting main dispatch loop" in envoy.log()

    rc, out = validate(write_config(envoy_config(None, listen_port=1, admin_port=2, echo_port=3,
                                                 moto_port=4), tmp_path / "v"))
    assert rc == 0, out
