"""The planner against real runs.

h200: the project's 4 x H200 runs (docs/PERFORMANCE.md, "MoE pipeline (examples/moe_pipeline) on
      4 x H200": Mixtral-8x7B shapes, 2 attention + 2 expert GPUs, fixed lengths 64 / 32, one wave
      of requests, messages staged through host memory). From each run's measured T_a and T_e,
      and T_c fitted on the m = 1 runs' M2N time (M2N = T_e + 2 T_c when m = 1: the attention
      worker waits for the experts and both transfers) as a + b x (tokens per micro-batch), the
      model (iteration formula, comm "staged", the workload replay for the number of iterations)
      predicts decode tokens/s per GPU. The m = 3 runs' M2N figures are not used.
cpu:  reads the JSON files of moe_pipeline runs and the planner's predictions of them, and prints
      the table (docs/PERFORMANCE.md, "Deployment planner"); tools/plan/validate-cpu.sh runs both.

scale: plans for 64 to 1024 GPUs (docs/planning.md), with the M2N group each implies.

  python3 -m planner.validate h200
  python3 -m planner.validate cpu RUN_DIR
  python3 -m planner.validate scale [GPU type (H200)] [TBT ms (150)]
"""

import json
import os
import sys

from planner.perf import iteration_time
from planner.workload import replay_fixed

# docs/PERFORMANCE.md, 4 x H200 table: (global batch, m, tok/s per GPU, TBT p50 ms, T_a ms, T_e ms, M2N ms/layer)
H200_ROWS = [
    (64, 1, 169.7, 45.7, 0.82, 1.00, 1.54),
    (64, 3, 175.1, 58.4, 0.48, 0.70, 1.24),
    (256, 1, 203.4, 177.7, 1.54, 1.45, 2.72),
    (256, 3, 311.3, 103.8, 0.98, 1.05, 1.84),
    (1024, 1, 227.8, 349.6, 3.32, 2.79, 5.97),
    (1024, 3, 396.0, 259.3, 2.39, 2.08, 4.17),
]
H200_LAYERS, H200_GPUS, H200_ATTENTION, H200_IN, H200_OUT = 32, 4, 2, 64, 32


