"""A fresh model as `vlsa init --seed N` / `vlsa train --config --seed N` makes it: the same
generator (xorshift64* and Box-Muller) drawn in the same tensor order with the same rules, so a
run started here from a config begins where vlsa's would (equal up to f32 summation order in
the row normalization of the bases and class embeddings)."""
import math

import numpy as np
import torch

from .config import grid, num_classes
from .model import VLSA

MASK64 = (1 << 64) - 1


class Normal:
    def __init__(self, seed):
        self.state = (((seed * 0x9E3779B97F4A7C15) & MASK64) ^ 0xD1B54A32D192ED03) | 1
        self.spare = None

    def uniform(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK64
        s ^= s >> 27
        self.state = s
        return (((s * 0x2545F4914F6CDD1D) & MASK64) >> 11) / float(1 << 53) + 0.5 / float(1 << 53)

    def sample(self):
        if self.spare is not None:
            s, self.spare = self.spare, None
            return s
        u1, u2 = self.uniform(), self.uniform()
        r = math.sqrt(-2.0 * math.log(u1))
        th = 2.0 * math.pi * u2
        self.spare = np.float32(r * math.sin(th))
        return np.float32(r * math.cos(th))

    def samples(self, n):
        return np.array([self.sample() for _ in range(n)], dtype=np.float32)


def tensor_order(c):
    """The names and shapes in vlsa's `expected_tensors` order (the order init draws them)."""
    d, p, n = c["vision"]["width"], c["patch_size"], grid(c) ** 2
    dm = d * c["vision"]["mlp_ratio"]
    w, wm = c["decoder"]["width"], c["decoder"]["width"] * c["decoder"]["mlp_ratio"]
    out = []
    push = lambda name, shape: out.append((name, tuple(shape)))

    def linear(name, o, i):
        push(name + ".weight", (o, i))
        push(name + ".bias", (o,))

    def norm(name, width):
        push(name + ".weight", (width,))
        push(name + ".bias", (width,))

    vm = "vision_model"
    push(f"{vm}.embeddings.patch_embedding.weight", (d, 3, p, p))
    push(f"{vm}.embeddings.class_embedding", (d,))
    push(f"{vm}.embeddings.position_embedding.weight", (1 + n, d))
    norm(f"{vm}.pre_layrnorm", d)
    for i in range(c["vision"]["layers"]):
        l = f"{vm}.encoder.layers.{i}"
        norm(f"{l}.layer_norm1", d)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{l}.self_attn.{proj}", d, d)
        norm(f"{l}.layer_norm2", d)
        linear(f"{l}.mlp.fc1", dm, d)
        linear(f"{l}.mlp.fc2", d, dm)
    norm(f"{vm}.post_layernorm", d)
    push("text.class_embeddings", (num_classes(c), c["text_dim"]))
    linear("head.visual_proj", w, d)
    linear("head.text_proj", w, c["text_dim"])
    if c["em"]["bases"] > 0:
        push("head.em.bases", (c["em"]["bases"], w))
        linear("head.em.in_proj", w, w)
        linear("head.em.out_proj", w, w)
        norm("head.em.norm", w)
    cross = c["decoder"].get("cross_attn", True)
    for j in range(c["decoder"]["layers"]):
        l = f"head.decoder.layers.{j}"
        for nm in (("norm1", "norm2", "norm3") if cross else ("norm1", "norm3")):
            norm(f"{l}.{nm}", w)
        for attn in (("self_attn", "cross_attn") if cross else ("self_attn",)):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                linear(f"{l}.{attn}.{proj}", w, w)
        linear(f"{l}.mlp.fc1", wm, w)
        linear(f"{l}.mlp.fc2", w, wm)
    norm("head.decoder.norm", w)
    r = c["decoder"].get("upsample", 1)
    if r > 1:
        linear("head.decoder.upsample", r * r * w, w)
    push("head.logit_scale", (1,))
    return out


def init_model(config, seed):
    """vlsa's init: weights N(0, 1/fan_in), zero biases, unit norms, L2-normalised bases and
    class embeddings, class/position embeddings N(0, 0.02^2), logit scale ln(1/0.07)."""
    rng = Normal(seed)
    tensors = {}
    for name, shape in tensor_order(config):
        n = int(np.prod(shape))
        if name.endswith("logit_scale"):
            data = np.full(n, np.log(np.float32(1.0) / np.float32(0.07)), dtype=np.float32)
        elif "norm" in name or "layrnorm" in name:
            data = np.full(n, 1.0 if name.endswith(".weight") else 0.0, dtype=np.float32)
        elif name.endswith(".bias"):
            data = np.zeros(n, dtype=np.float32)
        elif name in ("head.em.bases", "text.class_embeddings"):
            rows = rng.samples(n).reshape(-1, shape[-1])
            norms = np.maximum(np.sqrt((rows * rows).sum(axis=1, dtype=np.float32)), np.float32(1e-6))
            data = (rows / norms[:, None]).astype(np.float32)
        elif name == "head.decoder.upsample.weight":
            # r * r stacked identities: each sub-token starts as its token (draws nothing).
            data = np.tile(np.eye(shape[1], dtype=np.float32), (shape[0] // shape[1], 1)).reshape(-1)
        elif name.endswith("class_embedding") or "position_embedding" in name:
            data = np.float32(0.02) * rng.samples(n)
        else:
            std = np.float32(1.0) / np.sqrt(np.float32(int(np.prod(shape[1:]))))
            data = std * rng.samples(n)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32).reshape(shape))
    model = VLSA(config)
    model.load_state_dict(tensors, strict=True)
    return model
