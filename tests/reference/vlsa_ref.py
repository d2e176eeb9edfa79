"""Independent PyTorch reference of the vlsa model spec (docs/DESIGN.md "Model specification (v1)",
steps 1-12) that writes the whole-model fixtures tests/fixtures/vlsa_tiny_<mode>.safetensors.

Not part of the engine. Pinned requirements (the versions the committed fixtures were made with):
    torch==2.15.0  safetensors==0.8.0  numpy==2.4.6
    transformers==5.24.0   (optional: only for the self-check of the vision encoder against
                            transformers.CLIPVisionModel; skipped with a note when missing)

Usage (from the repository root):
    python tests/reference/vlsa_ref.py --out tests/fixtures            # writes both fixtures
    python tests/reference/vlsa_ref.py --out tests/fixtures --no-check # skip the self-checks

Everything is computed in float64 from float32-representable inputs (the parameters, the
normalized input) and stored as float32, so each stored tensor is the exact math of the spec
on the stored inputs, rounded once. See tests/reference/README.md for the tensor list and the
notes for Rust implementers.
"""
import argparse
import json
import math
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

EPS_EM = 1e-6        # EM M-step denominator and L2-norm denominator (DESIGN step 8)
EPS_COS = 1e-6       # cosine norm clamp (DESIGN step 10)
MAX_SCALE = 100.0    # exp(logit_scale) clamp (DESIGN step 10)
SEED = 20240917
BATCH = 2
MODES = ("detached", "unrolled")

# The tiny configuration, in docs/DESIGN.md's `vlsa.config` schema (every key spelled out).
TINY_CONFIG = OrderedDict([
    ("image_size", 32),
    ("patch_size", 8),
    ("pixel_mean", [0.48145466, 0.4578275, 0.40821073]),
    ("pixel_std", [0.26862954, 0.26130258, 0.27577711]),
    ("vision", OrderedDict([("width", 32), ("layers", 2), ("heads", 2), ("mlp_ratio", 4),
                            ("act", "quick_gelu")])),
    ("text_dim", 24),
    ("classes", ["background", "organ", "lesion"]),
    ("prompts", ["background of a medical image", "the organ", "the lesion"]),
    ("decoder", OrderedDict([("width", 16), ("layers", 2), ("heads", 2), ("mlp_ratio", 4)])),
    ("em", OrderedDict([("bases", 4), ("iters", 3), ("lambda", 1.0), ("momentum", 0.9),
                        ("grad", "detached")])),
    ("ln_eps", 1e-5),
])

NON_TRAINABLE = ("text.class_embeddings", "head.em.bases")


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------

