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

# Display order; a results file shows the configs it has (older ones have no floor).
ORDER = ["none", "native", "floor", "wasm_empty", "wasm_1ref", "wasm_4ref"]
LABELS = {"none": "no filter", "native": "native\ncredential_injector",
          "floor": "proxy-wasm\nfloor", "wasm_empty": "aws_vault\nnothing to inject",
          "wasm_1ref": "aws_vault\n1 reference", "wasm_4ref": "aws_vault\n4 refs / 2 secrets"}
COLORS = {"none": "#9e9e9e", "native": "#5c85d6", "floor": "#4caf50", "wasm_empty": "#f2c14e",
          "wasm_1ref": "#e07b39", "wasm_4ref": "#c0504d"}


def _configs(res: dict) -> list[str]:
    have = res["warm"]["configs"]
    return [c for c in ORDER if c in have] + [c for c in have if c not in ORDER]


def _ratio_text(res: dict, c: str, key: str) -> str:
    r = res["warm"]["ratios"]
    parts = []
    for base in ("none", "native"):
        if f"{c}/{base}" in r:
            parts.append(f"{r[f'{c}/{base}'][key]:.3f}× {base}")
    return "\n".join(parts)


def _bars(ax, res, configs, values, texts, title, ylabel, err=None):
    xs = range(len(configs))
    ax.bar(xs, values, color=[COLORS.get(c, "#777777") for c in configs], yerr=err, capsize=4)
    for x, t in enumerate(texts):
        ax.text(x, values[x] * 0.5, t, ha="center", va="center", fontsize=7.5, color="white",
                fontweight="bold")
    ax.set_title(title, fontsize=10)
    ax.set_xticks(list(xs), [LABELS.get(c, c) for c in configs], fontsize=7.5)
    ax.set_ylabel(ylabel)


def _paired(ax, res, key, title, ylabel, goal, goal_text, ref, fmt):
    """Per-round paired values against the floor (dots) and their median (bar)."""
    vs = res["warm"].get("vs_floor")
    if not vs:
        ax.axis("off")
        ax.text(0.5, 0.5, "no floor in these results", ha="center", va="center")
        return
    configs = [c for c in _configs(res) if c in vs]
    xs = range(len(configs))
    meds = [vs[c][f"{key}_median"] for c in configs]
    ax.bar(xs, [m - ref for m in meds], bottom=ref, width=0.6, alpha=0.45,
           color=[COLORS.get(c, "#777777") for c in configs])
    for x, c in enumerate(configs):
        pts = vs[c][f"{key}_per_round"]
        n = len(pts)
        jitter = [(i - (n - 1) / 2) * (0.4 / max(n, 1)) for i in range(n)]
        ax.scatter([x + j for j in jitter], pts, s=14, color=COLORS.get(c, "#777777"),
                   edgecolor="black", linewidth=0.4, zorder=3)
        # Above everything in the column (points, bar, reference line).
        ax.text(x, max(pts + [meds[x], ref]),
                f"{fmt(meds[x])}\n[{fmt(min(pts))}..{fmt(max(pts))}]",
                ha="center", va="bottom", fontsize=7)
    ax.axhline(ref, color="#4caf50", linewidth=1.2, label="floor (same round)")
    ax.axhline(goal, color="#c0504d", linestyle="--", linewidth=1, label=goal_text)
    ax.margins(y=0.25)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(list(xs), [LABELS.get(c, c) for c in configs], fontsize=7.5)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="best")


