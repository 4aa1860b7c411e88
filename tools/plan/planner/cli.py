"""m2n_plan: how to serve a MoE model on these GPUs within a time-between-tokens limit.

Reads the model config, the GPU catalogue, the cluster and any measured curves, searches the plans
(planner/search.py), prints the best ones with their predicted figures and the moe_pipeline
command of each; --explain says why the first wins; --plan evaluates one given plan (and with
--fixed_lengths predicts a moe_pipeline run of it iteration by iteration, for validation).
Exit status: 0 a plan was found, 1 no plan meets the limit (said why), 2 bad input.
"""

import argparse
import json
import os
import sys

from planner import inputs, perf, report, search, workload

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(HERE, "..", "..", "examples", "moe_pipeline", "configs")


def parse_args(argv):
    a = argparse.ArgumentParser(prog="m2n_plan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--model", required=True, help="a config name in examples/moe_pipeline/configs or a path")
    a.add_argument("--catalogue", default=os.path.join(HERE, "catalogue", "gpus.json"))
    a.add_argument("--cluster", help="cluster JSON: node_size and GPUs per type")
    a.add_argument("--gpus", help="instead of --cluster: TYPE=N[,TYPE=N...]")
    a.add_argument("--node_size", type=int, default=8, help="GPUs per node with --gpus (default 8)")
    a.add_argument("--min_gpus", type=int, default=1, help="only plans using at least this many GPUs")
    a.add_argument("--tbt_ms", type=float, default=150.0, help="time-between-tokens limit, p50 (default 150)")
    a.add_argument("--tbt_p99_ms", type=float, help="and a p99 limit")
    a.add_argument("--lengths", default="production",
                   help="production (the pipeline's distribution, default) or IN/OUT fixed lengths")
    a.add_argument("--prefill", choices=("separate", "inline"), default="separate",
                   help="separate: decode-only instances (default, the paper's setting); inline: prompt "
                        "chunks share the decode iterations, as moe_pipeline does")
    a.add_argument("--comm", choices=("overlapped", "staged"), default="overlapped",
                   help="overlapped: m2n's GPU path hides the transfer (default); staged: the attention "
                        "worker's thread moves the data (today's moe_pipeline, the CPU backend)")
    a.add_argument("--comm_curve", help="m2n_perf --json file: T_c from its p50 against message size")
    a.add_argument("--profile", action="append", default=[], metavar="TYPE=FILE",
                   help="moe_pipeline --profile file measured on catalogue type TYPE (repeatable)")
    a.add_argument("--objective", choices=("per_gpu", "per_dollar"), default="per_gpu")
    a.add_argument("--types", help="only these GPU types (comma separated)")
    a.add_argument("--homogeneous", action="store_true", help="only plans with one GPU type")
    a.add_argument("--plan", help="evaluate one plan: a=TYPE,e=TYPE,tp_a=1,tp_e=1,A=1,E=1,m=2,batch=8 "
                                  "(with batch omitted: the largest within the limit)")
    a.add_argument("--fixed_lengths", metavar="IN,OUT,REQUESTS,MAX_TOKENS",
                   help="with --plan: predict a moe_pipeline run with these fixed lengths, REQUESTS per "
                        "attention worker, MAX_TOKENS per micro-batch")
    a.add_argument("--top", type=int, default=10)
    a.add_argument("--explain", action="store_true", help="the terms and binding constraint of the best plan")
    a.add_argument("--json", help="write the ranked plans as JSON here")
    return a.parse_args(argv)


def model_path(name):
    if os.sep in name or name.endswith(".json"):
        return name
    return os.path.normpath(os.path.join(CONFIGS, name + ".json"))


