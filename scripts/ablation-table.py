#!/usr/bin/env python3
"""Markdown table of the seeded ablations in docs/ablations/seeds/ (scripts/train-models.sh
ablate-seeds): per task, variant and randomization, the mean +- sample standard deviation over
seeds of the mean Dice on each fresh domain A-D and of the mean over the unseen domains B-D.
Standard library only."""
import glob
import json
import os
import re
import statistics
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "docs/ablations/seeds"
runs = {}
for path in sorted(glob.glob(os.path.join(root, "*.eval.json"))):
    m = re.match(r"(\w+)-(full|no-em|no-text|plain|sub2)-(on|off)-s(\d+)\.eval\.json$", os.path.basename(path))
    if not m:
        continue
    task, variant, rand, seed = m.groups()
    d = json.load(open(path))
    per = {re.search(r"-([A-D])-fresh$", s["path"]).group(1): s["mean"] for s in d["datasets"]}
    per["B-D"] = statistics.mean(per[k] for k in "BCD")
    runs.setdefault((task, variant, rand), {})[int(seed)] = per


def cell(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


names = {"full": "full", "no-em": "no EM", "no-text": "no text cross-attn", "plain": "plain ViT", "sub2": "full, 2 x 2 sub-tokens"}
summary = []
for task in sorted({k[0] for k in runs}):
    print(f"\n{task} (mean Dice over the foreground classes; mean ± std over seeds)\n")
    print("| variant | randomization | seeds | A (train domain) | B | C | D | mean B–D |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in names:
        for rand in ("on", "off"):
            seeds = runs.get((task, variant, rand))
            if not seeds:
                continue
            cols = [cell([seeds[s][k] for s in sorted(seeds)]) for k in ("A", "B", "C", "D", "B-D")]
            print(f"| {names[variant]} | {rand} | {','.join(map(str, sorted(seeds)))} | " + " | ".join(cols) + " |")
            summary.append({"task": task, "variant": variant, "randomize": rand == "on",
                            "seeds": {str(s): seeds[s] for s in sorted(seeds)}})
json.dump(summary, open(os.path.join(root, "summary.json"), "w"), indent=1)
