"""The performance model of one deployment plan (shared/MISSION.md, "Ping-pong pipeline").

Per micro-batch: T_a (attention side: attention, gate, token gather and combine of one layer),
T_e (expert side: one layer of the experts a worker holds) and T_c (one-way M2N transfer), each
from a measured curve where one exists for that device type and model shape, else a roofline from
the catalogue scaled by the efficiency measured on a profiled type (or a default efficiency),
and every figure says which.

Iteration over L layers with m micro-batches (see iteration_time):
  P      = max(m T_a', m T_e, T_a + T_e + 2 T_c)      the period of one layer
  T_iter = (L - 1) P + (m - 1) T_f + T_a + T_e + 2 T_c + m T_head
where T_a' = T_a + 2 T_c when the attention worker's own thread moves the data (comm "staged":
today's moe_pipeline, CPU or GPU with host-staged messages), else T_a (comm "overlapped": m2n's
GPU path, the transfer hidden under compute), T_f = max(T_a', T_e) and T_head the embedding and
LM head per micro-batch. With m large and balanced sides this is MISSION's
(T_a + T_e + 2 T_c) + T_f (m L - 1); with m = 1 it is L (T_a + T_e + 2 T_c).
"""

import math
from dataclasses import dataclass, field

# Defaults where nothing was measured for this model on any device: the fraction of the roofline
# a well-tuned kernel reaches. They are assumptions; the output marks figures built on them.
DEFAULT_EFFICIENCY = {"attention": 0.6, "expert": 0.6, "head": 0.6}
COMM_LATENCY_S = 20e-6          # modelled per-transfer latency where no m2n_perf curve is given
COMM_UTILISATION = 0.8          # modelled link utilisation where no curve is given
TP_ALLREDUCE_LATENCY_S = 10e-6  # per all-reduce inside a tensor-parallel group
MEMORY_RESERVE = 0.10           # of each GPU's memory kept for the runtime and fragmentation
HEADER_BYTES = 64               # wire.h's Header


