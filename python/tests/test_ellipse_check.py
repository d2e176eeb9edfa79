"""Tests of scripts/ellipse-check.py (run with the package's tests from `cargo test --test
torch_package`): elliptical true masks written here, predictions that are exact, ragged or of
the wrong size, the script's Dice read back, and its refusals."""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

from tests.masks import write_mask_sets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "ellipse-check.py")


def eye(side, disc, cup, wobble=0.0):
    """A side x side class mask: class 1 in an ellipse of semi-axes `disc` (x, y) around the
    centre, class 2 in a centred ellipse of semi-axes `cup` inside it; `wobble` > 0 makes
    both outlines ragged (radius times 1 + wobble sin 5 theta)."""
    y, x = np.mgrid[:side, :side] - side / 2 + 0.5
    r = (1 + wobble * np.sin(5 * np.arctan2(y, x))) ** 2
    m = np.zeros((side, side), np.uint8)
    m[(x / disc[0]) ** 2 + (y / disc[1]) ** 2 <= r] = 1
    m[(x / cup[0]) ** 2 + (y / cup[1]) ** 2 <= r] = 2
    return m


def scores(out):
    """{way: (rim, cup, mean)} from the script's output."""
    found = {}
    for line in out.splitlines()[1:]:
        way, numbers = line[:15].strip(), line[15:].split("/")
        found[way] = tuple(float(n) for n in numbers)
    return found


class EllipseCheck(unittest.TestCase):
    def run_on(self, truths, preds):
        with tempfile.TemporaryDirectory() as root:
            seg, data = write_mask_sets(root, truths, preds)
            r = subprocess.run([sys.executable, SCRIPT, seg, data], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"{len(truths)} images", r.stdout)
        return scores(r.stdout)

    def test_exact_ellipses_stay_and_ragged_outlines_gain(self):
        truths = [eye(64, (14, 17), (6, 8)), eye(64, (16, 13), (9, 7))]
        s = self.run_on(truths, truths)
        self.assertEqual(s["as predicted"], (1.0, 1.0, 1.0))
        for way in ("moments", "area"):
            self.assertGreater(s[way][2], 0.93, way)
        # Ragged outlines around the true ellipses: the refitted ellipses recover them.
        ragged = [eye(64, (14, 17), (6, 8), 0.25), eye(64, (16, 13), (9, 7), 0.25)]
        s = self.run_on(truths, ragged)
        self.assertLess(s["as predicted"][2], 0.85)
        self.assertGreater(s["moments"][2], s["as predicted"][2] + 0.05)
        self.assertGreater(s["area"][2], 0.95)

    def test_a_smooth_cup_of_the_wrong_size_is_not_mended(self):
        truths = [eye(64, (15, 15), (5, 5)), eye(64, (15, 15), (10, 10))]
        preds = [eye(64, (15, 15), (8, 8)), eye(64, (15, 15), (8, 8))]
        s = self.run_on(truths, preds)
        for way in ("moments", "area"):
            self.assertLess(abs(s[way][1] - s["as predicted"][1]), 0.03, way)

    def test_refusals_name_what_is_wrong(self):
        with tempfile.TemporaryDirectory() as root:
            r = subprocess.run([sys.executable, SCRIPT, root, root], capture_output=True, text=True)
            self.assertIn("no *_mask.png", r.stderr)
            Image.fromarray(eye(32, (8, 8), (4, 4))).save(os.path.join(root, "a_mask.png"))
            r = subprocess.run([sys.executable, SCRIPT, root, root], capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("has no true mask", r.stderr)
        r = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True)
        self.assertIn("ellipse-check.py SEG DATA", r.stderr)


if __name__ == "__main__":
    unittest.main()
