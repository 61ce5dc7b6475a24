"""Web identity credentials (EKS IRSA) in a real Envoy (--concurrency 2): the token fetched
from `credentials.web_identity_token_url`, then an unsigned STS AssumeRoleWithWebIdentity,
then GetSecretValue signed with the temporary credentials; and the explanatory failure when
only AWS_WEB_IDENTITY_TOKEN_FILE is set.

moto checks SigV4 on every call, so it would refuse the (correctly) unsigned
AssumeRoleWithWebIdentity: the counting proxy records that call and answers it like STS,
with temporary credentials moto's STS minted (AssumeRole with the IAM user's keys). moto
then verifies the GetSecretValue calls signed with them."""

import re
import threading
import urllib.parse

import pytest

from harness import ThreadedHTTPService, read_body, remember_secret, send
from test_credentials import (GET, NO_USER_KEYS, answered, assert_resolved,
                              assert_signed_with_temporary, start)

WI = "AssumeRoleWithWebIdentity"
JWT = ("eyJhbGciOiJSUzI1NiIsImtpZCI6IndpLXRlc3QifQ."
       "eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDp2YXVsdCJ9."
       "d2ViLWlkZW50aXR5LXNpZ25hdHVyZS05YzQx")


class TokenServer(ThreadedHTTPService):
    """Serves `token` at GET /token (404 elsewhere); `requests`: [(method, path, status)]."""
    PATH = "/token"

    def __init__(self, token: str):
        self.token = token
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        super().__init__()

    def handle(self, handler):
        read_body(handler)
        ok = (handler.command, handler.path) == ("GET", self.PATH)
        status = 200 if ok else 404
        with self._lock:
            self.requests.append((handler.command, handler.path, status))
        send(handler, status, self.token.encode() if ok else b"", [("Content-Type", "text/plain")])


def sts_answer(moto) -> tuple[str, bytes]:
    """(AccessKeyId, AssumeRoleWithWebIdentity response XML) of credentials moto minted."""
    creds = moto.client("sts").assume_role(RoleArn=moto.role_arn,
                                           RoleSessionName="web-identity")["Credentials"]
    remember_secret(creds["SecretAccessKey"])
    remember_secret(creds["SessionToken"])
    expiration = creds["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")
    xml = f"""<{WI}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <{WI}Result>
    <SubjectFromWebIdentityToken>system:serviceaccount:default:vault</SubjectFromWebIdentityToken>
    <AssumedRoleUser><AssumedRoleId>AROA:web-identity</AssumedRoleId>
      <Arn>arn:aws:sts::{moto.ACCOUNT}:assumed-role/aws-vault-reader/aws-vault</Arn></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{creds["AccessKeyId"]}</AccessKeyId>
      <SecretAccessKey>{creds["SecretAccessKey"]}</SecretAccessKey>
      <SessionToken>{creds["SessionToken"]}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
  </{WI}Result>
  <ResponseMetadata><RequestId>wi-1</RequestId></ResponseMetadata>
</{WI}Response>"""
    return creds["AccessKeyId"], xml.encode()


@pytest.fixture
def token_server():
    remember_secret(JWT)
    server = TokenServer(JWT)
    yield server
    server.stop()


def test_web_identity_token_from_url(moto, proxy, token_server, make_envoy, aws):
    key, xml = sts_answer(moto)
    proxy.inject(status=200, target=WI, body=xml, times=None,
                 headers=[("Content-Type", "text/xml")])
    authority = urllib.parse.urlsplit(proxy.url).netloc
    envoy, value = start(
        moto, make_envoy, aws, "cred/web-identity",
        env={**NO_USER_KEYS, "AWS_ROLE_ARN": moto.role_arn},
        credentials={"source": "web_identity",
                     "web_identity_token_url": token_server.url + TokenServer.PATH,
                     "web_identity_token_upstream": "token",
                     "sts_endpoint_url": proxy.url, "sts_upstream": authority,
                     "sts_region": "us-east-1"},
        clusters={"token": token_server.port, authority: proxy.port})
    assert_resolved(envoy, value)

    asked = list(token_server.requests)
    assert asked and all(r == ("GET", TokenServer.PATH, 200) for r in asked), asked
    targets = [c.target for c in proxy.calls]
    assert WI in targets and targets.index(WI) < targets.index(GET), targets
    assumed = answered(proxy, WI)
    assert 1 <= len(assumed) <= 3, targets  # at most one per VM: main thread + 2 workers
    assert len(assumed) <= len(token_server.requests)  # a fresh token before every call
    for call in assumed:
        assert call.method == "POST"
        assert call.header("Authorization") is None, call.headers  # unsigned
        assert call.header("X-Amz-Security-Token") is None
        form = urllib.parse.parse_qs(call.body.decode())
        assert form["RoleArn"] == [moto.role_arn]
        assert form["WebIdentityToken"] == [JWT]
        assert form["RoleSessionName"] == ["aws-vault"]
    gets = answered(proxy, GET, "cred/web-identity")
    assert_signed_with_temporary(moto, gets)
    assert {re.search(r"Credential=([^/]+)/", c.header("Authorization")).group(1)
            for c in gets} == {key}


def test_web_identity_token_file_alone_explains(moto, proxy, make_envoy, aws, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(JWT)
    remember_secret(JWT)
    envoy, _ = start(moto, make_envoy, aws, "cred/web-identity-file",
                     env={**NO_USER_KEYS, "AWS_ROLE_ARN": moto.role_arn,
                          "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file)},
                     credentials={"source": "web_identity"})
    for _ in range(3):
        r = envoy.get()
        assert r.status_code == 503, f"{r.status_code} {r.text}"
    m = envoy.wait_log(r".*AWS_WEB_IDENTITY_TOKEN_FILE.*web_identity_token_url.*")
    assert "cannot read files" in m.group(0), m.group(0)
    assert not proxy.calls, [c.target for c in proxy.calls]  # no STS, no unsigned fallback
