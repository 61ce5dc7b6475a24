"""Process and server helpers for the integration tests and the demo.

Everything binds to 127.0.0.1. Processes (moto, Envoy) are started from the calling Python
process and stopped by it; in-process servers (echo upstream, counting proxy) run in threads.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parents[2]
WASM = REPO / "build" / "aws_vault.wasm"
LOCALHOST = "127.0.0.1"

# Environment variables the filter may read (its vm_config.environment_variables.host_env_keys,
# plus any `env_keys` a test adds); scrubbed from inherited environments so that only what a
# test passes explicitly reaches Envoy.
AWS_ENV_KEYS = [
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
    "AWS_DEFAULT_REGION", "KONG_VAULT_AWS_REGION", "KONG_VAULT_AWS_ASSUME_ROLE_ARN",
    "KONG_VAULT_AWS_ROLE_SESSION_NAME",
    # credential sources (src/aws/credentials): container, web identity, IMDS, STS
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_WEB_IDENTITY_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_V1_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_STS_REGIONAL_ENDPOINTS",
]


# Every secret value a test stored in moto, and every Envoy log written: the leak guard
# (conftest) searches the logs and every non-2xx response body for the values at the end.
SECRET_VALUES: set[str] = set()
ENVOY_LOGS: list[Path] = []
ERROR_BODIES: list[str] = []


def remember_secret(value) -> None:
    if isinstance(value, dict):
        for v in value.values():
            remember_secret(v)
    elif isinstance(value, str):
        SECRET_VALUES.add(value)
        try:
            remember_secret(json.loads(value))
        except (ValueError, TypeError):
            pass


# --------------------------------------------------------------------------- basics

def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, proc: "Proc | None" = None, interval=0.05):
    """Poll `check()` until it returns a truthy value; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - readiness probes fail in many ways
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.poll()} while waiting for {what}:\n"
                               f"{proc.log()[-6000:]}")
        if time.monotonic() > deadline:
            tail = f":\n{proc.log()[-6000:]}" if proc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOCALHOST, port)) == 0


def venv_bin(name: str) -> str:
    """Path of a console script from the project venv (never skipped: missing = error)."""
    for candidate in (Path(sys.executable).parent / name, REPO / ".venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found: run `make venv` (tests/requirements.txt)")


def clean_env(extra: dict | None = None) -> dict:
    """os.environ without AWS_* / KONG_VAULT_AWS_* variables, plus `extra` (a None value
    unsets the variable)."""
    env = {k: v for k, v in os.environ.items()
           if k not in AWS_ENV_KEYS and not k.startswith("AWS_")}
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}


