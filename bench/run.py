#!/usr/bin/env python3
"""Benchmark of the aws_vault filter in Envoy (`make bench`; see bench/README.md).

Warm throughput, interleaved rounds on 127.0.0.1, one Envoy per configuration:
  none        Envoy, no HTTP filter but the router (ceiling)
  native      Envoy's credential_injector (generic credential from an SDS file)
  wasm_empty  aws_vault with nothing to inject (the SDK filter's fixed cost)
  floor       bench/floor: a raw-ABI proxy-wasm module setting the same header with one host
              call per request, nothing else (the proxy-wasm floor)
  wasm_1ref   aws_vault, warm cache, `authorization: Bearer {vault://aws/bench/api/token}`
  wasm_4ref   (--with-4ref) aws_vault, one header with four references from two secrets
All inject the same header (`authorization`) and talk to the same upstream (an Envoy serving
a direct response). aws_vault is compared with the floor per round (paired: requests/s ratio
and CPU time per request difference, floor and wasm_1ref measured back to back). Then the
Envoy RSS after 300 requests (none, floor, wasm_1ref; 1 and 4 workers), a cold start (K
secrets, M simultaneous requests right after Envoy is ready, 2 workers), the .wasm size and
the native SigV4 signing cost (`cargo bench --bench sigv4`). Writes bench/results.json and
bench/results.png (`--quick`: bench/results-quick.*).

CPU layout on a 2-core machine (see README): the Envoy under test has one worker
(--concurrency 1) and is pinned to CPU 0; wrk (1 thread, 32 keep-alive connections) and the
upstream Envoy (1 worker) share the other CPU(s). The Envoy under test is thus the bottleneck,
and its requests/s and CPU time per request measure the filter's cost.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

from counting_proxy import CountingProxy  # noqa: E402
from harness import (LOCALHOST, WASM, Envoy, Moto, build_wasm, envoy_config,  # noqa: E402
                     free_port, validate, venv_bin, write_config)

# Warm configurations, in rotation order (floor and wasm_1ref form one unit: see round_order).
CONFIGS = ["none", "native", "wasm_empty", "floor", "wasm_1ref"]
CONFIG_4REF = "wasm_4ref"  # --with-4ref (adds ~20% to the warm rounds)
TOKEN = "s3cr3t-token-0123456789abcdef"  # also bench/floor/src/lib.rs (VALUE)
SECRETS = {"bench/api": {"token": TOKEN},
           "bench/a": {"user": "alice", "pass": "pa55w0rd-alice"},
           "bench/b": {"key": "AKIAEXAMPLEKEY", "sig": "c2lnbmF0dXJlLXZhbHVl"}}
HEADER_1REF = "Bearer {vault://aws/bench/api/token}"
HEADER_4REF = ("Custom {vault://aws/bench/a/user}:{vault://aws/bench/a/pass};"
               "{vault://aws/bench/b/key}:{vault://aws/bench/b/sig}")
EXPECTED = {"native": f"Bearer {TOKEN}", "floor": f"Bearer {TOKEN}",
            "wasm_1ref": f"Bearer {TOKEN}",
            "wasm_4ref": "Custom alice:pa55w0rd-alice;AKIAEXAMPLEKEY:c2lnbmF0dXJlLXZhbHVl"}

FLOOR_DIR = BENCH / "floor"
FLOOR_TARGET_DIR = REPO / "target" / "bench-floor"  # under /target: ignored, `make clean`
WASM_TARGET = "wasm32-wasip1"

# RSS: dedicated Envoys (unpinned), these configs and worker counts, after this many requests.
RSS_CONFIGS = ["none", "floor", "wasm_1ref"]
RSS_WORKERS = [1, 4]
RSS_REQUESTS = 300
RSS_REPS = 3  # Envoys per config and worker count (configs alternate); the median is kept

GOALS = {"cpu_us_vs_floor": 1.0, "rps_vs_floor": 0.99, "rss_mib_vs_floor": 10.0,
         "wasm_max_bytes": 350_000, "cold_extra_wait_ms": 5.0}
APT_LOCK_WAIT_S = 300
APT_GET = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"]


def log(*args):
    print("[bench]", *args, flush=True)


# --------------------------------------------------------------------------- environment

def apt_update():
    """`apt-get update`, waiting for another apt holding the package lists: apt-get waits
    for the dpkg lock (DPkg::Lock::Timeout) but not for the lists lock (apt 2.6)."""
    deadline = time.monotonic() + APT_LOCK_WAIT_S
    while True:
        p = subprocess.run([*APT_GET, "update", "-qq"], check=False, capture_output=True,
                           text=True)
        if p.returncode == 0:
            return
        if "Could not get lock" not in p.stderr or time.monotonic() > deadline:
            sys.exit(f"apt-get update failed:\n{p.stdout}{p.stderr}")
        log("apt-get update: the package lists are locked by another apt; retrying in 5 s")
        time.sleep(5)


def ensure_wrk() -> str:
    """wrk from Debian; installed with apt-get (after `apt-get update` only if needed)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("wrk is missing: apt-get install -y wrk (needs root)")
    policy = subprocess.run(["apt-cache", "policy", "wrk"], check=False, capture_output=True,
                            text=True).stdout
    if not re.search(r"Candidate:\s*\d", policy):
        log("apt-get update (no candidate for wrk in the package lists)")
        apt_update()
    log("apt-get install -y wrk")
    subprocess.run([*APT_GET, "install", "-y", "-qq", "wrk"], check=True,
                   stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") or sys.exit("wrk still missing after apt-get install")


def build_floor() -> Path:
    """bench/floor (its own Cargo workspace) -> target/bench-floor/.../floor.wasm."""
    if shutil.which("rustup") and WASM_TARGET not in run_text(
            ["rustup", "target", "list", "--installed"]).split():
        subprocess.run(["rustup", "target", "add", WASM_TARGET], check=True)
    argv = ["cargo", "build", "--release", "--quiet", "--target", WASM_TARGET,
            "--manifest-path", str(FLOOR_DIR / "Cargo.toml"),
            "--target-dir", str(FLOOR_TARGET_DIR)]
    log(" ".join(argv[:8]) + " ...")
    subprocess.run(argv, check=True)
    path = FLOOR_TARGET_DIR / WASM_TARGET / "release" / "floor.wasm"
    if not path.exists():
        raise FileNotFoundError(f"the floor build did not produce {path}")
    return path


def code_sizes(wasm: Path) -> list[int]:
    """Body size of every function in the module's code section."""
    data = wasm.read_bytes()

    def leb(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, i

    i, sizes = 8, []
    while i < len(data):
        section = data[i]
        length, i = leb(i + 1)
        if section == 10:
            count, j = leb(i)
            for _ in range(count):
                size, j = leb(j)
                sizes.append(size)
                j += size
        i += length
    return sizes


def function_sizes(wasm: Path) -> dict:
    """How the module's code is cut into functions: V8 compiles each with TurboFan at load,
    and the largest set how much memory Envoy keeps (README, "Memory by module shape")."""
    sizes = sorted(code_sizes(wasm), reverse=True)
    return {"functions": len(sizes), "code_bytes": sum(sizes),
            "over_1kb": sum(1 for s in sizes if s > 1024), "largest": sizes[:8]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_text(argv, **kw) -> str:
    try:
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, **kw)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e})"


