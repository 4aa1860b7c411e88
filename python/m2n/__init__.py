"""m2n: M senders to N receivers, persistent groups over one-sided writes with immediates.

The Python binding of m2n's C++ API (include/m2n/). Start with ``help(m2n.Group)``::

    import numpy as np, m2n
    with m2n.Group(num_senders=2, num_receivers=2) as g:   # rank etc. from torchrun / mpirun / srun
        buf = np.arange(1024, dtype=np.uint8)
        region = g.register(buf)                            # once; sends take slices of it
        if g.is_sender:
            g.send_many([(p, buf) for p in g.peers], timeout=10)
        else:
            msgs = g.receive_many(g.peers, timeout=10)      # zero-copy views of the slots
            g.release(msgs)

Errors raise ``m2n.Error`` subclasses (``m2n.errors``). ``python -m m2n.launch -n 4 script.py``
runs a script as the ranks of a local job without torchrun. ``m2n.ep.ExpertParallel`` is the
expert-parallel layer (dispatch / combine of MoE tokens between attention and expert ranks).
"""

from m2n._m2n import (
    Group,
    MemoryRegion,
    Message,
    __version__,
    available_transports,
    environment_table,
)
from m2n import ep
from m2n.errors import (
    AbortedError,
    DataLossError,
    DeadlineExceededError,
    Error,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    UnavailableError,
    UnimplementedError,
)

__all__ = [
    "AbortedError",
    "DataLossError",
    "DeadlineExceededError",
    "Error",
    "FailedPreconditionError",
    "Group",
    "InternalError",
    "InvalidArgumentError",
    "MemoryRegion",
    "Message",
    "NotFoundError",
    "OutOfRangeError",
    "UnavailableError",
    "UnimplementedError",
    "__version__",
    "available_transports",
    "environment_table",
    "ep",
]