def _die_with_parent():  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Proc:
    """A child process whose stdout+stderr go to a log file; stop() terminates then kills."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env=None, cwd=None):
        self.name, self.argv, self.log_path = name, argv, Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)

    def poll(self):
        return self.popen.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._log_file.close()


# --------------------------------------------------------------------------- in-process HTTP

def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Request body by Content-Length or chunked transfer coding."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers=()):
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) drops connections in a burst (200 clients through
    # Envoy): Envoy then answers 503 after its 1 s connect timeout, which is not the filter.
    request_queue_size = 1024
    daemon_threads = True


class ThreadedHTTPService:
    """Base for a ThreadingHTTPServer on 127.0.0.1 served from a daemon thread.

    Subclasses implement `handle(handler)`; it is called for every method."""

    def __init__(self, port: int = 0):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                service.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any

        self.server = _Server((LOCALHOST, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{LOCALHOST}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name=type(self).__name__)
        self._thread.start()

    def handle(self, handler: BaseHTTPRequestHandler):
        raise NotImplementedError

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class EchoUpstream(ThreadedHTTPService):
    """Answers 200 with {"method", "path", "headers": {lower-name: [values...]}, "body"}."""

    def __init__(self, port: int = 0):
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        super().__init__(port)

    def handle(self, handler):
        body = read_body(handler)
        headers: dict[str, list[str]] = {}
        for name, value in handler.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        seen = {"method": handler.command, "path": handler.path, "headers": headers,
                "body": body.decode(errors="replace")}
        with self._lock:
            self.requests.append(seen)
        send(handler, 200, json.dumps(seen).encode(), [("Content-Type", "application/json")])


# --------------------------------------------------------------------------- moto

class Moto:
    """moto_server with an IAM user allowed secretsmanager:* and sts:*, SigV4/IAM checks on.

    `access_key`/`secret_key` are the user's keys; `client()` uses them (boto3)."""

    ACCOUNT = "123456789012"
    POLICY = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["secretsmanager:*", "sts:*"], "Resource": "*"}]}

    def __init__(self, log_dir: Path, port: int | None = None, user: str = "aws-vault"):
        self.port = port or free_port()
        self.url = f"http://{LOCALHOST}:{self.port}"
        self.proc = Proc("moto", [venv_bin("moto_server"), "-H", LOCALHOST, "-p", str(self.port)],
                         Path(log_dir) / f"moto-{self.port}.log", env=clean_env())
        try:
            wait_until(self._answers, 30, "moto to answer", self.proc)
            self._setup(user)
        except BaseException:
            self.proc.stop()
            raise

    def _answers(self):
        try:
            urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1)
        except urllib.error.HTTPError:
            pass
        return True

    def _setup(self, user: str):
        boot = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
        iam = self.client("iam", **boot)
        user_arn = iam.create_user(UserName=user)["User"]["Arn"]
        iam.put_user_policy(UserName=user, PolicyName="aws-vault",
                            PolicyDocument=json.dumps(self.POLICY))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        # A role the user may assume (for assume_role_arn tests); created before auth is on.
        # moto matches the trust principal literally: name the user (the account root fails).
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": user_arn}}]}
        self.role_arn = iam.create_role(RoleName="aws-vault-reader",
                                        AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        iam.put_role_policy(RoleName="aws-vault-reader", PolicyName="aws-vault",
                            PolicyDocument=json.dumps(self.POLICY))
        self.set_auth(True)
        try:  # prove checking is on: a wrong secret key must be refused
            self.client(aws_access_key_id=self.access_key, aws_secret_access_key="x").list_secrets()
        except ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] == 403:
                return
            raise
        raise RuntimeError("moto accepted a wrong secret key: SigV4 checking is off")

    def set_auth(self, on: bool):
        """Switch SigV4 + IAM policy checking on (or off) from the next request."""
        body = b"0" if on else b"inf"
        # Not form-encoded: moto reads the raw body (a form Content-Type leaves it empty -> 500).
        request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=body,
                                         headers={"Content-Type": "text/plain"}, method="POST")
        urllib.request.urlopen(request, timeout=5).read()

    @property
    def credentials_env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self, service="secretsmanager", region="us-east-1", endpoint_url=None, **keys):
        """boto3 client signed with the IAM user's keys (or `keys`), talking to moto directly
        (or to `endpoint_url`, e.g. the counting proxy)."""
        keys = keys or {"aws_access_key_id": self.access_key,
                        "aws_secret_access_key": self.secret_key}
        no_retries = Config(retries={"mode": "standard", "total_max_attempts": 1})
        return boto3.client(service, region_name=region, endpoint_url=endpoint_url or self.url,
                            config=no_retries, **keys)

    def put_secret(self, name: str, value, region="us-east-1", binary=False) -> str:
        """Create the secret, or add a new AWSCURRENT version (old one -> AWSPREVIOUS).

        `value`: dict (JSON-encoded), str, or bytes with binary=True. Returns the VersionId."""
        sm = self.client(region=region)
        remember_secret(value)
        field = "SecretBinary" if binary else "SecretString"
        value = json.dumps(value) if isinstance(value, dict) else value
        try:
            return sm.create_secret(Name=name, **{field: value})["VersionId"]
        except ClientError as e:
            if e.response["Error"]["Code"] != "ResourceExistsException":
                raise
            return sm.put_secret_value(SecretId=name, **{field: value})["VersionId"]

    def stop(self):
        self.proc.stop()


# --------------------------------------------------------------------------- Envoy

def _addr(port: int) -> dict:
    return {"socket_address": {"address": LOCALHOST, "port_value": port}}


def _cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}]}}


