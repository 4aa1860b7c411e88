"""The 4 x H200 table of docs/PERFORMANCE.md reproduced by the model (within 20% on every run),
the workload replay against the pipeline's batching, and the CLI on the shipped models."""

import contextlib
import io
import unittest

from planner import cli, validate
from planner.workload import replay_fixed
from tests import helpers as h


class H200Table(unittest.TestCase):
    def test_tokens_per_gpu_within_20_percent(self):
        rows = validate.h200_table()
        self.assertEqual(len(rows), 6)
        for batch, m, measured, predicted, ratio, _, _ in rows:
            self.assertLess(abs(ratio - 1), 0.20, f"batch {batch}, m = {m}: {predicted:.1f} vs {measured:.1f}")


class Replay(unittest.TestCase):
    def test_one_wave(self):
        its = replay_fixed(4, 4, 8, 3, 2, 256)
        self.assertEqual(len(its), 3)                      # prefill + first token, then 2 decode steps
        self.assertEqual(sum(i.tokens_out for i in its), 12)
        self.assertEqual([mb.prefill for mb in its[0].micro_batches], [16, 16])
        self.assertEqual([mb.decode for mb in its[1].micro_batches], [2, 2])
        self.assertEqual(sum(i.decode_tokens_out for i in its), 8)

    def test_chunked_prefill(self):
        its = replay_fixed(2, 2, 100, 2, 1, 64)
        self.assertEqual(its[0].micro_batches[0].prefill, 64)   # budget of one micro-batch
        self.assertEqual(its[0].tokens_out, 0)


class Cli(unittest.TestCase):
    def run_cli(self, *args):
        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            rc = cli.main(list(args))
        return rc, buf.getvalue() + err.getvalue()

    def test_shipped_models(self):
        for model, gpus in (("mixtral-8x7b", "H200=4"), ("mixtral-8x22b", "H100=64"), ("dbrx", "H200=32"),
                            ("deepseek-v3-like", "H200=128")):
            rc, out = self.run_cli("--model", model, "--gpus", gpus, "--top", "2", "--explain")
            self.assertEqual(rc, 0, out)
            self.assertIn("run: ", out)
            self.assertIn("binds: ", out)

    def test_infeasible_limit_exit_1(self):
        rc, out = self.run_cli("--model", "mixtral-8x7b", "--gpus", "H200=4", "--tbt_ms", "0.01")
        self.assertEqual(rc, 1)
        self.assertIn("no plan meets the limit", out)
        self.assertIn("TBT p50 limit", out)

    def test_too_few_gpus_is_memory(self):
        rc, out = self.run_cli("--model", "mixtral-8x22b", "--gpus", "L40S=2")
        self.assertEqual(rc, 1)
        self.assertIn("memory of", out)

    def test_bad_input_exit_2(self):
        rc, out = self.run_cli("--model", "mixtral-8x7b", "--gpus", "B300=4")
        self.assertEqual(rc, 2)
        self.assertIn("--gpus: B300: not in the catalogue", out)

    def test_plan_and_run_prediction(self):
        rc, out = self.run_cli("--model", "mixtral-8x7b", "--gpus", "H200=4", "--comm", "staged", "--lengths", "64/32",
                               "--plan", "a=H200,A=2,E=2,m=3,batch=256", "--fixed_lengths", "64,32,128,256")
        self.assertEqual(rc, 0, out)
        self.assertIn("predicted run", out)
        self.assertIn("-A 2 -E 2 -m 3 --batch 128", out)


if __name__ == "__main__":
    unittest.main()
