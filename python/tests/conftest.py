"""Shared fixtures of the m2n Python tests: `run_ranks` starts a scenario of ranks.py (or any
script) as the ranks of a local job through m2n.launch, and fails with every rank's output."""

import subprocess
import sys
from pathlib import Path

import pytest

from m2n import launch

HERE = Path(__file__).resolve().parent


@pytest.fixture
def run_ranks():
    def run(args, world_size, timeout=120.0):
        port = launch.free_port()
        procs = [subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env=launch.rank_environment(r, world_size, port))
                 for r in range(world_size)]
        outputs, codes = [], []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                out, _ = p.communicate()
            outputs.append(out)
            codes.append(p.returncode)
        report = "\n".join(f"--- rank {r}: exit {c}\n{o}" for r, (c, o) in enumerate(zip(codes, outputs)))
        assert codes == [0] * world_size, report
        return outputs

    return run
