"""Mask sets for the tests of the scripts that read `vlsa segment`'s masks."""
import os

from PIL import Image


def write_mask_sets(root, truths, preds):
    """Writes under `root` what those scripts read: `seg/imgI_mask.png` (as `vlsa segment --out`
    writes them) from `preds` and the data set `data/masks/imgI.png` from `truths`; returns
    (seg, data)."""
    seg, data = os.path.join(root, "seg"), os.path.join(root, "data")
    os.makedirs(seg)
    os.makedirs(os.path.join(data, "masks"))
    for i, (t, p) in enumerate(zip(truths, preds)):
        Image.fromarray(t).save(os.path.join(data, "masks", f"img{i}.png"))
        Image.fromarray(p).save(os.path.join(seg, f"img{i}_mask.png"))
    return seg, data
