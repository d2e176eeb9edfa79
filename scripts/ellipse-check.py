"""Would fitting ellipses to a model's predicted disc and cup raise its Dice?

The optic disc and cup are near-elliptical, and fundus pipelines often replace a predicted
outline by a fitted ellipse. This scores, against the true masks, a model's masks as predicted
and with the whole disc (classes 1 and 2) and the cup (class 2) each replaced by the ellipse of
the same second moments, drawn at the same centre: "moments" keeps the moments' own size (a
solid ellipse of semi-axes a, b has variances a^2/4 and b^2/4), "area" scales it to the
predicted area. The cup is clipped to the disc's ellipse and the rest of the disc is rim. If
the predicted outlines are ragged, the ellipses score higher; if the outlines are smooth but
of the wrong size, they score the same.

Dice as `vlsa eval` computes it: per image and class, 2|P∩T| / (|P| + |T|), images where a
class is in neither skipped, then averaged; the mean of rim (class 1) and cup (class 2).

Inputs: the masks `vlsa segment --out SEG` wrote (`SEG/NAME_mask.png`) and the data set they
came from (`DATA/masks/NAME.png`).

Usage: python3 scripts/ellipse-check.py SEG DATA
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mask_pairs import mask_pairs  # noqa: E402


def ellipse(mask, scale=1.0):
    """The solid ellipse with mask's centroid and second moments, its axes times `scale`."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 5:
        return mask
    cy, cx = ys.mean(), xs.mean()
    var, axes = np.linalg.eigh(np.cov(np.stack([xs - cx, ys - cy])))
    var = np.maximum(var, 1e-6)
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    d = np.stack([xx - cx, yy - cy], -1) @ axes
    return d[..., 0] ** 2 / (4 * var[0]) + d[..., 1] ** 2 / (4 * var[1]) <= scale**2


def area_ellipse(mask):
    """The moments ellipse scaled until its pixel count matches the mask's."""
    if mask.sum() < 5:
        return mask
    scale = 1.0
    for _ in range(30):
        scale *= (mask.sum() / max(ellipse(mask, scale).sum(), 1)) ** 0.5
    return ellipse(mask, scale)


def refit(pred, fit):
    disc, cup = fit(pred >= 1), fit(pred == 2)
    out = np.zeros_like(pred)
    out[disc] = 1
    out[cup & disc] = 2
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("Usage: ")[1])
    seg, data = sys.argv[1], sys.argv[2]
    pairs = mask_pairs(seg, data)
    ways = {"as predicted": lambda p: p, "moments": lambda p: refit(p, ellipse), "area": lambda p: refit(p, area_ellipse)}
    scores = {w: {1: [], 2: []} for w in ways}
    for pm, tm in pairs:
        for w, way in ways.items():
            p = way(pm)
            for k in (1, 2):
                total = (p == k).sum() + (tm == k).sum()
                if total:
                    scores[w][k].append(2 * ((p == k) & (tm == k)).sum() / total)
    print(f"{data}: {len(pairs)} images; Dice rim / cup / mean")
    for w, s in scores.items():
        rim, cup = np.mean(s[1]), np.mean(s[2])
        print(f"  {w:13s} {rim:.4f} / {cup:.4f} / {(rim + cup) / 2:.4f}")


if __name__ == "__main__":
    main()
