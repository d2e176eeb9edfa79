"""Tests of scripts/zoom-reference.py (run with the package's tests from `cargo test --test
torch_package`): masks of known areas give a known median extent and reference in the written
configuration; a configuration without the automatic zoom-out, an empty folder and a model that
predicts nothing are refused by name."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "zoom-reference.py")


class ZoomReference(unittest.TestCase):
    def run_script(self, *args):
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)

    def setUp(self):
        self.root = tempfile.TemporaryDirectory()
        self.seg = os.path.join(self.root.name, "seg")
        os.makedirs(self.seg)
        self.config = os.path.join(self.root.name, "config.json")
        self.out = os.path.join(self.root.name, "out.json")
        with open(self.config, "w") as f:
            json.dump({"image_size": 100, "auto_zoom_out": {"classes": [1, 2], "extent": 0.5}}, f)

    def tearDown(self):
        self.root.cleanup()

    def mask(self, name, rim, cup, other=0, shape=(100, 80)):
        """A mask with `rim` pixels of class 1, `cup` of class 2 and `other` of class 3."""
        m = np.zeros(shape, np.uint8).ravel()
        m[:rim] = 1
        m[rim : rim + cup] = 2
        m[rim + cup : rim + cup + other] = 3
        Image.fromarray(m.reshape(shape)).save(os.path.join(self.seg, name + "_mask.png"))

    def test_median_extent_of_the_configured_classes(self):
        # Class areas 64, 144, 400 (class 3 not counted) over a longer side of 100:
        # extents 0.08, 0.12, 0.20; median 0.12, reference 0.7 x 0.12 = 0.084.
        self.mask("a", 60, 4, other=500)
        self.mask("b", 100, 44)
        self.mask("c", 300, 100)
        r = self.run_script(self.seg, self.config, self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("0.1200 0.0840 0.0800 0.2000 3", r.stdout)
        written = json.load(open(self.out))
        self.assertEqual(written["auto_zoom_out"], {"classes": [1, 2], "extent": 0.084})
        self.assertEqual(written["image_size"], 100)
        r = self.run_script(self.seg, self.config, self.out, "--factor", "0.5")
        self.assertEqual(json.load(open(self.out))["auto_zoom_out"]["extent"], 0.06)

    def test_refusals_name_what_is_wrong(self):
        r = self.run_script(self.seg, self.config, self.out)
        self.assertIn("no *_mask.png", r.stderr)
        self.mask("a", 0, 0, other=50)
        r = self.run_script(self.seg, self.config, self.out)
        self.assertIn("predicts no [1, 2]", r.stderr)
        with open(self.config, "w") as f:
            json.dump({"image_size": 100}, f)
        r = self.run_script(self.seg, self.config, self.out)
        self.assertIn("has no auto_zoom_out", r.stderr)
        r = self.run_script(self.seg, os.path.join(self.root.name, "missing.json"), self.out)
        self.assertIn("cannot read the configuration", r.stderr)
        r = self.run_script(self.seg, self.config, self.out, "--factor", "0")
        self.assertIn("--factor must be positive", r.stderr)
        self.assertFalse(os.path.exists(self.out))


if __name__ == "__main__":
    unittest.main()