def fit_line(points):
    """Least-squares a + b x through (x, y) points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def h200_table():
    """[(batch, m, measured, predicted, ratio, T_c ms, iterations)] for the six runs."""
    tokens = lambda batch, m: batch / H200_ATTENTION / m       # per attention worker's micro-batch
    a, b = fit_line([(tokens(B, m), (m2n - te) / 2) for B, m, _, _, _, te, m2n in H200_ROWS if m == 1])
    out = []
    for B, m, measured, _, ta, te, _ in H200_ROWS:
        tc = a + b * tokens(B, m)
        per_worker = B // H200_ATTENTION
        its = replay_fixed(per_worker, per_worker, H200_IN, H200_OUT, m, max(256, per_worker))
        t_iter = iteration_time("staged", m, H200_LAYERS, ta * 1e-3, te * 1e-3, tc * 1e-3, 0.0)[1]
        predicted = B * H200_OUT / (len(its) * t_iter) / H200_GPUS
        out.append((B, m, measured, predicted, predicted / measured, tc, len(its)))
    return out


def print_h200():
    print("| global batch | m | measured tok/s per GPU | predicted | predicted / measured | T_c ms (fitted) | iterations |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for B, m, meas, pred, r, tc, n in h200_table():
        print(f"| {B} | {m} | {meas:.1f} | {pred:.1f} | {r:.3f} | {tc:.3f} | {n} |")


def cpu_table(run_dir):
    """Rows from RUN_DIR/*.run.json (moe_pipeline --json) and *.pred.json (m2n_plan --plan ... --json)."""
    rows = []
    for name in sorted(os.listdir(run_dir)):
        if not name.endswith(".run.json"):
            continue
        tag = name[:-len(".run.json")]
        run = json.load(open(os.path.join(run_dir, name)))
        pred = json.load(open(os.path.join(run_dir, tag + ".pred.json")))
        iters = next((w["iterations"] for w in run.get("workers", []) if w.get("role") == "attention"), None)
        rows.append((run["micro_batches"], run["batch_per_attention_worker"], run["decode_tokens_per_s"],
                     pred["tokens_per_s"], run["tbt_p50_ms"], pred["tbt_p50_ms"], run["t_a_ms"], run["t_e_ms"],
                     iters, pred["iterations"], pred.get("t_a_ms", 0.0), pred.get("t_e_ms", 0.0)))
    rows.sort()
    print("| m | batch | measured tok/s | predicted tok/s | error | measured TBT p50 ms | predicted TBT p50 ms "
          "| error | T_a / T_e ms measured | predicted | iterations measured / replayed |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst_tps = worst_tbt = 0.0
    for m, b, mt, pt, mtbt, ptbt, ta, te, it_m, it_p, pta, pte in rows:
        et, eb = pt / mt - 1, ptbt / mtbt - 1
        worst_tps, worst_tbt = max(worst_tps, abs(et)), max(worst_tbt, abs(eb))
        print(f"| {m} | {b} | {mt:.1f} | {pt:.1f} | {et:+.1%} | {mtbt:.2f} | {ptbt:.2f} | {eb:+.1%} | {ta:.3f} / {te:.3f} | {pta:.3f} / {pte:.3f} | {it_m} / {it_p} |")
    best_measured = max(rows, key=lambda r: r[2])
    best_predicted = max(rows, key=lambda r: r[3])
    print(f"\nworst error: tokens/s {worst_tps:.1%}, TBT p50 {worst_tbt:.1%}; predicted best m = {best_predicted[0]}, "
          f"batch {best_predicted[1]}: measured {best_predicted[2]:.1f} tok/s, {best_predicted[2] / best_measured[2]:.1%} "
          f"of the measured best (m = {best_measured[0]}, batch {best_measured[1]}, {best_measured[2]:.1f} tok/s)")


def scale_table(gpu="H200", tbt_ms=150.0, sizes=(64, 128, 256, 512, 1024),
                models=("mixtral-8x22b", "deepseek-v3-like")):
    """On `size` GPUs of one type: the best plan per GPU that fits (a unit), repeated as many times
    as the GPUs allow (independent copies: each its own M2N group). A model with few experts stops
    scaling one unit early (its expert side cannot grow), hence units."""
    from planner import cli, perf, search
    print(f"| model | GPUs | units x GPUs | attention per unit | experts per unit | m | global batch per unit "
          f"| tok/s per GPU | TBT p50 ms | M2N group: senders x receivers (GPUs) | bytes per pair per "
          f"micro-batch | T_a / T_e / T_c ms | binds |")
    print("|---|---:|---|---|---|---:|---:|---:|---:|---|---:|---|---|")
    for model in models:
        for n in sizes:
            args = cli.parse_args(["--model", model, "--gpus", f"{gpu}={n}", "--min_gpus", str(n // 16),
                                   "--tbt_ms", str(tbt_ms)])
            s, cluster = cli.build_setting(args)
            found, _, reasons = search.search(s, cli.space_of(args, s, cluster), search.Limit(tbt_ms / 1e3))
            if not found:
                print(f"| {model} | {n} | - | no plan: {reasons} | | | | | | | | | |")
                continue
            best = max(o.best.per_gpu for o in found)
            # Among plans within 1% of the best per GPU, the largest unit (fewest groups).
            o = max((o for o in found if o.best.per_gpu >= 0.99 * best), key=lambda o: o.best.plan.gpus)
            e, p = o.best, o.best.plan
            b = p.batch / (p.n_a * p.m)
            msg = perf.HEADER_BYTES + b * perf.share_of_worker(s.model, p.n_e) * perf.row_bytes(s)
            print(f"| {model} | {n} | {n // p.gpus} x {p.gpus} | {p.n_a} x TP{p.tp_a} | {p.n_e} x TP{p.tp_e} | {p.m} | {p.batch} | "
                  f"{e.per_gpu:.0f} | {e.tbt_p50 * 1e3:.1f} | {p.n_a} x {p.n_e} "
                  f"({p.n_a * p.tp_a} x {p.n_e * p.tp_e}) | {msg / 1e3:.0f} kB | {e.t_a.seconds * 1e3:.2f} / "
                  f"{e.t_e.seconds * 1e3:.2f} / {e.t_c.seconds * 1e3:.2f} | {o.binding.split(' (')[0]} |")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "h200":
        print_h200()
    elif len(sys.argv) >= 2 and sys.argv[1] == "scale":
        scale_table(*(sys.argv[2:3] or ["H200"]), *(float(x) for x in sys.argv[3:4]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "cpu":
        cpu_table(sys.argv[2])
    else:
        print(__doc__)
        sys.exit(2)
