"""Multi-process tests of m2n.Group over shared memory (UCX): a 2 x 2 exchange checked byte for byte
in both directions with zero-copy views, bad input raising with the C++ message, a dead peer seen
within the deadline. The rank side is ranks.py."""

from conftest import HERE


def test_exchange_2x2_byte_for_byte_and_zero_copy(run_ranks):
    run_ranks([HERE / "ranks.py", "exchange"], world_size=4)


def test_bad_input_and_dead_peer_1x1(run_ranks):
    run_ranks([HERE / "ranks.py", "bad_input"], world_size=2)


def test_example_exchange_2x2(run_ranks):
    out = run_ranks([HERE.parent / "examples" / "exchange_2x2.py"], world_size=4)
    assert all("checked" in o for o in out), out
