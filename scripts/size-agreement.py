"""Does a model's predicted structure follow the true one's size, image by image?

Dice says how well the masks overlap; it does not say whether a model reads the size of a
structure from the image or draws a typical one. This compares, per image, the area a model
predicts for a region (a union of classes) with the true area: the Pearson correlation over
the images, and the range of each. A model that draws a typical cup scores a low correlation
and a narrow predicted range, however good its mean Dice.

Inputs: the masks `vlsa segment --out SEG` wrote (`SEG/NAME_mask.png`, class index per pixel)
and the data set they came from (`DATA/masks/NAME.png`).

Usage: python3 scripts/size-agreement.py SEG DATA [--region NAME=CLASSES ...]
       (default regions for fundus: whole-disc=1,2 and cup=2)
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mask_pairs import mask_pairs  # noqa: E402


def region(text):
    name, _, classes = text.partition("=")
    try:
        ids = [int(c) for c in classes.split(",") if c]
    except ValueError:
        ids = []
    if not name or not ids:
        raise argparse.ArgumentTypeError(f"region '{text}' is not NAME=CLASSES (e.g. cup=2)")
    return name, ids


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("seg", help="folder of NAME_mask.png written by vlsa segment --out")
    p.add_argument("data", help="data set folder with masks/NAME.png")
    p.add_argument("--region", type=region, action="append", help="NAME=CLASSES, repeatable")
    a = p.parse_args()
    regions = a.region or [("whole-disc", [1, 2]), ("cup", [2])]
    pairs = mask_pairs(a.seg, a.data)
    areas = {name: ([], []) for name, _ in regions}
    for pm, tm in pairs:
        for name, ids in regions:
            areas[name][0].append(np.isin(pm, ids).sum())
            areas[name][1].append(np.isin(tm, ids).sum())
    print(f"{a.data}: {len(pairs)} images; area in pixels, predicted against true")
    for name, (pa, ta) in areas.items():
        pa, ta = np.array(pa, float), np.array(ta, float)
        r = np.corrcoef(pa, ta)[0, 1] if pa.std() > 0 and ta.std() > 0 else float("nan")
        print(
            f"  {name:12s} correlation {r:5.2f}   predicted {pa.min():.0f}-{pa.max():.0f} "
            f"(mean {pa.mean():.0f})   true {ta.min():.0f}-{ta.max():.0f} (mean {ta.mean():.0f})"
        )


if __name__ == "__main__":
    main()
