"""The plan search (shared/MISSION.md, "Deployment plan search"): for each pair of GPU types
(attention side, expert side; the same type or mixed), tensor-parallel sizes on each side, the
number of expert workers (dividing the experts), attention replicas, and m from 1 to 8, the
largest global batch that meets the time-between-tokens limit and fits memory (binary search:
the iteration time grows with the batch). Plans are ranked by tokens/s per GPU or per dollar.
"""

from dataclasses import dataclass, field

from planner.perf import MEMORY_RESERVE, Plan, evaluate

TP_SIZES = (1, 2, 4, 8)
MICRO_BATCHES = range(1, 9)


@dataclass
class Limit:
    tbt_p50: float            # seconds
    tbt_p99: float = None     # seconds, optional


@dataclass
class Outcome:
    best: object = None       # Estimate at the largest feasible batch, or None
    binding: str = ""         # what stops the batch from growing
    why_not: str = ""         # when infeasible: why even the smallest batch fails
    why_kind: str = ""


def meets(e, limit):
    return e.fits and e.tbt_p50 <= limit.tbt_p50 and (limit.tbt_p99 is None or e.tbt_p99 <= limit.tbt_p99)


def failure(e, s, limit):
    """Which constraint a plan breaks (the first of memory, p50, p99): its text."""
    return failure_kind(e, s, limit)[1]


def failure_kind(e, s, limit):
    """(kind, text) of the constraint a plan breaks; ("", "") when it meets them all."""
    ga, ge = s.catalogue[e.plan.attn_gpu], s.catalogue[e.plan.exp_gpu]
    if e.memory_a > (1 - MEMORY_RESERVE) * ga.memory_bytes:
        return "memory of an attention GPU", f"memory of an attention GPU ({e.memory_a / 1e9:.2f} GB > {(1 - MEMORY_RESERVE) * ga.memory_bytes / 1e9:.2f} GB usable on {ga.name})"
    if e.memory_e > (1 - MEMORY_RESERVE) * ge.memory_bytes:
        return "memory of an expert GPU", f"memory of an expert GPU ({e.memory_e / 1e9:.2f} GB > {(1 - MEMORY_RESERVE) * ge.memory_bytes / 1e9:.2f} GB usable on {ge.name})"
    if e.tbt_p50 > limit.tbt_p50:
        return "TBT p50 limit", f"TBT p50 {e.tbt_p50 * 1e3:.1f} ms > limit {limit.tbt_p50 * 1e3:.1f} ms"
    if limit.tbt_p99 is not None and e.tbt_p99 > limit.tbt_p99:
        return "TBT p99 limit", f"TBT p99 {e.tbt_p99 * 1e3:.1f} ms > limit {limit.tbt_p99 * 1e3:.1f} ms"
    return "", ""


def largest_batch(s, plan_of, limit, lo=1, hi=1 << 20):
    """Binary search of the largest batch n (plan_of(n)) that meets the limit."""
    first = evaluate(s, plan_of(lo))
    if not meets(first, limit):
        kind, text = failure_kind(first, s, limit)
        return Outcome(why_not=text, why_kind=kind)
    best = first
    step_hi = lo
    while step_hi < hi:                       # grow until it fails
        nxt = min(hi, step_hi * 2)
        e = evaluate(s, plan_of(nxt))
        if not meets(e, limit):
            hi = nxt
            break
        best, step_hi = e, nxt
    else:
        return Outcome(best=best, binding="the batch search's upper bound")
    lo_ok, hi_bad = step_hi, hi
    bad = None
    while hi_bad - lo_ok > 1:
        mid = (lo_ok + hi_bad) // 2
        e = evaluate(s, plan_of(mid))
        if meets(e, limit):
            best, lo_ok = e, mid
        else:
            hi_bad, bad = mid, e
    if bad is None:
        bad = evaluate(s, plan_of(hi_bad))
    return Outcome(best=best, binding=failure(bad, s, limit))


@dataclass
class SearchSpace:
    pairs: list                               # [(attention type, expert type)]
    counts: dict                              # type -> GPUs available
    min_gpus: int = 1
    tp_sizes: tuple = TP_SIZES
    micro_batches: tuple = tuple(MICRO_BATCHES)
    fixed: dict = field(default_factory=dict)  # n_a, n_e, tp_a, tp_e, m held fixed


def _replica_counts(limit):
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to limit: enough to balance the sides without trying all."""
    out, x = [], 1
    while x <= limit:
        out.append(x)
        if x * 3 // 2 <= limit and x >= 2:
            out.append(x * 3 // 2)
        x *= 2
    return sorted(set(out))


def candidates(s, space):
    model = s.model
    f = space.fixed
    for a, ex in space.pairs:
        for tp_a in ([f["tp_a"]] if "tp_a" in f else space.tp_sizes):
            for tp_e in ([f["tp_e"]] if "tp_e" in f else space.tp_sizes):
                if tp_a > s.node_size or tp_e > s.node_size:
                    continue
                n_es = [f["n_e"]] if "n_e" in f else [d for d in range(1, model.experts + 1) if model.experts % d == 0]
                for n_e in n_es:
                    used_e = n_e * tp_e
                    if a == ex:
                        room_a = space.counts[a] - used_e
                    else:
                        if used_e > space.counts[ex]:
                            continue
                        room_a = space.counts[a]
                    if room_a < tp_a:
                        continue
                    n_as = [f["n_a"]] if "n_a" in f else _replica_counts(room_a // tp_a)
                    for n_a in n_as:
                        if n_a * tp_a + used_e < space.min_gpus or n_a * tp_a > room_a:
                            continue
                        for m in ([f["m"]] if "m" in f else space.micro_batches):
                            yield a, ex, tp_a, tp_e, n_a, n_e, m


def search(s, space, limit, objective="per_gpu", keep=10):
    """(ranked Outcomes with a plan, number tried, reasons of the infeasible ones by count)."""
    found, tried, reasons = [], 0, {}
    for a, ex, tp_a, tp_e, n_a, n_e, m in candidates(s, space):
        tried += 1
        step = n_a * m            # a batch every replica's micro-batches share evenly
        out = largest_batch(s, lambda k: Plan(a, ex, tp_a, tp_e, n_a, n_e, m, k * step), limit, hi=1 << 16)
        if out.best is None:
            reasons[out.why_kind] = reasons.get(out.why_kind, 0) + 1
            continue
        found.append(out)
    found.sort(key=lambda o: -getattr(o.best, objective))
    return found, tried, reasons


def best_per_kind(found):
    """The best plan of each kind (homogeneous X, X + Y), in rank order."""
    seen, out = set(), []
    for o in found:
        k = o.best.plan.kind()
        if k not in seen:
            seen.add(k)
            out.append(o)
    return out
