#!/usr/bin/env python3
"""Writes samples/retina_mask.png, the hand-drawn mask of samples/retina.jpg (1411 x 1411).

The optic disc and cup were drawn by eye as ellipses, on a contrast-stretched crop of the photo
with a 50-pixel grid: the disc ellipse follows the disc rim (the inner edge of the dark pigment
crescent on the temporal side, the edge of the pale tissue elsewhere); the cup ellipse follows the
central pallor. Pixel value = class index: 0 background, 1 optic disc, 2 optic cup. Needs numpy.
"""
import struct
import zlib

import numpy as np

SIZE = 1411
# (centre x, centre y, semi-axis x, semi-axis y) in pixels of the photo, axes aligned.
DISC = (249.0, 660.0, 66.0, 79.0)
CUP = (242.0, 650.0, 28.0, 40.0)


def inside(e):
    cx, cy, ax, ay = e
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def write_grey_png(path, a):
    raw = b"".join(b"\x00" + row.tobytes() for row in a.astype(np.uint8))

    def chunk(t, c):
        return struct.pack(">I", len(c)) + t + c + struct.pack(">I", zlib.crc32(t + c) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


mask = np.zeros((SIZE, SIZE), np.uint8)
mask[inside(DISC)] = 1
mask[inside(CUP)] = 2
write_grey_png("samples/retina_mask.png", mask)
print("disc", int((mask >= 1).sum()), "px, cup", int((mask == 2).sum()), "px")
