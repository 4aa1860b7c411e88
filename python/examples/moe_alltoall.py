"""Replacing NCCL all-to-all in a MoE layer with m2n (torch).

A MoE layer with expert parallelism usually moves tokens with two all-to-alls over one process group
in which every rank both attends and hosts experts:

    dist.all_to_all_single(recv, send, out_splits, in_splits)   # dispatch tokens to experts
    out = experts(recv)
    dist.all_to_all_single(back, out, in_splits, out_splits)    # combine results

With m2n the two roles are separate ranks (disaggregated serving: M attention ranks, N expert
ranks), the dispatch is senders -> receivers and the combine the way back, through a persistent
group with registered buffers and no per-call set-up:

    torchrun --nproc-per-node 4 python/examples/moe_alltoall.py            # 2 attention, 2 expert ranks
    python -m m2n.launch -n 4 python python/examples/moe_alltoall.py       # the same without torchrun

Tokens are float32 CPU tensors here (registered through DLPack, sent without copies); on GPUs the
expert rank moves its batch to the device for the matmul. Each attention rank checks its combined
output against the same layer computed locally, so the exchange is verified end to end.
"""

import torch

import m2n

HIDDEN = 64
TOKENS = 32          # per attention rank per step
EXPERTS_PER_RANK = 2
STEPS = 3


def expert_weights(num_experts: int) -> torch.Tensor:
    """Every rank derives the same weights, so the attention ranks can check the experts' work."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(num_experts, HIDDEN, HIDDEN, generator=g) / HIDDEN ** 0.5


def route(tokens: torch.Tensor, num_experts: int, step: int, rank: int) -> torch.Tensor:
    """Top-1 routing stand-in: a deterministic expert per token."""
    return (torch.arange(tokens.shape[0]) * 7 + step * 3 + rank) % num_experts


def attention_rank(group: m2n.Group, weights: torch.Tensor) -> None:
    experts = weights.shape[0]
    # One registered row block per expert rank: [count, expert ids..., tokens...] packed as float32.
    block = 1 + TOKENS + TOKENS * HIDDEN
    send = torch.zeros(len(group.peers), block)
    region = group.register(send)
    for step in range(STEPS):
        tokens = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(step * 100 + group.rank))
        expert = route(tokens, experts, step, group.rank)
        owner = expert // EXPERTS_PER_RANK              # which expert rank hosts each token's expert
        requests, picked = [], []
        for i, peer in enumerate(group.peers):
            rows = (owner == i).nonzero().flatten()
            n = rows.numel()
            send[i, 0] = n
            send[i, 1:1 + n] = expert[rows].float()
            send[i, 1 + TOKENS:1 + TOKENS + n * HIDDEN] = tokens[rows].flatten()
            requests.append((peer, send[i, :1 + TOKENS + n * HIDDEN]))
            picked.append(rows)
        group.send_many(requests, timeout=30)                                # dispatch
        out = torch.empty_like(tokens)
        for rows, msg in zip(picked, group.receive_many(group.peers, timeout=30)):  # combine
            out[rows] = torch.from_numpy(msg.data.view("float32")).view(-1, HIDDEN)
            group.release(msg)
        want = torch.einsum("th,thk->tk", tokens, weights[expert])
        if not torch.allclose(out, want, atol=1e-4):
            raise SystemExit(f"rank {group.rank}: step {step}: combined output differs")
    print(f"attention rank {group.rank}: {STEPS} MoE steps through m2n checked", flush=True)
    del region


def expert_rank(group: m2n.Group, weights: torch.Tensor) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    first = (group.rank - group.num_senders) * EXPERTS_PER_RANK
    mine = weights[first:first + EXPERTS_PER_RANK].to(device)
    send = torch.zeros(len(group.peers), TOKENS * HIDDEN)
    region = group.register(send)
    for _ in range(STEPS):
        msgs = group.receive_many(group.peers, timeout=30)
        replies = []
        for i, msg in enumerate(msgs):
            packed = torch.from_numpy(msg.data.view("float32"))     # a view of the slot, no copy
            n = int(packed[0])
            expert = packed[1:1 + n].long() - first
            x = packed[1 + TOKENS:1 + TOKENS + n * HIDDEN].view(n, HIDDEN).to(device)
            y = torch.einsum("th,thk->tk", x, mine[expert]).cpu()
            send[i, :n * HIDDEN] = y.flatten()
            replies.append((msg.peer, send[i, :n * HIDDEN]))
        group.release(msgs)                                              # slots back to the senders
        group.send_many(replies, timeout=30)
    print(f"expert rank {group.rank}: served {STEPS} steps on {device}", flush=True)
    del region


def main() -> None:
    with m2n.Group(num_senders=2, num_receivers=2, slot_bytes=(1 + TOKENS + TOKENS * HIDDEN) * 4) as group:
        weights = expert_weights(group.num_receivers * EXPERTS_PER_RANK)
        (attention_rank if group.is_sender else expert_rank)(group, weights)
        group.barrier(timeout=30)


if __name__ == "__main__":
    main()
