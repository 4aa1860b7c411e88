// Docstrings of m2n.ep (ep.cc), kept apart so that the binding code reads as code. They are the
// help() text and, through nanobind_add_stub, the docstrings of _m2n.pyi.
#pragma once

namespace m2n::python {

inline constexpr const char* kExpertParallelDoc =
    R"(Expert-parallel dispatch and combine over a Group (m2n::ExpertParallel, include/m2n/ep.h).

The group's senders are the attention ranks, its receivers the expert ranks. Every call of one
side is answered by one call of the other, in the same order on every rank:

    attention rank                               expert rank
    dispatch(x, topk_ids, topk_weights)  ---->   batch = receive_dispatch()
                                                 y = your experts applied to batch.x
    receive_combine(out)  <------------------    combine(y)

out[t] = sum_j topk_weights[t, j] * (expert topk_ids[t, j])(x[t]), accumulated in float32 in
top-k order (bfloat16 rounded once, at the end). An attention rank may have up to the group's
slot_depth dispatches in flight; receive_combine answers them in order.

Host memory only: numpy arrays (or anything with the buffer protocol / DLPack on the CPU, e.g. CPU
torch tensors), C-contiguous. Rows are float32 for dtype="float32"; for dtype="bfloat16" they are
uint16 holding the bfloat16 bits (an ml_dtypes.bfloat16 numpy array is taken as such, and a CPU
torch.bfloat16 tensor too). torch tensors on a GPU are not supported yet: the stream-ordered
device path of the C++ layer does not exist, and a CUDA array raises m2n.UnimplementedError.

Create the group with slot_bytes >= ExpertParallel.slot_bytes_needed(...) (the largest dispatch or
combine message). The group must outlive this object and carry no other messages while it is
used. Creating it is local: nothing is exchanged with the peers. Blocking calls release the GIL;
timeouts are seconds.

Example (ranks 0, 1 attention, 2, 3 experts):

    kw = dict(num_experts=8, top_k=2, hidden=1024, dtype="float32", max_tokens=256)
    need = m2n.ep.ExpertParallel.slot_bytes_needed(2, 2, **kw)
    with m2n.Group(2, 2, slot_bytes=need) as g:
        ep = m2n.ep.ExpertParallel(g, **kw)
        if g.is_sender:
            ep.dispatch(x, topk_ids, topk_weights)
            ep.receive_combine(out)
        else:
            batch = ep.receive_dispatch()
            ep.combine(run_experts(batch))

Errors: bad arrays raise TypeError (wrong type / dtype) or m2n.InvalidArgumentError, a ValueError
(wrong shape, not contiguous, read-only out), naming the argument, before any C++ call; the
layer's own errors (an expert id out of range, ranks that disagree on the options, a timeout)
raise the m2n.Error subclass of their Status with the C++ message.)";

inline constexpr const char* kInitDoc =
    R"(Checks the options against the group and registers the send buffers (local only).

num_experts, top_k (experts per token), hidden (elements per row), dtype ("float32" or
"bfloat16"), max_tokens (the most tokens one dispatch carries): every rank passes the same.
placement[e]: the global rank of the expert rank holding expert e (any map); None: contiguous
blocks, expert e on expert rank e * N // num_experts. Raises m2n.InvalidArgumentError naming the
field (slot_bytes too small says the size needed).)";

inline constexpr const char* kSlotBytesNeededDoc =
    R"(The slot_bytes a Group of num_senders x num_receivers needs for these options.)";

inline constexpr const char* kDispatchDoc =
    R"(Attention rank: sends each token to every expert rank holding one of its top-k experts.

x: [tokens, hidden] rows (float32, or uint16 / bfloat16 for dtype="bfloat16"); topk_ids: int32
[tokens, top_k], expert ids in [0, num_experts); topk_weights: float32 [tokens, top_k]. tokens in
[0, max_tokens]. Returns once the rows have left this rank's buffers: the arrays may be reused.)";

inline constexpr const char* kReceiveCombineDoc =
    R"(Attention rank: waits for the combine of the oldest dispatch not yet combined.

Writes into `out`, a writable C-contiguous [tokens, hidden] array of the layer's dtype, tokens
being those of that dispatch: out[t] = the top-k weighted sum of the experts' outputs for token t.
Returns `out`.)";

inline constexpr const char* kReceiveDispatchDoc =
    R"(Expert rank: waits for the next dispatch of every attention rank; returns an ExpertBatch.

The batch's arrays are copies (numpy arrays the caller owns; the C++ batch is reused by the next
call): rows grouped by local expert, with per-expert counts and where each row came from.)";

inline constexpr const char* kCombineDoc =
    R"(Expert rank: sends the experts' outputs of the last batch back to the attention ranks.

y: [batch.rows, hidden] of the layer's dtype, in the order of the last receive_dispatch's batch
(y[i] = the output of row i's expert for batch.x[i]).)";

inline constexpr const char* kBatchDoc =
    R"(What an expert rank received in one call (ExpertParallel.receive_dispatch).

Every array is a copy the caller owns. x: [rows, hidden] (float32, or uint16 bfloat16 bits),
grouped by local expert: rows offsets[l]:offsets[l + 1] are for expert experts[l] (a global id).
Per row: source_rank (the attention rank), source_token (its token index in that dispatch),
source_slot (j: the row is for topk_ids[token, j]) and weight (applied by the attention rank in
receive_combine, not by the experts).)";

}  // namespace m2n::python
