"""Tests of scripts/size-agreement.py (run with the package's tests from `cargo test --test
torch_package`): masks written here with known areas, the script's correlation and ranges read
back, and its refusals of a missing or mismatched true mask."""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

from tests.masks import write_mask_sets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "size-agreement.py")


def disc_mask(side, disc, cup):
    """A side x side class mask: class 1 in a disc of `disc` pixels' radius, class 2 in a
    centred square of cup x cup pixels inside it."""
    y, x = np.mgrid[:side, :side]
    c = side // 2
    m = np.zeros((side, side), np.uint8)
    m[(y - c) ** 2 + (x - c) ** 2 <= disc * disc] = 1
    h = cup // 2
    m[c - h : c - h + cup, c - h : c - h + cup] = 2
    return m


class SizeAgreement(unittest.TestCase):
    def run_script(self, seg, data, *extra):
        return subprocess.run(
            [sys.executable, SCRIPT, seg, data, *extra], capture_output=True, text=True
        )

    def cup_line(self, out):
        return next(line for line in out.splitlines() if line.strip().startswith("cup"))

    def test_a_following_prediction_correlates_and_a_contrary_one_anticorrelates(self):
        truths = [disc_mask(48, 12, c) for c in (4, 6, 8, 10)]
        with tempfile.TemporaryDirectory() as root:
            seg, data = write_mask_sets(root, truths, truths)
            r = self.run_script(seg, data)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("4 images", r.stdout)
            # Predicted equal to true: correlation 1, the cups' areas 16..100 on both sides.
            self.assertIn("correlation  1.00", self.cup_line(r.stdout))
            self.assertIn("predicted 16-100", self.cup_line(r.stdout))
            self.assertIn("true 16-100", self.cup_line(r.stdout))
        # Predicted cup sizes running against the truth: a negative correlation.
        with tempfile.TemporaryDirectory() as root:
            preds = [disc_mask(48, 12, c) for c in (10, 8, 6, 4)]
            seg, data = write_mask_sets(root, truths, preds)
            r = self.run_script(seg, data, "--region", "cup=2")
            self.assertEqual(r.returncode, 0, r.stderr)
            r_cup = float(self.cup_line(r.stdout).split("correlation")[1].split()[0])
            self.assertLess(r_cup, -0.9)
            self.assertNotIn("whole-disc", r.stdout)

    def test_refusals_name_what_is_wrong(self):
        truths = [disc_mask(32, 8, 4), disc_mask(32, 8, 6)]
        with tempfile.TemporaryDirectory() as root:
            seg, data = write_mask_sets(root, truths, truths)
            os.remove(os.path.join(data, "masks", "img1.png"))
            r = self.run_script(seg, data)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("has no true mask", r.stderr)
            Image.fromarray(disc_mask(40, 8, 6)).save(os.path.join(data, "masks", "img1.png"))
            r = self.run_script(seg, data)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("is (32, 32) but", r.stderr)
            r = self.run_script(os.path.join(root, "none"), data)
            self.assertIn("no *_mask.png", r.stderr)
            r = self.run_script(seg, data, "--region", "cup")
            self.assertIn("is not NAME=CLASSES", r.stderr)


if __name__ == "__main__":
    unittest.main()
