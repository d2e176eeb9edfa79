"""Data sets, batches and augmentation exactly as `vlsa train` draws them (src/data.rs,
src/train/augment.rs): a folder with images/NAME.{png,jpg,jpeg} and masks/NAME.png, samples
sorted by name; the data order of epoch e and the augmentation of item i of step s are pure
functions of (seed, e) and (seed, s, i) through the same SplitMix64 streams, with the same f32
arithmetic, so the package and vlsa train on the same images in the same order."""
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

MASK64 = (1 << 64) - 1
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
F32 = np.float32


class DataError(ValueError):
    """A data set vlsa would refuse, with one sentence naming the file at fault."""


class SplitMix:
    """SplitMix64 (src/train/augment.rs), bit for bit."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self):
        return F32(self.next_u64() >> 40) / F32(1 << 24)

    def range(self, lo, hi):
        lo, hi = F32(lo), F32(hi)
        return lo + (hi - lo) * self.uniform()

    def below(self, n):
        return (self.next_u64() >> 11) % n

    def coin(self):
        return self.next_u64() >> 63 == 1


def stream(seed, tag, a, b):
    h = SplitMix(seed).next_u64()
    for v in (tag, a, b):
        h = SplitMix(h ^ ((v * 0xD6E8FEB86659FD93) & MASK64)).next_u64()
    return SplitMix(h)


ORDER, AUGMENT = 1, 2


def epoch_order(seed, epoch, length):
    """The sample order of epoch `epoch`: a Fisher-Yates shuffle of 0..length."""
    rng = stream(seed, ORDER, epoch, 0)
    order = list(range(length))
    for i in range(length - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def augment_rng(seed, step, item):
    return stream(seed, AUGMENT, step, item)


# Augmentation ranges (vlsa's defaults): crop side fraction, contrast, brightness, colour gain.
MIN_SCALE, CONTRAST, BRIGHTNESS, COLOUR = F32(0.75), F32(0.2), F32(0.1), F32(0.1)


def augment(image, mask, rng):
    """A randomly cropped, flipped and jittered copy of `image` [H,W,3] float32 in [0,1] and
    `mask` [H,W] uint8, drawing from `rng` in vlsa's order."""
    h, w = mask.shape
    one = F32(1.0)
    scale = rng.range(MIN_SCALE, one)
    # Rust's f32::round (half away from zero) of the f32 product; + 0.5 in f64 is exact.
    cw = min(max(int(np.floor(float(F32(w) * scale) + 0.5)), 1), w)
    ch = min(max(int(np.floor(float(F32(h) * scale) + 0.5)), 1), h)
    x0 = rng.below(w - cw + 1)
    y0 = rng.below(h - ch + 1)
    flip_x, flip_y = rng.coin(), rng.coin()
    contrast = rng.range(one - CONTRAST, one + CONTRAST)
    brightness = rng.range(-BRIGHTNESS, BRIGHTNESS)
    gain = np.array([rng.range(one - COLOUR, one + COLOUR) for _ in range(3)], dtype=F32)
    img = image[y0:y0 + ch, x0:x0 + cw]
    msk = mask[y0:y0 + ch, x0:x0 + cw]
    if flip_y:
        img, msk = img[::-1], msk[::-1]
    if flip_x:
        img, msk = img[:, ::-1], msk[:, ::-1]
    half = F32(0.5)
    v = (img - half) * contrast + half + brightness
    return np.clip(v * gain, F32(0.0), one).astype(F32), np.ascontiguousarray(msk)


def load_image(path):
    """RGB float32 [H,W,3] in [0,1]; grey is replicated to three channels, alpha dropped."""
    try:
        with PILImage.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64) / 65535.0
                return np.repeat(a[:, :, None], 3, axis=2).astype(F32)
            a = np.asarray(im.convert("RGB"), dtype=F32)
    except OSError as e:
        raise DataError(f"{path} cannot be decoded as an image ({e})") from None
    return a / F32(255.0)


def load_mask(path, classes):
    """Class index per pixel [H,W] uint8: grey (8 or 16 bit) or grey stored as RGB; values
    must be below `classes`."""
    try:
        with PILImage.open(path) as im:
            im.load()
            if im.mode in ("L", "I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im).astype(np.int64)
            elif im.mode == "LA":
                a = np.asarray(im.getchannel(0)).astype(np.int64)
            else:
                rgb = np.asarray(im.convert("RGB")).astype(np.int64)
                bad = np.argwhere((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2]))
                if len(bad):
                    y, x = bad[0]
                    raise DataError(f"{path} is a colour image, not a mask: pixel ({x}, {y}) is {list(rgb[y, x])}")
                a = rgb[..., 0]
    except OSError as e:
        raise DataError(f"{path} cannot be decoded as an image ({e})") from None
    bad = np.argwhere(a >= classes)
    if len(bad):
        y, x = bad[0]
        raise DataError(f"{path}: pixel ({x}, {y}) has class value {a[y, x]}, but there are only {classes} classes")
    return a.astype(np.uint8)


