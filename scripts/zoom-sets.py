"""Disc-centred views of a fundus data set: the scale check of weights/vlsa-fundus-tiny.md.

Many fundus photographs of the optic disc are not macula-centred fields but closer views in
which the disc fills a fifth to a half of the image (disc-centred fields of view, crops around
the disc). This writes, for each image of a data set (`images/NAME.*`, `masks/NAME.png`), a
square window of side FRACTION x the image's shorter side (or drawn uniformly from FRACTION to
--fraction-max per image) around the middle of the mask's foreground, moved by up to --jitter
(default 0.15) of the side along each axis (seeded) and kept inside the image, as a new data
set (`OUT/images/NAME.png`, `OUT/masks/NAME.png`). The crop is stored losslessly (PNG) at the
source's resolution: render the source large (`vlsa synth --size 512`) so the view is as sharp
as a real close-up. The window is the one `vlsa train --focus-crops` draws (src/train/augment.rs,
`focus_window`: side from the shorter side, centre on the middle of the foreground's bounding
box, jitter 0.15 of the side), but with any side and without upsampling a small image.

With --frame ASPECT instead of --fraction it writes the frame check's views: each whole image,
cut to the middle --clip of its height (default 1: none), centred in a black frame ASPECT times
as wide as it is then high, as many cameras frame a round field wider than it is high.

Usage: python3 scripts/zoom-sets.py SRC OUT --fraction 0.3 [--fraction-max 0.5] [--jitter 0.15]
       [--seed 0]
       python3 scripts/zoom-sets.py SRC OUT --frame 1.5 [--clip 0.85]   (needs numpy, PIL)
"""
import argparse
import glob
import os

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--fraction", type=float)
    ap.add_argument("--frame", type=float)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--fraction-max", type=float)
    ap.add_argument("--jitter", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if (a.fraction is None) == (a.frame is None):
        raise SystemExit("give one of --fraction (a close-up view) and --frame (a wider frame)")
    if a.frame is not None:
        if not 1.0 <= a.frame <= 4.0:
            raise SystemExit(f"--frame {a.frame} must be in [1, 4] (the frame's width over its height)")
        if not 0.0 < a.clip <= 1.0:
            raise SystemExit(f"--clip {a.clip} must be in (0, 1]")
        a.fraction = 1.0
    if not 0.0 < a.fraction <= 1.0:
        raise SystemExit(f"--fraction {a.fraction} must be in (0, 1]")
    top = a.fraction if a.fraction_max is None else a.fraction_max
    if not a.fraction <= top <= 1.0:
        raise SystemExit(f"--fraction-max {top} must be in [--fraction, 1]")
    rng = np.random.default_rng(a.seed)
    masks = sorted(glob.glob(a.src + "/masks/*.png"))
    if not masks:
        raise SystemExit(f"{a.src} has no masks/*.png")
    os.makedirs(a.out + "/images", exist_ok=True)
    os.makedirs(a.out + "/masks", exist_ok=True)
    for path in masks:
        name = os.path.basename(path)
        stem = os.path.splitext(name)[0]
        found = sorted(glob.glob(glob.escape(a.src + "/images/" + stem) + ".*"))
        if len(found) != 1:
            raise SystemExit(f"{path}: expected one image named {stem}.* in {a.src}/images, found {len(found)}")
        try:
            mask = np.array(Image.open(path))
            image = Image.open(found[0]).convert("RGB")
        except OSError as e:
            raise SystemExit(f"{path} or {found[0]} could not be read as an image: {e}")
        if mask.ndim != 2 or mask.shape != (image.height, image.width):
            raise SystemExit(f"{path}: a mask must be one grey channel of its image's size {image.width}x{image.height}")
        h, w = mask.shape
        if a.frame is not None:
            rows = max(1, round(a.clip * h))
            top_row = (h - rows) // 2
            width = max(w, round(a.frame * rows))
            x0 = (width - w) // 2
            view = Image.new("RGB", (width, rows))
            view.paste(image.crop((0, top_row, w, top_row + rows)), (x0, 0))
            view.save(a.out + "/images/" + name)
            framed = np.zeros((rows, width), dtype=mask.dtype)
            framed[:, x0 : x0 + w] = mask[top_row : top_row + rows]
            Image.fromarray(framed).save(a.out + "/masks/" + name)
            continue
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            raise SystemExit(f"{path} has no foreground to centre on")
        fraction = rng.uniform(a.fraction, top) if top > a.fraction else a.fraction
        side = max(1, min(w, h, round(fraction * min(w, h))))
        cx = (xs.min() + xs.max() + 1) / 2 + rng.uniform(-a.jitter, a.jitter) * side
        cy = (ys.min() + ys.max() + 1) / 2 + rng.uniform(-a.jitter, a.jitter) * side
        x0 = int(min(max(round(cx - side / 2), 0), w - side))
        y0 = int(min(max(round(cy - side / 2), 0), h - side))
        box = (x0, y0, x0 + side, y0 + side)
        image.crop(box).save(a.out + "/images/" + name)
        Image.fromarray(mask[y0 : y0 + side, x0 : x0 + side]).save(a.out + "/masks/" + name)
    print(f"{len(masks)} views written to {a.out}")


if __name__ == "__main__":
    main()
