"""Multi-process tests of m2n.ep.ExpertParallel over shared memory (UCX): a 2 x 2 job (two
attention, two expert ranks) dispatching, running experts that scale rows by (expert id + 1) and
combining, checked against a numpy reference of the weighted sum (float32 exactly, bfloat16 within
its rounding); bad input raising with a message naming the argument. The rank side is
ep_ranks.py."""

import pytest

import m2n
import m2n.ep
from conftest import HERE


def test_module_exports():
    assert m2n.ep.ExpertParallel is m2n.ep.ExpertParallel and m2n.ep.ExpertBatch
    assert "GPU" in m2n.ep.ExpertParallel.__doc__


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dispatch_combine_2x2(run_ranks, dtype):
    run_ranks([HERE / "ep_ranks.py", dtype], world_size=4)


def test_bad_input_1x1(run_ranks):
    run_ranks([HERE / "ep_ranks.py", "bad_input"], world_size=2)
