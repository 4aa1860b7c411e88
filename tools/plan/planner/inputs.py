"""The planner's inputs, all JSON files a user can edit, read and checked here so that every
mistake is reported as `FILE: FIELD: what is wrong` instead of a traceback or a silent default.

- model: the pipeline's config JSON (examples/moe_pipeline/configs/, Mixtral's config.json names;
  the same aliases as examples/moe_pipeline/model/config.cc);
- catalogue: {"gpus": {TYPE: {memory_gb, hbm_gb_per_s, bf16_tflops, nvlink_gb_per_s, nic_gb_per_s,
  price_per_hour, source, ...}}};
- cluster: {"node_size": N, "gpus": {TYPE: count, ...}};
- communication curve: m2n_perf --json (rows of bytes -> p50_us for an M x N shape);
- compute profile: moe_pipeline --profile (attention ms per layer against batch and context, one
  expert's ms per layer against its tokens), for one model shape and one device type.
"""

import json
import math
from dataclasses import dataclass, field


class InputError(Exception):
    """A bad input file: the message names the file and the field."""

    def __init__(self, path, field_name, message):
        super().__init__(f"{path}: {field_name}: {message}" if field_name else f"{path}: {message}")
        self.path = path
        self.field = field_name


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise InputError(path, None, f"cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise InputError(path, None, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def _number(obj, path, name, positive=True, required=True, default=None, integer=False, where=""):
    """obj[name] checked; `where` prefixes the field in errors ("gpus.H100.")."""
    field_name = where + name
    if name not in obj or obj[name] is None:
        if required:
            raise InputError(path, field_name, "missing")
        return default
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(path, field_name, f"must be a number, got {json.dumps(v)}")
    if integer and v != int(v):
        raise InputError(path, field_name, f"must be an integer, got {v}")
    if positive and v <= 0:
        raise InputError(path, field_name, f"must be > 0, got {v}")
    if not positive and v < 0:
        raise InputError(path, field_name, f"must be >= 0, got {v}")
    return int(v) if integer else float(v)


def _first(obj, path, names, **kw):
    for n in names:
        if n in obj and obj[n] is not None:
            return _number(obj, path, n, **kw)
    if kw.get("required", True):
        raise InputError(path, names[0], "missing")
    return kw.get("default")


# ---- model ----

@dataclass
class Model:
    path: str
    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    experts: int
    top_k: int
    intermediate: int
    vocab: int
    max_positions: int
    dtype_bytes: int

    @property
    def q_dim(self):
        return self.heads * self.head_dim

    @property
    def kv_dim(self):
        return self.kv_heads * self.head_dim

    def attention_params_per_layer(self):
        h = self.hidden
        return h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h + 2 * h + h * self.experts

    def expert_params(self):
        return 3 * self.hidden * self.intermediate

    def embedding_params(self):
        return 2 * self.vocab * self.hidden

    def kv_bytes_per_token(self):
        """K and V of one position over all layers."""
        return 2 * self.kv_dim * self.layers * self.dtype_bytes

    def shape(self):
        return dict(hidden_size=self.hidden, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                    head_dim=self.head_dim, num_hidden_layers=self.layers, num_local_experts=self.experts,
                    num_experts_per_tok=self.top_k, intermediate_size=self.intermediate, vocab_size=self.vocab)


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "bf16": 2, "fp16": 2, "float32": 4, "fp32": 4, "float8": 1, "fp8": 1}


