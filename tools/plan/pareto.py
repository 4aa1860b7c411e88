#!/usr/bin/env python3
"""Throughput against time between tokens for the best plan of each kind (homogeneous X, X + Y),
with the Pareto front marked, as a PNG (matplotlib; the planner itself needs only the standard
library). For each TBT limit in a sweep, the search's best plan of each kind gives one point
(its predicted TBT p50, its tokens/s per GPU or per dollar); the front is the set of points no
other point beats on both.

  tools/plan/pareto.py --model mixtral-8x7b --cluster tools/plan/clusters/h20-l40s.json \
      --objective per_dollar --out docs/images/plan-pareto-h20-l40s.png
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from planner import cli, search  # noqa: E402


def points(argv_common, limits_ms, objective):
    """{kind: [(tbt ms, value, plan text)]} over the limits."""
    args = cli.parse_args(argv_common + ["--objective", objective])
    s, cluster = cli.build_setting(args)
    space = cli.space_of(args, s, cluster)
    out = {}
    for lim in limits_ms:
        found, _, _ = search.search(s, space, search.Limit(lim / 1e3), objective)
        for o in search.best_per_kind(found):
            e, p = o.best, o.best.plan
            label = f"{p.n_a}x{p.attn_gpu} TP{p.tp_a} + {p.n_e}x{p.exp_gpu} TP{p.tp_e}, m={p.m}, batch {p.batch}"
            out.setdefault(p.kind(), []).append((e.tbt_p50 * 1e3, getattr(e, objective), label))
    return s, out


def pareto(all_points):
    """Points not beaten on both lower TBT and higher value."""
    front = [p for p in all_points
             if not any(q[0] <= p[0] and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in all_points)]
    return sorted(set(front))


def main():
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--model", required=True)
    a.add_argument("--cluster", required=True)
    a.add_argument("--objective", choices=("per_gpu", "per_dollar"), default="per_gpu")
    a.add_argument("--limits_ms", default="15,20,30,40,50,60,80,100,125,150,200,250,300")
    a.add_argument("--extra", default="", help="more m2n_plan arguments, space separated")
    a.add_argument("--out", required=True)
    args = a.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    common = ["--model", args.model, "--cluster", args.cluster] + args.extra.split()
    s, pts = points(common, [float(x) for x in args.limits_ms.split(",")], args.objective)
    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, ps in sorted(pts.items()):
        ps = sorted(set(ps))
        ax.plot([p[0] for p in ps], [p[1] for p in ps], "o-", label=kind, alpha=0.8)
    front = pareto([p for ps in pts.values() for p in ps])
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=2, label="Pareto front")
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=120, facecolors="none", edgecolors="k")
    ax.set_xlabel("predicted time between tokens, p50 (ms)")
    ax.set_ylabel("tokens/s per GPU" if args.objective == "per_gpu" else "tokens per dollar")
    ax.set_title(f"m2n_plan: {s.model.name} on {os.path.basename(args.cluster)} (modelled figures)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}; Pareto front:")
    for t, v, lab in front:
        print(f"  TBT {t:7.1f} ms  {v:12,.1f}  {lab}")


if __name__ == "__main__":
    main()
