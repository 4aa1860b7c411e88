"""A 2 x 2 m2n exchange in Python: 2 senders dispatch a numpy array to 2 receivers, which check it
and answer (combine); every byte is checked on both sides.

    torchrun --nproc-per-node 4 python/examples/exchange_2x2.py
    python -m m2n.launch -n 4 python python/examples/exchange_2x2.py     # without torch

The rank and the bootstrap address come from the launcher's environment; nothing here names them.
"""

import numpy as np

import m2n

ELEMENTS = 1 << 14  # 64 KiB of float32 per message


def payload(src: int, dst: int) -> np.ndarray:
    return np.arange(ELEMENTS, dtype=np.float32) * (src + 1) + dst


def main() -> None:
    with m2n.Group(num_senders=2, num_receivers=2, slot_bytes=ELEMENTS * 4) as group:
        # One registered buffer per rank; each message is a row of it, sent without a copy.
        rows = np.zeros((len(group.peers), ELEMENTS), dtype=np.float32)
        region = group.register(rows)

        def send_rows() -> None:
            for i, peer in enumerate(group.peers):
                rows[i] = payload(group.rank, peer)
            group.send_many([(peer, rows[i]) for i, peer in enumerate(group.peers)], timeout=30)

        def receive_rows() -> None:
            messages = group.receive_many(group.peers, timeout=30)
            for peer, message in zip(group.peers, messages):
                got = message.data.view(np.float32)  # a view of the receive slot, no copy
                if not np.array_equal(got, payload(peer, group.rank)):
                    raise SystemExit(f"rank {group.rank}: wrong data from rank {peer}")
            group.release(messages)  # the slots go back to their senders

        if group.is_sender:
            send_rows()
            receive_rows()
        else:
            receive_rows()
            send_rows()
        print(f"rank {group.rank} ({group.role}, {group.transport}): "
              f"{2 * len(group.peers)} messages of {ELEMENTS * 4} B checked", flush=True)
        del region


if __name__ == "__main__":
    main()
