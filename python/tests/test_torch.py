"""torch and GPU tests: CPU tensors through DLPack, and the stream-ordered path on CUDA tensors.
They run where torch (and a GPU) are installed, the GPU machine, and skip elsewhere with the reason."""

import pytest

from conftest import HERE

torch = pytest.importorskip("torch", reason="torch is not installed (the GPU machine runs these)")


def test_cpu_tensors_2x2(run_ranks):
    run_ranks([HERE / "torch_ranks.py", "cpu"], world_size=4)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs (one per rank)")
def test_cuda_stream_ordered_1x1(run_ranks):
    run_ranks([HERE / "torch_ranks.py", "cuda"], world_size=2)


def test_moe_alltoall_example(run_ranks):
    out = run_ranks([HERE.parent / "examples" / "moe_alltoall.py"], world_size=4)
    assert sum("checked" in o for o in out) == 2, out
