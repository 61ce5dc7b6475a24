"""bench/results.json -> bench/results.png (matplotlib).

    .venv/bin/python bench/chart.py [results.json [out.png]]   # redraw without re-running
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIGS = ["none", "native", "wasm_empty", "wasm_1ref", "wasm_4ref"]
LABELS = {"none": "no filter", "native": "native\ncredential_injector",
          "wasm_empty": "aws_vault\nnothing to inject", "wasm_1ref": "aws_vault\n1 reference", "wasm_4ref": "aws_vault\n4 refs / 2 secrets"}
COLORS = {"none": "#9e9e9e", "native": "#5c85d6", "wasm_empty": "#f2c14e", "wasm_1ref": "#e07b39", "wasm_4ref": "#c0504d"}


def _ratio_text(res: dict, c: str, key: str) -> str:
    r = res["warm"]["ratios"]
    parts = []
    if f"{c}/none" in r:
        parts.append(f"{r[f'{c}/none'][key]:.3f}× none")
    if f"{c}/native" in r:
        parts.append(f"{r[f'{c}/native'][key]:.3f}× native")
    return "\n".join(parts)


def chart(res: dict, png: Path):
    warm = res["warm"]["configs"]
    m = res["machine"]
    v = m["versions"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_rps, ax_lat), (ax_cpu, ax_txt) = axes
    xs = range(len(CONFIGS))
    labels = [LABELS[c] for c in CONFIGS]
    colors = [COLORS[c] for c in CONFIGS]

    # Throughput: median, whiskers = min..max over rounds; per-round ratio medians on bars.
    med = [warm[c]["rps_median"] for c in CONFIGS]
    lo = [warm[c]["rps_median"] - warm[c]["rps_min"] for c in CONFIGS]
    hi = [warm[c]["rps_max"] - warm[c]["rps_median"] for c in CONFIGS]
    ax_rps.bar(xs, med, color=colors, yerr=[lo, hi], capsize=4)
    for x, c in enumerate(CONFIGS):
        ax_rps.text(x, med[x] * 0.5, f"{med[x]:,.0f}\n{_ratio_text(res, c, 'rps_median')}",
                    ha="center", va="center", fontsize=8, color="white", fontweight="bold")
    ax_rps.set_title("Warm throughput (req/s, median of rounds; bars: min–max)\n"
                     "ratios = medians of per-round ratios", fontsize=10)
    ax_rps.set_xticks(list(xs), labels, fontsize=8)
    ax_rps.set_ylabel("requests/s")

    # Latency p50 / p99.
    w = 0.38
    p50 = [warm[c]["p50_ms_median"] for c in CONFIGS]
    p99 = [warm[c]["p99_ms_median"] for c in CONFIGS]
    ax_lat.bar([x - w / 2 for x in xs], p50, w, label="p50", color=colors, alpha=0.6)
    ax_lat.bar([x + w / 2 for x in xs], p99, w, label="p99", color=colors)
    for x in xs:
        ax_lat.text(x - w / 2, p50[x], f"{p50[x]:.2f}", ha="center", va="bottom", fontsize=7)
        ax_lat.text(x + w / 2, p99[x], f"{p99[x]:.2f}", ha="center", va="bottom", fontsize=7)
    ax_lat.set_title(f"Latency at saturation (ms; {res['setup']['load_generator']})\n"
                     "left bar p50, right bar p99", fontsize=10)
    ax_lat.set_xticks(list(xs), labels, fontsize=8)
    ax_lat.set_ylabel("ms")

    # Envoy CPU per request.
    cpu = [warm[c]["envoy_cpu_us_per_req_median"] for c in CONFIGS]
    ax_cpu.bar(xs, cpu, color=colors)
    for x, c in enumerate(CONFIGS):
        ax_cpu.text(x, cpu[x] * 0.5,
                    f"{cpu[x]:.1f} µs\n{_ratio_text(res, c, 'cpu_per_req_median')}",
                    ha="center", va="center", fontsize=8, color="white", fontweight="bold")
    ax_cpu.set_title("CPU time of the Envoy under test per request (µs, median)", fontsize=10)
    ax_cpu.set_xticks(list(xs), labels, fontsize=8)
    ax_cpu.set_ylabel("µs CPU / request")

    # Cold start, resources, goals.
    ax_txt.axis("off")
    cold = res["cold_start"]
    sig = res.get("sigv4_native", {}).get("functions", {})
    rss = res["rss_kib_after_load"]
    lines = [
        f"Cold start: {cold['k_secrets']} secrets, {cold['m_requests']} requests at once,"
        f" {cold['envoy_workers']} workers",
        f"  GetSecretValue calls: {cold['get_secret_value_calls']}   paused requests:"
        f" {cold['requests_paused']}",
        f"  all answered after {cold['cold_burst']['all_answered_ms']:.0f} ms"
        f" (warm burst: {cold['warm_burst_same_envoy']['all_answered_ms']:.0f} ms)",
        f"  max latency {cold['cold_burst']['latency_max_ms']:.0f} ms"
        f" (warm burst {cold['warm_burst_same_envoy']['latency_max_ms']:.0f} ms)",
        f"  AWS round trip max {cold['aws_round_trip_ms']['max']:.0f} ms; all secrets in"
        f" {cold['secrets_ready_ms']:.0f} ms after the 1st request",
        "",
        f"Release .wasm: {res['wasm_bytes'] / 1024:.0f} KiB ({res['wasm_bytes']:,} bytes)",
        "Envoy VmRSS after load (MiB):",
        "  " + ", ".join(f"{c} {rss[c]['VmRSS'] / 1024:.1f}" for c in CONFIGS),
    ]
    if sig:
        lines.append("SigV4, native (median µs):")
        lines.append("  " + ", ".join(
            f"{short} {sig[n]['median_us']:.1f}" for n, short in
            [("get_secret_value_request", "request"), ("sign", "sign"),
             ("request_and_sign", "request+sign")] if n in sig))
    noise = res["warm"].get("noise")
    if noise:
        lines.append("Other load on the Envoy's CPU: median"
                     f" {noise['foreign_util_on_envoy_cpu_median']:.0%},"
                     f" max {noise['foreign_util_on_envoy_cpu_max']:.0%}"
                     + ("" if noise["quiet"] else "  (NOT quiet)"))
    lines.append("")
    lines.append("Goals:")
    for name, g in res["goals"].items():
        if "met" not in g:
            continue
        val = g["value"]
        val = f"{val:.3f}" if isinstance(val, float) else f"{val}"
        goal = g["goal"].split(" (")[0]
        lines.append(f"  {'✓' if g['met'] else '✗'} {name}: {val} (goal {goal})")
    ax_txt.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8.5, family="monospace",
                transform=ax_txt.transAxes)

    rustc = " ".join(v["rustc"].split()[:2])
    title = (f"aws_vault in Envoy — {m['cpu_model']} × {m['nproc']} CPUs; envoy {v['envoy']}; "
             f"{rustc}; filter {v['filter_commit'][:10]}"
             f"{' (dirty)' if v.get('filter_tree_dirty') else ''}; {res['date'][:16]}Z")
    if res.get("quick"):
        title = "QUICK RUN (short, noisy) — " + title
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "results.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    chart(json.loads(src.read_text()), dst)
    print(f"wrote {dst}")
