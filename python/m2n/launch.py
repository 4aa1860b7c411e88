"""A local launcher: runs a command as the M + N ranks of one job on this host, without torchrun.

    python -m m2n.launch -n 4 python my_script.py      # ranks 0..3, like torchrun --nproc-per-node 4

Each rank gets M2N_RANK, M2N_WORLD_SIZE, M2N_MASTER_ADDR (127.0.0.1) and M2N_MASTER_PORT (a free
port), which m2n.Group reads. The exit status is the first failing rank's, and when one rank
fails the others are stopped (they would otherwise wait for it until their timeouts). This
belongs in the C++ launch kit (include/m2n/launch.h) once that lands; it should then call it.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from typing import Mapping, Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the bootstrap store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_environment(rank: int, world_size: int, port: int,
                     base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of `rank`: `base` (default os.environ) plus the M2N_* bootstrap variables."""
    env = dict(os.environ if base is None else base)
    env.update(M2N_RANK=str(rank), M2N_WORLD_SIZE=str(world_size),
               M2N_MASTER_ADDR="127.0.0.1", M2N_MASTER_PORT=str(port))
    return env


def spawn(command: Sequence[str], world_size: int, timeout: float = 300.0,
          env: Mapping[str, str] | None = None) -> list[int]:
    """Runs `command` as ranks 0..world_size-1 and returns their exit codes (rank order).

    A rank that fails (non-zero exit) stops the others; ranks still running after `timeout`
    seconds are killed and get exit code -9.
    """
    port = free_port()
    procs = [subprocess.Popen(list(command), env=rank_environment(r, world_size, port, env))
             for r in range(world_size)]
    deadline = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]  # every one, so that a failure anywhere is seen
        if all(c is not None for c in codes):
            break
        if any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.02)
    return [p.wait() for p in procs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m2n.launch", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--nproc", type=int, required=True, help="ranks to start (M + N)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before every rank is killed")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("no command to run")
    codes = spawn(args.command, args.nproc, args.timeout)
    for rank, code in enumerate(codes):
        if code != 0:
            print(f"m2n.launch: rank {rank} exited with {code}", file=sys.stderr)
    failing = [c for c in codes if c != 0]
    if not failing:
        return 0
    return failing[0] if 0 < failing[0] < 256 else 1  # killed by a signal: a plain failure


if __name__ == "__main__":
    sys.exit(main())
