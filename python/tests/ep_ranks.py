"""The rank side of test_ep.py: `python ep_ranks.py SCENARIO` runs one rank of a job started by
m2n.launch (M2N_RANK / M2N_WORLD_SIZE / M2N_MASTER_*). Attention ranks are the group's senders,
expert ranks its receivers; each expert multiplies its rows by (expert id + 1), so the combined
output is known: out[t] = sum_j w[t, j] * (ids[t, j] + 1) * x[t]. The values are chosen exact in
float32 and bfloat16 (small integers, weights in eighths), so float32 is checked for equality.
A rank exits 0 when every check passed. Transport: UCX over shared memory unless M2N_TRANSPORT.
"""

import os
import sys

import numpy as np

import m2n
import m2n.ep

OPTIONS = dict(num_experts=8, top_k=3, hidden=40, max_tokens=24)
ROUNDS = [17, 0, 24, 5]  # tokens per dispatch (0: an empty call still answers)


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even, as the C++ layer rounds."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def tokens_of(rank: int, round_: int, tokens: int):
    """x, topk_ids, topk_weights of one dispatch: different on every rank and round."""
    rng = np.random.default_rng(1000 * rank + round_)
    x = rng.integers(-8, 9, size=(tokens, OPTIONS["hidden"])).astype(np.float32)
    ids = np.zeros((tokens, OPTIONS["top_k"]), dtype=np.int32)
    for t in range(tokens):  # distinct experts per token
        ids[t] = rng.choice(OPTIONS["num_experts"], OPTIONS["top_k"], replace=False)
    weights = (rng.integers(1, 8, size=(tokens, OPTIONS["top_k"])) / 8).astype(np.float32)
    return x, ids, weights