def param_shapes(cfg):
    """OrderedDict name -> shape, every name as docs/DESIGN.md "Weight names" spells it."""
    S, p = cfg["image_size"], cfg["patch_size"]
    D, L = cfg["vision"]["width"], cfg["vision"]["layers"]
    Dm = D * cfg["vision"]["mlp_ratio"]
    N = (S // p) ** 2
    C, Ld = cfg["decoder"]["width"], cfg["decoder"]["layers"]
    Cm = C * cfg["decoder"]["mlp_ratio"]
    K, Dt, M = len(cfg["classes"]), cfg["text_dim"], cfg["em"]["bases"]
    s = OrderedDict()
    v = "vision_model."
    s[v + "embeddings.patch_embedding.weight"] = (D, 3, p, p)
    s[v + "embeddings.class_embedding"] = (D,)
    s[v + "embeddings.position_embedding.weight"] = (1 + N, D)
    s[v + "pre_layrnorm.weight"] = (D,)
    s[v + "pre_layrnorm.bias"] = (D,)
    for i in range(L):
        e = f"{v}encoder.layers.{i}."
        s[e + "layer_norm1.weight"] = (D,)
        s[e + "layer_norm1.bias"] = (D,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[f"{e}self_attn.{proj}.weight"] = (D, D)
            s[f"{e}self_attn.{proj}.bias"] = (D,)
        s[e + "layer_norm2.weight"] = (D,)
        s[e + "layer_norm2.bias"] = (D,)
        s[e + "mlp.fc1.weight"] = (Dm, D)
        s[e + "mlp.fc1.bias"] = (Dm,)
        s[e + "mlp.fc2.weight"] = (D, Dm)
        s[e + "mlp.fc2.bias"] = (D,)
    s[v + "post_layernorm.weight"] = (D,)
    s[v + "post_layernorm.bias"] = (D,)
    s["text.class_embeddings"] = (K, Dt)
    s["head.visual_proj.weight"] = (C, D)
    s["head.visual_proj.bias"] = (C,)
    s["head.text_proj.weight"] = (C, Dt)
    s["head.text_proj.bias"] = (C,)
    s["head.em.bases"] = (M, C)
    s["head.em.in_proj.weight"] = (C, C)
    s["head.em.in_proj.bias"] = (C,)
    s["head.em.out_proj.weight"] = (C, C)
    s["head.em.out_proj.bias"] = (C,)
    s["head.em.norm.weight"] = (C,)
    s["head.em.norm.bias"] = (C,)
    for j in range(Ld):
        d = f"head.decoder.layers.{j}."
        for n in ("norm1", "norm2", "norm3"):
            s[f"{d}{n}.weight"] = (C,)
            s[f"{d}{n}.bias"] = (C,)
        for att in ("self_attn", "cross_attn"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                s[f"{d}{att}.{proj}.weight"] = (C, C)
                s[f"{d}{att}.{proj}.bias"] = (C,)
        s[d + "mlp.fc1.weight"] = (Cm, C)
        s[d + "mlp.fc1.bias"] = (Cm,)
        s[d + "mlp.fc2.weight"] = (C, Cm)
        s[d + "mlp.fc2.bias"] = (C,)
    s["head.decoder.norm.weight"] = (C,)
    s["head.decoder.norm.bias"] = (C,)
    r = cfg["decoder"].get("upsample", 1)
    if r > 1:
        s["head.decoder.upsample.weight"] = (r * r * C, C)
        s["head.decoder.upsample.bias"] = (r * r * C,)
    s["head.logit_scale"] = (1,)
    return s


def l2norm_rows(x, eps=EPS_EM):
    return x / (eps + x.norm(dim=-1, keepdim=True))


def init_params(cfg, gen):
    """Seeded random init, float32. Scales keep activations O(1) so every nonlinearity (softmax,
    EM E-step, relu, gelu, LayerNorm) is exercised away from its trivial regime:
      linear / conv weights: normal, std 1/sqrt(fan_in); biases: normal, std 0.1;
      LayerNorm weight 1 + N(0, 0.1^2), bias N(0, 0.1^2) (not ones/zeros, so a swapped or
      ignored affine is caught); class/position embeddings N(0, 0.5^2);
      class text embeddings and EM bases: normal, rows L2-normalized;
      logit_scale = ln(1/0.07) (DESIGN default)."""
    out = OrderedDict()
    for name, shape in param_shapes(cfg).items():
        randn = lambda *sh: torch.randn(*sh, generator=gen, dtype=torch.float64)
        if name == "head.logit_scale":
            t = torch.full(shape, math.log(1.0 / 0.07), dtype=torch.float64)
        elif name in ("text.class_embeddings", "head.em.bases"):
            t = l2norm_rows(randn(*shape), eps=0.0)
        elif name.endswith("class_embedding") or name.endswith("position_embedding.weight"):
            t = 0.5 * randn(*shape)
        elif ("norm" in name.split(".")[-2] or "layrnorm" in name) and name.endswith(".weight"):
            t = 1.0 + 0.1 * randn(*shape)
        elif name.endswith(".bias"):
            t = 0.1 * randn(*shape)
        elif name.endswith(".weight"):
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            t = randn(*shape) / math.sqrt(fan_in)
        else:
            raise AssertionError(name)
        out[name] = t.to(torch.float32)
    return out


# ----------------------------------------------------------------------------------------------
# The model (float64, functional)
# ----------------------------------------------------------------------------------------------

def linear(P, prefix, x):
    return F.linear(x, P[prefix + ".weight"], P[prefix + ".bias"])


def layer_norm(P, prefix, x, eps):
    return F.layer_norm(x, (x.shape[-1],), P[prefix + ".weight"], P[prefix + ".bias"], eps)


def attention(P, prefix, xq, xkv, heads):
    """Multi-head attention, q from xq [B,Nq,E], k/v from xkv [B,Nk,E]; all projections biased."""
    B, Nq, E = xq.shape
    Nk = xkv.shape[1]
    dh = E // heads
    q = linear(P, prefix + ".q_proj", xq).reshape(B, Nq, heads, dh).transpose(1, 2)
    k = linear(P, prefix + ".k_proj", xkv).reshape(B, Nk, heads, dh).transpose(1, 2)
    v = linear(P, prefix + ".v_proj", xkv).reshape(B, Nk, heads, dh).transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)   # [B,H,Nq,Nk]
    o = (att @ v).transpose(1, 2).reshape(B, Nq, E)                      # heads concatenated
    return linear(P, prefix + ".out_proj", o)


def act_fn(name):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: F.gelu(x, approximate="none")
    raise ValueError(f"unknown act {name!r}")


def vision_encoder(P, cfg, x):
    """Steps 2-5: x [B,3,S,S] normalized -> F [B,N,D]."""
    eps = cfg["ln_eps"]
    v = "vision_model."
    p = cfg["patch_size"]
    B = x.shape[0]
    t = F.conv2d(x, P[v + "embeddings.patch_embedding.weight"], None, stride=p)  # [B,D,h,w]
    t = t.flatten(2).transpose(1, 2)                                            # [B,N,D] row-major
    cls = P[v + "embeddings.class_embedding"].reshape(1, 1, -1).expand(B, 1, -1)
    t = torch.cat([cls, t], dim=1) + P[v + "embeddings.position_embedding.weight"].unsqueeze(0)
    t = layer_norm(P, v + "pre_layrnorm", t, eps)
    act = act_fn(cfg["vision"]["act"])
    for i in range(cfg["vision"]["layers"]):
        e = f"{v}encoder.layers.{i}"
        h = layer_norm(P, e + ".layer_norm1", t, eps)
        t = t + attention(P, e + ".self_attn", h, h, cfg["vision"]["heads"])
        h = layer_norm(P, e + ".layer_norm2", t, eps)
        t = t + linear(P, e + ".mlp.fc2", act(linear(P, e + ".mlp.fc1", h)))
    return layer_norm(P, v + "post_layernorm", t[:, 1:, :], eps)


def em_iterations(u, bases, iters, lam):
    """Step 8 loop. u [B,N,C], bases [M,C] -> (Z_T [B,N,M], mu_T [B,M,C])."""
    mu = bases.unsqueeze(0).expand(u.shape[0], -1, -1)
    z = None
    for _ in range(iters):
        z = torch.softmax(lam * (u @ mu.transpose(1, 2)), dim=2)                # E-step
        mu = (z.transpose(1, 2) @ u) / (EPS_EM + z.sum(dim=1).unsqueeze(2))   # M-step
        mu = mu / (EPS_EM + mu.norm(dim=2, keepdim=True))
    return z, mu


def forward(P, cfg, x, target, mode, frozen_em=None):
    """The whole model, steps 2-11. P: name -> float64 tensor. x: [B,3,S,S] normalized float64.
    target: [B,S,S] int64. mode: "detached" | "unrolled".
    frozen_em: (Z, mu) to use instead of computing them (the finite-difference check of the
    detached mode, whose backward treats Z and mu as constants).
    Returns an OrderedDict of intermediates (dump names) including "loss"."""
    eps = cfg["ln_eps"]
    S, p = cfg["image_size"], cfg["patch_size"]
    h = S // p
    B = x.shape[0]
    K = len(cfg["classes"])
    em = cfg["em"]
    out = OrderedDict()

    feats = vision_encoder(P, cfg, x)                                   # [B,N,D]
    out["vision.features"] = feats
    V = linear(P, "head.visual_proj", feats)                             # [B,N,C]
    out["head.visual"] = V
    Tk = linear(P, "head.text_proj", P["text.class_embeddings"])         # [K,C]
    out["head.text"] = Tk

    # Step 8: EM aggregation.
    u = linear(P, "head.em.in_proj", V)
    bases = P["head.em.bases"]
    if frozen_em is not None:
        z, mu = frozen_em
    elif mode == "detached":
        with torch.no_grad():
            z, mu = em_iterations(u, bases, em["iters"], em["lambda"])
    elif mode == "unrolled":
        z, mu = em_iterations(u, bases, em["iters"], em["lambda"])
    else:
        raise ValueError(mode)
    out["em.z"] = z
    out["em.mu"] = mu
    R = z @ mu                                                          # [B,N,C]
    A = V + layer_norm(P, "head.em.norm", linear(P, "head.em.out_proj", torch.relu(R)), eps)
    out["head.aggregated"] = A

    # Step 9: text-guided pixel decoder.
    X = A
    Tkb = Tk.unsqueeze(0).expand(B, -1, -1)                              # [B,K,C]
    heads = cfg["decoder"]["heads"]
    for j in range(cfg["decoder"]["layers"]):
        d = f"head.decoder.layers.{j}"
        n1 = layer_norm(P, d + ".norm1", X, eps)
        X = X + attention(P, d + ".self_attn", n1, n1, heads)
        n2 = layer_norm(P, d + ".norm2", X, eps)
        X = X + attention(P, d + ".cross_attn", n2, Tkb, heads)
        n3 = layer_norm(P, d + ".norm3", X, eps)
        X = X + linear(P, d + ".mlp.fc2", F.gelu(linear(P, d + ".mlp.fc1", n3), approximate="none"))
    X = layer_norm(P, "head.decoder.norm", X, eps)
    out["decoder.out"] = X

    # Step 10, sub-token logits (decoder.upsample r > 1): token (y, x)'s projection holds its r x r
    # sub-tokens, sub-token (i, j) in channels (i*r + j)*C ... ; it lands at pixel (y*r + i, x*r + j).
    r = cfg["decoder"].get("upsample", 1)
    if r > 1:
        Cw = X.shape[-1]
        Y = linear(P, "head.decoder.upsample", X).reshape(B, h, h, r, r, Cw)
        grid = torch.zeros(B, h * r, h * r, Cw, dtype=X.dtype)
        for i in range(r):
            for j in range(r):
                grid[:, i::r, j::r, :] = Y[:, :, :, i, j, :]
        X = grid.reshape(B, h * r * h * r, Cw)
        h = h * r
    # Step 10: cosine mask head.
    scale = torch.clamp(torch.exp(P["head.logit_scale"]), max=MAX_SCALE)
    xn = X / torch.clamp(X.norm(dim=-1, keepdim=True), min=EPS_COS)
    tn = Tk / torch.clamp(Tk.norm(dim=-1, keepdim=True), min=EPS_COS)
    logits = scale * torch.einsum("bnc,kc->bkn", xn, tn)                 # [B,K,N]
    logits = logits.reshape(B, K, h, h)
    out["logits"] = logits
    up = F.interpolate(logits, size=(S, S), mode="bilinear", align_corners=False)
    out["logits_up"] = up

    # Step 11: loss = mean pixel CE + Dice over foreground classes.
    logp = torch.log_softmax(up, dim=1)
    ce = -logp.gather(1, target.unsqueeze(1)).mean()
    prob = torch.softmax(up, dim=1)
    y = F.one_hot(target, K).permute(0, 3, 1, 2).to(prob.dtype)           # [B,K,S,S]
    inter = (prob * y).sum(dim=(0, 2, 3))
    dice = (2.0 * inter + 1.0) / (prob.sum(dim=(0, 2, 3)) + y.sum(dim=(0, 2, 3)) + 1.0)
    loss = ce + (1.0 - dice[1:].mean())
    out["loss"] = loss.reshape(1)
    return out


def update_bases(bases, mu, momentum):
    """Training-only moving average (step 8), no gradient."""
    v = momentum * bases + (1.0 - momentum) * mu.mean(dim=0)
    return v / (EPS_EM + v.norm(dim=1, keepdim=True))


def predict(logits_up):
    """Step 12 (at the model size; resizing back to the original size is the engine's job)."""
    return logits_up.argmax(dim=1)


# ----------------------------------------------------------------------------------------------
# Fixture generation
# ----------------------------------------------------------------------------------------------

def make_inputs(cfg, gen):
    """Raw RGB images as multiples of 1/255 in [0,1] (what an 8-bit PNG decodes to), normalized
    with pixel_mean/std in float64 and rounded to float32: `input` is that float32 tensor, and the
    reference computes from exactly those values. Target: uniform random class per pixel."""
    S = cfg["image_size"]
    K = len(cfg["classes"])
    raw = torch.randint(0, 256, (BATCH, 3, S, S), generator=gen).to(torch.float64) / 255.0
    mean = torch.tensor(cfg["pixel_mean"], dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(cfg["pixel_std"], dtype=torch.float64).reshape(1, 3, 1, 1)
    x = ((raw - mean) / std).to(torch.float32)
    target = torch.randint(0, K, (BATCH, S, S), generator=gen)
    return raw, x, target


def run_with_grads(P32, cfg, x32, target, mode):
    """Forward in float64 and gradients of the loss w.r.t. every trainable parameter."""
    P = OrderedDict((n, t.to(torch.float64)) for n, t in P32.items())
    trainable = [n for n in P if n not in NON_TRAINABLE]
    for n in trainable:
        P[n].requires_grad_(True)
    out = forward(P, cfg, x32.to(torch.float64), target, mode)
    grads = torch.autograd.grad(out["loss"].sum(), [P[n] for n in trainable], allow_unused=True)
    g = OrderedDict()
    for n, gr in zip(trainable, grads):
        g[n] = torch.zeros_like(P[n]) if gr is None else gr
    return P, out, g


def write_fixture(path, cfg, mode, P32, x32, target, out, grads, bases_next, seed=SEED):
    from safetensors.torch import save_file
    c = json.loads(json.dumps(cfg))
    c["em"]["grad"] = mode
    tensors = OrderedDict()
    for n, t in P32.items():
        tensors[n] = t.contiguous()
    tensors["input"] = x32.contiguous()
    for n in ("vision.features", "head.visual", "head.text", "em.z", "em.mu", "head.aggregated",
              "decoder.out", "logits", "logits_up"):
        tensors[n] = out[n].detach().to(torch.float32).contiguous()
    tensors["target"] = target.to(torch.float32).contiguous()
    tensors["loss"] = out["loss"].detach().to(torch.float32).reshape(1).contiguous()
    for n, gr in grads.items():
        tensors["grad." + n] = gr.detach().to(torch.float32).contiguous()
    tensors["em.bases_next"] = bases_next.to(torch.float32).contiguous()
    assert len(tensors) == len(P32) + 13 + len(grads), "a dump name collides with a parameter"
    meta = {
        "vlsa.config": json.dumps(c),
        "vlsa.reference": json.dumps({
            "generator": "tests/reference/vlsa_ref.py", "seed": seed, "batch": BATCH,
            "grad_mode": mode, "compute_dtype": "float64", "stored_dtype": "float32",
            "torch": torch.__version__,
        }),
    }
    save_file(tensors, path, metadata=meta)
    os.chmod(path, 0o644)


# ----------------------------------------------------------------------------------------------
# Self-checks
# ----------------------------------------------------------------------------------------------

def fd_check(P32, cfg, x32, target, mode, grads, out, gen, per_tensor=2, h=1e-6):
    """Central differences in float64 on `per_tensor` random entries of every trainable
    parameter. For `detached`, the function differentiated is the loss with Z and mu frozen at
    their values at the base point (that is what the detached backward is the exact gradient of),
    so in_proj's expected gradient is exactly zero."""
    base = OrderedDict((n, t.to(torch.float64)) for n, t in P32.items())
    x = x32.to(torch.float64)
    frozen = (out["em.z"].detach(), out["em.mu"].detach()) if mode == "detached" else None
    worst_abs, worst_rel, where = 0.0, 0.0, ""
    count = 0

    def loss_at(Pd):
        with torch.no_grad():
            return forward(Pd, cfg, x, target, mode, frozen_em=frozen)["loss"].item()

    for n, g in grads.items():
        idx = torch.randperm(g.numel(), generator=gen)[:per_tensor].tolist()
        for i in idx:
            Pp = OrderedDict(base)
            Pm = OrderedDict(base)
            tp = base[n].clone().reshape(-1)
            tm = base[n].clone().reshape(-1)
            tp[i] += h
            tm[i] -= h
            Pp[n] = tp.reshape(base[n].shape)
            Pm[n] = tm.reshape(base[n].shape)
            fd = (loss_at(Pp) - loss_at(Pm)) / (2 * h)
            an = g.reshape(-1)[i].item()
            count += 1
            err = abs(fd - an)
            worst_abs = max(worst_abs, err)
            # relative error where the gradient is not tiny (FD round-off is ~1e-10 absolute)
            if max(abs(an), abs(fd)) > 1e-5:
                rel = err / max(abs(an), abs(fd))
                if rel > worst_rel:
                    worst_rel, where = rel, f"{n}[{i}]: analytic {an:.9e}, fd {fd:.9e}"
    return count, worst_abs, worst_rel, where


def gradcheck_small(P32, cfg, x32, target, mode):
    """torch.autograd.gradcheck on a few small parameter tensors (full Jacobian by FD)."""
    names = ["head.logit_scale", "head.em.norm.weight", "head.decoder.layers.1.cross_attn.k_proj.bias",
             "vision_model.encoder.layers.0.layer_norm1.bias"]
    if mode == "unrolled":
        names.append("head.em.in_proj.bias")
    base = OrderedDict((n, t.to(torch.float64)) for n, t in P32.items())
    x = x32.to(torch.float64)
    results = []
    for n in names:
        frozen = None
        if mode == "detached":
            with torch.no_grad():
                o = forward(base, cfg, x, target, mode)
            frozen = (o["em.z"], o["em.mu"])

        def f(t, n=n, frozen=frozen):
            Pd = OrderedDict(base)
            Pd[n] = t
            return forward(Pd, cfg, x, target, mode, frozen_em=frozen)["loss"]

        ok = torch.autograd.gradcheck(f, (base[n].clone().requires_grad_(True),), eps=1e-6,
                                      atol=1e-7, rtol=1e-5, raise_exception=False)
        results.append((n, ok))
    return results


def check_vision_against_transformers(P32, cfg, x32, feats):
    """Steps 2-5 against transformers.CLIPVisionModel loaded with the same weights (float64)."""
    try:
        import transformers
        from transformers import CLIPVisionConfig, CLIPVisionModel
    except ImportError:
        return "skipped (transformers not installed)"
    v = cfg["vision"]
    hc = CLIPVisionConfig(image_size=cfg["image_size"], patch_size=cfg["patch_size"],
                          hidden_size=v["width"], num_hidden_layers=v["layers"],
                          num_attention_heads=v["heads"], intermediate_size=v["width"] * v["mlp_ratio"],
                          hidden_act=v["act"], layer_norm_eps=cfg["ln_eps"], num_channels=3)
    m = CLIPVisionModel(hc).double().eval()
    # transformers 4.x nests the encoder under `.vision_model`; 5.x flattens it (state-dict
    # keys without the `vision_model.` prefix).
    inner = getattr(m, "vision_model", m)
    sd = {n[len("vision_model."):]: t.to(torch.float64)
          for n, t in P32.items() if n.startswith("vision_model.")}
    missing, unexpected = inner.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        return f"FAILED: state dict mismatch missing={missing} unexpected={unexpected}"
    with torch.no_grad():
        hs = m(pixel_values=x32.to(torch.float64)).last_hidden_state
        ref = inner.post_layernorm(hs[:, 1:, :])
    err = (ref - feats.detach()).abs().max().item()
    return (f"max |ours - transformers {transformers.__version__}| = {err:.3e} "
            + ("ok" if err < 1e-10 else "FAILED"))


def check_f32_within_tolerance(P32, cfg, x32, target, mode, out64, grads64, atol=1e-4, rtol=1e-3):
    """Runs this same reference in float32 and compares it with the float64 fixture at the
    tolerance the Rust tests use: shows the fixture is not too ill-conditioned for an f32
    engine. Returns (worst ratio |a-b| / (atol + rtol |b|), where); <= 1 passes."""
    P = OrderedDict((n, t.clone()) for n, t in P32.items())
    trainable = [n for n in P if n not in NON_TRAINABLE]
    for n in trainable:
        P[n].requires_grad_(True)
    o = forward(P, cfg, x32, target, mode)
    gs = torch.autograd.grad(o["loss"].sum(), [P[n] for n in trainable], allow_unused=True)
    pairs = [(k, o[k], out64[k]) for k in ("vision.features", "head.visual", "head.text", "em.z",
                                           "em.mu", "head.aggregated", "decoder.out", "logits",
                                           "logits_up", "loss")]
    pairs += [("grad." + n, torch.zeros_like(P[n]) if g is None else g, grads64[n])
              for n, g in zip(trainable, gs)]
    worst, where = 0.0, ""
    for k, a, b in pairs:
        b = b.detach().to(torch.float32)
        r = ((a.detach() - b).abs() / (atol + rtol * b.abs())).max().item()
        if r > worst:
            worst, where = r, k
    return worst, where


def check_em_against_em_ref(gen):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        import em_ref
    except ImportError:
        return "skipped (em_ref.py not importable)"
    finally:
        sys.path.pop(0)
    u = torch.randn(2, 9, 5, generator=gen, dtype=torch.float64)
    b = l2norm_rows(torch.randn(4, 5, generator=gen, dtype=torch.float64))
    z1, mu1 = em_iterations(u, b, 3, 1.0)
    z2, mu2, r2 = em_ref.em_loop(u, b, 3, 1.0)
    err = max((z1 - z2).abs().max().item(), (mu1 - mu2).abs().max().item(),
              ((z1 @ mu1) - r2).abs().max().item(),
              (update_bases(b, mu1, 0.9) - em_ref.update_bases(b, mu2, 0.9)).abs().max().item())
    return f"max diff = {err:.3e} " + ("ok" if err < 1e-12 else "FAILED")


# ----------------------------------------------------------------------------------------------

def emit(path, cfg, mode, P32, x32, target, gen, no_check, cross_checks, seed=SEED):
    """Writes one fixture and runs its self-checks; returns True when a check failed."""
    failed = False
    P, out, grads = run_with_grads(P32, cfg, x32, target, mode)
    bases_next = update_bases(P["head.em.bases"].detach(), out["em.mu"].detach(),
                              cfg["em"]["momentum"])
    write_fixture(path, cfg, mode, P32, x32, target, out, grads, bases_next, seed)
    nz = [n for n, g in grads.items() if g.abs().max().item() == 0.0]
    gmax = max(g.abs().max().item() for g in grads.values())
    name = os.path.basename(path)
    print(f"[{name}] wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes)")
    print(f"  loss {out['loss'].item():.9f}; largest |grad| {gmax:.3e}; "
          f"all-zero gradients: {', '.join(nz) or 'none'}")
    if no_check:
        return False
    if cross_checks:
        print(f"  vision encoder vs transformers.CLIPVisionModel (float64): "
              f"{check_vision_against_transformers(P32, cfg, x32, out['vision.features'])}")
        print(f"  EM loop vs tests/reference/em_ref.py: {check_em_against_em_ref(gen)}")
    count, wabs, wrel, where = fd_check(P32, cfg, x32, target, mode, grads, out, gen)
    ok = wrel < 1e-5 and wabs < 1e-8
    failed |= not ok
    print(f"  central differences (float64, h=1e-6), {count} entries (2 per trainable tensor"
          f"{', Z and mu frozen' if mode == 'detached' else ''}): worst abs error {wabs:.2e}, "
          f"worst rel error {wrel:.2e} (entries with |grad| > 1e-5) "
          f"{'ok' if ok else 'FAILED'} [{where}]")
    for n, ok in gradcheck_small(P32, cfg, x32, target, mode):
        failed |= not ok
        print(f"  torch.autograd.gradcheck {n}: {'ok' if ok else 'FAILED'}")
    r, where = check_f32_within_tolerance(P32, cfg, x32, target, mode, out, grads)
    print(f"  the same reference in float32 vs the fixture, atol 1e-4 / rtol 1e-3: worst "
          f"|a-b|/(atol+rtol|b|) = {r:.3f} at {where} {'ok' if r <= 1 else 'FAILED'}")
    return failed or r > 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="output folder")
    ap.add_argument("--no-check", action="store_true", help="skip the self-checks")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)   # tiny tensors: one thread is ~30x faster and bit-reproducible

    cfg = TINY_CONFIG
    gen = torch.Generator().manual_seed(SEED)
    P32 = init_params(cfg, gen)
    raw, x32, target = make_inputs(cfg, gen)
    failed = False
    for mode in MODES:
        path = os.path.join(args.out, f"vlsa_tiny_{mode}.safetensors")
        failed |= emit(path, cfg, mode, P32, x32, target, gen, args.no_check, mode == MODES[0])

    # Sub-token logits (decoder.upsample 2), detached EM: its own seeded parameters and inputs.
    cfg_up = json.loads(json.dumps(TINY_CONFIG), object_pairs_hook=OrderedDict)
    cfg_up["decoder"]["upsample"] = 2
    gen_up = torch.Generator().manual_seed(SEED + 1)
    P32_up = init_params(cfg_up, gen_up)
    _, x32_up, target_up = make_inputs(cfg_up, gen_up)
    path = os.path.join(args.out, "vlsa_tiny_upsample.safetensors")
    failed |= emit(path, cfg_up, "detached", P32_up, x32_up, target_up, gen_up, args.no_check, False, SEED + 1)
    if failed:
        sys.exit("self-check FAILED")


if __name__ == "__main__":
    main()
