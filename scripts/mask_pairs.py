"""The predicted and true masks of a data set, read pairwise, for the scripts that score
`vlsa segment`'s masks (size-agreement.py, ellipse-check.py)."""

import glob
import os
import sys

import numpy as np
from PIL import Image


def mask_pairs(seg, data):
    """[(pred, truth)] as class-index arrays: each `SEG/NAME_mask.png` (written by `vlsa segment
    --out SEG`) with `DATA/masks/NAME.png`. Exits with one sentence when there is no mask, a
    true mask is missing or the two differ in size."""
    preds = sorted(glob.glob(os.path.join(seg, "*_mask.png")))
    if not preds:
        sys.exit(f"error: no *_mask.png in {seg} (run vlsa segment --out {seg} first)")
    pairs = []
    for f in preds:
        stem = os.path.basename(f)[: -len("_mask.png")]
        truth = os.path.join(data, "masks", stem + ".png")
        if not os.path.exists(truth):
            sys.exit(f"error: {f} has no true mask {truth}")
        pm, tm = np.array(Image.open(f)), np.array(Image.open(truth))
        if pm.shape != tm.shape:
            sys.exit(f"error: {f} is {pm.shape} but {truth} is {tm.shape}")
        pairs.append((pm, tm))
    return pairs
