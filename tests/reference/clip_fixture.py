"""Tiny randomly initialised Hugging Face CLIPVisionModel and its reference outputs, for checking
that vlsa loads a Hugging Face CLIP vision checkpoint as is and computes the same dense features
(docs/DESIGN.md steps 2-5), including at another image size via interpolated position embeddings.

Not part of the engine. Pinned requirements (the versions the committed fixture was made with):
    torch==2.15.0  transformers==5.24.0  safetensors==0.8.0  numpy==2.4.6

Usage (from the repository root):
    python tests/reference/clip_fixture.py --out tests/fixtures/clip_tiny

Writes into the folder:
  config.json, model.safetensors   CLIPVisionModel.save_pretrained(..., safe_serialization=True),
                                   tensor names then normalised to `vision_model.<...>` (see below)
  reference.safetensors            pixel_values [2,3,32,32], features [2,16,32],
                                   pixel_values_48 [1,3,48,48], features_48 [1,36,32]
features = post_layernorm(last_hidden_state[:, 1:, :]) computed by transformers itself in
float64 from the stored float32 weights and inputs, stored as float32. features_48 uses
forward(..., interpolate_pos_encoding=True).

Tensor names: transformers 4.x saves a CLIPVisionModel as `vision_model.embeddings...`, like the
published CLIP checkpoints (CLIPModel: `vision_model.*` + `text_model.*`); transformers 5.x
flattened CLIPVisionModel and its save_pretrained writes the same tensors WITHOUT the
`vision_model.` prefix (its from_pretrained accepts both). docs/DESIGN.md names the tensors
`vision_model.*`, so this script re-adds the prefix when it is missing; the result loads in
transformers 4.x and 5.x alike (checked below by reloading it).
"""
import argparse
import json
import math
import os

import torch

SEED = 1234
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def random_init_(model, gen):
    """Seeded, non-trivial init of every parameter (float32): weights N(0, 1/fan_in), biases
    N(0, 0.1^2), LayerNorm weight 1 + N(0, 0.1^2), class/position embeddings N(0, 0.5^2)."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            randn = lambda: torch.randn(p.shape, generator=gen, dtype=torch.float64)
            leaf = name.split(".")
            if name.endswith("class_embedding") or name.endswith("position_embedding.weight"):
                t = 0.5 * randn()
            elif ("norm" in leaf[-2] or "layrnorm" in leaf[-2]) and leaf[-1] == "weight":
                t = 1.0 + 0.1 * randn()
            elif leaf[-1] == "bias":
                t = 0.1 * randn()
            else:
                t = randn() / math.sqrt(p[0].numel())
            p.copy_(t.to(p.dtype))


def normalized_images(gen, n, size):
    """Raw 8-bit-like RGB (k/255) normalized with the CLIP mean/std, rounded to float32."""
    raw = torch.randint(0, 256, (n, 3, size, size), generator=gen).to(torch.float64) / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64).reshape(1, 3, 1, 1)
    return ((raw - mean) / std).to(torch.float32)


def features(model, pixel_values, interpolate):
    inner = getattr(model, "vision_model", model)   # 4.x nests, 5.x is flat
    with torch.no_grad():
        out = model(pixel_values=pixel_values.to(torch.float64),
                    interpolate_pos_encoding=interpolate)
        return inner.post_layernorm(out.last_hidden_state[:, 1:, :]).to(torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/clip_tiny")
    args = ap.parse_args()

    import safetensors
    import transformers
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=128, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5, num_channels=3)
    cfg._attn_implementation = "eager"
    model = CLIPVisionModel(cfg).eval()
    random_init_(model, gen)

    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    path = os.path.join(args.out, "model.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    renamed = False
    if not all(k.startswith("vision_model.") for k in tensors):
        tensors = {k if k.startswith("vision_model.") else "vision_model." + k: v
                   for k, v in tensors.items()}
        renamed = True
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, path, metadata=meta)
    os.chmod(path, 0o644)

    # Reload what was written and check it is the same model.
    reloaded = CLIPVisionModel.from_pretrained(args.out).eval()
    sd0 = model.state_dict()
    sd1 = reloaded.state_dict()
    assert sd0.keys() == sd1.keys(), (sd0.keys() ^ sd1.keys())
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    model = model.double()

    px = normalized_images(gen, 2, 32)
    px48 = normalized_images(gen, 1, 48)
    feats = features(model, px, False)
    feats48 = features(model, px48, True)
    # the float32 transformers forward agrees with the float64 one it replaces
    f32 = features(reloaded, px, False)
    assert (f32 - feats).abs().max().item() < 1e-4

    ref = os.path.join(args.out, "reference.safetensors")
    save_file({"pixel_values": px.contiguous(), "features": feats.contiguous(),
               "pixel_values_48": px48.contiguous(), "features_48": feats48.contiguous()}, ref,
              metadata={"vlsa.reference": json.dumps({
                  "generator": "tests/reference/clip_fixture.py", "seed": SEED,
                  "features": "post_layernorm(last_hidden_state[:, 1:, :])",
                  "features_48": "same, forward(interpolate_pos_encoding=True), 48x48 input",
                  "compute_dtype": "float64", "stored_dtype": "float32",
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "safetensors": safetensors.__version__})})
    os.chmod(ref, 0o644)

    total = 0
    for name in sorted(os.listdir(args.out)):
        size = os.path.getsize(os.path.join(args.out, name))
        total += size
        print(f"wrote {os.path.normpath(os.path.join(args.out, name))} ({size} bytes)")
    print(f"total {total} bytes; {len(tensors)} weight tensors"
          + ("; `vision_model.` prefix re-added to the names save_pretrained wrote" if renamed else ""))
    print(f"features {tuple(feats.shape)}, features_48 {tuple(feats48.shape)}; "
          f"float32 vs float64 transformers forward: max diff {(f32 - feats).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
