"""Tests of scripts/seed-range-read.py (run with the package's tests from `cargo test --test
torch_package`): two groups of scored runs with known scores are read as the ablation plans
say (ahead only where the ranges do not overlap and the gap is wider than the wider range), and
a missing file or a missing group is refused by name."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "seed-range-read.py")
EVAL_FILES = ["test.json", "fresh.json", "fresh.k1.eval.json", "fresh.k2.eval.json", "seed3.k1.eval.json", "seed3.k2.eval.json"]
SELECT_SETS = ["fundus-A-val", "fundus-B-test", "fundus-B-test-s4", "fundus-B-test-s5", "retina", "fundus-A-zoom30", "fundus-A-zoom50"]


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def entry(path, mean):
    return {"path": f"data/{path}", "mean": mean, "region_dice": {"whole-disc": mean, "cup": mean}}


class SeedRangeRead(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.root.cleanup()

    def run_folder(self, name, score, c_fresh=None):
        """A scored run whose every data set scores `score`, but fresh domain C `c_fresh`."""
        folder = os.path.join(self.root.name, name)
        os.makedirs(folder)
        for f in EVAL_FILES:
            split = "fresh" if f.startswith("fresh") else "test"
            sets = []
            for letter in "ABCD":
                value = c_fresh if (letter == "C" and f == "fresh.json" and c_fresh is not None) else score
                sets.append(entry(f"fundus-{letter}-{split}", value))
            write_json(os.path.join(folder, f), {"datasets": sets})
        write_json(os.path.join(folder, "select.json"), {"datasets": [entry(p, score) for p in SELECT_SETS]})
        return folder

    def read(self, *args):
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)

    def line(self, out, measure):
        return next(l for l in out.splitlines() if l.startswith(measure + " "))

    def test_reads_by_ranges(self):
        # Group A 0.790 / 0.800 / 0.795 (range 0.010), group B 0.815 / 0.817 (range 0.002):
        # the ranges do not overlap and the gap 0.015 is wider than 0.010, so B is ahead.
        a = [self.run_folder("a0", 0.790), self.run_folder("a1", 0.800), self.run_folder("a2", 0.795)]
        b = [self.run_folder("b0", 0.815), self.run_folder("b1", 0.817)]
        r = self.read(*a, "--", *b)
        self.assertEqual(r.returncode, 0, r.stderr)
        line = self.line(r.stdout, "fresh B-D, 4 x 4")
        self.assertIn("(0.7950 ± 0.0050)", line)
        self.assertIn("gap 0.0150, wider range 0.0100: B ahead", line)
        self.assertIn("B ahead", self.line(r.stdout, "A-validation"))
        # B 0.805 / 0.807: no overlap but the gap 0.005 is narrower than the range: level.
        b = [self.run_folder("c0", 0.805), self.run_folder("c1", 0.807)]
        line = self.line(self.read(*a, "--", *b).stdout, "domain B held out")
        self.assertIn("gap 0.0050, wider range 0.0100: level", line)
        # Overlapping ranges, and A ahead with the groups swapped.
        b = [self.run_folder("d0", 0.799), self.run_folder("d1", 0.780)]
        self.assertIn("level (ranges overlap)", self.line(self.read(*a, "--", *b).stdout, "photo, cup"))
        b = [self.run_folder("e0", 0.815), self.run_folder("e1", 0.817)]
        self.assertIn("A ahead", self.line(self.read(*b, "--", *a).stdout, "seed-3 B-D, one forward"))

    def test_unseen_mean_is_over_domains_b_to_d(self):
        # Fresh C at 0.5, every other set at 0.8: B-D (0.8 + 0.5 + 0.8) / 3 = 0.7, A untouched.
        a = [self.run_folder("a", 0.8, c_fresh=0.5)]
        b = [self.run_folder("b", 0.8)]
        out = self.read(*a, "--", *b).stdout
        self.assertIn("A 0.7000 |", self.line(out, "fresh B-D, 4 x 4"))
        self.assertIn("A 0.5000 |", self.line(out, "fresh C, cup"))
        self.assertIn("A 0.8000 |", self.line(out, "fresh A"))
        self.assertIn("A 0.8000 |", self.line(out, "seed-3 B-D, 4 x 4"))

    def test_refusals_name_what_is_wrong(self):
        a = self.run_folder("a", 0.8)
        r = self.read(a)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("usage", r.stderr)
        empty = os.path.join(self.root.name, "empty")
        os.makedirs(empty)
        r = self.read(a, "--", empty)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not a `vlsa eval --json` file", r.stderr)
        self.assertIn(os.path.join(empty, "fresh.json"), r.stderr)


if __name__ == "__main__":
    unittest.main()
