#!/usr/bin/env python3
"""Where Envoy's memory for a proxy-wasm module goes: RSS over the floor for modules made
of the floor (bench/floor) plus synthetic content, next to aws_vault (bench/README.md,
"Memory by module shape"). Not part of `make bench`; run it with the venv's Python:

    .venv/bin/python bench/rss_shapes.py [--reps 2]

The synthetic variants are the floor module with code added that is never executed, so
their Envoys serve the same requests with the same code as the floor's; what differs is
what Envoy and its V8 do with the module at load (V8 compiles every function with TurboFan
then, see the README). The compile_only variants are build/aws_vault.wasm with its
callbacks swapped for the floor's no-ops (nothing of it runs), to separate compiling it
from running it. Variants:
  bytes_300k            the floor + a 300 KiB passive data segment: the module's bytes as bytes
  small_fns             the floor + ~220 KB of code in ~160-byte functions
  aws_vault_shape       the floor + as much code as build/aws_vault.wasm, in functions of the
                        same sizes
  aws_vault_cap1k       the same code with no function over 1,024 bytes (bigger ones cut in
                        pieces)
  aws_vault             the filter itself (bench configuration wasm_1ref)
  compile_only          aws_vault, nothing of it executed
  compile_only_top25    compile_only with its 25 largest functions emptied
Generated bodies are deterministic (loads, stores, branches, calls, a loop in one
statement out of twenty: per byte about as costly to compile as the filter's code, see
bench/README.md) and assembled with binaryen's wasm-as (installed with wasm-opt by
`make build`).
Writes bench/results-rss-shapes.json and prints a table. Envoy with 1 worker, RSS after
300 requests on new connections, as in `make bench`'s RSS phase.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import run as B  # bench/run.py: its Envoy, moto and upstream helpers

OUT = B.BENCH / "results-rss-shapes.json"
FEATURES = ["--enable-bulk-memory", "--enable-sign-ext", "--enable-mutable-globals",
            "--enable-nontrapping-float-to-int"]
BYTES_PER_OP = 15.7  # average encoded size of one generated statement (measured)


def function(rng: random.Random, index: int, ops: int) -> str:
    """A function of about `ops` statements, calling some of the 20 before it."""
    body = ["  (local.set $x (local.get $a))"]
    for _ in range(ops):
        r = rng.random()
        if r < 0.3:
            body.append(f"  (local.set $y (i32.add (i32.load offset={rng.randrange(0, 256, 4)}"
                        f" (local.get $x)) (i32.mul (local.get $b)"
                        f" (i32.const {rng.randrange(1, 1000)}))))")
        elif r < 0.45:
            body.append(f"  (i32.store offset={rng.randrange(0, 256, 4)} (local.get $x)"
                        " (i32.xor (local.get $y) (local.get $b)))")
        elif r < 0.6:
            body.append(f"  (if (i32.lt_u (local.get $y) (i32.const {rng.randrange(1, 100000)}))"
                        " (then (local.set $x (i32.add (local.get $x) (i32.const 8))))"
                        " (else (local.set $b (i32.shr_u (local.get $b) (i32.const 1)))))")
        elif r < 0.7 and index > 0:
            body.append(f"  (local.set $y (call $pad{rng.randrange(max(0, index - 20), index)}"
                        " (local.get $x) (local.get $y)))")
        elif r < 0.95:
            body.append("  (local.set $z (i64.add (local.get $z)"
                        " (i64.extend_i32_u (local.get $y))))")
        else:
            body.append("  (block $out (loop $l (br_if $out (i32.eqz (local.get $b)))"
                        " (local.set $b (i32.sub (local.get $b) (i32.const 1)))"
                        " (local.set $y (i32.rotl (local.get $y) (i32.const 3))) (br $l)))")
    return "\n".join([f" (func $pad{index} (param $a i32) (param $b i32) (result i32)",
                      "  (local $x i32) (local $y i32) (local $z i64)", *body,
                      "  (i32.add (local.get $y) (i32.wrap_i64 (local.get $z)))", " )"])


def variant(floor_wat: str, extra: list[str], out: Path) -> Path:
    base = floor_wat.rstrip()
    if not base.endswith(")"):
        raise ValueError("unexpected wasm-dis output for the floor module")
    wat = out.with_suffix(".wat")
    wat.write_text(base[:-1] + "\n".join(extra) + "\n)\n")
    subprocess.run(["wasm-as", *FEATURES, str(wat), "-o", str(out)], check=True)
    return out


def disassemble(wasm: Path) -> str:
    return subprocess.run(["wasm-dis", *FEATURES, str(wasm)], check=True, capture_output=True,
                          text=True).stdout


# The floor's callbacks, to swap in for aws_vault's (same signatures as the ABI's).
NO_OPS = {
    "_initialize": "",
    "proxy_on_vm_start": "(param i32 i32) (result i32) (i32.const 1)",
    "proxy_on_configure": "(param i32 i32) (result i32) (i32.const 1)",
    "proxy_on_context_create": "(param i32 i32)",
    "proxy_on_request_headers": "(param i32 i32 i32) (result i32) (i32.const 0)",
    "proxy_on_response_headers": "(param i32 i32 i32) (result i32) (i32.const 0)",
    "proxy_on_done": "(param i32) (result i32) (i32.const 1)",
    "proxy_on_log": "(param i32)",
    "proxy_on_delete": "(param i32)",
    "proxy_on_tick": "(param i32)",
}


def compile_only(aws_vault: Path, out: Path, empty_largest: int = 0) -> Path:
    """aws_vault with its callbacks swapped for no-ops (its own functions stay, never
    called) and its `empty_largest` largest functions emptied (body: unreachable)."""
    lines = disassemble(aws_vault).rstrip().split("\n")
    spans, i = [], 0  # (first line, end line) of each function
    while i < len(lines):
        if lines[i].startswith(" (func "):
            j = i + 1
            while not (lines[j].startswith(" (") or lines[j] == ")"):
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    largest = set(sorted(range(len(spans)), key=lambda k: spans[k][0] - spans[k][1])
                  [:empty_largest])
    for k in sorted(largest, reverse=True):
        first, end = spans[k]
        lines[first:end] = [lines[first], "  (unreachable)", " )"]
    text = "\n".join(lines)
    for name, body in NO_OPS.items():
        text, n = re.subn(r'\(export "%s" \(func \$[^)]+\)\)' % name,
                          f'(export "{name}" (func $no_op_{name}))', text)
        if n != 1:
            raise ValueError(f"{aws_vault}: export {name} not found")
    if not text.endswith(")"):
        raise ValueError("unexpected wasm-dis output for aws_vault")
    extra = [f" (func $no_op_{name} {body})" for name, body in NO_OPS.items()]
    wat = out.with_suffix(".wat")
    wat.write_text(text[:-1] + "\n".join(extra) + "\n)\n")
    subprocess.run(["wasm-as", *FEATURES, str(wat), "-o", str(out)], check=True)
    return out


def build_variants(floor: Path, aws_vault: Path, workdir: Path) -> dict[str, Path]:
    floor_wat = disassemble(floor)
    rng = random.Random(1)
    blob = "".join(f"\\{rng.randrange(256):02x}" for _ in range(300 * 1024))
    small = [function(rng, i, 10) for i in range(1380)]
    sizes = sorted(B.code_sizes(aws_vault))
    shape = [function(rng, i, max(1, round(size / BYTES_PER_OP)))
             for i, size in enumerate(sizes)]
    pieces = [min(1024, size - at) for size in sizes for at in range(0, size, 1024)]
    cap1k = [function(rng, i, max(1, round(size / BYTES_PER_OP)))
             for i, size in enumerate(pieces)]
    return {
        "bytes_300k": variant(floor_wat, [f' (data $blob "{blob}")'], workdir / "bytes.wasm"),
        "small_fns": variant(floor_wat, small, workdir / "small.wasm"),
        "aws_vault_shape": variant(floor_wat, shape, workdir / "shape.wasm"),
        "aws_vault_cap1k": variant(floor_wat, cap1k, workdir / "cap1k.wasm"),
        "compile_only": compile_only(aws_vault, workdir / "compile_only.wasm"),
        "compile_only_top25": compile_only(aws_vault, workdir / "top25.wasm", 25),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2, help="Envoy starts per variant (default 2)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="aws-vault-rss-shapes-"))
    floor, aws_vault = B.build_floor(), B.build_wasm()
    modules = {"floor": floor, **build_variants(floor, aws_vault, workdir),
               "aws_vault": aws_vault}
    moto = B.Moto(workdir / "moto")
    for name, value in B.SECRETS.items():
        moto.put_secret(name, value)
    up_port, up_admin = B.free_port(), B.free_port()
    upstream = B.start_envoy(B.write_config(B.upstream_config(up_port, up_admin, ["authorization"]),
                                            workdir / "upstream"), up_port, up_admin, {}, 1)
    rss: dict[str, list[int]] = {}
    try:
        with B.CountingProxy(moto.port) as proxy:
            for rep in range(args.reps):
                for name, wasm in modules.items():
                    config = "wasm_1ref" if name == "aws_vault" else "floor"
                    # compile_only answers nothing: its requests get no header.
                    expected = None if name.startswith("compile_only") else B.EXPECTED[config]
                    path, port, admin = B.sut_config(config, workdir, upstream_port=up_port,
                                                     proxy=proxy, wasm=wasm, floor_wasm=wasm,
                                                     subdir=f"{name}-{rep}")
                    envoy = B.start_envoy(path, port, admin, moto.credentials_env, 1)
                    try:
                        bad = B.requests_on_new_connections(port, 300, expected)
                        if bad:
                            raise RuntimeError(f"{name}: {bad} of 300 requests went wrong")
                        time.sleep(0.5)
                        rss.setdefault(name, []).append(B.rss_kib(envoy.proc.popen.pid)["VmRSS"])
                    finally:
                        envoy.stop()
    finally:
        upstream.stop()
        moto.stop()
    floor_kib = statistics.median(rss["floor"])
    result = {"date": time.strftime("%Y-%m-%d"), "reps": args.reps, "envoy_workers": 1,
              "floor_rss_kib": rss["floor"], "variants": {}}
    print(f"{'variant':16s} {'bytes':>8s} {'code':>8s} {'funcs':>6s}  RSS over the floor (MiB)")
    for name, wasm in modules.items():
        if name == "floor":
            continue
        sizes = B.code_sizes(wasm)
        over = [round((r - floor_kib) / 1024, 1) for r in rss[name]]
        result["variants"][name] = {
            "wasm_bytes": wasm.stat().st_size, "code_bytes": sum(sizes),
            "functions": len(sizes), "largest_function_bytes": max(sizes),
            "functions_over_1kb": sum(1 for s in sizes if s > 1024),
            "rss_kib": rss[name], "rss_over_floor_mib": over,
            "rss_over_floor_mib_median": statistics.median(over)}
        print(f"{name:16s} {wasm.stat().st_size:8d} {sum(sizes):8d} {len(sizes):6d}  {over}")
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(B.REPO)}")


if __name__ == "__main__":
    main()