def reference(x: np.ndarray, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for j in range(ids.shape[1]):  # top-k order, float32, as the C++ layer accumulates
        out += weights[:, j, None] * ((ids[:, j, None] + 1).astype(np.float32) * x)
    return out


def make(g: m2n.Group, dtype: str) -> m2n.ep.ExpertParallel:
    ep = m2n.ep.ExpertParallel(g, dtype=dtype, **OPTIONS)
    assert (ep.num_experts, ep.top_k, ep.hidden, ep.dtype) == (8, 3, 40, dtype)
    return ep


def group(m: int, n: int, dtype: str) -> m2n.Group:
    need = m2n.ep.ExpertParallel.slot_bytes_needed(m, n, dtype=dtype, **OPTIONS)
    return m2n.Group(num_senders=m, num_receivers=n, slot_bytes=need, slot_depth=2,
                     transport=os.environ.get("M2N_TRANSPORT", "ucx"), timeout=30.0)


def attention(ep: m2n.ep.ExpertParallel, rank: int, dtype: str) -> None:
    # Two dispatches in flight at a time (slot_depth 2): combines come back in order.
    for first in range(0, len(ROUNDS), 2):
        sent = []
        for round_ in (first, first + 1):
            x, ids, weights = tokens_of(rank, round_, ROUNDS[round_])
            ep.dispatch(x if dtype == "float32" else to_bf16(x), ids, weights, timeout=20)
            sent.append((x, ids, weights))
        assert ep.calls_in_flight == 2
        for x, ids, weights in sent:
            want = reference(x, ids, weights)
            if dtype == "float32":
                out = np.full_like(x, np.nan)
                assert ep.receive_combine(out, timeout=20) is out
                assert np.array_equal(out, want), f"rank {rank}: float32 combine differs"
            else:
                out = np.zeros(x.shape, dtype=np.uint16)
                ep.receive_combine(out, timeout=20)
                np.testing.assert_allclose(from_bf16(out), want, rtol=2**-8, atol=0)
    assert ep.calls_in_flight == 0


def expert(ep: m2n.ep.ExpertParallel, num_attention: int, dtype: str) -> None:
    for round_, _ in enumerate(ROUNDS):
        batch = ep.receive_dispatch(timeout=20)
        assert batch.call == round_ and len(batch) == batch.rows == batch.x.shape[0]
        assert batch.offsets[-1] == batch.rows and list(np.diff(batch.offsets)) == list(batch.counts)
        x = batch.x if dtype == "float32" else from_bf16(batch.x)
        for l, e in enumerate(batch.experts):
            rows = slice(batch.offsets[l], batch.offsets[l + 1])
            for i in range(rows.start, rows.stop):  # each row is the token it says it is
                sx, ids, weights = tokens_of(batch.source_rank[i], round_, ROUNDS[round_])
                t, j = batch.source_token[i], batch.source_slot[i]
                assert ids[t, j] == e and weights[t, j] == batch.weight[i]
                assert np.array_equal(x[i], sx[t])
            x[rows] *= np.float32(e + 1)
        ep.combine(x if dtype == "float32" else to_bf16(x), timeout=20)
    assert set(batch.source_rank.tolist()) <= set(range(num_attention))


def run_2x2(dtype: str) -> None:
    with group(2, 2, dtype) as g:
        ep = make(g, dtype)
        if g.is_sender:
            attention(ep, g.rank, dtype)
        else:
            expert(ep, g.num_senders, dtype)
        g.barrier(timeout=20)
        del ep


def scenario_float32() -> None:
    run_2x2("float32")


def scenario_bfloat16() -> None:
    run_2x2("bfloat16")


def expect_error(cls, needle: str, call) -> BaseException:
    try:
        call()
    except cls as e:
        text = e.message if isinstance(e, m2n.Error) else str(e)
        assert needle in text, f"{type(e).__name__} message {text!r} lacks {needle!r}"
        return e
    raise AssertionError(f"expected {cls.__name__} ({needle})")


def bad_dispatch(ep: m2n.ep.ExpertParallel) -> None:
    x, ids, weights = tokens_of(0, 0, 4)
    bad = ids.copy()
    bad[2, 1] = 8
    e = expect_error(m2n.InvalidArgumentError, "topk_ids[2][1] = 8 is not an expert id in [0, 8)",
                     lambda: ep.dispatch(x, bad, weights, timeout=5))
    assert isinstance(e, ValueError)
    expect_error(TypeError, "topk_ids: dtype int64, expected int32",
                 lambda: ep.dispatch(x, ids.astype(np.int64), weights, timeout=5))
    expect_error(TypeError, "x: dtype float64", lambda: ep.dispatch(x.astype(np.float64), ids,
                                                                     weights, timeout=5))
    expect_error(m2n.InvalidArgumentError, "topk_weights: shape (3, 3), expected (4, 3)",
                 lambda: ep.dispatch(x, ids, weights[:3], timeout=5))
    expect_error(m2n.InvalidArgumentError, "x: shape (4, 20), expected (tokens, 40)",
                 lambda: ep.dispatch(x[:, :20].copy(), ids, weights, timeout=5))
    expect_error(m2n.InvalidArgumentError, "x: the array is not contiguous",
                 lambda: ep.dispatch(np.zeros((4, 80), np.float32)[:, ::2], ids, weights, timeout=5))
    expect_error(TypeError, "topk_ids: expected an array", lambda: ep.dispatch(x, "ids", weights))
    expect_error(m2n.FailedPreconditionError, "no dispatch is waiting",
                 lambda: ep.receive_combine(np.zeros_like(x), timeout=5))
    assert ep.calls_in_flight == 0
    # The layer is still usable: one good call, with a read-only and a short `out` refused.
    ep.dispatch(x, ids, weights, timeout=20)
    readonly = np.zeros_like(x)
    readonly.flags.writeable = False
    expect_error(m2n.InvalidArgumentError, "out: the array is read-only",
                 lambda: ep.receive_combine(readonly, timeout=5))
    expect_error(m2n.InvalidArgumentError, "out: shape (3, 40), expected (4, 40)",
                 lambda: ep.receive_combine(np.zeros((3, 40), np.float32), timeout=5))
    out = ep.receive_combine(np.zeros_like(x), timeout=20)
    assert np.array_equal(out, reference(x, ids, weights))


def scenario_bad_input() -> None:
    """1 x 1: bad options and arrays raise naming the field or argument; the layer still works."""
    expect_error(m2n.InvalidArgumentError, "dtype: \"float16\" is neither",
                 lambda: m2n.ep.ExpertParallel.slot_bytes_needed(1, 1, dtype="float16", **OPTIONS))
    with group(1, 1, "float32") as g:
        expect_error(m2n.InvalidArgumentError, "top_k is 9",
                     lambda: m2n.ep.ExpertParallel(g, **{**OPTIONS, "top_k": 9}))
        ep = make(g, "float32")
        if g.is_sender:
            bad_dispatch(ep)
        else:
            expect_error(m2n.FailedPreconditionError, "no batch",
                         lambda: ep.combine(np.zeros((0, 40), np.float32), timeout=5))
            batch = ep.receive_dispatch(timeout=20)
            expect_error(m2n.InvalidArgumentError, f"y: shape (1, 40), expected ({batch.rows}, 40)",
                         lambda: ep.combine(np.zeros((1, 40), np.float32), timeout=5))
            for l, e in enumerate(batch.experts):
                batch.x[batch.offsets[l]:batch.offsets[l + 1]] *= np.float32(e + 1)
            ep.combine(batch.x, timeout=20)
        g.barrier(timeout=20)
        del ep


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]]()