def wasm_filter(plugin_config: dict, wasm: Path | str = WASM, env_keys=()) -> dict:
    """The envoy.filters.http.wasm entry for the aws_vault plugin (JSON config as StringValue).

    The filter sees the variables of AWS_ENV_KEYS and `env_keys` (when Envoy has them)."""
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": "aws_vault", "root_id": "aws_vault",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": json.dumps(plugin_config)},
            "vm_config": {"vm_id": "aws_vault", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(wasm)}},
                          "environment_variables": {
                              "host_env_keys": AWS_ENV_KEYS + list(env_keys)}}}}}


def _listener(name: str, port: int, plugin_configs: list[dict], wasm, env_keys) -> dict:
    """A listener on 127.0.0.1:port: its aws_vault filters (one per plugin config, in order,
    all in the same VM) -> router -> cluster `echo`."""
    http_filters = [wasm_filter(c, wasm, env_keys) for c in plugin_configs]
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                    ".v3.HttpConnectionManager",
           "stat_prefix": name,
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]},
           "http_filters": http_filters}
    return {"name": name, "address": _addr(port), "filter_chains": [
        {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                      "typed_config": hcm}]}]}


def envoy_config(plugin_config: dict | None, *, listen_port: int, admin_port: int,
                 echo_port: int, moto_port: int, wasm: Path | str = WASM,
                 clusters: dict[str, int] | None = None, env_keys=(),
                 listeners: list[tuple[int, list[dict]]] | None = None) -> dict:
    """Listener -> (aws_vault filter unless plugin_config is None) -> router -> cluster `echo`;
    cluster `moto` is what the filter's callouts use (`"upstream": "moto"`).

    `clusters`: more {name: 127.0.0.1 port} clusters for callouts (a name may be an authority
    such as "127.0.0.1:8080", the filter's default upstream for a URL). `env_keys`: variables
    the filter may read besides AWS_ENV_KEYS. `listeners`: more (port, [plugin configs])
    listeners; every aws_vault filter of every listener shares one VM (vm_id `aws_vault`)."""
    first = [] if plugin_config is None else [plugin_config]
    all_listeners = [_listener("ingress", listen_port, first, wasm, env_keys)]
    for i, (port, configs) in enumerate(listeners or []):
        all_listeners.append(_listener(f"ingress{i + 1}", port, configs, wasm, env_keys))
    return {
        "admin": {"address": _addr(admin_port)},
        "static_resources": {
            "listeners": all_listeners,
            "clusters": [_cluster("echo", echo_port), _cluster("moto", moto_port),
                         *(_cluster(name, port) for name, port in (clusters or {}).items())]}}


def lds_bootstrap(*, admin_port: int, lds_path: Path, echo_port: int, moto_port: int) -> dict:
    """A bootstrap whose listeners come from `lds_path` (see `write_lds`), re-read when the
    file is replaced: a configuration push, as a control plane would send it."""
    return {
        "node": {"id": "aws-vault-test", "cluster": "aws-vault-test"},
        "admin": {"address": _addr(admin_port)},
        "dynamic_resources": {"lds_config": {"path_config_source": {"path": str(lds_path)},
                                             "resource_api_version": "V3"}},
        "static_resources": {"clusters": [_cluster("echo", echo_port),
                                          _cluster("moto", moto_port)]}}


def write_lds(lds_path: Path, version: str, port: int, plugin_configs: list[dict],
              wasm: Path | str = WASM) -> None:
    """Replace the LDS file atomically (Envoy watches for the rename) with one listener
    `ingress` on `port` running these aws_vault filters."""
    listener = _listener("ingress", port, plugin_configs, wasm, ())
    listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
    tmp = lds_path.with_name(lds_path.name + ".tmp")
    tmp.write_text(json.dumps({"version_info": version, "resources": [listener]}))
    os.replace(tmp, lds_path)