def build_setting(args):
    model = inputs.load_model(model_path(args.model))
    catalogue = inputs.load_catalogue(args.catalogue)
    if args.cluster:
        cluster = inputs.load_cluster(args.cluster, catalogue)
    elif args.gpus:
        counts = {}
        for item in args.gpus.split(","):
            name, _, n = item.partition("=")
            if name not in catalogue:
                raise inputs.InputError("--gpus", name, f"not in the catalogue {args.catalogue}")
            if not n.isdigit():
                raise inputs.InputError("--gpus", name, f"count must be a non-negative integer, got {n!r}")
            counts[name] = int(n)
        cluster = inputs.Cluster(path="--gpus", node_size=args.node_size, gpus=counts)
    else:
        raise inputs.InputError("m2n_plan", "--cluster", "give a cluster file or --gpus TYPE=N")
    profiles = {}
    for item in args.profile:
        name, _, path = item.partition("=")
        if name not in catalogue:
            raise inputs.InputError("--profile", name, f"not in the catalogue {args.catalogue}")
        profiles[name] = inputs.load_compute_profile(path, model, name)
    # Types without a profile: the roofline scaled by the efficiency measured on a profiled type.
    eff, eff_source = None, None
    if profiles:
        ref = sorted(profiles)[0]
        eff = perf.efficiency_from_profile(model, catalogue[ref], profiles[ref])
        eff_source = f"efficiency measured on {ref}"
    compute = {t: perf.DeviceCompute(model, catalogue[t], profiles.get(t), eff, eff_source) for t in catalogue}
    curve = inputs.load_comm_curve(args.comm_curve) if args.comm_curve else None
    if args.lengths == "production":
        lengths = workload.lengths_of(workload.production_lengths(min(4096, model.max_positions)), "production")
    else:
        try:
            i, o = (int(x) for x in args.lengths.split("/"))
        except ValueError:
            raise inputs.InputError("--lengths", None, f"production or IN/OUT, got {args.lengths!r}") from None
        lengths = workload.lengths_of([(i, o)], f"fixed {i}/{o}")
    s = perf.Setting(model=model, catalogue=catalogue, compute=compute, comm_model=perf.CommModel(curve),
                     lengths=lengths, node_size=cluster.node_size, comm=args.comm, prefill=args.prefill)
    return s, cluster


def space_of(args, s, cluster):
    types = [t for t, n in cluster.gpus.items() if n > 0]
    if args.types:
        types = [t for t in types if t in args.types.split(",")]
    pairs = [(a, e) for a in types for e in types if not args.homogeneous or a == e]
    return search.SearchSpace(pairs=pairs, counts=dict(cluster.gpus), min_gpus=args.min_gpus)


def parse_plan(text):
    keys = {"a": str, "e": str, "tp_a": int, "tp_e": int, "A": int, "E": int, "m": int, "batch": int}
    out = {}
    for item in text.split(","):
        k, _, v = item.partition("=")
        if k not in keys:
            raise inputs.InputError("--plan", k, f"unknown key (use {', '.join(keys)})")
        try:
            out[k] = keys[k](v)
        except ValueError:
            raise inputs.InputError("--plan", k, f"bad value {v!r}") from None
    for k in ("a", "E", "A", "m"):
        if k not in out:
            raise inputs.InputError("--plan", k, "missing")
    return out


def run_plan(args, s, limit):
    f = parse_plan(args.plan)
    a, e = f["a"], f.get("e", f["a"])
    for t in (a, e):
        if t not in s.catalogue:
            raise inputs.InputError("--plan", t, "not in the catalogue")
    mk = lambda b: perf.Plan(a, e, f.get("tp_a", 1), f.get("tp_e", 1), f["A"], f["E"], f["m"], b)
    if "batch" in f:
        est = perf.evaluate(s, mk(f["batch"]))
        kind, text = search.failure_kind(est, s, limit)
        out = search.Outcome(best=est, binding=text or "none at this batch (the limit is met)")
    else:
        out = search.largest_batch(s, lambda k: mk(k * f["A"] * f["m"]), limit, hi=1 << 16)
        if out.best is None:
            print(f"m2n_plan: this plan meets no batch: {out.why_not}")
            return 1
    print(report.explain(s, out, args.model))
    if args.fixed_lengths:
        try:
            i, o, r, t = (int(x) for x in args.fixed_lengths.split(","))
        except ValueError:
            raise inputs.InputError("--fixed_lengths", None, "IN,OUT,REQUESTS,MAX_TOKENS") from None
        pr = perf.predict_run(s, out.best.plan, i, o, r, t)
        print(f"predicted run (fixed {i}/{o}, {r} requests per attention worker, max_tokens {t}): "
              f"decode {pr.tokens_per_s:.1f} tokens/s, TBT p50 {pr.tbt_p50 * 1e3:.2f} ms, {pr.iterations} "
              f"iterations, {pr.seconds:.2f} s; T_a / T_e {pr.t_a * 1e3:.3f} / {pr.t_e * 1e3:.3f} ms, "
              f"T_c {pr.t_c * 1e3:.3f} ms")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"tokens_per_s": pr.tokens_per_s, "tbt_p50_ms": pr.tbt_p50 * 1e3,
                           "iterations": pr.iterations, "seconds": pr.seconds, "t_a_ms": pr.t_a * 1e3,
                           "t_e_ms": pr.t_e * 1e3, "t_c_ms": pr.t_c * 1e3}, fh, indent=2)
    return 0