def load_model(path):
    j = load_json(path)
    if not isinstance(j, dict):
        raise InputError(path, None, "a model config must be a JSON object")
    kw = dict(integer=True)
    hidden = _number(j, path, "hidden_size", **kw)
    heads = _number(j, path, "num_attention_heads", **kw)
    kv_heads = _number(j, path, "num_key_value_heads", required=False, default=heads, **kw)
    dtype = j.get("torch_dtype", "bfloat16")
    if dtype not in _DTYPE_BYTES:
        raise InputError(path, "torch_dtype", f"unknown dtype {json.dumps(dtype)} (one of {', '.join(_DTYPE_BYTES)})")
    m = Model(path=path, name=j.get("name", j.get("_name_or_path", path)), hidden=hidden, heads=heads,
              kv_heads=kv_heads,
              head_dim=_number(j, path, "head_dim", required=False, default=hidden // heads, **kw),
              layers=_number(j, path, "num_hidden_layers", **kw),
              experts=_first(j, path, ["num_local_experts", "num_experts", "n_routed_experts"], **kw),
              top_k=_first(j, path, ["num_experts_per_tok", "top_k"], **kw),
              intermediate=_first(j, path, ["moe_intermediate_size", "intermediate_size"], **kw),
              vocab=_number(j, path, "vocab_size", **kw),
              max_positions=_number(j, path, "max_position_embeddings", required=False, default=4096, **kw),
              dtype_bytes=_DTYPE_BYTES[dtype])
    if heads % kv_heads:
        raise InputError(path, "num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
    if m.top_k > m.experts:
        raise InputError(path, "num_experts_per_tok", f"{m.top_k} exceeds num_local_experts {m.experts}")
    return m


# ---- GPU catalogue and cluster ----

@dataclass
class Gpu:
    name: str
    memory_bytes: float
    hbm_bytes_per_s: float
    flops: float                 # dense bf16 (or the backend's dtype) FLOP/s
    nvlink_bytes_per_s: float    # per GPU, within a node
    nic_bytes_per_s: float       # per GPU, across nodes
    price_per_hour: float
    dtype_bytes: int = 2         # the backend's weight / KV dtype on this device
    backend: str = "cuda"        # moe_pipeline's --backend on this device
    source: str = ""


_GPU_FIELDS = ("memory_gb", "hbm_gb_per_s", "bf16_tflops", "nvlink_gb_per_s", "nic_gb_per_s", "price_per_hour")


def load_catalogue(path):
    j = load_json(path)
    gpus = j.get("gpus") if isinstance(j, dict) else None
    if not isinstance(gpus, dict) or not gpus:
        raise InputError(path, "gpus", "missing or empty (an object of GPU types)")
    out = {}
    for name, g in gpus.items():
        where = f"gpus.{name}"
        if not isinstance(g, dict):
            raise InputError(path, where, "must be an object")
        v = {f: _number(g, path, f, positive=(f != "price_per_hour"), where=where + ".") for f in _GPU_FIELDS}
        out[name] = Gpu(name=name, memory_bytes=v["memory_gb"] * 1e9, hbm_bytes_per_s=v["hbm_gb_per_s"] * 1e9,
                        flops=v["bf16_tflops"] * 1e12, nvlink_bytes_per_s=v["nvlink_gb_per_s"] * 1e9,
                        nic_bytes_per_s=v["nic_gb_per_s"] * 1e9, price_per_hour=v["price_per_hour"],
                        dtype_bytes=_number(g, path, "dtype_bytes", required=False, default=2, integer=True,
                                            where=where + "."),
                        backend=str(g.get("backend", "cuda")), source=str(g.get("source", "")))
    return out


@dataclass
class Cluster:
    path: str
    node_size: int
    gpus: dict = field(default_factory=dict)   # type -> count


def load_cluster(path, catalogue):
    j = load_json(path)
    if not isinstance(j, dict):
        raise InputError(path, None, "a cluster must be a JSON object")
    node = _number(j, path, "node_size", integer=True)
    gpus = j.get("gpus")
    if not isinstance(gpus, dict) or not gpus:
        raise InputError(path, "gpus", "missing or empty (an object: GPU type -> count)")
    counts = {}
    for name, n in gpus.items():
        if name not in catalogue:
            raise InputError(path, f"gpus.{name}", f"not in the catalogue (has {', '.join(sorted(catalogue))})")
        counts[name] = _number(gpus, path, name, positive=False, integer=True, where="gpus.")
    return Cluster(path=path, node_size=node, gpus=counts)


# ---- measured curves ----

@dataclass
class CommCurve:
    path: str
    senders: int
    receivers: int
    transport: str
    points: list        # [(bytes, p50 seconds)], ascending


def _tool_output(path, tool, what, sections):
    """A JSON file written by `tool` (its "tool" field), with `sections` {name: type} present."""
    j = load_json(path)
    if not isinstance(j, dict) or j.get("tool") != tool:
        raise InputError(path, "tool", f'not {what} (expected "tool": "{tool}")')
    for name, kind in sections.items():
        if not isinstance(j.get(name), kind):
            raise InputError(path, name, "missing")
    return j


def load_comm_curve(path):
    j = _tool_output(path, "m2n_perf", "an m2n_perf --json file", {"config": dict, "rows": list})
    cfg, rows = j["config"], j["rows"]
    pts = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or r.get("impl") != "m2n":
            continue
        b = _number(r, path, "bytes", integer=True, where=f"rows[{i}].")
        p50 = _number(r, path, "p50_us", where=f"rows[{i}].")
        pts.append((b, p50 * 1e-6))
    if not pts:
        raise InputError(path, "rows", "no m2n rows")
    pts.sort()
    return CommCurve(path=path, senders=_number(cfg, path, "senders", integer=True, where="config."),
                     receivers=_number(cfg, path, "receivers", integer=True, where="config."),
                     transport=str(cfg.get("transport", "")), points=pts)


@dataclass
class ComputeProfile:
    path: str
    device: str              # the catalogue type it was measured on
    backend: str
    threads: int
    attention: list          # [(batch, context, seconds per layer)]
    head: list               # [(batch, seconds per micro-batch)]
    expert: list             # [(tokens, seconds per layer)], ascending


def load_compute_profile(path, model, device):
    """A moe_pipeline --profile file; its model shape must be `model`'s."""
    j = _tool_output(path, "moe_pipeline --profile", "a moe_pipeline --profile file", {"model": dict})
    shape = j["model"]
    for k, want in model.shape().items():
        if shape.get(k) != want:
            raise InputError(path, f"model.{k}",
                             f"the profile was measured on another shape ({k} {shape.get(k)}, "
                             f"{model.path} has {want})")

    def table(name, keys):
        rows = j.get(name)
        if not isinstance(rows, list) or not rows:
            raise InputError(path, name, "missing or empty")
        out = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise InputError(path, f"{name}[{i}]", "must be an object")
            out.append(tuple(_number(r, path, k, where=f"{name}[{i}].") for k in keys))
        return out

    att = [(b, c, ms * 1e-3) for b, c, ms in table("attention", ("batch", "context", "ms_per_layer"))]
    head = [(b, ms * 1e-3) for b, ms in table("head", ("batch", "ms"))]
    exp = sorted((t, ms * 1e-3) for t, ms in table("expert", ("tokens", "ms_per_layer")))
    return ComputeProfile(path=path, device=device, backend=str(j.get("backend", "")),
                          threads=int(j.get("threads", 1)), attention=att, head=head, expert=exp)
