"""A local launcher: runs a command as the M + N ranks of one job on this host, without torchrun.

    python -m m2n.launch -n 4 python my_script.py      # ranks 0..3, like torchrun --nproc-per-node 4

It is the C++ launch kit's spawner (m2n/launch.h SpawnLocal, bound as m2n._m2n.spawn_local), so
Python and C++ jobs start by one rule: each rank gets M2N_RANK, M2N_WORLD_SIZE, M2N_MASTER_ADDR
(127.0.0.1), M2N_MASTER_PORT (a free port) and M2N_LOCAL_*, which m2n.Group reads. The exit status
is the first failing rank's, and when one rank fails the others are stopped (they would otherwise
wait for it until their timeouts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Mapping, Sequence

from m2n import _m2n


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the bootstrap store)."""
    return _m2n.pick_free_port()


def rank_environment(rank: int, world_size: int, port: int,
                     base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of `rank` as spawn() gives it, for starting a rank by hand (e.g. with its
    output captured): `base` (default os.environ) plus the M2N_* bootstrap variables."""
    env = dict(os.environ if base is None else base)
    env.update(M2N_RANK=str(rank), M2N_WORLD_SIZE=str(world_size),
               M2N_LOCAL_RANK=str(rank), M2N_LOCAL_WORLD_SIZE=str(world_size),
               M2N_MASTER_ADDR="127.0.0.1", M2N_MASTER_PORT=str(port))
    return env


def spawn(command: Sequence[str], world_size: int, timeout: float = 300.0,
          env: Mapping[str, str] | None = None) -> list[int]:
    """Runs `command` as ranks 0..world_size-1 and returns their exit codes (rank order).

    `env` adds variables to every rank's environment (this process's own are inherited). A rank
    that fails (non-zero exit) stops the others; ranks still running after `timeout` seconds are
    stopped. A rank ended by a signal has exit code -signal, as in subprocess.
    """
    if not command:
        raise ValueError("m2n.launch.spawn: no command to run")
    program = shutil.which(command[0])
    if program is None:
        raise FileNotFoundError(f"m2n.launch.spawn: {command[0]!r} is not an executable on PATH")
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    return _m2n.spawn_local(os.path.abspath(program), list(command), world_size, extra, timeout)


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
