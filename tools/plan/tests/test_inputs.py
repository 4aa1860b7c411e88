"""Bad input: every error names the file and the field."""

import json
import os
import unittest

from planner import inputs
from tests import helpers as h


def catalogue(**over):
    g = {"memory_gb": 80, "hbm_gb_per_s": 3350, "bf16_tflops": 989, "nvlink_gb_per_s": 900, "nic_gb_per_s": 50,
         "price_per_hour": 3.0}
    g.update(over)
    return {"gpus": {"H100": {k: v for k, v in g.items() if v is not None}}}


class BadInput(unittest.TestCase):
    def error(self, fn, *args):
        with self.assertRaises(inputs.InputError) as cm:
            fn(*args)
        return str(cm.exception)

    def test_missing_catalogue_field(self):
        path = h.write_json(catalogue(hbm_gb_per_s=None))
        msg = self.error(inputs.load_catalogue, path)
        self.assertIn(path, msg)
        self.assertIn("gpus.H100.hbm_gb_per_s: missing", msg)

    def test_negative_price(self):
        path = h.write_json(catalogue(price_per_hour=-1))
        msg = self.error(inputs.load_catalogue, path)
        self.assertIn(f"{path}: gpus.H100.price_per_hour: must be >= 0, got -1", msg)

    def test_not_a_number(self):
        path = h.write_json(catalogue(memory_gb="80"))
        self.assertIn("memory_gb: must be a number", self.error(inputs.load_catalogue, path))

    def test_not_json(self):
        path = h.write_json("{oops", "bad.json")
        self.assertIn(f"{path}: not JSON", self.error(inputs.load_catalogue, path))

    def test_missing_file(self):
        self.assertIn("/nonexistent.json: cannot read", self.error(inputs.load_catalogue, "/nonexistent.json"))

    def test_model_missing_field(self):
        cfg = json.load(open(os.path.join(h.CONFIGS, "tiny.json")))
        del cfg["hidden_size"]
        path = h.write_json(cfg)
        self.assertIn(f"{path}: hidden_size: missing", self.error(inputs.load_model, path))

    def test_model_bad_heads(self):
        cfg = json.load(open(os.path.join(h.CONFIGS, "tiny.json")))
        cfg["num_key_value_heads"] = 3
        self.assertIn("num_key_value_heads: 3 does not divide", self.error(inputs.load_model, h.write_json(cfg)))

    def test_cluster_unknown_type(self):
        cat = inputs.load_catalogue(h.CATALOGUE)
        path = h.write_json({"node_size": 8, "gpus": {"B200": 8}})
        self.assertIn(f"{path}: gpus.B200: not in the catalogue", self.error(inputs.load_cluster, path, cat))

    def test_cluster_negative_count(self):
        cat = inputs.load_catalogue(h.CATALOGUE)
        path = h.write_json({"node_size": 8, "gpus": {"H100": -2}})
        self.assertIn("gpus.H100: must be >= 0", self.error(inputs.load_cluster, path, cat))

    def profile(self, model_shape):
        return {"tool": "moe_pipeline --profile", "model": model_shape,
                "attention": [{"batch": 1, "context": 64, "ms_per_layer": 0.1}],
                "head": [{"batch": 1, "ms": 0.01}], "expert": [{"tokens": 1, "ms_per_layer": 0.05}]}

    def test_profile_of_another_shape(self):
        model = inputs.load_model(os.path.join(h.CONFIGS, "tiny.json"))
        shape = model.shape()
        shape["hidden_size"] = 4096
        path = h.write_json(self.profile(shape))
        msg = self.error(inputs.load_compute_profile, path, model, "cpu-core")
        self.assertIn(f"{path}: model.hidden_size: the profile was measured on another shape", msg)

    def test_profile_missing_table_and_field(self):
        model = inputs.load_model(os.path.join(h.CONFIGS, "tiny.json"))
        p = self.profile(model.shape())
        del p["expert"]
        self.assertIn("expert: missing or empty", self.error(inputs.load_compute_profile, h.write_json(p), model, "x"))
        p = self.profile(model.shape())
        del p["attention"][0]["context"]
        self.assertIn("attention[0].context: missing", self.error(inputs.load_compute_profile, h.write_json(p), model, "x"))

    def test_comm_curve_not_m2n_perf(self):
        path = h.write_json({"tool": "nccl-tests"})
        self.assertIn(f"{path}: tool: not an m2n_perf --json file", self.error(inputs.load_comm_curve, path))

    def test_comm_curve_rows(self):
        path = h.write_json({"tool": "m2n_perf", "config": {"senders": 1, "receivers": 1},
                             "rows": [{"bytes": 8, "impl": "m2n", "p50_us": -3}]})
        self.assertIn("p50_us: must be > 0", self.error(inputs.load_comm_curve, path))


class GoodInput(unittest.TestCase):
    def test_shipped_configs_and_catalogue_load(self):
        for name in ("tiny", "cpu-small", "mixtral-8x7b", "mixtral-8x22b", "dbrx", "deepseek-v3-like"):
            m = inputs.load_model(os.path.join(h.CONFIGS, name + ".json"))
            self.assertGreater(m.layers, 0, name)
        m = inputs.load_model(os.path.join(h.CONFIGS, "deepseek-v3-like.json"))
        self.assertEqual((m.experts, m.top_k, m.intermediate), (256, 8, 2048))   # moe_intermediate_size first
        cat = inputs.load_catalogue(h.CATALOGUE)
        for g in ("H100", "H200", "H20", "L40S", "A100"):
            self.assertIn(g, cat)
            self.assertTrue(cat[g].source)

    def test_profile_measured_and_others_scaled(self):
        from planner import perf
        model = inputs.load_model(os.path.join(h.CONFIGS, "tiny.json"))
        cat = inputs.load_catalogue(h.CATALOGUE)
        p = {"tool": "moe_pipeline --profile", "model": model.shape(),
             "attention": [{"batch": b, "context": c, "ms_per_layer": 0.01 * b + 1e-5 * b * c + 0.005}
                           for b in (1, 4, 16) for c in (64, 256)],
             "head": [{"batch": 1, "ms": 0.01}, {"batch": 16, "ms": 0.05}],
             "expert": [{"tokens": 1, "ms_per_layer": 0.02}, {"tokens": 16, "ms_per_layer": 0.1}]}
        prof = inputs.load_compute_profile(h.write_json(p), model, "cpu-core")
        d = perf.DeviceCompute(model, cat["cpu-core"], prof)
        self.assertAlmostEqual(d.attention(4, 64).seconds, (0.04 + 1e-5 * 256 + 0.005) * 1e-3, places=7)
        self.assertIn("measured", d.expert(8).source)
        self.assertAlmostEqual(d.expert(8).seconds, (0.02 + 0.08 * 7 / 15) * 1e-3)
        eff = perf.efficiency_from_profile(model, cat["cpu-core"], prof)
        other = perf.DeviceCompute(model, cat["H100"], None, eff, "efficiency measured on cpu-core")
        self.assertIn("efficiency measured on cpu-core", other.attention(4, 64).source)


if __name__ == "__main__":
    unittest.main()