def chart(res: dict, png: Path):
    warm = res["warm"]["configs"]
    configs = _configs(res)
    m = res["machine"]
    v = m["versions"]
    fig, axes = plt.subplots(3, 2, figsize=(13, 13.5))
    (ax_rps, ax_cpu), (ax_dcpu, ax_ratio), (ax_lat, ax_txt) = axes
    xs = range(len(configs))
    labels = [LABELS.get(c, c) for c in configs]
    colors = [COLORS.get(c, "#777777") for c in configs]

    # Throughput: median, whiskers = min..max over rounds; per-round ratio medians on bars.
    med = [warm[c]["rps_median"] for c in configs]
    lo = [warm[c]["rps_median"] - warm[c]["rps_min"] for c in configs]
    hi = [warm[c]["rps_max"] - warm[c]["rps_median"] for c in configs]
    _bars(ax_rps, res, configs, med,
          [f"{med[x]:,.0f}\n{_ratio_text(res, c, 'rps_median')}" for x, c in enumerate(configs)],
          "Warm throughput (req/s, median of rounds; bars: min–max)\n"
          "ratios = medians of per-round ratios", "requests/s", err=[lo, hi])

    # Envoy CPU per request.
    cpu = [warm[c]["envoy_cpu_us_per_req_median"] for c in configs]
    _bars(ax_cpu, res, configs, cpu,
          [f"{cpu[x]:.1f} µs\n{_ratio_text(res, c, 'cpu_per_req_median')}"
           for x, c in enumerate(configs)],
          "CPU time of the Envoy under test per request (µs, median)", "µs CPU / request")

    # Paired with the floor, round by round.
    rounds = res["setup"].get("rounds", "?")
    _paired(ax_dcpu, res, "cpu_us_diff",
            f"CPU µs/request minus the floor's, same round\n(dots: {rounds} rounds; "
            "bar and label: median [min..max])", "µs CPU / request − floor",
            1.0, "goal for aws_vault 1 ref: ≤ +1 µs", 0.0, lambda x: f"{x:+.2f}")
    _paired(ax_ratio, res, "rps_ratio",
            f"Requests/s ÷ the floor's, same round\n(dots: {rounds} rounds; "
            "bar and label: median [min..max])", "req/s ÷ floor",
            0.99, "goal for aws_vault 1 ref: ≥ 0.99", 1.0, lambda x: f"{x:.3f}")

    # Latency p50 / p99.
    w = 0.38
    p50 = [warm[c]["p50_ms_median"] for c in configs]
    p99 = [warm[c]["p99_ms_median"] for c in configs]
    ax_lat.bar([x - w / 2 for x in xs], p50, w, label="p50", color=colors, alpha=0.6)
    ax_lat.bar([x + w / 2 for x in xs], p99, w, label="p99", color=colors)
    for x in xs:
        ax_lat.text(x - w / 2, p50[x], f"{p50[x]:.2f}", ha="center", va="bottom", fontsize=7)
        ax_lat.text(x + w / 2, p99[x], f"{p99[x]:.2f}", ha="center", va="bottom", fontsize=7)
    ax_lat.set_title(f"Latency at saturation (ms; {res['setup']['load_generator']})\n"
                     "left bar p50, right bar p99", fontsize=10)
    ax_lat.set_xticks(list(xs), labels, fontsize=7.5)
    ax_lat.set_ylabel("ms")

    # Cold start, resources, goals.
    ax_txt.axis("off")
    cold = res["cold_start"]
    sig = res.get("sigv4_native", {}).get("functions", {})
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
        f"aws_vault .wasm: {res['wasm_bytes'] / 1024:.0f} KiB ({res['wasm_bytes']:,} bytes)"
        + (f"; floor {res['floor_wasm_bytes']:,} bytes" if "floor_wasm_bytes" in res else ""),
    ]
    rss = res.get("rss")
    if rss:
        names = rss["configs"]
        lines.append(f"Envoy VmRSS after {rss['requests']} requests (MiB):")
        lines.append("  workers " + "".join(f"{n:>10s}" for n in names) + "  1ref−floor")
        for workers, row in rss["workers"].items():
            lines.append(f"  {workers:>7s} " + "".join(f"{row[n]['VmRSS'] / 1024:10.1f}"
                                                       for n in names)
                         + f"  {rss['wasm_1ref_minus_floor_kib'][workers] / 1024:+9.1f}")
    else:
        after = res["rss_kib_after_load"]
        lines.append("Envoy VmRSS after load (MiB):")
        lines.append("  " + ", ".join(f"{c} {after[c]['VmRSS'] / 1024:.1f}" for c in configs
                                      if c in after))
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
    ax_txt.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace",
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
