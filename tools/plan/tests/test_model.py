"""The performance model: the iteration formula, each constraint binding in turn, the memory edge,
an infeasible limit reported with its reason."""

import math
import unittest

from planner import perf, search
from tests import helpers as h


class IterationTime(unittest.TestCase):
    def test_m1_is_sequential(self):
        _, t, _ = perf.iteration_time("overlapped", 1, 10, 1.0, 2.0, 0.5, 0.0)
        self.assertAlmostEqual(t, 10 * (1.0 + 2.0 + 2 * 0.5))

    def test_balanced_matches_mission_formula(self):
        # (T_a + T_e + 2 T_c) + T_f (m L - 1) when m covers the round trip.
        ta = te = 1.0
        tc, m, L = 0.4, 3, 8
        _, t, _ = perf.iteration_time("overlapped", m, L, ta, te, tc, 0.0)
        self.assertAlmostEqual(t, (ta + te + 2 * tc) + ta * (m * L - 1))

    def test_too_few_micro_batches_pay_the_round_trip(self):
        # m = 2 < 2 (1 + T_c / T_f) = 3: the period is the round trip, not m T_f.
        period, _, _ = perf.iteration_time("overlapped", 2, 4, 1.0, 1.0, 0.5, 0.0)
        self.assertAlmostEqual(period, 3.0)

    def test_staged_comm_occupies_the_attention_side(self):
        period, _, occ = perf.iteration_time("staged", 3, 4, 1.0, 1.0, 0.25, 0.0)
        self.assertAlmostEqual(occ, 1.5)
        self.assertAlmostEqual(period, 4.5)


class Constraints(unittest.TestCase):
    def plan(self, batch, m=1):
        return perf.Plan("G", "G", 1, 1, 1, 1, m, batch)

    def test_tbt_binds(self):
        s = h.setting()               # T_a = 1 ms per token, 4 layers: iteration 4 ms per request at m = 1
        out = search.largest_batch(s, lambda k: self.plan(k), search.Limit(0.100))
        self.assertEqual(out.best.plan.batch, 25)            # 4 x 25 ms = 100 ms, by hand
        self.assertIn("TBT p50", out.binding)

    def test_attention_memory_binds_at_the_edge(self):
        s = h.setting(gpus={"G": h.gpu(memory_gb=1.0)})
        mem = lambda b: perf.memory(s, self.plan(b), b)[0]
        usable = (1 - perf.MEMORY_RESERVE) * 1e9
        edge = max(b for b in range(1, 100000, 1) if mem(b) <= usable) if mem(99999) > usable else None
        self.assertIsNotNone(edge)
        out = search.largest_batch(s, lambda k: self.plan(k), search.Limit(1e9))
        self.assertEqual(out.best.plan.batch, edge)          # fits at the edge, not one request more
        self.assertLessEqual(out.best.memory_a, usable)
        self.assertIn("memory of an attention GPU", out.binding)

    def test_expert_memory_makes_a_plan_infeasible(self):
        big = h.model(experts=8)
        big.intermediate = 10_000_000                        # 8 experts x 4 layers x 3 x 64 x 1e7 x 2 B
        s = h.setting(gpus={"G": h.gpu(memory_gb=10.0)}, model=big)
        out = search.largest_batch(s, lambda k: self.plan(k), search.Limit(1.0))
        self.assertIsNone(out.best)
        self.assertIn("memory of an expert GPU", out.why_not)

    def test_infeasible_limit_is_reported(self):
        s = h.setting()
        out = search.largest_batch(s, lambda k: self.plan(k), search.Limit(0.001))
        self.assertIsNone(out.best)
        self.assertIn("TBT p50", out.why_not)
        self.assertIn("limit 1.0 ms", out.why_not)

    def test_p99_binds_with_inline_prefill(self):
        s = h.setting(prefill="inline", lengths=(64, 16))
        lim = search.Limit(1.0, 0.200)
        out = search.largest_batch(s, lambda k: self.plan(k), lim)
        self.assertIn("TBT p99", out.binding)
        self.assertLessEqual(out.best.tbt_p99, 0.200)
        self.assertLess(out.best.tbt_p50, out.best.tbt_p99)

    def test_ping_pong_conditions(self):
        s = h.setting(compute={"G": h.StubCompute(1e-3, 1e-3)}, comm=5e-3)
        e = perf.evaluate(s, self.plan(2, m=2))
        self.assertFalse(e.conditions["T_c < T_f"])           # 5 ms transfer against ~1 ms compute
        self.assertFalse(e.conditions["m >= 2(1 + T_c/T_f)"])
        self.assertGreater(e.conditions["m needed"], 2)
        s = h.setting(compute={"G": h.StubCompute(1e-3, 1e-3)}, comm=1e-4)
        e = perf.evaluate(s, self.plan(6, m=3))
        self.assertTrue(e.conditions["T_c < T_f"])
        self.assertTrue(e.conditions["m >= 2(1 + T_c/T_f)"])

    def test_throughput_per_gpu_and_per_dollar(self):
        s = h.setting(gpus={"G": h.gpu(price=2.0)})
        e = perf.evaluate(s, self.plan(10))
        self.assertAlmostEqual(e.tokens_per_s, 10 / e.t_iter)
        self.assertAlmostEqual(e.per_gpu, e.tokens_per_s / 2)
        self.assertAlmostEqual(e.per_dollar, e.tokens_per_s * 3600 / 4.0)

    def test_expert_side_counts_active_experts(self):
        s = h.setting(compute={"G": h.StubCompute(0.0, 1e-3)})
        # One token, top-2 of 8 experts, all on one worker: two experts active.
        t_e = perf.terms(s, self.plan(1), 1, 10)[1].seconds
        self.assertAlmostEqual(t_e, 2 * 1e-3 * (1 - (1 - 2 / 8) ** 1) / (2 / 8))
        # Many tokens: every expert active.
        self.assertAlmostEqual(perf.terms(s, self.plan(1000), 1000, 10)[1].seconds, 8e-3, places=6)


class Roofline(unittest.TestCase):
    def test_decode_attention_is_memory_bound_and_experts_turn_compute_bound(self):
        m = h.model(hidden=4096)
        m.intermediate = 14336
        d = perf.DeviceCompute(m, h.gpu(hbm=4.8e12, flops=989e12))
        small, large = d.roof_expert(1), d.roof_expert(4096)
        self.assertAlmostEqual(small, m.expert_params() * 2 / 4.8e12)
        self.assertAlmostEqual(large, 2 * 4096 * m.expert_params() / 989e12)
        self.assertIn("default efficiency", d.attention(8, 100).source)

    def test_tensor_parallel_splits_and_pays_all_reduce(self):
        d = perf.DeviceCompute(h.model(), h.gpu())
        one, two = d.attention(64, 512, 1).seconds, d.attention(64, 512, 2).seconds
        self.assertGreater(two, one / 2)              # the all-reduces are paid
        self.assertLess(two, one / 2 + 2 * (perf.TP_ALLREDUCE_LATENCY_S + 1e-5))


if __name__ == "__main__":
    unittest.main()
