"""Writes the fixture of vlsa's JPEG-like compression test (tests/compression.rs): a colour test
card as a PNG, and the same card after a real JPEG round trip through Pillow (libjpeg, baseline,
4:2:0 chroma, qualities 30, 75 and 95), decoded and stored as PNGs.

Usage (from the repository root; needs `pip install pillow numpy`):
    python3 scripts/jpeg-fixture.py [tests/fixtures/jpeg]
"""
import io
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/jpeg"
os.makedirs(out, exist_ok=True)

# Odd size on purpose: partial 8x8 blocks and an odd chroma edge. Smooth colour gradients, a
# bright disc, grey stripes (fine luminance detail) and a sharp blue edge (chroma detail).
w, h = 61, 45
y, x = np.mgrid[0:h, 0:w].astype(np.float64)
u, v = x / w, y / h
disc = (((u - 0.6) ** 2 + (v - 0.4) ** 2) < 0.03) * 0.45
stripes = (x.astype(int) % 3 == 0) * 0.15
card = np.stack([0.2 + 0.5 * u + disc + stripes, 0.1 + 0.4 * v + stripes, 0.3 + 0.3 * u * v + stripes + 0.2 * (x > 40)], axis=2)
card = np.clip(np.round(card * 255), 0, 255).astype(np.uint8)
Image.fromarray(card, "RGB").save(os.path.join(out, "card.png"))
for q in (30, 75, 95):
    buf = io.BytesIO()
    Image.fromarray(card, "RGB").save(buf, "JPEG", quality=q, subsampling=2, optimize=False)
    decoded = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    decoded.save(os.path.join(out, f"card_q{q}.png"))
    err = np.abs(np.asarray(decoded, dtype=np.float64) - card).mean()
    print(f"quality {q}: {len(buf.getvalue())} bytes, mean error {err:.2f} levels")