def write_config(config: dict, directory: Path) -> Path:
    """Write an Envoy bootstrap as YAML (JSON is YAML) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "envoy.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def validate(config_file: Path | str, env: dict | None = None, cwd=REPO) -> tuple[int, str]:
    """`envoy --mode validate -c FILE` (runs the filter's on_configure): (exit code, output)."""
    out = subprocess.run([venv_bin("envoy"), "--mode", "validate", "-c", str(config_file),
                          "--log-level", "info", "--component-log-level", "wasm:debug"],
                         capture_output=True, text=True, env=clean_env(env), cwd=cwd, timeout=120)
    return out.returncode, out.stdout + out.stderr


class Envoy:
    """A running Envoy. `url` = listener, `admin_url`, `log()`, `stats()`, `get()`."""

    def __init__(self, config_file: Path | str, *, listen_port: int, admin_port: int,
                 env: dict | None = None, concurrency: int = 2, log_level: str = "info",
                 log_dir: Path | None = None, cwd: Path | str = REPO, timeout: float = 60,
                 extra_args: tuple[str, ...] = ()):
        self.config_file = Path(config_file)
        self.url = f"http://{LOCALHOST}:{listen_port}"
        self.urls = [self.url]
        self.admin_url = f"http://{LOCALHOST}:{admin_port}"
        self.listen_port = listen_port
        self.http = requests.Session()
        self.http.trust_env = False
        argv = [venv_bin("envoy"), "-c", str(self.config_file), "--concurrency", str(concurrency),
                "--log-level", log_level, "--component-log-level", "wasm:trace",
                "--disable-hot-restart", *extra_args]
        log_path = Path(log_dir or self.config_file.parent) / f"envoy-{listen_port}.log"
        self.proc = Proc("envoy", argv, log_path, env=clean_env(env), cwd=cwd)
        ENVOY_LOGS.append(log_path)
        try:
            wait_until(self._ready, timeout, "Envoy /ready and listener", self.proc)
        except BaseException:
            self.stop()
            raise

    @classmethod
    def with_plugin(cls, plugin_config: dict | None, *, workdir: Path, echo_port: int,
                    moto_port: int, wasm: Path | str = WASM, clusters: dict | None = None,
                    env_keys=(), listeners: list[list[dict]] | None = None,
                    **kwargs) -> "Envoy":
        """`listeners`: more listeners, each a list of plugin configs (its aws_vault filters);
        their URLs are in `envoy.urls[1:]`."""
        listen_port, admin_port = free_port(), free_port()
        more = [(free_port(), configs) for configs in (listeners or [])]
        config = envoy_config(plugin_config, listen_port=listen_port, admin_port=admin_port,
                              echo_port=echo_port, moto_port=moto_port, wasm=wasm,
                              clusters=clusters, env_keys=env_keys, listeners=more)
        envoy = cls(write_config(config, workdir), listen_port=listen_port,
                    admin_port=admin_port, log_dir=workdir, **kwargs)
        envoy.urls += [f"http://{LOCALHOST}:{port}" for port, _ in more]
        try:
            for port, _ in more:
                wait_until(lambda p=port: port_open(p), 30, f"listener {port}", envoy.proc)
        except BaseException:
            envoy.stop()
            raise
        return envoy

    def _ready(self) -> bool:
        r = self.http.get(f"{self.admin_url}/ready", timeout=1)
        return r.status_code == 200 and port_open(self.listen_port)

    def get(self, path="/", listener: int = 0, **kwargs) -> requests.Response:
        """GET through listener number `listener` (0: the first)."""
        kwargs.setdefault("timeout", 30)
        r = self.http.get(self.urls[listener] + path, **kwargs)
        if r.status_code >= 300:
            ERROR_BODIES.append(r.text)
        return r

    def log(self) -> str:
        return self.proc.log()

    def wait_log(self, pattern: str, timeout: float = 10) -> re.Match:
        """Wait until the log matches `pattern` (regex); return the match."""
        return wait_until(lambda: re.search(pattern, self.log()), timeout, f"log /{pattern}/")

    def stats(self) -> dict:
        """Admin /stats as {name: int or str}."""
        text = self.http.get(f"{self.admin_url}/stats", timeout=5).text
        stats = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            stats[name] = int(value) if value.isdigit() else value
        return stats

    def stop(self):
        self.http.close()
        self.proc.stop()


def build_wasm() -> Path:
    """`make build` (cargo, wasm32-wasip1) and return build/aws_vault.wasm."""
    subprocess.run(["make", "-C", str(REPO), "build"], check=True)
    if not WASM.exists():
        raise FileNotFoundError(f"`make build` did not produce {WASM}")
    return WASM
