"""The automatic zoom-out's reference for a newly trained model, by the rule every fundus
retraining used (docs/ablations/fundus-autozoom/, fundus-data1200/, fundus-lowend/,
fundus-lowend-seed1/ and fundus-plain-6000/; `scripts/train-models.sh score-fundus` runs it): FACTOR (0.7) times the median extent of the object the model itself
predicts on its training domain's validation fields.

The extent of one mask is sqrt(area of the config's `auto_zoom_out.classes`) / the mask's longer
side, the quantity the automatic zoom-out measures (docs/DESIGN.md, "Zoom-out"). Segment the
validation fields first with the zoom-out off, e.g.

    vlsa segment --model MODEL --zoom-out 1 --out SEG --image data/fundus-A-val/images
    python3 scripts/zoom-reference.py SEG configs/fundus-tiny.json OUT.json
    vlsa init --config OUT.json --from MODEL --shifts 4 --out CANDIDATE

It prints the median, the reference and the range, and writes CONFIG with `extent` replaced.

Usage: python3 scripts/zoom-reference.py SEG CONFIG OUT [--factor 0.7]
"""

import argparse
import glob
import json
import os
import statistics
import sys

import numpy as np
from PIL import Image


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("seg", help="folder of NAME_mask.png written by vlsa segment --zoom-out 1 --out")
    p.add_argument("config", help="the model's configuration JSON (with auto_zoom_out)")
    p.add_argument("out", help="where to write the configuration with the new extent")
    p.add_argument("--factor", type=float, default=0.7, help="reference = factor x median extent")
    a = p.parse_args()
    if not a.factor > 0:
        sys.exit(f"error: --factor must be positive, got {a.factor}")
    try:
        with open(a.config) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"error: cannot read the configuration {a.config}: {e}")
    zoom = config.get("auto_zoom_out") if isinstance(config, dict) else None
    if not isinstance(zoom, dict) or not zoom.get("classes"):
        sys.exit(f"error: {a.config} has no auto_zoom_out with classes")
    masks = sorted(glob.glob(os.path.join(a.seg, "*_mask.png")))
    if not masks:
        sys.exit(f"error: no *_mask.png in {a.seg} (run vlsa segment --zoom-out 1 --out {a.seg} first)")
    extents = []
    for f in masks:
        m = np.array(Image.open(f))
        extents.append(float(np.sqrt(np.isin(m, zoom["classes"]).sum()) / max(m.shape)))
    median = statistics.median(extents)
    if median == 0:
        sys.exit(f"error: the model predicts no {zoom['classes']} on the median image of {a.seg}")
    zoom["extent"] = round(a.factor * median, 4)
    with open(a.out, "w") as f:
        json.dump(config, f, indent=2)
    print(
        f"disc extent: median, {a.factor} x median, min, max, n = {median:.4f} {zoom['extent']:.4f} "
        f"{min(extents):.4f} {max(extents):.4f} {len(extents)}"
    )


if __name__ == "__main__":
    main()
