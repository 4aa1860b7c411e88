"""Small fixtures for the planner's tests: a model, a catalogue, stub compute with times chosen
by hand, temporary JSON files."""

import json
import os
import tempfile

from planner import inputs, perf, workload

HERE = os.path.dirname(os.path.abspath(__file__))
PLAN_DIR = os.path.dirname(HERE)
CONFIGS = os.path.normpath(os.path.join(PLAN_DIR, "..", "..", "examples", "moe_pipeline", "configs"))
CATALOGUE = os.path.join(PLAN_DIR, "catalogue", "gpus.json")


def model(layers=4, experts=8, top_k=2, hidden=64):
    return inputs.Model(path="test-model", name="test", hidden=hidden, heads=4, kv_heads=2, head_dim=16,
                        layers=layers, experts=experts, top_k=top_k, intermediate=128, vocab=256,
                        max_positions=4096, dtype_bytes=2)


def gpu(name="G", memory_gb=80.0, price=1.0, **kw):
    return inputs.Gpu(name=name, memory_bytes=memory_gb * 1e9, hbm_bytes_per_s=kw.get("hbm", 1e12),
                      flops=kw.get("flops", 1e14), nvlink_bytes_per_s=1e11, nic_bytes_per_s=1e10,
                      price_per_hour=price)


class StubCompute:
    """T_a = a_per_token x tokens, T_e = e_per_expert per active expert, head 0: times chosen by hand."""

    def __init__(self, a_per_token=1e-3, e_per_expert=0.0, head=0.0):
        self.a, self.e, self.h = a_per_token, e_per_expert, head

    def attention(self, b, c, tp=1):
        return perf.Figure(self.a * b / tp, "stub")

    def expert(self, tokens, tp=1):
        return perf.Figure(self.e / tp if tokens > 0 else 0.0, "stub")

    def head(self, b, tp=1):
        return perf.Figure(self.h, "stub")


class StubComm:
    def __init__(self, seconds=0.0):
        self.seconds = seconds

    def time(self, *args):
        return perf.Figure(self.seconds, "stub")


def setting(gpus=None, compute=None, comm=0.0, lengths=(16, 16), **kw):
    gpus = gpus or {"G": gpu()}
    compute = compute or {name: StubCompute() for name in gpus}
    i, o = lengths
    return perf.Setting(model=kw.pop("model", model()), catalogue=gpus, compute=compute, comm_model=StubComm(comm),
                        lengths=workload.lengths_of([(i, o)], f"fixed {i}/{o}"), **kw)


def write_json(obj, name="x.json"):
    d = tempfile.mkdtemp(prefix="m2n_plan_test_")
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return path
