"""Tests of the vlsa_torch package, run from `cargo test --test torch_package` (which builds the
`vlsa` binary and passes it in VLSA_BIN) or by hand:

    VLSA_BIN=target/debug/vlsa PYTHONPATH=python python -m unittest discover -s python/tests -v

The fixture tests need only torch; the others run the `vlsa` binary next to the package:
`vlsa synth` data, `vlsa train` checkpoints, `vlsa eval` and `vlsa forward --dump` of what the
package writes, and torchrun with two gloo processes on the CPU."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)
REPO = os.path.dirname(PACKAGE_ROOT)
sys.path.insert(0, PACKAGE_ROOT)

from vlsa_torch.config import config_json, parse_config  # noqa: E402
from vlsa_torch.data import field_of_view, load_image, preprocess  # noqa: E402
from vlsa_torch.init import init_model  # noqa: E402
from vlsa_torch.model import VLSA, loss  # noqa: E402
from vlsa_torch.weights import load_model, load_state, read_file, save_model  # noqa: E402

VLSA_BIN = os.environ.get("VLSA_BIN")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DUMPS = ("vision.features", "head.visual", "head.text", "em.z", "em.mu", "head.aggregated", "decoder.out",
         "logits", "logits_up")

# A model small enough for a few training steps in seconds on vlsa's debug build and lavapipe.
TINY = {
    "image_size": 32, "patch_size": 8,
    "vision": {"width": 32, "layers": 1, "heads": 2, "mlp_ratio": 2, "act": "quick_gelu"},
    "text_dim": 16,
    "classes": ["background", "optic disc", "optic cup"],
    "decoder": {"width": 16, "layers": 1, "heads": 2, "mlp_ratio": 2},
    "em": {"bases": 4, "iters": 3, "lambda": 1.0, "momentum": 0.9, "grad": "detached"},
}


def ratio(a, b, atol, rtol):
    """Worst |a - b| / (atol + rtol |b|): at most 1 means within tolerance."""
    return ((a - b).abs() / (atol + rtol * b.abs())).max().item()


class FixtureTest(unittest.TestCase):
    """The package against the float64 fixtures of the independent reference (tests/reference)."""

    def check(self, mode):
        tensors, meta = read_file(os.path.join(REPO, "tests", "fixtures", f"vlsa_tiny_{mode}.safetensors"))
        model = VLSA(parse_config(meta["vlsa.config"]))
        names = set(model.state_dict())
        load_state(model, {n: t for n, t in tensors.items() if n in names}, "fixture")
        out = model(tensors["input"])
        for name in DUMPS:
            self.assertLessEqual(ratio(out[name], tensors[name], 1e-4, 1e-3), 1.0, f"{mode}: {name}")
        value = loss(out["logits_up"], tensors["target"].long())
        self.assertLessEqual(ratio(value.reshape(1), tensors["loss"], 1e-5, 1e-5), 1.0)
        value.backward()
        for name, p in model.named_parameters():
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            self.assertLessEqual(ratio(grad, tensors["grad." + name], 1e-4, 1e-3), 1.0, f"{mode}: grad of {name}")
        in_proj = model.head.em.in_proj.weight.grad
        if mode in ("detached", "upsample"):
            self.assertIsNone(in_proj, "detached mode: the EM input projection gets no gradient")
        else:
            self.assertGreater(in_proj.abs().max().item(), 0.0)
        model.head.em.update_bases(out["em.mu"].detach().mean(dim=0))
        self.assertLessEqual(ratio(model.head.em.bases, tensors["em.bases_next"], 1e-6, 1e-5), 1.0)

    def test_detached_matches_the_reference(self):
        self.check("detached")

    def test_unrolled_matches_the_reference(self):
        self.check("unrolled")

    def test_sub_token_logits_match_the_reference(self):
        self.check("upsample")

    def test_model_file_round_trip_and_bad_files(self):
        model = init_model(parse_config(TINY), seed=3)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.safetensors")
            save_model(model, path)
            again, optim, meta = load_model(path)
            self.assertEqual(optim, {})
            self.assertEqual(again.config, model.config)
            for (n, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(again.state_dict().items())):
                self.assertTrue(torch.equal(a, b), n)
            small = dict(TINY, decoder=dict(TINY["decoder"], width=8))
            with self.assertRaisesRegex(ValueError, "has shape"):
                load_state(VLSA(parse_config(small)), dict(model.state_dict()), path)
        with self.assertRaisesRegex(ValueError, "unknown key `em.size`"):
            parse_config(dict(TINY, em=dict(TINY["em"], size=3)))
        # `refine` (vlsa's two-pass inference) is optional, kept through a model file, checked.
        self.assertNotIn("refine", parse_config(TINY))
        refined = init_model(parse_config(dict(TINY, refine={"crop": 0.35})), seed=3)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "r.safetensors")
            save_model(refined, path)
            self.assertEqual(load_model(path)[0].config["refine"], {"crop": 0.35})
        with self.assertRaisesRegex(ValueError, "refine.crop 1.5"):
            parse_config(dict(TINY, refine={"crop": 1.5}))
        with self.assertRaisesRegex(ValueError, "unknown key `refine.size`"):
            parse_config(dict(TINY, refine={"size": 0.3}))
        # `shifts` (vlsa's shift ensemble) too.
        self.assertNotIn("shifts", parse_config(TINY))
        shifted = init_model(parse_config(dict(TINY, shifts=2)), seed=3)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.safetensors")
            save_model(shifted, path)
            self.assertEqual(load_model(path)[0].config["shifts"], 2)
        for k, why in ((0, "between 1 and 8"), (3, "must divide the patch size")):
            with self.assertRaisesRegex(ValueError, f"shifts {k} .*{why}"):
                parse_config(dict(TINY, shifts=k))
        # `field_of_view` too: written only when true.
        self.assertFalse(parse_config(TINY)["field_of_view"])
        self.assertNotIn("field_of_view", json.loads(config_json(parse_config(TINY))))
        on = parse_config(dict(TINY, field_of_view=True))
        self.assertEqual(parse_config(config_json(on)), on)
        with self.assertRaisesRegex(ValueError, "field_of_view 1 must be true or false"):
            parse_config(dict(TINY, field_of_view=1))
        # `zoom_out` too.
        self.assertNotIn("zoom_out", parse_config(TINY))
        self.assertEqual(parse_config(config_json(parse_config(dict(TINY, zoom_out=3))))["zoom_out"], 3)
        with self.assertRaisesRegex(ValueError, "zoom_out 9 must be between 1 and 8"):
            parse_config(dict(TINY, zoom_out=9))
        with self.assertRaisesRegex(ValueError, "do not combine"):
            parse_config(dict(TINY, zoom_out=2, refine={"crop": 0.4}))
        # `auto_zoom_out`: absent unless given, `enabled` written only when true, checked.
        self.assertNotIn("auto_zoom_out", parse_config(TINY))
        auto = parse_config(dict(TINY, auto_zoom_out={"classes": [1], "extent": 0.08}))
        self.assertEqual(auto["auto_zoom_out"], {"classes": [1], "extent": 0.08, "enabled": False})
        self.assertNotIn("enabled", config_json(auto))
        self.assertEqual(parse_config(config_json(auto)), auto)
        with self.assertRaisesRegex(ValueError, "auto_zoom_out.classes \\[0\\] must name foreground classes"):
            parse_config(dict(TINY, auto_zoom_out={"classes": [0], "extent": 0.08}))
        with self.assertRaisesRegex(ValueError, "auto_zoom_out.extent 1.5 must be a fraction"):
            parse_config(dict(TINY, auto_zoom_out={"classes": [1], "extent": 1.5}))
        with self.assertRaisesRegex(ValueError, "unknown key `auto_zoom_out.size`"):
            parse_config(dict(TINY, auto_zoom_out={"classes": [1], "extent": 0.1, "size": 2}))

    def test_field_of_view_is_vlsas(self):
        """The cases of vlsa's own test (src/image_io.rs), on the package's copy."""
        import numpy as np

        def framed(w, h, box, fill):
            a = np.zeros((h, w, 3), dtype=np.float32)
            x0, y0, bw, bh = box
            a[y0:y0 + bh, x0:x0 + bw] = [fill, fill * 0.5, 0.0]
            return a

        self.assertEqual(field_of_view(framed(61, 37, (13, 2, 33, 31), 0.6)), (13, 2, 33, 31))
        labelled = framed(80, 40, (20, 0, 40, 40), 0.5)
        labelled[37, 2:4, 0] = 1.0
        labelled[38, 4, 0] = 1.0
        self.assertEqual(field_of_view(labelled), (20, 0, 40, 40))
        self.assertIsNone(field_of_view(framed(40, 40, (2, 1, 37, 38), 0.5)))
        self.assertIsNone(field_of_view(framed(40, 40, (0, 0, 0, 0), 0.0)))
        self.assertIsNone(field_of_view(framed(40, 40, (10, 10, 8, 30), 0.5)))
        self.assertIsNone(field_of_view(framed(60, 40, (10, 0, 40, 40), 0.09)))


def run(cmd, **kw):
    """Runs a command; a failure shows its output."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def train_cmd(processes, *args):
    if processes == 1:
        return [sys.executable, "-m", "vlsa_torch.train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "vlsa_torch.train", *args]


def checkpoint_log(path):
    return json.loads(read_file(path)[1]["vlsa.checkpoint"])["log"]


@unittest.skipUnless(VLSA_BIN, "needs the vlsa binary in VLSA_BIN (cargo test --test torch_package sets it)")
class WithVlsaTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="vlsa_torch_")
        cls.data = os.path.join(cls.tmp, "data")
        run([VLSA_BIN, "synth", "--task", "fundus", "--domain", "A", "--count", "8", "--size", "40", "--out", cls.data, "--seed", "5"])
        cls.config = os.path.join(cls.tmp, "tiny.json")
        with open(cls.config, "w") as f:
            json.dump(TINY, f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_ddp_two_processes_trains_a_model_vlsa_loads(self):
        out = os.path.join(self.tmp, "ddp2.safetensors")
        common = ["--config", self.config, "--data", self.data, "--steps", "24", "--batch", "4", "--lr", "3e-3",
                  "--warmup", "4", "--seed", "1", "--log-every", "8"]
        run(train_cmd(2, *common, "--out", out, "--val", self.data, "--val-every", "24"), timeout=600)
        log = checkpoint_log(out)
        self.assertEqual([e["step"] for e in log], list(range(1, 25)))
        first, last = sum(e["loss"] for e in log[:4]) / 4, sum(e["loss"] for e in log[-4:]) / 4
        # On this tiny model and data the loss falls slowly (measured: by 0.04 over 24 steps).
        self.assertLess(last, first - 0.02, f"the loss falls: {[round(e['loss'], 4) for e in log]}")
        self.assertIsNotNone(log[-1]["val_dice"])

        # vlsa loads the checkpoint: eval, and forward --dump equals the package's forward.
        self.assertIn("Dice", run([VLSA_BIN, "eval", "--model", out, "--data", self.data]))
        image = os.path.join(self.data, "images", sorted(os.listdir(os.path.join(self.data, "images")))[0])
        dump = os.path.join(self.tmp, "dump.safetensors")
        run([VLSA_BIN, "forward", "--model", out, "--image", image, "--dump", dump])
        d, _ = read_file(dump)
        model = load_model(out)[0]
        c = model.config
        x = preprocess([load_image(image)], c["image_size"], c["pixel_mean"], c["pixel_std"])
        self.assertLessEqual((x - d["input"]).abs().max().item(), 1e-5, "the same preprocessing")
        with torch.no_grad():
            mine = model(d["input"])
        for name in DUMPS:
            diff = (mine[name] - d[name]).abs().max().item()
            self.assertLessEqual(diff, 1e-4, f"vlsa forward --dump {name} vs the package: {diff:.2e}")

        # One process with the same global batch reaches the same weights.
        single = os.path.join(self.tmp, "ddp1.safetensors")
        run(train_cmd(1, *common, "--out", single), timeout=600)
        a, b = read_file(out)[0], read_file(single)[0]
        self.assertEqual(set(a), set(b))
        for name in a:
            # The k_proj biases get gradients that are zero up to round-off (softmax ignores a
            # shift shared by every key), which AdamW turns into lr-sized steps of either sign:
            # their values are noise in any run, and they are left out of the comparison.
            if name.endswith("k_proj.bias"):
                continue
            self.assertLessEqual(ratio(a[name], b[name], 1e-5, 1e-4), 1.0, f"2 vs 1 process: {name}")
        for ea, eb in zip(checkpoint_log(out), checkpoint_log(single)):
            self.assertAlmostEqual(ea["loss"], eb["loss"], delta=1e-5)

    def test_checkpoints_move_between_vlsa_train_and_the_package(self):
        ours = os.path.join(self.tmp, "from_vlsa.safetensors")
        theirs = os.path.join(self.tmp, "vlsa.safetensors")
        args = ["--data", self.data, "--batch", "4", "--lr", "3e-3", "--warmup", "1", "--seed", "2"]
        # The package does not implement vlsa's domain randomization: runs that move between the
        # two leave it out, and a checkpoint trained with it is refused with a clear message.
        vlsa_args = [*args, "--no-randomize"]
        randomized = os.path.join(self.tmp, "randomized.safetensors")
        run([VLSA_BIN, "train", "--config", self.config, "--steps", "1", "--out", randomized, *args])
        with self.assertRaisesRegex(AssertionError, "domain randomization"):
            run(train_cmd(1, "--resume", "--out", randomized, *args))
        run([VLSA_BIN, "train", "--config", self.config, "--steps", "6", "--stop-at", "3", "--out", theirs, *vlsa_args])
        shutil.copy(theirs, ours)
        run([VLSA_BIN, "train", "--resume", "--out", theirs, *vlsa_args])
        run(train_cmd(2, "--resume", "--out", ours, *args), timeout=600)
        mine, vlsa = checkpoint_log(ours), checkpoint_log(theirs)
        self.assertEqual([e["step"] for e in mine], list(range(1, 7)))
        self.assertEqual(mine[:3], vlsa[:3], "steps 1-3 are vlsa's, kept in the log")
        # Step 4 is the same batch (data order and augmentation) on the same weights.
        self.assertAlmostEqual(mine[3]["loss"], vlsa[3]["loss"], delta=1e-4)
        for a, b in zip(mine[3:], vlsa[3:]):
            self.assertAlmostEqual(a["loss"], b["loss"], delta=2e-3)
            self.assertAlmostEqual(a["lr"], b["lr"], delta=1e-9)
        a, b = read_file(ours)[0], read_file(theirs)[0]
        self.assertEqual(set(a), set(b))
        worst = max((a[n] - b[n]).abs().max().item() for n in a if not n.startswith("optim."))
        self.assertLess(worst, 1e-2, "three more steps in either tool end close")
        self.assertIn("Dice", run([VLSA_BIN, "eval", "--model", ours, "--data", self.data]))

        # And back: a run started here from the config (vlsa's init) draws vlsa's batches, and
        # `vlsa train --resume` continues its checkpoint.
        back = os.path.join(self.tmp, "to_vlsa.safetensors")
        run(train_cmd(1, "--config", self.config, "--steps", "6", "--stop-at", "3", "--out", back, *args), timeout=600)
        for a, b in zip(checkpoint_log(back), vlsa[:3]):
            self.assertAlmostEqual(a["loss"], b["loss"], delta=1e-4)
        run([VLSA_BIN, "train", "--resume", "--out", back, *vlsa_args])
        final = checkpoint_log(back)
        self.assertEqual([e["step"] for e in final], list(range(1, 7)))
        for a, b in zip(final[3:], vlsa[3:]):
            self.assertAlmostEqual(a["loss"], b["loss"], delta=2e-3)


if __name__ == "__main__":
    unittest.main()
