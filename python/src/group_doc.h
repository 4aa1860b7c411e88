// The docstrings of m2n.Group, m2n.Message and m2n.MemoryRegion: what help(m2n.Group) shows and
// what the generated stubs (_m2n.pyi) carry. Kept apart from the binding code so both read easily.
#pragma once

namespace m2n::python {

inline constexpr const char* kGroupDoc =
    R"(A persistent group of M senders and N receivers (m2n::Group).

Every rank of the job creates one. Ranks [0, M) are senders, [M, M + N) receivers; messages
flow both ways between the two sides (dispatch and combine), never within a side.

The rank, world size and bootstrap address come from the launcher's environment, as in C++:
torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), mpirun (OMPI_COMM_WORLD_*), srun
(SLURM_PROCID, SLURM_NTASKS), or M2N_* variables (M2N_RANK, M2N_WORLD_SIZE, ...), which win.
Keyword arguments set them in code instead.

Buffers: register() a numpy array (any buffer-protocol object) or a torch tensor (DLPack, CPU
or CUDA) once; send() takes any contiguous slice of a registered array, without copying it.
receive() returns a Message whose .data is a zero-copy view of the receive slot, valid until
release() hands the slot back to its sender.

Timeouts are seconds. Errors raise m2n.Error subclasses carrying .code and .message, e.g.
m2n.DeadlineExceededError (also a TimeoutError), m2n.UnavailableError when a peer died (the
group is then unusable: close it). The calling thread drives progress; a Group is used by one
thread at a time, except abort(). Use it as a context manager to close it on exit.

Example (2 x 2, every rank runs this):
    import numpy as np, m2n
    with m2n.Group(num_senders=2, num_receivers=2, slot_bytes=1 << 16) as g:
        buf = np.zeros(4096, dtype=np.uint8)
        region = g.register(buf)
        if g.is_sender:
            for peer in g.peers:
                g.send(peer, buf[:1024], timeout=10)
        else:
            msgs = g.receive_many(g.peers, timeout=10)
            print([bytes(m.data[:4]) for m in msgs])
            g.release(msgs)
)";

inline constexpr const char* kInitDoc =
    R"(Creates the group: bootstrap, configuration check, connect.

num_senders, num_receivers: M and N (or M2N_SENDERS / M2N_RECEIVERS); M + N = world size.
slot_bytes: largest message; slot_depth: receive slots (credits) per peer.
transport: "auto" or a name from m2n.available_transports().
slot_memory: "host", or "cuda" for slots on the current GPU (stream-ordered calls).
checksum: CRC-32C check of every payload on arrival (host memory; every rank must agree).
spin_us: how long an idle wait spins before yielding the core; -1 picks.
rank, world_size, master_addr, master_port, job_id: override the launcher's environment.
timeout: seconds the whole creation may take.
Raises m2n.InvalidArgumentError, m2n.FailedPreconditionError (configurations differ between
ranks), m2n.DeadlineExceededError or m2n.UnavailableError (store or peer unreachable).)";

inline constexpr const char* kRegisterDoc =
    R"(Registers `buffer` for sending and returns its MemoryRegion.

`buffer`: a C-contiguous numpy array or other buffer-protocol object, or a torch tensor (DLPack;
CUDA tensors register as device memory). The region keeps the buffer alive until it is
deregistered (region.deregister(), or when the region object goes away): keep the region
while you send from the buffer.)";

inline constexpr const char* kRegionDoc =
    "A registered buffer (m2n::MemoryRegion). Sends must lie inside one; deregister() or dropping "
    "it ends the "
    "registration.";
inline constexpr const char* kDeregisterDoc =
    "Ends the registration now; later sends from the buffer fail.";

inline constexpr const char* kSendDoc =
    R"(Sends `data` to rank `peer` and returns once it has left `data`.

`data`: a contiguous array lying inside a registered region (a slice of a registered array),
at most slot_bytes long. Waits for a credit (a free slot at the peer) up to `timeout` seconds.
Raises m2n.InvalidArgumentError (not registered, too large, not a peer),
m2n.DeadlineExceededError, m2n.UnavailableError (the peer died).)";

inline constexpr const char* kSendManyDoc =
    R"(Sends every (peer, data) pair of `requests` in one call.

Each `data` as in send(); one peer may appear several times. Returns once every payload has
left its buffer.)";

inline constexpr const char* kReceiveDoc =
    R"(Waits up to `timeout` seconds for the oldest unreceived message from `peer`.

Returns a Message; its .data is a view of the receive slot (no copy) until release().)";

inline constexpr const char* kReceiveManyDoc =
    R"(Waits until one message from each of `peers` is there.

Returns a list of Messages, the i-th from peers[i] (a peer may appear several times).)";

inline constexpr const char* kReleaseDoc =
    R"(Hands the slots of `messages` (a Message or a list) back to their senders.

Their views must not be used afterwards: the slot takes the next message. Releasing a
message twice raises m2n.FailedPreconditionError.)";

inline constexpr const char* kSendOnStreamDoc =
    R"(Enqueues the sends of `requests` ((peer, tensor) pairs) on `stream`.

`stream`: a torch.cuda.Stream, any object with `cuda_stream`, an int (cudaStream_t) or None
(the default stream). The tensors must be CUDA memory registered with register(). Needs a GPU
transport and slot_memory="cuda".)";

inline constexpr const char* kReceiveOnStreamDoc =
    R"(Makes `stream` wait for the next message from each of `peers`.

Returns Messages whose .data are CUDA views of the whole slots (the length is known only on
the device), valid in stream order after this call.)";

inline constexpr const char* kReleaseOnStreamDoc =
    "Hands the slots of `messages` back once the work enqueued before this on `stream` is done.";

inline constexpr const char* kCloseDoc =
    R"(Waits until every peer has released this rank's messages and said goodbye, then disconnects.

After close() every call raises m2n.FailedPreconditionError. Closing twice does nothing.)";

inline constexpr const char* kAbortDoc =
    R"(Makes every blocking call of this group, in any thread, raise m2n.AbortedError promptly.

Callable from any thread at any time; never blocks. close() afterwards tears down at once.)";

inline constexpr const char* kMessageDoc =
    R"(A received message: a view of the receive slot it landed in (m2n::Message).

.data is a numpy uint8 array (a torch uint8 tensor for CUDA slots) over the slot's memory: no
copy, valid until Group.release(). Reinterpret with .data.view(dtype).)";

inline constexpr const char* kDataDoc =
    "The payload as a zero-copy uint8 view of the slot (numpy; torch for CUDA slots). Raises "
    "m2n.FailedPreconditionError after release() or once the group is closed.";

}  // namespace m2n::python
