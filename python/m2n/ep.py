"""m2n.ep: expert-parallel dispatch and combine between attention and expert ranks of a Group.

The binding of m2n::ExpertParallel (include/m2n/ep.h); see ``help(m2n.ep.ExpertParallel)``.
Host-driven, on host memory (numpy, CPU arrays): attention ranks (the group's senders) call
``dispatch`` then ``receive_combine``; expert ranks (its receivers) call ``receive_dispatch``, run
their experts on the batch's rows, then ``combine``. GPU tensors are not supported yet.
"""

from m2n._m2n import ExpertBatch, ExpertParallel

__all__ = ["ExpertBatch", "ExpertParallel"]
