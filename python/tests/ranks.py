"""The rank side of the multi-process tests (test_group.py): `python ranks.py SCENARIO` runs one
rank of a job started by m2n.launch.spawn, which sets M2N_RANK / M2N_WORLD_SIZE / M2N_MASTER_*.
A rank exits 0 when every check passed; otherwise the failed assertion and exit 1 tell why.
Transport: UCX (over shared memory here), unless M2N_TRANSPORT says otherwise.
"""

import ctypes
import os
import sys
import time

import numpy as np

import m2n

SIZES = [1, 7, 1000, 4096]
SLOT_BYTES = 4096


def pattern(src: int, dst: int, round_: int, size: int) -> np.ndarray:
    """The bytes src sends dst in `round_`: different for every pair, round and offset."""
    k = np.arange(size, dtype=np.uint64)
    return ((k * 2654435761 + src * 97 + dst * 31 + round_ * 13 + (k >> 8)) & 0xFF).astype(np.uint8)


def make_group(m: int, n: int, **kw) -> m2n.Group:
    return m2n.Group(num_senders=m, num_receivers=n, slot_bytes=SLOT_BYTES, slot_depth=2,
                     transport=os.environ.get("M2N_TRANSPORT", "ucx"), timeout=30.0, **kw)


def check_zero_copy(msg: m2n.Message) -> None:
    """The view is the slot: its address is the message's, and bytes written through that
    address (not through numpy) show in the view."""
    view = msg.data
    assert view.__array_interface__["data"][0] == msg.address, "view does not start at the slot"
    assert view.base is not None, "view owns its memory: it is a copy"
    ctypes.memset(msg.address, 0xA5, len(msg))
    assert bool(np.all(view == 0xA5)), "a write through the slot's address is not seen in the view"
    view[:] = 0x5A
    assert ctypes.string_at(msg.address, len(msg)) == b"\x5a" * len(msg), "view writes miss the slot"


def exchange(g: m2n.Group) -> None:
    """Every size, both directions: senders -> receivers, then each receiver answers each sender."""
    buf = np.zeros(SLOT_BYTES * len(g.peers), dtype=np.uint8)
    region = g.register(buf)
    assert region.address == buf.ctypes.data and region.nbytes == buf.nbytes

    def send_all(round_: int, size: int) -> None:
        requests = []
        for i, peer in enumerate(g.peers):
            part = buf[i * SLOT_BYTES:i * SLOT_BYTES + size]
            part[:] = pattern(g.rank, peer, round_, size)
            requests.append((peer, part))
        g.send_many(requests, timeout=20)

    def receive_all(round_: int, size: int) -> None:
        msgs = g.receive_many(g.peers, timeout=20)
        for peer, msg in zip(g.peers, msgs):
            assert msg.peer == peer and len(msg) == size, (msg, peer, size)
            expected = pattern(peer, g.rank, round_, size)
            assert bytes(msg.data) == expected.tobytes(), f"bytes from rank {peer} differ, size {size}"
            check_zero_copy(msg)
        g.release(msgs)
        assert all(m.released for m in msgs)

    for round_, size in enumerate(SIZES):
        if g.is_sender:
            send_all(round_, size)
            receive_all(round_, size)
        else:
            receive_all(round_, size)
            send_all(round_, size)
    stats = g.stats()
    assert stats["messages_sent"] == stats["messages_received"] == len(SIZES) * len(g.peers), stats
    del region


def scenario_exchange() -> None:
    with make_group(2, 2) as g:
        assert g.world_size == 4 and g.num_senders == 2 and g.num_receivers == 2
        assert g.peers == ([2, 3] if g.is_sender else [0, 1])
        exchange(g)
        g.barrier(timeout=20)


def expect_error(cls, needle: str, call) -> m2n.Error:
    try:
        call()
    except cls as e:
        assert needle in e.message, f"{type(e).__name__} message {e.message!r} lacks {needle!r}"
        return e
    raise AssertionError(f"expected {cls.__name__} ({needle})")