def run_search(args, s, cluster, limit):
    space = space_of(args, s, cluster)
    found, tried, reasons = search.search(s, space, limit, args.objective)
    print(f"# m2n_plan: {s.model.name} ({s.model.path}), {s.model.layers} layers, {s.model.experts} experts "
          f"top-{s.model.top_k}; cluster {', '.join(f'{n} x {t}' for t, n in cluster.gpus.items())} "
          f"(node {cluster.node_size}); TBT p50 <= {args.tbt_ms:g} ms"
          + (f", p99 <= {args.tbt_p99_ms:g} ms" if args.tbt_p99_ms else "")
          + f"; lengths {s.lengths.what}; prefill {s.prefill}; comm {s.comm}; ranked {args.objective}")
    srcs = {t: ("measured" if d.profile else f"modelled ({d.efficiency_source})") for t, d in s.compute.items()
            if t in cluster.gpus}
    print("# compute: " + "; ".join(f"{t} {v}" for t, v in srcs.items())
          + f"; T_c: {'measured (' + args.comm_curve + ')' if args.comm_curve else 'modelled from link bandwidth'}")
    if not found:
        why = "; ".join(f"{n} of {tried} by {k}" for k, n in sorted(reasons.items(), key=lambda x: -x[1]))
        print(f"m2n_plan: no plan meets the limit ({tried} layouts tried): {why}")
        return 1
    print(f"# {tried} layouts searched, {len(found)} feasible")
    print(report.table(found, args.top))
    kinds = search.best_per_kind(found)
    homo = [o for o in kinds if o.best.plan.attn_gpu == o.best.plan.exp_gpu]
    mixed = [o for o in kinds if o.best.plan.attn_gpu != o.best.plan.exp_gpu]
    if homo and mixed:
        hb = max(homo, key=lambda o: o.best.per_dollar)
        mb = max(mixed, key=lambda o: o.best.per_dollar)
        print(f"# best mixed ({mb.best.plan.kind()}) vs best homogeneous ({hb.best.plan.kind()}): "
              f"{mb.best.per_dollar / hb.best.per_dollar:.2f}x per dollar, "
              f"{mb.best.per_gpu / hb.best.per_gpu:.2f}x per GPU")
    for i, o in enumerate(found[:args.top]):
        print(f"# {i + 1}: {report.command(s, o.best, args.model)}")
    if args.explain:
        print("\n" + report.explain(s, found[0], args.model))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": s.model.name, "objective": args.objective, "tbt_ms": args.tbt_ms,
                       "plans": [report.estimate_json(s, o, args.model) for o in found[:max(args.top, 50)]],
                       "best_per_kind": [report.estimate_json(s, o, args.model) for o in kinds]}, fh, indent=1)
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        s, cluster = build_setting(args)
        limit = search.Limit(args.tbt_ms / 1e3, args.tbt_p99_ms / 1e3 if args.tbt_p99_ms else None)
        if args.tbt_ms <= 0:
            raise inputs.InputError("--tbt_ms", None, f"must be > 0, got {args.tbt_ms}")
        if args.plan:
            return run_plan(args, s, limit)
        return run_search(args, s, cluster, limit)
    except inputs.InputError as e:
        print(f"m2n_plan: {e}", file=sys.stderr)
        return 2