def _interp(points, x):
    """Piecewise-linear through ascending (x, y) points, linear beyond the last two, clamped below."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(points) == 1:
        return points[0][1] * x / points[0][0]
    (x0, y0), (x1, y1) = points[-2], points[-1]
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


def _fit_attention(points):
    """Least squares of T = k0 + k1 b + k2 b c, relative error (each point weighted by 1 / T)."""
    rows = [(1.0 / t, b / t, b * c / t) for b, c, t in points]
    n = 3
    a = [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]
    y = [sum(r[i] for r in rows) for i in range(n)]   # target: T / T = 1
    # Gaussian elimination (3 x 3).
    for i in range(n):
        p = max(range(i, n), key=lambda r: abs(a[r][i]))
        a[i], a[p], y[i], y[p] = a[p], a[i], y[p], y[i]
        if abs(a[i][i]) < 1e-300:
            return None
        for r in range(i + 1, n):
            f = a[r][i] / a[i][i]
            for c in range(i, n):
                a[r][c] -= f * a[i][c]
            y[r] -= f * y[i]
    k = [0.0] * n
    for i in reversed(range(n)):
        k[i] = (y[i] - sum(a[i][c] * k[c] for c in range(i + 1, n))) / a[i][i]
    return [max(0.0, v) for v in k]


@dataclass
class Figure:
    """A time and where it came from."""
    seconds: float
    source: str      # "measured (<file>)", "modelled (roofline x efficiency measured on X)", ...


class DeviceCompute:
    """T_a, T_e and the head on one device type for one model, per tensor-parallel size."""

    def __init__(self, model, gpu, profile=None, efficiency=None, efficiency_source=None):
        self.model, self.gpu, self.profile = model, gpu, profile
        self.efficiency = dict(efficiency or DEFAULT_EFFICIENCY)
        self.efficiency_source = efficiency_source or "default efficiency (no profile of this model)"
        self._att_fit = _fit_attention(profile.attention) if profile else None

    # -- rooflines (one device of a TP group of `tp`) --
    def roof_attention(self, b, c, tp=1):
        m, d = self.model, self.gpu.dtype_bytes
        byts = m.attention_params_per_layer() * d / tp + b * c * 2 * m.kv_dim * d / tp
        flops = 2 * b * m.attention_params_per_layer() / tp + 4 * b * c * m.q_dim / tp
        return max(byts / self.gpu.hbm_bytes_per_s, flops / self.gpu.flops)

    def roof_expert(self, tokens, tp=1):
        m, d = self.model, self.gpu.dtype_bytes
        return max(m.expert_params() * d / tp / self.gpu.hbm_bytes_per_s,
                   2 * tokens * m.expert_params() / tp / self.gpu.flops)

    def roof_head(self, b, tp=1):
        m, d = self.model, self.gpu.dtype_bytes
        return max(m.vocab * m.hidden * d / tp / self.gpu.hbm_bytes_per_s, 2 * b * m.vocab * m.hidden / tp / self.gpu.flops)

    def _allreduce(self, tokens, tp):
        if tp == 1:
            return 0.0
        byts = tokens * self.model.hidden * self.gpu.dtype_bytes
        return TP_ALLREDUCE_LATENCY_S + 2 * (tp - 1) / tp * byts / self.gpu.nvlink_bytes_per_s

    # -- the figures --
    def attention(self, b, c, tp=1):
        """One layer of a micro-batch of b tokens at mean context c (two all-reduces under TP)."""
        if b <= 0:
            return Figure(0.0, "empty")
        comm = 2 * self._allreduce(b, tp)
        if self._att_fit:
            k0, k1, k2 = self._att_fit
            return Figure((k0 + k1 * b + k2 * b * c) / tp + comm, f"measured ({self.profile.path}, fit)")
        return Figure(self.roof_attention(b, c, tp) / self.efficiency["attention"] + comm,
                      f"modelled (roofline / {self.efficiency['attention']:.2f}, {self.efficiency_source})")

    def expert(self, tokens, tp=1):
        """One layer of one expert over `tokens` tokens (one all-reduce under TP)."""
        if tokens <= 0:
            return Figure(0.0, "empty")
        comm = self._allreduce(tokens, tp)
        if self.profile:
            return Figure(_interp(self.profile.expert, tokens) / tp + comm, f"measured ({self.profile.path})")
        return Figure(self.roof_expert(tokens, tp) / self.efficiency["expert"] + comm,
                      f"modelled (roofline / {self.efficiency['expert']:.2f}, {self.efficiency_source})")

    def head(self, b, tp=1):
        if b <= 0:
            return Figure(0.0, "empty")
        if self.profile:
            return Figure(_interp(sorted(self.profile.head), b) / tp, f"measured ({self.profile.path})")
        return Figure(self.roof_head(b, tp) / self.efficiency["head"], "modelled (roofline)")


def efficiency_from_profile(model, gpu, profile):
    """How far below its roofline a profiled device ran (geometric mean over the profile's points)."""
    d = DeviceCompute(model, gpu)
    def gmean(xs):
        return math.exp(sum(math.log(x) for x in xs) / len(xs))
    att = gmean([min(1.0, d.roof_attention(b, c) / t) for b, c, t in profile.attention])
    exp = gmean([min(1.0, d.roof_expert(n) / t) for n, t in profile.expert])
    head = gmean([min(1.0, d.roof_head(b) / t) for b, t in profile.head])
    return {"attention": att, "expert": exp, "head": head}


class CommModel:
    """T_c: one-way transfer of one micro-batch's dispatch (or combine) between the two sides."""

    def __init__(self, curve=None):
        self.curve = curve

    def time(self, message_bytes, senders, receivers, link_a, link_e):
        """`message_bytes` per (attention worker, expert worker) pair; link_*: bytes/s of one
        worker's path out of its node (or NVLink when the plan fits one node)."""
        if self.curve:
            scale = max(1.0, receivers / self.curve.receivers, senders / self.curve.senders)
            return Figure(_interp(self.curve.points, message_bytes) * scale,
                          f"measured ({self.curve.path}, {self.curve.senders}x{self.curve.receivers}"
                          + (f" scaled x{scale:.2f}" if scale > 1 else "") + ")")
        out = receivers * message_bytes / link_a
        into = senders * message_bytes / link_e
        return Figure(COMM_LATENCY_S + max(out, into) / COMM_UTILISATION,
                      f"modelled ({COMM_LATENCY_S * 1e6:.0f} us + bytes / ({COMM_UTILISATION:.0%} of link))")


@dataclass
class Plan:
    attn_gpu: str
    exp_gpu: str
    tp_a: int
    tp_e: int
    n_a: int         # attention replicas (data parallel), tp_a GPUs each
    n_e: int         # expert workers, tp_e GPUs each
    m: int
    batch: int       # requests in flight over the whole job (global batch)

    @property
    def gpus(self):
        return self.n_a * self.tp_a + self.n_e * self.tp_e

    def kind(self):
        return "homogeneous " + self.attn_gpu if self.attn_gpu == self.exp_gpu else f"{self.attn_gpu} + {self.exp_gpu}"


@dataclass
class Setting:
    """Everything but the plan: model, devices, lengths, limits."""
    model: object
    catalogue: dict
    compute: dict            # gpu type -> DeviceCompute
    comm_model: CommModel
    lengths: object          # workload.Lengths
    node_size: int = 8
    comm: str = "overlapped"   # or "staged" (see the module doc)
    prefill: str = "separate"  # or "inline": prompt chunks share the decode iterations
    max_tokens: int = 0        # per micro-batch (slot sizing); 0: as the batch needs


@dataclass
class Estimate:
    plan: Plan
    t_a: Figure = None
    t_e: Figure = None
    t_c: Figure = None
    t_head: Figure = None
    period: float = 0.0
    t_iter: float = 0.0
    tbt_p50: float = 0.0
    tbt_p99: float = 0.0
    tokens_per_s: float = 0.0
    per_gpu: float = 0.0
    per_dollar: float = 0.0         # tokens per dollar
    idle_a: float = 0.0
    idle_e: float = 0.0
    m2n_share: float = 0.0          # of the iteration, the attention side's transfers
    memory_a: float = 0.0           # bytes per attention GPU
    memory_e: float = 0.0
    fits: bool = True
    conditions: dict = field(default_factory=dict)


def row_bytes(s):
    act = 4 if s.comm == "staged" else s.model.dtype_bytes   # the pipeline's rows are fp32
    return s.model.hidden * act + s.model.top_k * 8 + 4


def share_of_worker(model, n_e):
    """Probability that a token has at least one of its top-k experts on a given expert worker."""
    held = math.ceil(model.experts / n_e)
    rest = model.experts - held
    miss = 1.0
    for j in range(model.top_k):
        miss *= max(0.0, (rest - j)) / (model.experts - j)
    return 1.0 - miss


def terms(s, p, tokens_a, context, tokens_head=None):
    """T_a, T_e, T_c, T_head for micro-batches of `tokens_a` tokens per attention replica."""
    model = s.model
    ca, ce = s.compute[p.attn_gpu], s.compute[p.exp_gpu]
    t_a = ca.attention(tokens_a, context, p.tp_a)
    # Every expert worker gets the micro-batch's tokens of all replicas routed to its experts.
    global_tokens = tokens_a * p.n_a
    held = math.ceil(model.experts / p.n_e)
    per_expert = global_tokens * model.top_k / model.experts
    active = held * (1.0 - (1.0 - model.top_k / model.experts) ** global_tokens) if global_tokens else 0.0
    one = ce.expert(held * per_expert / active, p.tp_e) if active > 0 else Figure(0.0, "empty")
    t_e = Figure(active * one.seconds, one.source)
    msg = HEADER_BYTES + tokens_a * share_of_worker(model, p.n_e) * row_bytes(s)
    one_node = p.gpus <= s.node_size
    ga, ge = s.catalogue[p.attn_gpu], s.catalogue[p.exp_gpu]
    link_a = (ga.nvlink_bytes_per_s if one_node else ga.nic_bytes_per_s) * p.tp_a
    link_e = (ge.nvlink_bytes_per_s if one_node else ge.nic_bytes_per_s) * p.tp_e
    t_c = s.comm_model.time(msg, p.n_a, p.n_e, link_a, link_e)
    t_head = ca.head(tokens_a if tokens_head is None else tokens_head, p.tp_a)
    return t_a, t_e, t_c, t_head


def iteration_time(comm, m, layers, t_a, t_e, t_c, t_head):
    """(period per layer, iteration time, attention-side occupancy per micro-batch); comm is
    "staged" or "overlapped" (module doc)."""
    occ_a = t_a + (2 * t_c if comm == "staged" else 0.0)
    cycle = t_a + t_e + 2 * t_c
    period = max(m * occ_a, m * t_e, cycle)
    t_f = max(occ_a, t_e)
    return period, (layers - 1) * period + (m - 1) * t_f + cycle + m * t_head, occ_a


def memory(s, p, batch):
    """(bytes per attention GPU, bytes per expert GPU): weights, KV cache of the batch, m2n slots."""
    model, d = s.model, s.model.dtype_bytes
    max_tokens = s.max_tokens or max(1, math.ceil(batch / (p.n_a * p.m)))
    slot = HEADER_BYTES + max_tokens * row_bytes(s)
    depth = max(2, p.m)
    weights_a = (model.attention_params_per_layer() * model.layers + model.embedding_params()) * d / p.tp_a
    kv = batch / p.n_a * s.lengths.kv_tokens * model.kv_bytes_per_token() / p.tp_a
    act = p.m * max_tokens * model.hidden * 4 * 8          # residuals, norms, q/k/v of m micro-batches
    slots_a = 2 * p.n_e * depth * slot                      # dispatch buffers out, combine slots in
    held = math.ceil(model.experts / p.n_e)
    weights_e = held * model.expert_params() * model.layers * d / p.tp_e
    slots_e = 2 * p.n_a * depth * slot
    return weights_a + kv + act + slots_a, weights_e + slots_e + act


def evaluate(s, p):
    """The steady state of continuous batching at global batch p.batch (see the module doc)."""
    model, L = s.model, s.model.layers
    e = Estimate(plan=p)
    b = p.batch / (p.n_a * p.m)                             # decode tokens per replica micro-batch
    pf = 0.0
    if s.prefill == "inline":
        # Each finishing request is replaced by one whose prompt is chunked into the iterations.
        pf = p.batch * s.lengths.mean_input / s.lengths.mean_output / (p.n_a * p.m)
    tokens = b + pf
    ctx = (b * s.lengths.decode_context + pf * s.lengths.mean_input / 2) / tokens
    e.t_a, e.t_e, e.t_c, e.t_head = terms(s, p, tokens, ctx, tokens_head=b)
    e.period, e.t_iter, occ_a = iteration_time(s.comm, p.m, L, e.t_a.seconds, e.t_e.seconds, e.t_c.seconds,
                                               e.t_head.seconds)
    e.tbt_p50 = e.t_iter
    e.tbt_p99 = e.t_iter
    if s.prefill == "inline":
        # Requests join ~Poisson(batch / mean_output) per iteration: the 99th percentile of joins.
        mu = p.batch / s.lengths.mean_output
        pf99 = (mu + 2.33 * math.sqrt(mu)) * s.lengths.mean_input / (p.n_a * p.m)
        ta, te, tc, th = terms(s, p, b + pf99, (b * s.lengths.decode_context + pf99 * s.lengths.mean_input / 2) / (b + pf99), b)
        e.tbt_p99 = iteration_time(s.comm, p.m, L, ta.seconds, te.seconds, tc.seconds, th.seconds)[1]
    e.tokens_per_s = p.batch / e.t_iter
    e.per_gpu = e.tokens_per_s / p.gpus
    ga, ge = s.catalogue[p.attn_gpu], s.catalogue[p.exp_gpu]
    cost = p.n_a * p.tp_a * ga.price_per_hour + p.n_e * p.tp_e * ge.price_per_hour
    e.per_dollar = e.tokens_per_s * 3600 / cost if cost > 0 else float("inf")
    e.idle_a = max(0.0, 1 - (L * p.m * e.t_a.seconds + p.m * e.t_head.seconds) / e.t_iter)
    e.idle_e = max(0.0, 1 - L * p.m * e.t_e.seconds / e.t_iter)
    e.m2n_share = min(1.0, L * p.m * 2 * e.t_c.seconds / e.t_iter)
    e.memory_a, e.memory_e = memory(s, p, p.batch)
    e.fits = (e.memory_a <= (1 - MEMORY_RESERVE) * ga.memory_bytes and
              e.memory_e <= (1 - MEMORY_RESERVE) * ge.memory_bytes)
    t_f = max(occ_a, e.t_e.seconds)
    e.conditions = {
        "balance T_a/T_e": e.t_a.seconds / e.t_e.seconds if e.t_e.seconds else float("inf"),
        "T_c < T_f": e.t_c.seconds < t_f,
        "m >= 2(1 + T_c/T_f)": p.m >= 2 * (1 + e.t_c.seconds / t_f) if t_f else False,
        "m needed": math.ceil(2 * (1 + e.t_c.seconds / t_f)) if t_f else None,
    }
    return e


@dataclass
class RunPrediction:
    tokens_per_s: float
    tbt_p50: float
    iterations: int
    seconds: float
    t_a: float          # averages over (layer, micro-batch), as moe_pipeline reports them
    t_e: float
    t_c: float


def predict_run(s, p, input_len, output_len, requests, max_tokens):
    """A moe_pipeline run with fixed lengths: p.batch // p.n_a requests in flight per attention
    worker, `requests` per worker, replayed iteration by iteration (workload.py)."""
    from planner.workload import replay_fixed
    per_worker = p.batch // p.n_a
    its = replay_fixed(requests, per_worker, input_len, output_len, p.m, max_tokens)
    total, samples, sums = 0.0, [], [0.0, 0.0, 0.0, 0]
    for it in its:
        ta = te = tc = th = 0.0
        for mb in it.micro_batches:
            a, e_, c, h = terms(s, p, mb.tokens, mb.mean_context, tokens_head=mb.tokens)
            ta, te, tc, th = ta + a.seconds, te + e_.seconds, tc + c.seconds, th + h.seconds
        n = len(it.micro_batches)
        t_iter = iteration_time(s.comm, p.m, s.model.layers, ta / n, te / n, tc / n, th / n)[1]
        total += t_iter
        samples += [t_iter] * it.decode_tokens_out
        sums = [sums[0] + ta, sums[1] + te, sums[2] + tc, sums[3] + n]
    samples.sort()
    generated = sum(it.tokens_out for it in its) * p.n_a
    return RunPrediction(tokens_per_s=generated / total, tbt_p50=samples[len(samples) // 2] if samples else 0.0,
                         iterations=len(its), seconds=total, t_a=sums[0] / sums[3], t_e=sums[1] / sums[3],
                         t_c=sums[2] / sums[3])
