#!/usr/bin/env python3
"""Turns m2n_perf --json files (with --baseline) into the markdown tables of docs/PERFORMANCE.md.

    scripts/perf_table.py results/shm_1x1.json [more.json ...]

For each file: a table of m2n and baseline p50 / p99 / GB/s per size with their ratios (m2n divided
by the baseline: below 1 is better for latency, above 1 for bandwidth), then the target lines of the
foundation issue: worst p50 ratio up to 64 KB, worst bandwidth ratio from 1 MB to 4 MB.
"""
import json
import sys


def table(path):
    with open(path) as f:
        d = json.load(f)
    c = d["config"]
    rows = {}
    for r in d["rows"]:
        rows.setdefault(r["bytes"], {})[r["impl"]] = r
    base = c.get("baseline", "none")
    other = {"mpi": "MPI", "nccl": "NCCL", "perftest": "perftest"}.get(base)
    print(f"#### {c['senders']} x {c['receivers']}, m2n transport {c['transport']}"
          f" (UCX_TLS={c.get('ucx_tls') or 'unset'}), baseline: {c.get('mpi_library', base)}")
    print()
    print(f"`{path.split('/')[-1]}`: {c['iters']} iterations + {c['warmup_iters']} warmup per size, "
          f"latency {c['latency_mode']}, data check {'on' if c['check'] else 'off'}, "
          f"#wrong total {d['total_wrong']}, {d['elapsed_s']:.1f} s")
    print()
    if other is None:
        print("| bytes | p50 us | p99 us | max us | GB/s | #wrong |")
        print("|---:|---:|---:|---:|---:|---:|")
        for b in sorted(rows):
            m = rows[b]["m2n"]
            print(f"| {b} | {m['p50_us']:.2f} | {m['p99_us']:.2f} | {m['max_us']:.2f} | "
                  f"{m['gb_per_s']:.3f} | {m['wrong']} |")
        print()
        return
    print(f"| bytes | m2n p50 | {other} p50 | p50 ratio | m2n p99 | {other} p99 | p99 ratio "
          f"| m2n GB/s | {other} GB/s | GB/s ratio | #wrong m2n / {other} |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst_lat, worst_bw = 0.0, float("inf")
    for b in sorted(rows):
        m, o = rows[b].get("m2n"), rows[b].get(other)
        if m is None or o is None:
            continue
        lat = m["p50_us"] / o["p50_us"]
        bw = m["gb_per_s"] / o["gb_per_s"]
        print(f"| {b} | {m['p50_us']:.2f} | {o['p50_us']:.2f} | **{lat:.2f}x** | {m['p99_us']:.2f} | "
              f"{o['p99_us']:.2f} | {m['p99_us'] / o['p99_us']:.2f}x | {m['gb_per_s']:.3f} | "
              f"{o['gb_per_s']:.3f} | **{bw:.2f}x** | {m['wrong']} / {o['wrong']} |")
        if b <= 64 * 1024:
            worst_lat = max(worst_lat, lat)
        if 1 << 20 <= b <= 4 << 20:
            worst_bw = min(worst_bw, bw)
    print()
    print(f"Worst p50 ratio up to 64 KB: **{worst_lat:.2f}x**; "
          f"worst bandwidth ratio 1-4 MB: **{worst_bw:.2f}x**")
    print()


if __name__ == "__main__":
    for p in sys.argv[1:]:
        table(p)