def bad_input(g: m2n.Group) -> None:
    peer = g.peers[0]
    registered = np.zeros(2 * SLOT_BYTES, dtype=np.uint8)
    region = g.register(registered)
    stray = np.zeros(64, dtype=np.uint8)
    expect_error(m2n.InvalidArgumentError, "is not inside memory registered",
                 lambda: g.send(peer, stray, timeout=5))
    e = expect_error(m2n.InvalidArgumentError, "is larger than a slot",
                     lambda: g.send(peer, registered[:SLOT_BYTES + 1], timeout=5))
    assert isinstance(e, ValueError) and e.code == "INVALID_ARGUMENT"
    expect_error(m2n.InvalidArgumentError, "not contiguous", lambda: g.send(peer, registered[::2], timeout=5))
    expect_error(m2n.InvalidArgumentError, "own side", lambda: g.send(g.rank, registered[:8], timeout=5))
    start = time.monotonic()
    e = expect_error(m2n.DeadlineExceededError, "", lambda: g.receive(peer, timeout=0.3))
    assert isinstance(e, TimeoutError) and time.monotonic() - start < 5
    assert g.try_receive(peer) is None
    expect_error(m2n.InvalidArgumentError, "is negative", lambda: g.receive(peer, timeout=-1))
    # Stream-ordered calls: the stream is None, an int or anything with `cuda_stream`; on UCX the
    # call itself is refused with the C++ message.
    expect_error(m2n.InvalidArgumentError, "stream: expected None, an int",
                 lambda: g.send_on_stream([(peer, registered[:8])], "stream 0"))

    class FakeStream:
        cuda_stream = 0

    expect_error(m2n.UnimplementedError, "has no stream-ordered operations",
                 lambda: g.send_on_stream([(peer, registered[:8])], FakeStream()))
    region.deregister()
    expect_error(m2n.InvalidArgumentError, "is not inside memory registered",
                 lambda: g.send(peer, registered[:8], timeout=5))


def scenario_bad_input() -> None:
    """1 x 1: bad calls raise with the C++ message; release twice; a dead peer within the deadline;
    a message outliving its group."""
    g = make_group(1, 1)
    bad_input(g)
    g.barrier(timeout=20)  # nothing is sent before both sides checked their empty receives
    buf = np.arange(16, dtype=np.uint8)
    region = g.register(buf)
    if g.is_sender:
        g.send_many([(1, buf[:8]), (1, buf[8:])], timeout=10)
        g.barrier(timeout=20)  # the receiver has checked release-twice
        sys.stdout.flush()
        os._exit(0)  # dies without a goodbye: the receiver must see it
    msg, kept = g.receive_many([0, 0], timeout=10)
    assert bytes(msg.data) == buf[:8].tobytes() and bytes(kept.data) == buf[8:].tobytes()
    g.release(msg)
    expect_error(m2n.FailedPreconditionError, "was released", lambda: msg.data)
    expect_error(m2n.FailedPreconditionError, "was released", lambda: g.release(msg))
    g.barrier(timeout=20)
    start = time.monotonic()
    e = expect_error(m2n.UnavailableError, "rank 0", lambda: g.receive(0, timeout=20))
    assert "died" in e.message and time.monotonic() - start < 20, e
    assert isinstance(e, ConnectionError)
    del region
    g.abort()
    g.close(timeout=5)
    expect_error(m2n.FailedPreconditionError, "closed", lambda: g.rank)
    # A message not released before close: its slot memory is gone, so its view is refused.
    expect_error(m2n.FailedPreconditionError, "its group is closed", lambda: kept.data)
    expect_error(m2n.FailedPreconditionError, "closed", lambda: g.send(0, buf, timeout=1))
    expect_error(m2n.FailedPreconditionError, "closed", lambda: g.receive(0, timeout=1))


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]]()