def machine_info(wrk: str) -> dict:
    cpu_model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    envoy_v = run_text([venv_bin("envoy"), "--version"])
    m = re.search(r"version:\s*([0-9a-f]+)/([^/\s]+)", envoy_v)
    commit = run_text(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = run_text(["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain",
                      "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu_model, "mem_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(), "loadavg_start": os.getloadavg(),
        "versions": {
            "envoy": f"{m.group(2)} ({m.group(1)[:12]})" if m else envoy_v,
            "rustc": run_text(["rustc", "--version"]),
            "wrk": run_text([wrk, "--version"]).splitlines()[0],
            "python": platform.python_version(),
            "filter_commit": commit, "filter_tree_dirty": bool(dirty.strip()),
        },
    }


# --------------------------------------------------------------------------- /proc helpers

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of a /proc/.../stat file."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (all threads), seconds."""
    return stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK


def cpu_busy_s(cpu: int) -> tuple[float, float]:
    """(busy, total) seconds of one CPU from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]
            return (sum(v[:8]) - idle) / CLK_TCK, sum(v[:8]) / CLK_TCK
    return 0.0, 0.0


def rss_kib(pid: int) -> dict:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def pin(pid: int, cpus: set[int] | None):
    """Pin every thread of a process (threads made later inherit the main thread's mask)."""
    if not cpus:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


# --------------------------------------------------------------------------- configs

def upstream_config(listen_port: int, admin_port: int, echo_headers: list[str]) -> dict:
    """The shared upstream: an Envoy answering 200 "ok" itself. `/check` also echoes the
    injected headers back as `x-seen-<name>` (for verification; not used under load)."""
    ok = {"status": 200, "body": {"inline_string": "ok\n"}}
    echo = [{"header": {"key": f"x-seen-{h}", "value": f"%REQ({h})%"}} for h in echo_headers]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                    ".v3.HttpConnectionManager",
           "stat_prefix": "upstream",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/check"}, "direct_response": ok,
                "response_headers_to_add": echo},
               {"match": {"prefix": "/"}, "direct_response": ok}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    addr = lambda p: {"socket_address": {"address": LOCALHOST, "port_value": p}}  # noqa: E731
    return {"admin": {"address": addr(admin_port)}, "static_resources": {"listeners": [
        {"name": "upstream", "address": addr(listen_port), "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}]}]}}


def native_filter(sds_path: Path) -> dict:
    return {"name": "envoy.filters.http.credential_injector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3"
                 ".CredentialInjector",
        "overwrite": True,
        "credential": {"name": "envoy.http.injected_credentials.generic", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3"
                     ".Generic",
            "credential": {"name": "bench-credential",
                           "sds_config": {"path_config_source": {"path": str(sds_path)}}},
            "header": "authorization"}}}}


def sds_file(path: Path, value: str) -> Path:
    """An SDS DiscoveryResponse with one generic secret."""
    path.write_text(json.dumps({"resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "bench-credential", "generic_secret": {"secret": {"inline_string": value}}}]},
        indent=2))
    return path


def aws_settings(proxy: CountingProxy) -> dict:
    # ttl absent = never refreshed: nothing but cached values during the warm rounds.
    return {"region": "us-east-1", "endpoint_url": proxy.url, "upstream": "moto"}


def sut_config(name: str, workdir: Path, *, upstream_port: int, proxy: CountingProxy,
               wasm: Path, floor_wasm: Path | None = None,
               subdir: str | None = None) -> tuple[Path, int, int]:
    """Bootstrap of one Envoy under test (harness.envoy_config + node + native filter),
    written to workdir/<subdir or name>/envoy.yaml."""
    plugin = None
    if name == "wasm_empty":
        # The filter with nothing to inject: what the SDK filter costs without header work.
        plugin = {"aws": aws_settings(proxy)}
    elif name == "wasm_1ref":
        plugin = {"aws": aws_settings(proxy), "request_headers": {"authorization": HEADER_1REF}}
    elif name == "wasm_4ref":
        plugin = {"aws": aws_settings(proxy), "request_headers": {"authorization": HEADER_4REF}}
    elif name == "floor":
        plugin = {}  # the floor reads no configuration; same filter and vm_config shape
    elif name.startswith("cold"):
        plugin = {"aws": aws_settings(proxy), "request_headers": {
            f"x-s{i}": f"{{vault://aws/bench/cold/s{i}/v}}" for i in range(cold_k(name))}}
    listen_port, admin_port = free_port(), free_port()
    config = envoy_config(plugin, listen_port=listen_port, admin_port=admin_port,
                          echo_port=upstream_port, moto_port=proxy.port,
                          wasm=floor_wasm if name == "floor" else wasm)
    config["node"] = {"id": f"bench-{name}", "cluster": "bench"}  # SDS needs a node
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    if name == "floor":
        if floor_wasm is None:
            raise ValueError("the floor config needs floor_wasm")
        wasm_config = hcm["typed_config"]["http_filters"][0]["typed_config"]["config"]
        wasm_config["name"] = wasm_config["root_id"] = wasm_config["vm_config"]["vm_id"] = "floor"
    if name == "native":
        hcm["typed_config"]["http_filters"].insert(
            0, native_filter(sds_file(workdir / "native-sds.yaml", EXPECTED["native"])))
    d = workdir / (subdir or name)
    return write_config(config, d), listen_port, admin_port


def cold_k(name: str) -> int:
    return int(name.split("_k", 1)[1])


def start_envoy(path: Path, listen_port: int, admin_port: int, env: dict,
                concurrency: int) -> Envoy:
    rc, out = validate(path, env)
    if rc != 0:
        raise RuntimeError(f"envoy --mode validate failed for {path}:\n{out[-4000:]}")
    envoy = Envoy(path, listen_port=listen_port, admin_port=admin_port, env=env,
                  concurrency=concurrency, log_dir=path.parent)
    # The harness runs Envoy with wasm:debug logging; benchmark at warning for all.
    envoy.http.post(f"{envoy.admin_url}/logging?level=warning", timeout=5).raise_for_status()
    return envoy


# --------------------------------------------------------------------------- warm rounds

def wrk_run(wrk: str, url: str, *, duration: float, connections: int, threads: int,
            cpus: set[int] | None) -> tuple[dict, float]:
    """One wrk run; returns (wrk's JSON summary, wrk's CPU seconds)."""
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
            "--timeout", "5s", "-s", str(BENCH / "wrk_report.lua"), url]
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    m = re.search(r"^WRK_JSON (.*)$", text, re.MULTILINE)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{text}")
    return json.loads(m.group(1)), usage.ru_utime + usage.ru_stime


def measure(wrk: str, envoy: Envoy, upstream: Envoy, *, duration: float, connections: int,
            cpu_sut: set[int] | None, cpu_rest: set[int] | None) -> dict:
    pin(envoy.proc.popen.pid, cpu_sut)
    pin(upstream.proc.popen.pid, cpu_rest)
    cpu0 = min(cpu_sut) if cpu_sut else 0
    sut0, up0, (busy0, tot0) = (proc_cpu_s(envoy.proc.popen.pid),
                                proc_cpu_s(upstream.proc.popen.pid), cpu_busy_s(cpu0))
    t0 = time.monotonic()
    w, wrk_cpu = wrk_run(wrk, envoy.url + "/", duration=duration, connections=connections,
                         threads=1, cpus=cpu_rest)
    wall = time.monotonic() - t0
    sut1, up1, (busy1, tot1) = (proc_cpu_s(envoy.proc.popen.pid),
                                proc_cpu_s(upstream.proc.popen.pid), cpu_busy_s(cpu0))
    errors = {k: w[k] for k in ("connect_errors", "read_errors", "write_errors",
                                "status_errors", "timeouts")}
    if any(errors.values()):
        raise RuntimeError(f"errors under load at {envoy.url}: {errors}")
    sut_cpu = sut1 - sut0
    secs = w["duration_us"] / 1e6
    return {
        "rps": w["requests"] / secs, "requests": w["requests"], "seconds": secs,
        "p50_ms": w["lat_p50_us"] / 1000, "p90_ms": w["lat_p90_us"] / 1000,
        "p99_ms": w["lat_p99_us"] / 1000, "max_ms": w["lat_max_us"] / 1000,
        "envoy_cpu_us_per_req": 1e6 * sut_cpu / max(w["requests"], 1),
        "envoy_cpu_util": sut_cpu / wall,
        "upstream_cpu_util": (up1 - up0) / wall, "wrk_cpu_util": wrk_cpu / wall,
        # Work on the Envoy's CPU that was not this Envoy's (other processes: noise).
        "foreign_util_on_envoy_cpu": max(0.0, ((busy1 - busy0) - sut_cpu) / max(tot1 - tot0, 1e-9))
        if cpu_sut else None,
    }


def round_order(configs: list[str], r: int) -> list[str]:
    """Round r's order: the configs rotate by one place each round, floor and wasm_1ref
    counting as one unit, measured back to back in an order that alternates each round
    (so that each paired difference compares two measurements a few seconds apart)."""
    pair = ["floor", "wasm_1ref"] if r % 2 == 0 else ["wasm_1ref", "floor"]
    units: list[list[str]] = []
    for c in configs:
        if c == "floor" and "wasm_1ref" in configs:
            units.append(pair)
        elif not (c == "wasm_1ref" and "floor" in configs):
            units.append([c])
    k = r % len(units)
    return [c for unit in units[k:] + units[:k] for c in unit]


def spread(xs: list[float], prefix: str) -> dict:
    return {f"{prefix}_per_round": xs, f"{prefix}_median": statistics.median(xs),
            f"{prefix}_min": min(xs), f"{prefix}_max": max(xs)}


def vs_floor(rounds: list[dict], configs: list[str]) -> dict:
    """Paired figures against the floor, round by round: requests/s ratio (config / floor)
    and Envoy CPU µs per request difference (config - floor), each from the two
    measurements of the same round; summarized by median, min and max."""
    out = {}
    for c in configs:
        if c == "floor":
            continue
        out[c] = {**spread([r[c]["rps"] / r["floor"]["rps"] for r in rounds], "rps_ratio"),
                  **spread([r[c]["envoy_cpu_us_per_req"] - r["floor"]["envoy_cpu_us_per_req"]
                            for r in rounds], "cpu_us_diff")}
    return out


RATIO_PAIRS = [("wasm_1ref", "floor"), ("wasm_empty", "floor"), ("wasm_4ref", "floor"),
               ("floor", "none"), ("wasm_1ref", "none"), ("wasm_4ref", "none"),
               ("native", "none"), ("wasm_1ref", "native"), ("wasm_4ref", "native"),
               ("wasm_empty", "none"), ("wasm_1ref", "wasm_empty")]


def summarize(rounds: list[dict], configs: list[str]) -> dict:
    by = {c: [r[c] for r in rounds] for c in configs}
    med = lambda xs: statistics.median(xs)  # noqa: E731
    summary = {}
    for c, rs in by.items():
        rps = [r["rps"] for r in rs]
        summary[c] = {
            "rps_median": med(rps), "rps_min": min(rps), "rps_max": max(rps),
            "p50_ms_median": med([r["p50_ms"] for r in rs]),
            "p99_ms_median": med([r["p99_ms"] for r in rs]),
            "envoy_cpu_us_per_req_median": med([r["envoy_cpu_us_per_req"] for r in rs]),
            "envoy_cpu_util_median": med([r["envoy_cpu_util"] for r in rs]),
            "foreign_util_median": med([r["foreign_util_on_envoy_cpu"] or 0 for r in rs]),
        }
        # The Envoy under test is the bottleneck when its CPU is busy (by it or by others).
        summary[c]["envoy_cpu_saturated"] = (summary[c]["envoy_cpu_util_median"]
                                             + summary[c]["foreign_util_median"]) >= 0.9
    ratios = {}
    for a, b in RATIO_PAIRS:
        if a not in configs or b not in configs:
            continue
        per_round = [r[a]["rps"] / r[b]["rps"] for r in rounds]
        cpu_round = [r[a]["envoy_cpu_us_per_req"] / r[b]["envoy_cpu_us_per_req"] for r in rounds]
        ratios[f"{a}/{b}"] = {"rps_per_round": per_round, "rps_median": med(per_round),
                              "rps_min": min(per_round), "rps_max": max(per_round),
                              "cpu_per_req_per_round": cpu_round,
                              "cpu_per_req_median": med(cpu_round)}
    foreign = [r[c]["foreign_util_on_envoy_cpu"] or 0 for r in rounds for c in configs]
    return {"configs": summary, "ratios": ratios, "vs_floor": vs_floor(rounds, configs),
            "noise": {"foreign_util_on_envoy_cpu_median": med(foreign),
                      "foreign_util_on_envoy_cpu_max": max(foreign),
                      "quiet": max(foreign) < 0.05}}


# --------------------------------------------------------------------------- RSS

def requests_on_new_connections(port: int, n: int, expected: str | None) -> int:
    """n GET /check, each on a new connection (so that they spread over the workers);
    returns how many were not 200 with the expected authorization header."""
    bad = 0
    for _ in range(n):
        conn = http.client.HTTPConnection(LOCALHOST, port, timeout=30)
        try:
            conn.request("GET", "/check", headers={"Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200 or (expected is not None
                                      and resp.getheader("x-seen-authorization") != expected):
                bad += 1
        except OSError:
            bad += 1
        finally:
            conn.close()
    return bad


def malloc_kib(envoy: Envoy) -> dict[str, int]:
    """Envoy's allocator (tcmalloc) from the admin /memory: in use by the application
    (`allocated`), held from the OS (`heap_size`), and free memory kept in its caches."""
    mem = envoy.http.get(f"{envoy.admin_url}/memory", timeout=5).json()
    return {k: int(v) // 1024 for k, v in mem.items() if str(v).isdigit()}


def startup_cpu_ms(pid: int) -> dict[str, int]:
    """CPU time (ms) the Envoy used up to now (just started: loading the Wasm modules), per
    thread name: V8 compiles a module on the main thread and its own worker threads."""
    out: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        out[name] = out.get(name, 0) + stat_cpu_ticks(stat) * 1000 // CLK_TCK
    return {k: v for k, v in sorted(out.items()) if v}


def worker_connections(envoy: Envoy) -> dict[str, int]:
    """Connections each worker accepted on the listener (admin /stats)."""
    out: dict[str, int] = {}
    for k, v in envoy.stats().items():
        m = re.match(r"listener\.127\.0\.0\.1_\d+\.(worker_\d+)\.downstream_cx_total$", k)
        if m and isinstance(v, int):
            out[m.group(1)] = v
    return dict(sorted(out.items()))


def rss_after_requests(workdir: Path, *, proxy: CountingProxy, upstream_port: int, env: dict,
                       wasm: Path, floor_wasm: Path, n: int = RSS_REQUESTS,
                       reps: int = RSS_REPS) -> dict:
    """Envoy VmRSS/VmHWM after n requests, one dedicated Envoy (unpinned) per config and
    worker count, started one at a time, `reps` times with the configs alternating; with
    Envoy's allocator figures (admin /memory) and the CPU its start took per thread (V8
    compiles the modules then). Per config, the run with the median VmRSS is kept (with
    every run's VmRSS in `VmRSS_runs`): single starts differ by a few tenths of a MiB."""
    out: dict = {"requests": n, "configs": RSS_CONFIGS, "reps": reps, "workers": {}}
    for workers in RSS_WORKERS:
        runs: dict[str, list[dict]] = {name: [] for name in RSS_CONFIGS}
        for rep, name in ((r, c) for r in range(reps) for c in RSS_CONFIGS):
            path, lp, ap_ = sut_config(name, workdir, upstream_port=upstream_port, proxy=proxy,
                                       wasm=wasm, floor_wasm=floor_wasm,
                                       subdir=f"rss-w{workers}-{name}-{rep}")
            envoy = start_envoy(path, lp, ap_, env, workers)
            try:
                startup = startup_cpu_ms(envoy.proc.popen.pid)
                bad = requests_on_new_connections(lp, n, EXPECTED.get(name))
                if bad:
                    raise RuntimeError(f"RSS {name} ({workers} workers): {bad}/{n} requests "
                                       "without the expected header")
                time.sleep(0.5)
                run = {**rss_kib(envoy.proc.popen.pid),
                       "malloc_kib": malloc_kib(envoy),
                       "startup_cpu_ms": startup,
                       "worker_connections": worker_connections(envoy)}
            finally:
                envoy.stop()
            runs[name].append(run)
            m = run["malloc_kib"]
            log(f"RSS {workers} worker(s) {name:10s} VmRSS {run['VmRSS'] / 1024:6.1f} MiB"
                f"  VmHWM {run['VmHWM'] / 1024:6.1f} MiB  malloc: in use "
                f"{m.get('allocated', 0) / 1024:.1f}, held {m.get('heap_size', 0) / 1024:.1f},"
                f" cached free {m.get('total_thread_cache', 0) / 1024:.1f} (thread caches) MiB;"
                f" startup CPU {sum(run['startup_cpu_ms'].values())} ms; connections per"
                f" worker {list(run['worker_connections'].values())}")
        row = {}
        for name, rs in runs.items():
            ordered = sorted(rs, key=lambda r: r["VmRSS"])
            row[name] = {**ordered[len(ordered) // 2],
                         "VmRSS_runs": [r["VmRSS"] for r in rs]}
        out["workers"][str(workers)] = row
    out["wasm_1ref_minus_floor_kib"] = {
        w: r["wasm_1ref"]["VmRSS"] - r["floor"]["VmRSS"] for w, r in out["workers"].items()}
    out["floor_minus_none_kib"] = {
        w: r["floor"]["VmRSS"] - r["none"]["VmRSS"] for w, r in out["workers"].items()}
    out["wasm_1ref_minus_floor_malloc_kib"] = {
        w: {k: r["wasm_1ref"]["malloc_kib"].get(k, 0) - r["floor"]["malloc_kib"].get(k, 0)
            for k in r["floor"]["malloc_kib"]} for w, r in out["workers"].items()}
    return out


# --------------------------------------------------------------------------- wasm code

def perf_unusable() -> str | None:
    """Why `perf record` cannot sample processes here, or None."""
    if not shutil.which("perf"):
        return "perf is not installed"
    with tempfile.NamedTemporaryFile(suffix=".data") as f:
        r = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o", f.name, "--",
                            "true"], capture_output=True, text=True, timeout=30)
    return None if r.returncode == 0 else f"perf record failed: {r.stderr.strip()[-200:]}"


def wasm_code_cpu(wrk: str, suts: dict[str, Envoy], upstream: Envoy, *, samples: int,
                  duration: float, connections: int, cpu_sut: set[int] | None,
                  cpu_rest: set[int] | None, workdir: Path) -> dict:
    """CPU per request in JIT-compiled code (V8's machine code for the module and its call
    stubs: the `[JIT]` samples of `perf record -e cpu-clock`) while under the warm load,
    `samples` times per config, alternating. Steadier than the Envoy's whole CPU per request:
    what the module itself costs, without the rest of Envoy's work and its noise."""
    why = perf_unusable()
    if why:
        return {"skipped": why}
    out: dict = {c: [] for c in suts}
    for i in range(samples):
        for name, envoy in suts.items():
            data = workdir / f"perf-{name}-{i}.data"
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999",
                                    "-o", str(data), "-p", str(envoy.proc.popen.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            m = measure(wrk, envoy, upstream, duration=duration, connections=connections,
                        cpu_sut=cpu_sut, cpu_rest=cpu_rest)
            rec.send_signal(2)  # SIGINT: perf writes its file and exits
            rec.wait(timeout=60)
            report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso",
                                     "--stdio"], capture_output=True, text=True,
                                    timeout=120).stdout
            jit = sum(float(line.split("%")[0]) for line in report.splitlines()
                      if "[JIT]" in line and "%" in line)
            out[name].append(round(jit / 100 * m["envoy_cpu_us_per_req"], 3))
            data.unlink(missing_ok=True)
            log(f"wasm code {name:10s} {out[name][-1]:.2f} µs/req in JIT code "
                f"({jit:.2f}% of {m['envoy_cpu_us_per_req']:.1f} µs)")
    med = statistics.median
    out["median_us"] = {c: med(v) for c, v in out.items() if isinstance(v, list)}
    if "floor" in suts and "wasm_1ref" in suts:
        out["wasm_1ref_minus_floor_us"] = round(
            out["median_us"]["wasm_1ref"] - out["median_us"]["floor"], 3)
    return out


# --------------------------------------------------------------------------- cold start

class TimedProxy(CountingProxy):
    """The counting proxy, also recording when each call started and how long it took."""

    def __init__(self, backend_port: int):
        self.timings: list[tuple[float, float, str | None, str | None]] = []
        super().__init__(backend_port)

    def handle(self, handler):
        start = time.perf_counter()
        super().handle(handler)
        target = handler.headers.get("X-Amz-Target")
        self.timings.append((start, time.perf_counter(), target, None))

    def reset(self):
        super().reset()
        self.timings.clear()


def burst(port: int, n: int, t0: float | None = None, timeout: float = 30) -> dict:
    """n requests on n new connections, sent back to back: each a blocking connect (on
    loopback the kernel completes the handshake, even before Envoy accepts) then the request,
    with a non-blocking look for answers between two sends. Times (seconds) are relative to
    `t0` (default: the burst's start). Returns {"requests": [...], "sent_all": seconds}."""
    request = b"GET /check HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    base = time.perf_counter() if t0 is None else t0
    sel = selectors.DefaultSelector()
    states = []

    def drain(wait: float):
        for key, _ in sel.select(timeout=wait):
            st, sock = key.data, key.fileobj
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            now = time.perf_counter() - base
            if data:
                st["buf"] += data
                if st["end"] is None and _complete(st):
                    st["end"] = now
                continue
            if st["end"] is None:  # closed before a complete answer
                st["end"] = now
                st.setdefault("error", "closed early")
            sel.unregister(sock)
            sock.close()

    for _ in range(n):
        start = time.perf_counter()
        st = {"start": start - base, "end": None, "buf": bytearray(), "status": None,
              "headers": {}}
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect((LOCALHOST, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, st)
        except OSError as e:
            sock.close()
            st.update(end=time.perf_counter() - base, error=repr(e))
        states.append(st)
        drain(0)
    sent_all = time.perf_counter() - base
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        drain(0.5)
    for key in list(sel.get_map().values()):  # timed out
        key.data.setdefault("error", "no answer")
        key.data["end"] = key.data["end"] or time.perf_counter() - base
        key.fileobj.close()
    sel.close()
    for st in states:
        st.pop("buf", None)
    return {"requests": states, "sent_all": sent_all}


def _complete(st: dict) -> bool:
    """Parse the answer in st["buf"] once headers and Content-Length bytes are in."""
    head, sep, body = bytes(st["buf"]).partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if len(body) < int(headers.get("content-length", "0")):
        return False
    st["status"], st["headers"] = int(lines[0].split()[1]), headers
    return True


def burst_summary(b: dict, k: int) -> dict:
    results = b["requests"]
    lat = sorted(1000 * (r["end"] - r["start"]) for r in results)
    wrong = 0
    for r in results:
        if r["status"] != 200 or any(r["headers"].get(f"x-seen-x-s{i}") != f"cold-value-{i}"
                                     for i in range(k)):
            wrong += 1
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {"requests": len(results), "statuses": statuses, "wrong_or_missing_headers": wrong,
            "first_sent_ms": 1000 * min(r["start"] for r in results),
            "all_sent_ms": 1000 * b["sent_all"],
            "all_answered_ms": 1000 * max(r["end"] for r in results),
            "latency_p50_ms": lat[len(lat) // 2], "latency_p99_ms": lat[int(len(lat) * 0.99)],
            "latency_max_ms": lat[-1]}


def cold_start(workdir: Path, moto: Moto, *, k: int, m: int, upstream_port: int,
               wasm: Path) -> dict:
    for i in range(k):
        moto.put_secret(f"bench/cold/s{i}", {"v": f"cold-value-{i}"})
    with TimedProxy(moto.port) as proxy:
        name = f"cold_k{k}"
        path, listen_port, admin_port = sut_config(name, workdir, upstream_port=upstream_port,
                                                   proxy=proxy, wasm=wasm)
        rc, out = validate(path, moto.credentials_env)
        if rc != 0:
            raise RuntimeError(f"validate failed:\n{out[-4000:]}")
        proxy.reset()  # validate runs the filter's on_configure only; start counting now
        t_start = time.perf_counter()
        envoy = Envoy(path, listen_port=listen_port, admin_port=admin_port,
                      env=moto.credentials_env, concurrency=2, log_dir=path.parent)
        try:
            t0 = time.perf_counter()  # Envoy ready (admin /ready + listener accepting)
            cold = burst(listen_port, m, t0)
            # Counters are published from the filter's 200 ms tick: wait for all M requests.
            deadline, stats = time.monotonic() + 5, {}
            while time.monotonic() < deadline:
                stats = envoy.stats()
                seen = sum(stats.get(f"wasmcustom.aws_vault.{c}", 0) or 0
                           for c in ("cache_hits", "cache_misses", "requests_failed"))
                if seen >= m:
                    break
                time.sleep(0.1)
            calls = proxy.get_secret_value_calls()
            per_secret: dict[str, int] = {}
            for c in calls:
                per_secret[c.secret_id] = per_secret.get(c.secret_id, 0) + 1
            gsv = [(s - t0, e - s) for s, e, target, _ in proxy.timings
                   if target == "secretsmanager.GetSecretValue"]
            warm = burst(listen_port, m)
            rss = rss_kib(envoy.proc.popen.pid)
        finally:
            envoy.stop()
    cold_s, warm_s = burst_summary(cold, k), burst_summary(warm, k)
    rtt_max = 1000 * max((d for _, d in gsv), default=0.0)
    extra = cold_s["latency_max_ms"] - warm_s["latency_max_ms"] - rtt_max
    first_sent = cold_s["first_sent_ms"]
    metric = lambda n: stats.get(f"wasmcustom.aws_vault.{n}")  # noqa: E731
    return {
        "k_secrets": k, "m_requests": m, "envoy_workers": 2,
        "envoy_start_to_ready_ms": 1000 * (t0 - t_start),
        "get_secret_value_calls": len(calls), "calls_per_secret": per_secret,
        "other_aws_calls": sum(v for t, v in proxy.counts().items()
                               if t != "secretsmanager.GetSecretValue"),
        "callouts_ms_after_ready": [round(1000 * s, 1) for s, _ in sorted(gsv)],
        "aws_round_trip_ms": {"max": rtt_max,
                              "median": 1000 * statistics.median([d for _, d in gsv])
                              if gsv else None},
        # From the first request sent: when the last GetSecretValue was sent, and answered.
        "last_callout_sent_ms": 1000 * max((s for s, _ in gsv), default=0.0) - first_sent,
        "secrets_ready_ms": 1000 * max((s + d for s, d in gsv), default=0.0) - first_sent,
        "cold_burst": cold_s, "warm_burst_same_envoy": warm_s,
        "extra_wait_ms": extra,
        "metrics": {n: metric(n) for n in ("cache_misses", "cache_hits", "requests_failed",
                                           "fetches_started", "fetches_succeeded")},
        "requests_paused": metric("cache_misses"),
        "envoy_rss_kib_after": rss,
    }


# --------------------------------------------------------------------------- SigV4 (Rust)

def rust_signing_bench(quick: bool, workdir: Path, cargo_dir: Path = REPO) -> dict:
    cargo_toml = (cargo_dir / "Cargo.toml").read_text()
    if not re.search(r'\[\[bench\]\]\s*\n\s*name\s*=\s*"sigv4"', cargo_toml):
        return {"skipped": "Cargo.toml has no [[bench]] sigv4 section (see bench/README.md)"}
    argv = ["cargo", "bench", "--bench", "sigv4", "--"]
    if quick:
        argv += ["--warm-up-time", "0.2", "--measurement-time", "0.5", "--sample-size", "10"]
    log(" ".join(argv))
    started = time.time()
    # With crate-type cdylib+rlib and panic="abort" in [profile.release], `cargo bench` builds
    # the library twice (abort and unwind) to the same file name (cargo issue #6313) and the
    # bench may link the wrong one ("requires panic strategy abort"). Benchmarks unwind anyway.
    env = {**os.environ, "CARGO_PROFILE_RELEASE_PANIC": "unwind"}
    out = subprocess.run(argv, check=False, cwd=cargo_dir, capture_output=True, text=True, env=env)
    (workdir / "cargo-bench.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"cargo bench failed:\n{(out.stdout + out.stderr)[-4000:]}")
    target = Path(os.environ.get("CARGO_TARGET_DIR", cargo_dir / "target"))
    results = {}
    for est in sorted((target / "criterion" / "sigv4").glob("*/new/estimates.json")):
        if est.stat().st_mtime < started:
            continue  # left over from an earlier run of a function no longer benchmarked
        e = json.loads(est.read_text())
        results[est.parent.parent.name] = {
            "median_us": e["median"]["point_estimate"] / 1000,
            "mean_us": e["mean"]["point_estimate"] / 1000,
            "mean_ci95_us": [e["mean"]["confidence_interval"]["lower_bound"] / 1000,
                             e["mean"]["confidence_interval"]["upper_bound"] / 1000]}
    return {"profile": "bench (inherits release: opt-level z, LTO), native "
                       f"{platform.machine()}", "functions": results}


# --------------------------------------------------------------------------- main

def simulations() -> dict:
    """The native simulations (the engine itself, simulated time): examples/cold_burst.rs
    (a cold burst on each host's semantics) and examples/fleet_refresh.rs (1,000 proxies
    restarted at once, ttl refreshes with and without jitter; chart in fleet.png)."""
    env = {**os.environ, "CARGO_PROFILE_RELEASE_PANIC": "unwind"}
    out = {}
    for name in ("cold_burst", "fleet_refresh"):
        log(f"simulation {name}")
        run = subprocess.run(["cargo", "run", "--quiet", "--release", "--example", name],
                             cwd=REPO, capture_output=True, text=True, check=True, env=env)
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (noisy): checks the machinery")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 9, quick 2)")
    ap.add_argument("--duration", type=int, help="seconds per measurement (default 8, quick 2)")
    ap.add_argument("--warmup", type=int, help="seconds of discarded load per config first")
    ap.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    ap.add_argument("--with-4ref", action="store_true",
                    help="also measure wasm_4ref (four references, two secrets) in the rounds")
    ap.add_argument("--cold-secrets", type=int, default=10)
    ap.add_argument("--cold-requests", type=int, default=500)
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--wasm", type=Path, metavar="PATH",
                    help="aws_vault module to test instead of build/aws_vault.wasm (not built)")
    ap.add_argument("--skip-build", action="store_true", help="use build/aws_vault.wasm as is")
    ap.add_argument("--skip-rust-bench", action="store_true")
    ap.add_argument("--sim-only", action="store_true",
                    help="run only the native simulations and merge them into the results JSON")
    ap.add_argument("--cargo-dir", type=Path, default=REPO,
                    help="crate to run `cargo bench --bench sigv4` in (default: this repo)")
    ap.add_argument("--out", type=Path, help="results JSON (default bench/results.json, "
                    "quick: bench/results-quick.json); the PNG goes beside it")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 9)
    duration = args.duration or (2 if args.quick else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    out = args.out or BENCH / ("results-quick.json" if args.quick else "results.json")
    configs = CONFIGS + ([CONFIG_4REF] if args.with_4ref else [])
    t_begin = time.monotonic()
    if args.sim_only:
        results = json.loads(out.read_text()) if out.exists() else {}
        results["simulations"] = simulations()
        fleet_chart(results["simulations"]["fleet_refresh"], out.with_name("fleet.png"))
        out.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {out}")
        print_simulations(results["simulations"])
        return
    if args.wasm is not None and not args.wasm.is_file():
        sys.exit(f"--wasm {args.wasm}: no such file")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the cold burst's sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    wrk = ensure_wrk()
    if args.wasm is not None:
        wasm_src = args.wasm.resolve()
    else:
        wasm_src = WASM if args.skip_build else build_wasm()
    floor_src = build_floor()
    info = machine_info(wrk)
    ncpu = os.cpu_count() or 1
    pinned = not args.no_pin and ncpu >= 2
    cpu_sut = {0} if pinned else None
    cpu_rest = set(range(1, ncpu)) if pinned else None
    workdir = Path(tempfile.mkdtemp(prefix="aws-vault-bench-"))
    log(f"work dir {workdir}; {ncpu} CPUs, pinned={pinned}; configs {', '.join(configs)}")
    # Private copies: every Envoy of the run loads the same bytes, even if the build
    # directory is rewritten meanwhile.
    wasm = workdir / "aws_vault.wasm"
    floor_wasm = workdir / "floor.wasm"
    shutil.copyfile(wasm_src, wasm)
    shutil.copyfile(floor_src, floor_wasm)

    results = {
        "quick": args.quick,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "setup": {
            "configs": configs,
            "load_generator": f"wrk -t1 -c{args.connections} (keep-alive), GET /",
            "envoy_under_test": "--concurrency 1" + (", pinned to CPU 0" if pinned else ""),
            "upstream": "Envoy --concurrency 1, direct_response 200 'ok' (shared by all configs)"
                        + (f", pinned with wrk to CPUs {sorted(cpu_rest)}" if pinned else ""),
            "rounds": rounds, "seconds_per_measurement": duration, "warmup_seconds": warmup,
            "order": "interleaved, rotated each round; floor and wasm_1ref back to back, "
                     "their order alternating each round",
            "paired": "per round: wasm_1ref rps / floor rps, wasm_1ref - floor Envoy CPU "
                      "µs per request; median, min, max over the rounds (warm.vs_floor)",
            "headers": {"native": "authorization (SDS generic secret)",
                        "floor": f"authorization: Bearer {TOKEN} (fixed in bench/floor)",
                        "wasm_1ref": HEADER_1REF, "wasm_4ref": HEADER_4REF},
        },
        "wasm": {"path": str(wasm_src), "sha256": sha256(wasm)},
        "wasm_bytes": wasm.stat().st_size,
        "floor_wasm_bytes": floor_wasm.stat().st_size,
        "wasm_functions": function_sizes(wasm),
    }

    if args.skip_rust_bench:
        results["sigv4_native"] = {"skipped": "--skip-rust-bench"}
    else:
        results["sigv4_native"] = rust_signing_bench(args.quick, workdir, args.cargo_dir)

    results["simulations"] = simulations()
    fleet_chart(results["simulations"]["fleet_refresh"], out.with_name("fleet.png"))

    moto = Moto(workdir / "moto")
    started: list[Envoy] = []
    try:
        for name, value in SECRETS.items():
            moto.put_secret(name, value)
        env = moto.credentials_env
        up_port, up_admin = free_port(), free_port()
        up_path = write_config(upstream_config(up_port, up_admin, ["authorization"] + [
            f"x-s{i}" for i in range(args.cold_secrets)]), workdir / "upstream")
        upstream = start_envoy(up_path, up_port, up_admin, {}, 1)
        started.append(upstream)

        with CountingProxy(moto.port) as proxy:
            suts: dict[str, Envoy] = {}
            for name in configs:
                path, lp, ap_ = sut_config(name, workdir, upstream_port=up_port, proxy=proxy,
                                           wasm=wasm, floor_wasm=floor_wasm)
                suts[name] = start_envoy(path, lp, ap_, env, 1)
                started.append(suts[name])
            # Each config injects the expected header (this also warms the filter's cache).
            for name, envoy in suts.items():
                r = envoy.get("/check")
                seen = r.headers.get("x-seen-authorization")
                if r.status_code != 200 or (name in EXPECTED and seen != EXPECTED[name]):
                    raise RuntimeError(f"{name}: {r.status_code}, authorization={seen!r}")
            fetches_before = len(proxy.get_secret_value_calls())
            log(f"warm-up {warmup}s per config")
            for name in configs:
                if warmup > 0:
                    measure(wrk, suts[name], upstream, duration=warmup,
                            connections=args.connections, cpu_sut=cpu_sut, cpu_rest=cpu_rest)
            per_round = []
            for r in range(rounds):
                order = round_order(configs, r)
                row = {}
                for name in order:
                    row[name] = measure(wrk, suts[name], upstream, duration=duration,
                                        connections=args.connections, cpu_sut=cpu_sut,
                                        cpu_rest=cpu_rest)
                    log(f"round {r + 1}/{rounds} {name:10s} {row[name]['rps']:9.0f} req/s  "
                        f"p50 {row[name]['p50_ms']:.2f} ms  p99 {row[name]['p99_ms']:.2f} ms  "
                        f"{row[name]['envoy_cpu_us_per_req']:.1f} µs CPU/req  "
                        f"(envoy {row[name]['envoy_cpu_util']:.0%}, foreign "
                        f"{(row[name]['foreign_util_on_envoy_cpu'] or 0):.0%})")
                row["order"] = order
                a, f = row["wasm_1ref"], row["floor"]
                log(f"round {r + 1}/{rounds} paired: wasm_1ref/floor req/s "
                    f"{a['rps'] / f['rps']:.3f}, wasm_1ref - floor "
                    f"{a['envoy_cpu_us_per_req'] - f['envoy_cpu_us_per_req']:+.2f} µs CPU/req")
                per_round.append(row)
            results["warm"] = {"rounds": per_round, **summarize(per_round, configs),
                               "get_secret_value_calls_during_rounds":
                                   len(proxy.get_secret_value_calls()) - fetches_before}
            log("wasm code: perf samples of floor and wasm_1ref under the same load")
            results["warm"]["wasm_code"] = wasm_code_cpu(
                wrk, {n: suts[n] for n in ("floor", "wasm_1ref")}, upstream,
                samples=1 if args.quick else 3, duration=duration,
                connections=args.connections, cpu_sut=cpu_sut, cpu_rest=cpu_rest,
                workdir=workdir)
            results["rss_kib_after_load"] = {n: rss_kib(e.proc.popen.pid) for n, e in suts.items()}
            for name in configs:
                suts[name].stop()
                started.remove(suts[name])

            rss_reps = 1 if args.quick else RSS_REPS
            log(f"RSS after {RSS_REQUESTS} requests: {', '.join(RSS_CONFIGS)}; "
                f"{' and '.join(map(str, RSS_WORKERS))} worker(s), unpinned; "
                f"median of {rss_reps}")
            results["rss"] = rss_after_requests(workdir, proxy=proxy, upstream_port=up_port,
                                                env=env, wasm=wasm, floor_wasm=floor_wasm,
                                                reps=rss_reps)

        log(f"cold start: {args.cold_secrets} secrets, {args.cold_requests} requests, 2 workers")
        results["cold_start"] = cold_start(workdir, moto, k=args.cold_secrets,
                                           m=args.cold_requests, upstream_port=up_port, wasm=wasm)
    finally:
        for e in started:
            e.stop()
        moto.stop()

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["goals"] = goals(results)
    results["runtime_seconds"] = round(time.monotonic() - t_begin, 1)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out}")
    from chart import chart  # matplotlib: bench/requirements.txt
    png = out.with_suffix(".png")
    chart(results, png)
    log(f"wrote {png}")
    print_summary(results)
    shutil.rmtree(workdir, ignore_errors=True)


def fleet_chart(fleet: dict, png: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for key, label, color in (("without_jitter", "refresh at expiry (no jitter)", "tab:red"),
                              ("with_jitter", "refresh at a random point in the last 10% of ttl",
                               "tab:blue")):
        ax.plot(fleet[key]["per_second"], label=label, color=color, linewidth=1)
    quota = fleet["aws_get_secret_value_quota_per_s"]
    ax.axhline(quota, color="black", linestyle="--", linewidth=1,
               label=f"AWS GetSecretValue quota: {quota:,}/s per account and Region")
    ax.set_yscale("symlog", linthresh=100)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds after the fleet restarted")
    ax.set_ylabel("GetSecretValue calls per second")
    ax.set_title(f"{fleet['proxies']:,} proxies restarted at once, {fleet['secrets']} secrets each, "
                 f"ttl {fleet['ttl_s']} s (simulated with the engine)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def print_simulations(sims: dict):
    for r in sims.get("cold_burst", []):
        w = r["wait_ms"]
        print(f"cold burst ({r['host']:5s} semantics, {r['name']:15s}): {r['requests']} requests, "
              f"{r['secrets']} secrets, {r['workers']} workers, AWS {r['aws_latency_ms']} ms: "
              f"{r['get_secret_value_calls']:4d} GetSecretValue, {r['answered_200']} answered, "
              f"wait p50/p99/max {w['p50']}/{w['p99']}/{w['max']} ms, "
              f"{r['still_paused']} left paused")
    fleet = sims.get("fleet_refresh")
    if fleet:
        print(f"fleet of {fleet['proxies']} proxies x {fleet['secrets']} secrets, ttl "
              f"{fleet['ttl_s']} s: peak GetSecretValue/s after the start "
              f"{fleet['without_jitter']['peak_after_start']} without jitter, "
              f"{fleet['with_jitter']['peak_after_start']} with (quota "
              f"{fleet['aws_get_secret_value_quota_per_s']}/s)")


def goals(res: dict) -> dict:
    """The goals (bench/README.md), reported, not asserted: {name: {value, goal, met}}."""
    paired = res["warm"]["vs_floor"]["wasm_1ref"]
    cold = res["cold_start"]
    rss = res["rss"]["wasm_1ref_minus_floor_kib"]
    g = {
        "warm_cpu_us_vs_floor": {
            "value": paired["cpu_us_diff_median"],
            "goal": f"<= {GOALS['cpu_us_vs_floor']} (median over rounds of wasm_1ref - floor "
                    "Envoy CPU µs per request, same round)"},
        "warm_rps_vs_floor": {
            "value": paired["rps_ratio_median"],
            "goal": f">= {GOALS['rps_vs_floor']} (median over rounds of wasm_1ref / floor "
                    "requests/s, same round)"},
    }
    for w, delta in rss.items():
        g[f"envoy_rss_mib_vs_floor_{w}w"] = {
            "value": round(delta / 1024, 2),
            "goal": f"<= {GOALS['rss_mib_vs_floor']} (Envoy VmRSS, wasm_1ref - floor, {w} "
                    f"worker(s), after {res['rss']['requests']} requests)"}
    g["wasm_bytes"] = {"value": res["wasm_bytes"], "goal": f"<= {GOALS['wasm_max_bytes']}"}
    g["cold_one_call_per_secret"] = {"value": cold["get_secret_value_calls"],
                                     "goal": f"== {cold['k_secrets']}, each secret once"}
    g["cold_extra_wait_ms"] = {
        "value": cold["extra_wait_ms"],
        "goal": f"<= {GOALS['cold_extra_wait_ms']} (max cold latency - max warm-burst "
                "latency - max AWS round trip)"}

    g["warm_cpu_us_vs_floor"]["met"] = (g["warm_cpu_us_vs_floor"]["value"]
                                        <= GOALS["cpu_us_vs_floor"])
    g["warm_rps_vs_floor"]["met"] = g["warm_rps_vs_floor"]["value"] >= GOALS["rps_vs_floor"]
    for w in rss:
        key = f"envoy_rss_mib_vs_floor_{w}w"
        g[key]["met"] = g[key]["value"] <= GOALS["rss_mib_vs_floor"]
    g["wasm_bytes"]["met"] = res["wasm_bytes"] <= GOALS["wasm_max_bytes"]
    g["cold_one_call_per_secret"]["met"] = (
        cold["get_secret_value_calls"] == cold["k_secrets"]
        and len(cold["calls_per_secret"]) == cold["k_secrets"]
        and set(cold["calls_per_secret"].values()) == {1})
    g["cold_extra_wait_ms"]["met"] = cold["extra_wait_ms"] <= GOALS["cold_extra_wait_ms"]
    return g


def print_summary(res: dict):
    w = res["warm"]["configs"]
    print()
    print_simulations(res.get("simulations", {}))
    print(f"{'config':12s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU µs/req':>11s}")
    for c in res["setup"]["configs"]:
        s = w[c]
        print(f"{c:12s} {s['rps_median']:9.0f} {s['p50_ms_median']:8.2f} {s['p99_ms_median']:8.2f}"
              f" {s['envoy_cpu_us_per_req_median']:11.1f}")
    print()
    print("paired with the floor, same round (median [min..max] over "
          f"{res['setup']['rounds']} rounds):")
    for c, v in res["warm"]["vs_floor"].items():
        print(f"  {c:12s} req/s ÷ floor {v['rps_ratio_median']:.3f} "
              f"[{v['rps_ratio_min']:.3f}..{v['rps_ratio_max']:.3f}]   CPU µs/req − floor "
              f"{v['cpu_us_diff_median']:+6.2f} [{v['cpu_us_diff_min']:+.2f}.."
              f"{v['cpu_us_diff_max']:+.2f}]")
    print()
    for k, r in res["warm"]["ratios"].items():
        print(f"{k:20s} req/s ratio median {r['rps_median']:.3f} "
              f"[{r['rps_min']:.3f}..{r['rps_max']:.3f}]  "
              f"CPU/req ratio {r['cpu_per_req_median']:.3f}")
    wc = res["warm"].get("wasm_code", {})
    if "median_us" in wc:
        print("CPU µs/req in JIT code (perf, median of "
              f"{len(wc.get('floor', []))}): " + ", ".join(
                  f"{c} {v:.2f}" for c, v in wc["median_us"].items())
              + (f"; wasm_1ref − floor {wc['wasm_1ref_minus_floor_us']:+.2f}"
                 if "wasm_1ref_minus_floor_us" in wc else ""))
    elif wc:
        print(f"CPU in JIT code: skipped ({wc.get('skipped')})")
    n = res["warm"]["noise"]
    print(f"noise: other processes used {n['foreign_util_on_envoy_cpu_median']:.0%} (median; max "
          f"{n['foreign_util_on_envoy_cpu_max']:.0%}) of the Envoy's CPU"
          + ("" if n["quiet"] else "  <- NOT a quiet machine: figures are unreliable"))
    c = res["cold_start"]
    print(f"\ncold start: {c['get_secret_value_calls']} GetSecretValue for "
          f"{c['k_secrets']} secrets, {c['requests_paused']} paused, "
          f"all {c['m_requests']} answered in "
          f"{c['cold_burst']['all_answered_ms']:.0f} ms (warm: "
          f"{c['warm_burst_same_envoy']['all_answered_ms']:.0f} ms), max latency "
          f"{c['cold_burst']['latency_max_ms']:.0f} ms, AWS round trip max "
          f"{c['aws_round_trip_ms']['max']:.0f} ms; secrets all fetched "
          f"{c['secrets_ready_ms']:.0f} ms after the first request")
    print(f"wasm {res['wasm_bytes']} bytes (floor {res['floor_wasm_bytes']} bytes)")
    if "wasm_functions" in res:
        f = res["wasm_functions"]
        print(f"wasm functions {f['functions']}, {f['over_1kb']} over 1 KiB, largest {f['largest']}")
    rss = res["rss"]
    for workers, row in rss["workers"].items():
        print(f"Envoy VmRSS after {rss['requests']} requests, {workers} worker(s): "
              + ", ".join(f"{n} {v['VmRSS'] / 1024:.1f} MiB" for n, v in row.items())
              + f"; wasm_1ref - floor {rss['wasm_1ref_minus_floor_kib'][workers] / 1024:+.1f} MiB")
        d = rss.get("wasm_1ref_minus_floor_malloc_kib", {}).get(workers)
        if d:
            print(f"  of which Envoy's malloc: in use {d.get('allocated', 0) / 1024:+.1f} MiB, "
                  f"held {d.get('heap_size', 0) / 1024:+.1f} MiB (free in thread caches "
                  f"{d.get('total_thread_cache', 0) / 1024:+.1f} MiB); startup CPU "
                  + ", ".join(f"{n} {sum(v['startup_cpu_ms'].values())} ms"
                              for n, v in row.items()))
    sig = res["sigv4_native"].get("functions", {})
    if sig:
        print("sigv4 native: " + ", ".join(f"{n} {v['median_us']:.1f} µs" for n, v in sig.items()))
    verdict = lambda g: "met" if g.get("met") else "NOT met" if "met" in g else "-"  # noqa: E731
    print("\ngoals: " + ", ".join(f"{k}={verdict(g)}" for k, g in res["goals"].items()))
    print(f"runtime {res['runtime_seconds']} s")


if __name__ == "__main__":
    main()
