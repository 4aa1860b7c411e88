"""The search on small catalogues whose answer is known by hand, and the heterogeneous case."""

import unittest

from planner import perf, search
from tests import helpers as h


def space(s, counts, **kw):
    types = list(counts)
    return search.SearchSpace(pairs=[(a, e) for a in types for e in types], counts=counts, **kw)


class KnownAnswers(unittest.TestCase):
    def test_cheaper_twin_wins_per_dollar(self):
        gpus = {"cheap": h.gpu("cheap", price=1.0), "dear": h.gpu("dear", price=3.0)}
        s = h.setting(gpus=gpus)
        found, _, _ = search.search(s, space(s, {"cheap": 2, "dear": 2}), search.Limit(0.1), "per_dollar")
        p = found[0].best.plan
        self.assertEqual((p.attn_gpu, p.exp_gpu), ("cheap", "cheap"))

    def test_experts_go_where_they_fit(self):
        # "small" (100 kB) cannot hold even one expert (4 layers x 3 x 64 x 128 x 2 B = 197 kB); "big" can.
        gpus = {"small": h.gpu("small", memory_gb=0.0001, price=0.0), "big": h.gpu("big", memory_gb=80, price=10.0)}
        s = h.setting(gpus=gpus)
        found, tried, reasons = search.search(s, space(s, {"small": 4, "big": 1}), search.Limit(0.1), "per_dollar")
        self.assertTrue(found)
        for o in found:
            self.assertEqual(o.best.plan.exp_gpu, "big")
        self.assertIn("memory of an expert GPU", reasons)

    def test_fixed_layout_largest_batch_by_hand(self):
        # T_a = 1 ms per token of a micro-batch, nothing else: iteration = L x batch / replicas ms
        # for any m, so 2 replicas x 4 layers within 100 ms holds 50 requests (m = 1 or 2: multiples of 2).
        s = h.setting()
        sp = space(s, {"G": 8}, fixed={"tp_a": 1, "tp_e": 1, "n_a": 2, "n_e": 1, "m": 1})
        found, tried, _ = search.search(s, sp, search.Limit(0.100))
        self.assertEqual(tried, 1)
        self.assertEqual(found[0].best.plan.batch, 50)

    def test_more_replicas_balance_a_slow_expert_side(self):
        # Experts cost 8 ms per layer whatever the batch, attention 0.1 ms per token: more replicas
        # share the expert side, so the best plan per GPU has several.
        s = h.setting(compute={"G": h.StubCompute(1e-4, 1e-3)})
        found, _, _ = search.search(s, space(s, {"G": 16}, fixed={"tp_a": 1, "tp_e": 1}), search.Limit(0.2))
        self.assertGreater(found[0].best.plan.n_a, 1)

    def test_no_plan_says_why(self):
        s = h.setting()
        found, tried, reasons = search.search(s, space(s, {"G": 2}), search.Limit(1e-6))
        self.assertEqual(found, [])
        self.assertEqual(sum(reasons.values()), tried)
        self.assertEqual(list(reasons), ["TBT p50 limit"])


class Heterogeneous(unittest.TestCase):
    def test_h20_attention_l40s_experts_beats_homogeneous_per_dollar(self):
        from planner import cli
        import io
        import contextlib
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli.main(["--model", "mixtral-8x7b", "--cluster", h.PLAN_DIR + "/clusters/h20-l40s.json",
                           "--objective", "per_dollar", "--top", "3"])
        out = buf.getvalue()
        self.assertEqual(rc, 0, out)
        first = [l for l in out.splitlines() if l.startswith("| 1 |")][0]
        self.assertIn("H20", first.split("|")[2])
        self.assertIn("L40S", first.split("|")[3])
        gain = [l for l in out.splitlines() if l.startswith("# best mixed")][0]
        self.assertIn("H20 + L40S", gain)
        ratio = float(gain.split("): ")[1].split("x per dollar")[0])
        self.assertGreater(ratio, 1.0)


if __name__ == "__main__":
    unittest.main()


class ParetoFront(unittest.TestCase):
    def test_front_keeps_only_unbeaten_points(self):
        import pareto   # tools/plan/pareto.py: matplotlib is imported only to draw
        pts = [(10, 5, "a"), (20, 9, "b"), (20, 7, "c"), (30, 9, "d"), (15, 4, "e"), (40, 12, "f")]
        self.assertEqual([p[2] for p in pareto.pareto(pts)], ["a", "b", "f"])
