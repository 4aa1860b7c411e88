"""The rank side of test_torch.py (one rank per process, started by the run_ranks fixture).

cpu: 2 x 2, torch CPU tensors registered and sent through DLPack, received views compared byte for
byte. cuda: 1 x 1 on two GPUs, slots in device memory, SendOnStream / ReceiveOnStream /
ReleaseOnStream on a torch.cuda.Stream, the payload checked on the device.
"""

import os
import sys

import torch

import m2n


def scenario_cpu() -> None:
    with m2n.Group(num_senders=2, num_receivers=2, slot_bytes=1 << 12, slot_depth=2) as g:
        send = torch.zeros(len(g.peers), 1024, dtype=torch.float32)
        region = g.register(send)
        if g.is_sender:
            for i, peer in enumerate(g.peers):
                send[i] = torch.arange(1024, dtype=torch.float32) + 1000 * g.rank + peer
            g.send_many([(peer, send[i]) for i, peer in enumerate(g.peers)], timeout=20)
        else:
            msgs = g.receive_many(g.peers, timeout=20)
            for peer, msg in zip(g.peers, msgs):
                got = torch.from_numpy(msg.data).view(torch.float32)
                want = torch.arange(1024, dtype=torch.float32) + 1000 * peer + g.rank
                assert torch.equal(got, want), f"tensor from rank {peer} differs"
            g.release(msgs)
        g.barrier(timeout=20)
        del region


def scenario_cuda() -> None:
    rank = int(os.environ["M2N_RANK"])
    torch.cuda.set_device(rank)
    with m2n.Group(num_senders=1, num_receivers=1, slot_bytes=1 << 16, slot_memory="cuda") as g:
        stream = torch.cuda.Stream()
        payload = torch.arange(1 << 14, dtype=torch.int32, device="cuda")
        region = g.register(payload)
        if g.is_sender:
            g.send_on_stream([(1, payload)], stream)
        else:
            (msg,) = g.receive_on_stream([0], stream)
            with torch.cuda.stream(stream):
                got = msg.data[:payload.numel() * 4].view(torch.int32).clone()
            g.release_on_stream([msg], stream)
            stream.synchronize()
            assert torch.equal(got, payload), "device payload differs"
        stream.synchronize()
        g.barrier(timeout=30)
        del region


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]]()