class Dataset:
    """Every image and mask of a data-set folder in memory, sorted by name."""

    def __init__(self, root, classes):
        self.root = os.fspath(root)
        images_dir, masks_dir = os.path.join(self.root, "images"), os.path.join(self.root, "masks")
        for d in (images_dir, masks_dir):
            if not os.path.isdir(d):
                raise DataError(f"{self.root} is not a data set: the folder {d} is missing (expected images/NAME.png and masks/NAME.png)")
        found = {}
        for entry in os.listdir(images_dir):
            stem, ext = os.path.splitext(entry)
            path = os.path.join(images_dir, entry)
            if stem.startswith(".") or ext[1:].lower() not in IMAGE_EXTENSIONS or not os.path.isfile(path):
                continue
            if stem in found:
                raise DataError(f"{found[stem]} and {path} share the name {stem}; each image needs a unique name")
            found[stem] = path
        if not found:
            raise DataError(f"{images_dir} holds no PNG or JPEG images")
        self.names, self.images, self.masks = [], [], []
        for name in sorted(found, key=lambda s: s.encode()):
            mask_path = os.path.join(masks_dir, name + ".png")
            if not os.path.isfile(mask_path):
                raise DataError(f"{found[name]} has no mask: {mask_path} is missing")
            image, mask = load_image(found[name]), load_mask(mask_path, classes)
            if mask.shape != image.shape[:2]:
                raise DataError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
            self.names.append(name)
            self.images.append(image)
            self.masks.append(mask)

    def __len__(self):
        return len(self.names)

    def crop_to_field_of_view(self):
        """Crops each image and its mask to the image's field of view (a model with
        `field_of_view` trains and predicts on that crop), as vlsa does."""
        for i, image in enumerate(self.images):
            box = field_of_view(image)
            if box is not None:
                x0, y0, w, h = box
                self.images[i] = np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w])
                self.masks[i] = np.ascontiguousarray(self.masks[i][y0:y0 + h, x0:x0 + w])
        return self

    def fingerprint(self):
        """vlsa's data fingerprint: the count and an FNV-1a hash of the names and image sizes."""
        h = 0xCBF29CE484222325
        for name, image in zip(self.names, self.images):
            data = name.encode() + int(image.shape[1]).to_bytes(8, "little") + int(image.shape[0]).to_bytes(8, "little") + b"\0"
            for byte in data:
                h = ((h ^ byte) * 0x100000001B3) & MASK64
        return {"count": len(self), "hash": h}


FIELD_OF_VIEW_LEVEL = 0.1


def field_of_view(image):
    """vlsa's field of view of an image [H,W,3] in [0,1] (docs/DESIGN.md, "Field of view"): the
    box (x0, y0, width, height) of the rows and columns in which more than 5 % of the pixels
    have a channel above FIELD_OF_VIEW_LEVEL; None (the whole image) where the box spans at
    least 90 % of both sides or less than a quarter of either."""
    h, w = image.shape[:2]
    content = (image > F32(FIELD_OF_VIEW_LEVEL)).any(axis=2)
    rows = np.flatnonzero(content.sum(axis=1) * 20 > w)
    cols = np.flatnonzero(content.sum(axis=0) * 20 > h)
    if len(rows) == 0 or len(cols) == 0:
        return None
    x0, y0 = int(cols[0]), int(rows[0])
    bw, bh = int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0
    fills = bw * 10 >= w * 9 and bh * 10 >= h * 9
    scant = bw * 4 < w or bh * 4 < h
    return None if fills or scant else (x0, y0, bw, bh)


def resize_nearest(mask, size):
    """PyTorch-style nearest resize: source index floor(dst * in / out), in f64 as vlsa does."""
    h, w = mask.shape
    ys = np.minimum(np.floor(np.arange(size) * h / size).astype(np.int64), h - 1)
    xs = np.minimum(np.floor(np.arange(size) * w / size).astype(np.int64), w - 1)
    return mask[ys][:, xs]


def preprocess(images, size, mean, std):
    """Step 1: each image resized to size x size (bilinear, align_corners = false, no
    antialiasing) and normalized per channel -> [B,3,S,S] float32."""
    out = []
    for img in images:
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)
        if t.shape[2:] != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        out.append(t)
    x = torch.cat(out, dim=0)
    m = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
    return (x - m) / s


class BatchStream:
    """Items of the global batch of each step, as `vlsa train` draws them: item i of step s
    (from 1) is the sample at stream position (s - 1) * batch + i of the concatenated per-epoch
    orders, augmented with the generator of (seed, s, i)."""

    def __init__(self, data, batch, seed, augment_on):
        self.data, self.batch, self.seed, self.augment = data, batch, seed, augment_on
        self.order = (0, epoch_order(seed, 0, len(data)))

    def items(self, step, first, count, size, mean, std):
        """Input [count,3,S,S] and target [count,S,S] (int64) of items first..first+count."""
        n = len(self.data)
        images, targets = [], []
        for item in range(first, first + count):
            position = (step - 1) * self.batch + item
            epoch = position // n
            if self.order[0] != epoch:
                self.order = (epoch, epoch_order(self.seed, epoch, n))
            i = self.order[1][position % n]
            image, mask = self.data.images[i], self.data.masks[i]
            if self.augment:
                image, mask = augment(image, mask, augment_rng(self.seed, step, item))
            images.append(image)
            targets.append(torch.from_numpy(resize_nearest(mask, size).astype(np.int64)))
        return preprocess(images, size, mean, std), torch.stack(targets)
