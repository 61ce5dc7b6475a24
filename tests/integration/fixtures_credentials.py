"""Credentials endpoints for the filter's credential sources, serving temporary credentials
minted by moto's STS (AssumeRole with the IAM user's keys), which moto then accepts (SigV4 +
session token checked; moto does not check expiry, so `Mint` records when each key expires).

- `ContainerEndpoint`: the ECS / EKS Pod Identity container credentials endpoint
  (`GET /creds`, `Authorization: <AWS_CONTAINER_AUTHORIZATION_TOKEN>`).
- `ImdsEndpoint`: EC2 instance metadata, IMDSv2 (token required) or v1 only (token refused).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from harness import ThreadedHTTPService, read_body, remember_secret, send


@dataclass
class Issued:
    access_key_id: str
    at: float           # time.monotonic() when handed out
    expires: float      # time.monotonic() of its Expiration


class Mint:
    """Temporary credentials from moto's STS, with an Expiration `lifetime` s from now."""

    def __init__(self, moto, lifetime: float = 3600):
        self.moto, self.lifetime = moto, lifetime
        self.issued: list[Issued] = []
        self._sts = moto.client("sts")
        self._lock = threading.Lock()

    def __call__(self, **extra) -> bytes:
        """The JSON body of a container / IMDS credentials answer (+ `extra` fields)."""
        with self._lock:
            creds = self._sts.assume_role(RoleArn=self.moto.role_arn,
                                          RoleSessionName="fixture")["Credentials"]
            now = time.monotonic()
            self.issued.append(Issued(creds["AccessKeyId"], now, now + self.lifetime))
        remember_secret(creds["SecretAccessKey"])
        remember_secret(creds["SessionToken"])
        expiration = datetime.now(timezone.utc) + timedelta(seconds=self.lifetime)
        return json.dumps({**extra, "AccessKeyId": creds["AccessKeyId"],
                           "SecretAccessKey": creds["SecretAccessKey"],
                           "Token": creds["SessionToken"],
                           "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()

    def key(self, access_key_id: str) -> Issued | None:
        with self._lock:
            return next((i for i in self.issued if i.access_key_id == access_key_id), None)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]   # lower-case names
    status: int = 0
    at: float = 0.0


class CredentialsEndpoint(ThreadedHTTPService):
    """Records every request (`requests`: [Seen]) and answers with `answer(seen)`."""

    def __init__(self, mint: Mint):
        self.mint = mint
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        super().__init__()

    def answer(self, seen: Seen) -> tuple[int, bytes]:
        raise NotImplementedError

    def handle(self, handler):
        read_body(handler)
        seen = Seen(handler.command, handler.path,
                    {k.lower(): v for k, v in handler.headers.items()}, at=time.monotonic())
        seen.status, body = self.answer(seen)
        with self._lock:
            self.requests.append(seen)
        send(handler, seen.status, body, [("Content-Type", "application/json")])

    def find(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests
                    if (method is None or s.method == method) and (path is None or s.path == path)]


class ContainerEndpoint(CredentialsEndpoint):
    PATH = "/creds"

    def __init__(self, mint: Mint, token: str):
        self.token = token
        remember_secret(token)
        super().__init__(mint)
        self.full_uri = self.url + self.PATH

    def answer(self, seen):
        if (seen.method, seen.path) != ("GET", self.PATH):
            return 404, b'{"message": "not found"}'
        if seen.headers.get("authorization") != self.token:
            return 401, b'{"message": "bad authorization token"}'
        return 200, self.mint()


class ImdsEndpoint(CredentialsEndpoint):
    TOKEN_PATH = "/latest/api/token"
    ROLE_PATH = "/latest/meta-data/iam/security-credentials/"
    TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
    TOKEN_HEADER = "x-aws-ec2-metadata-token"
    ROLE = "aws-vault-instance-role"

    def __init__(self, mint: Mint, v1_only: bool = False):
        """v1_only: the token PUT is refused (403) and GETs need no token; otherwise (v2)
        GETs without a valid token get 401."""
        self.v1_only = v1_only
        self.tokens: set[str] = set()
        super().__init__(mint)

    def answer(self, seen):
        if seen.method == "PUT" and seen.path == self.TOKEN_PATH:
            if self.v1_only:
                return 403, b""
            if not seen.headers.get(self.TTL_HEADER, "").isdigit():
                return 400, b""
            token = secrets.token_urlsafe(32)
            self.tokens.add(token)
            return 200, token.encode()
        if seen.method != "GET":
            return 405, b""
        if not self.v1_only and seen.headers.get(self.TOKEN_HEADER) not in self.tokens:
            return 401, b""
        if seen.path == self.ROLE_PATH:
            return 200, self.ROLE.encode()
        if seen.path == self.ROLE_PATH + self.ROLE:
            return 200, self.mint(Code="Success", Type="AWS-HMAC",
                                  LastUpdated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return 404, b""
