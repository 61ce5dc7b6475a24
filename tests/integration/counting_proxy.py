"""A reverse proxy between Envoy and moto that records calls and injects faults.

Requests are forwarded unchanged (method, path, every header including Host and the SigV4
headers, body), so signatures made for the proxy's address verify at moto. Each call is
recorded with its API operation (`X-Amz-Target`, or `Action` of a form-encoded query-protocol
body such as STS), the `SecretId`/`VersionStage` of a JSON body, and the status returned.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

from harness import LOCALHOST, ThreadedHTTPService, read_body, send

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
              "proxy-connection", "te", "trailer"}


@dataclass
class Call:
    method: str
    path: str
    target: str | None          # e.g. "secretsmanager.GetSecretValue", "AssumeRole"
    secret_id: str | None
    version_stage: str | None
    headers: list[tuple[str, str]]
    body: bytes
    status: int | None = None   # returned to the client; None = connection dropped
    at: float = field(default_factory=time.monotonic)  # when it arrived (time.monotonic())

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class Fault:
    """Applied to the next `times` matching calls (`times=None`: until cleared).

    `status` set: answer with status/body/headers instead of forwarding. `delay`: sleep
    first. `drop`: close the connection without any response."""
    status: int | None = None
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0
    drop: bool = False
    times: int | None = 1
    target: str | None = None
    secret_id: str | None = None

    def matches(self, call: Call) -> bool:
        return ((self.target is None or self.target == call.target)
                and (self.secret_id is None or self.secret_id == call.secret_id))


def _describe(headers, body: bytes) -> tuple[str | None, str | None, str | None]:
    target = headers.get("X-Amz-Target")
    secret_id = stage = None
    try:
        if target:
            doc = json.loads(body or b"{}")
            secret_id, stage = doc.get("SecretId"), doc.get("VersionStage")
        elif "x-www-form-urlencoded" in headers.get("Content-Type", ""):
            target = urllib.parse.parse_qs(body.decode()).get("Action", [None])[0]
    except (ValueError, AttributeError):
        pass
    return target, secret_id, stage


class CountingProxy(ThreadedHTTPService):
    def __init__(self, backend_port: int, port: int = 0):
        self.backend_port = backend_port
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        super().__init__(port)

    # ---- API for tests

    def reset(self):
        with self._lock:
            self.calls.clear()
            self.faults.clear()

    def counts(self) -> Counter:
        """Calls per operation (X-Amz-Target or query Action)."""
        with self._lock:
            return Counter(c.target for c in self.calls)

    def find(self, target: str | None = None, secret_id: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if (target is None or c.target == target)
                    and (secret_id is None or c.secret_id == secret_id)]

    def get_secret_value_calls(self, secret_id: str | None = None) -> list[Call]:
        return self.find("secretsmanager.GetSecretValue", secret_id)

    def inject(self, **kwargs) -> Fault:
        """inject(status=500, body=b'...', times=2, target='secretsmanager.GetSecretValue')"""
        fault = Fault(**kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self):
        with self._lock:
            self.faults.clear()

    # ---- proxying

    def _take_fault(self, call: Call) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(call):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def handle(self, handler):
        body = read_body(handler)
        target, secret_id, stage = _describe(handler.headers, body)
        call = Call(handler.command, handler.path, target, secret_id, stage,
                    list(handler.headers.items()), body)
        with self._lock:
            self.calls.append(call)
        fault = self._take_fault(call)
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and fault.drop:
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if fault and fault.status is not None:
            call.status = fault.status
            send(handler, fault.status, fault.body, fault.headers)
            return
        status, reason, headers, rbody = self._forward(handler, body)
        call.status = status
        handler.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(rbody)))
        handler.end_headers()
        handler.wfile.write(rbody)

    def _forward(self, handler, body: bytes):
        conn = http.client.HTTPConnection(LOCALHOST, self.backend_port, timeout=30)
        try:
            conn.putrequest(handler.command, handler.path, skip_host=True,
                            skip_accept_encoding=True)
            chunked = False
            for name, value in handler.headers.items():
                chunked |= name.lower() == "transfer-encoding" and "chunked" in value.lower()
                conn.putheader(name, value)
            if chunked:  # re-encode what read_body() decoded
                body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
            conn.endheaders(body or None)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()
