"""What m2n_plan prints: the ranked table, --explain (the terms and the binding constraint of a
plan), the moe_pipeline command line of a plan, and the JSON form of an estimate."""

import math

from planner.perf import MEMORY_RESERVE


def ms(x):
    return f"{x * 1e3:.3f}" if x < 0.1 else f"{x * 1e3:.1f}"


def command(s, e, model_arg):
    """The moe_pipeline command that runs plan e (one process per GPU; TP is not in the pipeline)."""
    p = e.plan
    per_worker = max(1, p.batch // p.n_a)
    max_tokens = max(256, math.ceil(per_worker / p.m))
    backend = s.catalogue[p.attn_gpu].backend
    cmd = (f"moe_pipeline --config {model_arg} -A {p.n_a} -E {p.n_e} -m {p.m} --batch {per_worker} "
           f"--requests {4 * per_worker} --max_tokens {max_tokens}")
    if s.lengths.what.startswith("fixed"):
        cmd += " --input_len {} --output_len {}".format(*s.lengths.what.split()[1].split("/"))
    cmd += f" --backend {backend} --no_check"
    if p.tp_a > 1 or p.tp_e > 1:
        cmd += f"   # moe_pipeline has no tensor parallelism: this runs TP 1 (the plan wants TP {p.tp_a} / {p.tp_e})"
    if p.gpus > 1 and p.gpus > s.node_size:
        cmd = f"mpirun -np {p.n_a + p.n_e} -x M2N_MASTER_ADDR=<rank 0 host> " + cmd
    return cmd


HEADER = ("| rank | attention | experts | GPUs | m | batch | tok/s per GPU | tok/$ | TBT p50 ms | TBT p99 ms "
          "| idle attn | idle exp | M2N share | binds |")


def table(found, top):
    lines = [HEADER, "|" + "---|" * 14]
    for i, o in enumerate(found[:top]):
        e, p = o.best, o.best.plan
        lines.append(f"| {i + 1} | {p.n_a} x {p.attn_gpu} TP{p.tp_a} | {p.n_e} x {p.exp_gpu} TP{p.tp_e} | {p.gpus} | "
                     f"{p.m} | {p.batch} | {e.per_gpu:.1f} | {e.per_dollar:,.0f} | {ms(e.tbt_p50)} | {ms(e.tbt_p99)} | "
                     f"{e.idle_a:.0%} | {e.idle_e:.0%} | {e.m2n_share:.0%} | {o.binding.split(' (')[0]} |")
    return "\n".join(lines)


def explain(s, o, model_arg):
    """The terms of plan o.best, the ping-pong conditions, memory, and what binds."""
    e, p = o.best, o.best.plan
    ga, ge = s.catalogue[p.attn_gpu], s.catalogue[p.exp_gpu]
    c = e.conditions
    b = p.batch / (p.n_a * p.m)
    lines = [
        f"plan: {p.n_a} attention replica(s) of {p.tp_a} x {p.attn_gpu}, {p.n_e} expert worker(s) of {p.tp_e} x "
        f"{p.exp_gpu} ({math.ceil(s.model.experts / p.n_e)} experts each), {p.gpus} GPUs; m = {p.m}, global batch "
        f"{p.batch} ({b:.1f} decode tokens per replica micro-batch); comm {s.comm}, prefill {s.prefill}",
        f"  T_a    {ms(e.t_a.seconds):>9} ms  attention of one layer, one micro-batch     {e.t_a.source}",
        f"  T_e    {ms(e.t_e.seconds):>9} ms  experts of one layer, one micro-batch       {e.t_e.source}",
        f"  T_c    {ms(e.t_c.seconds):>9} ms  one-way M2N transfer of a micro-batch       {e.t_c.source}",
        f"  T_head {ms(e.t_head.seconds):>9} ms  embedding + LM head per micro-batch        {e.t_head.source}",
        f"  period {ms(e.period):>9} ms per layer = max(m T_a{'+2T_c' if s.comm == 'staged' else ''}, m T_e, "
        f"T_a + T_e + 2 T_c); iteration {ms(e.t_iter)} ms over {s.model.layers} layers",
        f"  balance T_a / T_e = {c['balance T_a/T_e']:.2f}; T_c < T_f: {'yes' if c['T_c < T_f'] else 'NO'}; "
        f"m >= 2 (1 + T_c / T_f): {'yes' if c['m >= 2(1 + T_c/T_f)'] else 'no'} (m >= {c['m needed']}; "
        f"sufficient for balanced sides, the period above is exact for unbalanced ones)",
        f"  memory per attention GPU {e.memory_a / 1e9:.1f} GB of {ga.memory_bytes * (1 - MEMORY_RESERVE) / 1e9:.1f} "
        f"usable; per expert GPU {e.memory_e / 1e9:.1f} GB of {ge.memory_bytes * (1 - MEMORY_RESERVE) / 1e9:.1f}",
        f"  throughput {e.tokens_per_s:,.0f} tokens/s: {e.per_gpu:.1f} per GPU, {e.per_dollar:,.0f} per dollar; "
        f"TBT p50 {ms(e.tbt_p50)} ms, p99 {ms(e.tbt_p99)} ms; idle attention {e.idle_a:.0%}, experts {e.idle_e:.0%}; "
        f"M2N {e.m2n_share:.0%} of the iteration",
        f"  binds: {o.binding}  (the batch is the largest that meets the limit and fits memory)",
        f"  which side limits: {'attention' if e.t_a.seconds + (2 * e.t_c.seconds if s.comm == 'staged' else 0) >= e.t_e.seconds else 'experts'}"
        f" (T_f = max of the two); more replicas per expert group move the balance toward the experts",
        f"  run: {command(s, e, model_arg)}",
    ]
    return "\n".join(lines)


def estimate_json(s, o, model_arg):
    e, p = o.best, o.best.plan
    return {
        "attention": {"gpu": p.attn_gpu, "tp": p.tp_a, "replicas": p.n_a},
        "experts": {"gpu": p.exp_gpu, "tp": p.tp_e, "workers": p.n_e},
        "gpus": p.gpus, "m": p.m, "batch": p.batch,
        "tokens_per_s": e.tokens_per_s, "per_gpu": e.per_gpu, "per_dollar": e.per_dollar,
        "tbt_p50_ms": e.tbt_p50 * 1e3, "tbt_p99_ms": e.tbt_p99 * 1e3,
        "idle_attention": e.idle_a, "idle_experts": e.idle_e, "m2n_share": e.m2n_share,
        "t_a_ms": e.t_a.seconds * 1e3, "t_e_ms": e.t_e.seconds * 1e3, "t_c_ms": e.t_c.seconds * 1e3,
        "sources": {"t_a": e.t_a.source, "t_e": e.t_e.source, "t_c": e.t_c.source},
        "memory_attention_gb": e.memory_a / 1e9, "memory_experts_gb": e.memory_e / 1e9,
        "conditions": {k: v for k, v in e.conditions.items()},
        "binding": o.binding, "command": command(s, e, model_arg),
    }
