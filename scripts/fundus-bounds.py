"""What bounds the Dice of a fundus model on 128-pixel renderings (weights/vlsa-fundus-tiny.md,
"Two-pass refinement"). For a data set's masks it prints:
- the disc's diameter and rim width in pixels (5th, 50th, 95th percentiles);
- the Dice of each true mask moved by one pixel (across, then diagonally) against itself, per
  class and for the whole disc (classes 1 and 2, as `vlsa eval --region whole-disc=1,2`);
- the Dice reached by the best logits on a G x G grid (G = 16: 128 px / patch 8), fitted per
  image by gradient descent (Adam, cross-entropy + soft Dice) through the model's bilinear
  upsampling and argmax: what the mask head could give with perfect features.
Dice as `vlsa eval` computes it for one image, mean over the foreground classes.

Usage: python3 scripts/fundus-bounds.py DIR [--grid 16] [--images 48]   (needs torch, numpy, PIL)
"""
import argparse
import glob

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--images", type=int, default=48)
    a = ap.parse_args()
    files = sorted(glob.glob(a.dir + "/masks/*.png"))[: a.images]
    masks = np.stack([np.array(Image.open(f)) for f in files])
    k = int(masks.max()) + 1
    disc = (masks > 0).sum((1, 2))
    cup = (masks == 2).sum((1, 2))
    diameter = 2 * np.sqrt(disc / np.pi)
    rim = np.sqrt(disc / np.pi) - np.sqrt(cup / np.pi)
    print(f"{len(files)} masks, {k} classes")
    print("disc diameter px (5/50/95 %):", np.percentile(diameter, [5, 50, 95]).round(1))
    print("rim width px (5/50/95 %):    ", np.percentile(rim, [5, 50, 95]).round(2))
    for name, (dy, dx) in [("one pixel across", (0, 1)), ("one pixel diagonally", (1, 1))]:
        moved = np.roll(np.roll(masks, dy, 1), dx, 2)
        d = [np.mean([dice(m == c, s == c) for c in range(1, k)]) for m, s in zip(masks, moved)]
        rim_d = np.mean([dice(m == 1, s == 1) for m, s in zip(masks, moved)])
        whole = np.mean([dice(m > 0, s > 0) for m, s in zip(masks, moved)])
        cup_d = np.mean([dice(m == 2, s == 2) for m, s in zip(masks, moved)])
        print(
            f"true mask moved {name}: Dice {np.mean(d):.3f} (rim {rim_d:.3f}, cup {cup_d:.3f});"
            f" whole disc {whole:.3f}, whole disc/cup mean {(whole + cup_d) / 2:.3f}"
        )
    torch.manual_seed(0)
    target = torch.tensor(masks).long()
    size = target.shape[-1]
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2).float()
    z = torch.zeros(len(files), k, a.grid, a.grid, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.3)
    for _ in range(600):
        up = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
        p = up.softmax(1)
        inter = (p * onehot)[:, 1:].sum((2, 3))
        den = p[:, 1:].sum((2, 3)) + onehot[:, 1:].sum((2, 3))
        loss = F.cross_entropy(up, target) + (1 - (2 * inter + 1) / (den + 1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = F.interpolate(z.detach(), size=(size, size), mode="bilinear", align_corners=False).argmax(1).numpy()
    per = np.array([[dice(p == c, m == c) for c in range(1, k)] for p, m in zip(pred, masks)])
    print(f"best {a.grid}x{a.grid} logits, upsampled: Dice per class {per.mean(0).round(3)}, mean {per.mean():.3f}")


if __name__ == "__main__":
    main()
