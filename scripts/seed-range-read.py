#!/usr/bin/env python3
"""Reads two groups of scored fundus runs against each other by their seed ranges, as the
shipped-budget ablation plans do (docs/ablations/fundus-lowend-seed2/RULE.md): on each measure
one group is ahead only where the two groups' ranges do not overlap and the gap between them is
wider than the wider range; otherwise "level".

    python3 scripts/seed-range-read.py GROUP_A_DIRS -- GROUP_B_DIRS

Each folder is one run scored by `scripts/train-models.sh score-fundus` (select.json, test.json,
fresh.json, the 2 x 2 and one-forward files). Prints one line per measure: each run's value,
group A's mean and sample standard deviation (with two or more runs), group B's values, the gap,
the wider range and the read. Measures: unseen B-D (the mean over domains B, C and D of the
disc/cup mean) on the fresh and seed-3 sets with 4 x 4, 2 x 2 and one forward, A-validation,
domain B held out (seeds 3-5), each domain, domain C's cup, the photo and A's close-ups.
Standard library only."""
import functools
import json
import os
import statistics
import sys


@functools.lru_cache(maxsize=None)
def datasets(folder, name):
    """The data sets of one eval file by name; each file is read once (measures share files)."""
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            return {d["path"].rsplit("/", 1)[-1]: d for d in json.load(f)["datasets"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"{path}: not a `vlsa eval --json` file of a scored run ({e})")


def domain(folder, name, letter, key=lambda d: d["mean"]):
    found = [d for path, d in datasets(folder, name).items() if path.startswith(f"fundus-{letter}-")]
    if len(found) != 1:
        sys.exit(f"{folder}/{name}: expected one fundus-{letter} data set, found {len(found)}")
    return key(found[0])


def unseen(folder, name):
    return statistics.mean(domain(folder, name, c) for c in "BCD")


def selected(folder, path, key=lambda d: d["mean"]):
    sets = datasets(folder, "select.json")
    if path not in sets:
        sys.exit(f"{folder}/select.json: no data set {path}")
    return key(sets[path])


def whole_disc(d):
    return d["region_dice"]["whole-disc"]


def cup(d):
    return d["region_dice"]["cup"]


MEASURES = {
    "fresh B-D, 4 x 4": lambda f: unseen(f, "fresh.json"),
    "seed-3 B-D, 4 x 4": lambda f: unseen(f, "test.json"),
    "fresh B-D, 2 x 2": lambda f: unseen(f, "fresh.k2.eval.json"),
    "seed-3 B-D, 2 x 2": lambda f: unseen(f, "seed3.k2.eval.json"),
    "fresh B-D, one forward": lambda f: unseen(f, "fresh.k1.eval.json"),
    "seed-3 B-D, one forward": lambda f: unseen(f, "seed3.k1.eval.json"),
    "A-validation": lambda f: selected(f, "fundus-A-val"),
    "domain B held out": lambda f: statistics.mean(
        selected(f, p) for p in ("fundus-B-test", "fundus-B-test-s4", "fundus-B-test-s5")
    ),
}
for letter in "ABCD":
    MEASURES[f"fresh {letter}"] = lambda f, c=letter: domain(f, "fresh.json", c)
    MEASURES[f"seed-3 {letter}"] = lambda f, c=letter: domain(f, "test.json", c)
MEASURES["fresh C, cup"] = lambda f: domain(f, "fresh.json", "C", cup)
MEASURES["seed-3 C, cup"] = lambda f: domain(f, "test.json", "C", cup)
MEASURES["photo, whole disc"] = lambda f: selected(f, "retina", whole_disc)
MEASURES["photo, cup"] = lambda f: selected(f, "retina", cup)
MEASURES["A zoom30, whole disc"] = lambda f: selected(f, "fundus-A-zoom30", whole_disc)
MEASURES["A zoom50, whole disc"] = lambda f: selected(f, "fundus-A-zoom50", whole_disc)


def read(a, b):
    wider = max(max(a) - min(a), max(b) - min(b))
    if min(a) > max(b):
        gap, ahead = min(a) - max(b), "A ahead"
    elif min(b) > max(a):
        gap, ahead = min(b) - max(a), "B ahead"
    else:
        return 0.0, wider, "level (ranges overlap)"
    return gap, wider, ahead if gap > wider else "level"


def main(argv):
    if argv.count("--") != 1 or argv.index("--") == 0 or argv.index("--") == len(argv) - 1:
        sys.exit("usage: seed-range-read.py RUN_DIR... -- RUN_DIR...  (two groups of scored runs)")
    split = argv.index("--")
    group_a, group_b = argv[:split], argv[split + 1:]
    for name, measure in MEASURES.items():
        a = [measure(f) for f in group_a]
        b = [measure(f) for f in group_b]
        spread = f" ({statistics.mean(a):.4f} ± {statistics.stdev(a):.4f})" if len(a) > 1 else ""
        gap, wider, verdict = read(a, b)
        print(
            f"{name:24s} A {' / '.join(f'{x:.4f}' for x in a)}{spread} | "
            f"B {' / '.join(f'{x:.4f}' for x in b)} | gap {gap:.4f}, wider range {wider:.4f}: {verdict}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
