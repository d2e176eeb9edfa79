"""The vlsa model (docs/DESIGN.md, "Model specification (v1)") as a torch.nn.Module whose
state_dict names are vlsa's safetensors names, so weights move between the two tools unchanged.

Submodules mirror the names: `vision_model.*` is Hugging Face's CLIPVisionModel layout,
`text.class_embeddings` and `head.em.bases` are buffers (frozen / moving average), everything
else is a trainable parameter.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import grid, num_classes

EPS_EM = 1e-6  # EM M-step denominator and L2-norm denominator (step 8)
EPS_COS = 1e-6  # cosine norm clamp (step 10)
MAX_SCALE = 100.0  # exp(logit_scale) clamp (step 10)
FROZEN = ("text.class_embeddings", "head.em.bases")


class Attention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections: softmax(q k^T / sqrt(d)) v."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, kv):
        b, nq, e = x.shape
        nk, dh = kv.shape[1], e // self.heads
        q = self.q_proj(x).reshape(b, nq, self.heads, dh).transpose(1, 2)
        k = self.k_proj(kv).reshape(kv.shape[0], nk, self.heads, dh).transpose(1, 2)
        v = self.v_proj(kv).reshape(kv.shape[0], nk, self.heads, dh).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        return self.out_proj((att @ v).transpose(1, 2).reshape(b, nq, e))


class Mlp(nn.Module):
    def __init__(self, width, ratio, act):
        super().__init__()
        self.fc1 = nn.Linear(width, width * ratio)
        self.fc2 = nn.Linear(width * ratio, width)
        self.act = act

    def forward(self, x):
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.act == "quick_gelu" else F.gelu(h, approximate="none")
        return self.fc2(h)


class VisionEmbeddings(nn.Module):
    def __init__(self, width, patch, tokens):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.position_embedding = nn.Embedding(1 + tokens, width)


class EncoderLayer(nn.Module):
    def __init__(self, v, eps):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(v["width"], eps=eps)
        self.self_attn = Attention(v["width"], v["heads"])
        self.layer_norm2 = nn.LayerNorm(v["width"], eps=eps)
        self.mlp = Mlp(v["width"], v["mlp_ratio"], v["act"])

    def forward(self, t):
        h = self.layer_norm1(t)
        t = t + self.self_attn(h, h)
        return t + self.mlp(self.layer_norm2(t))


class Encoder(nn.Module):
    def __init__(self, v, eps):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(v, eps) for _ in range(v["layers"]))


class VisionModel(nn.Module):
    """Steps 2-5: normalized image [B,3,S,S] -> dense features [B,N,D]."""

    def __init__(self, c):
        super().__init__()
        v, eps = c["vision"], c["ln_eps"]
        self.embeddings = VisionEmbeddings(v["width"], c["patch_size"], grid(c) ** 2)
        self.pre_layrnorm = nn.LayerNorm(v["width"], eps=eps)
        self.encoder = Encoder(v, eps)
        self.post_layernorm = nn.LayerNorm(v["width"], eps=eps)

    def forward(self, x):
        e = self.embeddings
        t = e.patch_embedding(x).flatten(2).transpose(1, 2)  # [B,N,D], tokens row-major
        cls = e.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        t = self.pre_layrnorm(torch.cat([cls, t], dim=1) + e.position_embedding.weight.unsqueeze(0))
        for layer in self.encoder.layers:
            t = layer(t)
        return self.post_layernorm(t[:, 1:, :])


class Text(nn.Module):
    """The frozen class text embeddings [K, Dt] (MiniLM sentence embeddings of the prompts)."""

    def __init__(self, classes, dim):
        super().__init__()
        self.register_buffer("class_embeddings", torch.zeros(classes, dim))


def em_iterations(u, bases, iters, lam):
    """Step 8's loop: u [B,N,C], bases [M,C] -> (Z_T [B,N,M], mu_T [B,M,C]).
    E-step Z = softmax_M(lambda u mu^T); M-step mu = Z^T u / (1e-6 + sum_n Z), then
    mu / (1e-6 + ||mu||_C)."""
    mu = bases.unsqueeze(0).expand(u.shape[0], -1, -1)
    z = None
    for _ in range(iters):
        z = torch.softmax(lam * (u @ mu.transpose(1, 2)), dim=2)
        mu = (z.transpose(1, 2) @ u) / (EPS_EM + z.sum(dim=1).unsqueeze(2))
        mu = mu / (EPS_EM + mu.norm(dim=2, keepdim=True))
    return z, mu


class EmAggregation(nn.Module):
    """EM Aggregation: A = V + LN(out_proj(relu(Z_T mu_T))), bases a moving-average buffer."""

    def __init__(self, c):
        super().__init__()
        w, em = c["decoder"]["width"], c["em"]
        self.iters, self.lam, self.momentum, self.grad = em["iters"], em["lambda"], em["momentum"], em["grad"]
        self.register_buffer("bases", torch.zeros(em["bases"], w))
        self.in_proj = nn.Linear(w, w)
        self.out_proj = nn.Linear(w, w)
        self.norm = nn.LayerNorm(w, eps=c["ln_eps"])

    def forward(self, v):
        if self.grad == "detached":
            # EMANet: Z and mu (hence R) are constants in backward; in_proj gets no gradient.
            with torch.no_grad():
                z, mu = em_iterations(self.in_proj(v), self.bases, self.iters, self.lam)
        else:
            z, mu = em_iterations(self.in_proj(v), self.bases, self.iters, self.lam)
        return v + self.norm(self.out_proj(torch.relu(z @ mu))), z, mu

    @torch.no_grad()
    def update_bases(self, mean_mu):
        """bases <- l2norm_C(momentum * bases + (1 - momentum) * mean_B(mu_T)), given that mean."""
        v = self.momentum * self.bases + (1.0 - self.momentum) * mean_mu
        self.bases.copy_(v / (EPS_EM + v.norm(dim=1, keepdim=True)))


class DecoderLayer(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        w = d["width"]
        self.cross = d.get("cross_attn", True)
        self.norm1 = nn.LayerNorm(w, eps=eps)
        self.self_attn = Attention(w, d["heads"])
        if self.cross:
            self.norm2 = nn.LayerNorm(w, eps=eps)
            self.cross_attn = Attention(w, d["heads"])
        self.norm3 = nn.LayerNorm(w, eps=eps)
        self.mlp = Mlp(w, d["mlp_ratio"], "gelu")

    def forward(self, x, text_kv):
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        if self.cross:
            x = x + self.cross_attn(self.norm2(x), text_kv)
        return x + self.mlp(self.norm3(x))


class Decoder(nn.Module):
    """Step 9: text-guided pixel decoder; pixels query the class text embeddings."""

    def __init__(self, c):
        super().__init__()
        d = c["decoder"]
        self.layers = nn.ModuleList(DecoderLayer(d, c["ln_eps"]) for _ in range(d["layers"]))
        self.norm = nn.LayerNorm(d["width"], eps=c["ln_eps"])
        # Sub-token logits (decoder.upsample r > 1): each token to r x r sub-tokens.
        r = d.get("upsample", 1)
        self.upsample = nn.Linear(d["width"], r * r * d["width"]) if r > 1 else None


class Head(nn.Module):
    def __init__(self, c):
        super().__init__()
        w = c["decoder"]["width"]
        self.visual_proj = nn.Linear(c["vision"]["width"], w)
        self.text_proj = nn.Linear(c["text_dim"], w)
        self.em = EmAggregation(c) if c["em"]["bases"] > 0 else None
        self.decoder = Decoder(c)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / 0.07)))


class VLSA(nn.Module):
    """The whole model. forward(x) takes the normalized input [B,3,S,S] and returns a dict of the
    intermediates under `vlsa forward --dump`'s names (`logits_up` [B,K,S,S] is the output)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.vision_model = VisionModel(config)
        self.text = Text(num_classes(config), config["text_dim"])
        self.head = Head(config)

    def forward(self, x):
        c, h = self.config, self.head
        s, g, b = c["image_size"], grid(c), x.shape[0]
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"the model takes input [B, 3, {s}, {s}], not {list(x.shape)}")
        out = {}
        feats = self.vision_model(x)
        visual = h.visual_proj(feats)
        text = h.text_proj(self.text.class_embeddings)
        out["vision.features"], out["head.visual"], out["head.text"] = feats, visual, text
        if h.em is not None:
            agg, out["em.z"], out["em.mu"] = h.em(visual)
        else:
            agg = visual
        out["head.aggregated"] = agg
        x_ = agg
        text_kv = text.unsqueeze(0).expand(b, -1, -1)
        for layer in h.decoder.layers:
            x_ = layer(x_, text_kv)
        x_ = h.decoder.norm(x_)
        out["decoder.out"] = x_
        if h.decoder.upsample is not None:
            # Sub-token (i, j) of token (y, x), channels (i*r + j)*C..., goes to (y*r + i, x*r + j).
            r, w = c["decoder"]["upsample"], x_.shape[-1]
            x_ = h.decoder.upsample(x_).reshape(b, g, g, r, r, w).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, w)
            g = g * r
        # Step 10: cosine mask head, exp(logit_scale) clamped to 100.
        scale = torch.clamp(torch.exp(h.logit_scale), max=MAX_SCALE)
        xn = x_ / torch.clamp(x_.norm(dim=-1, keepdim=True), min=EPS_COS)
        tn = text / torch.clamp(text.norm(dim=-1, keepdim=True), min=EPS_COS)
        logits = (scale * torch.einsum("bnc,kc->bkn", xn, tn)).reshape(b, -1, g, g)
        out["logits"] = logits
        out["logits_up"] = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)
        return out

    def trainable(self):
        """(name, parameter) of every trained tensor (all but the frozen buffers), sorted by name."""
        return sorted(self.named_parameters(), key=lambda kv: kv[0])


def loss_terms(logits_up, target):
    """Step 11's pieces for a (local) batch: the mean pixel cross-entropy and, for the Dice loss,
    the per-class sums over batch and pixels of p*y, p and y (p = softmax over K, y = one-hot).
    Keeping the sums separate lets a data-parallel run add them over all processes, so its loss
    is the loss of the whole global batch."""
    k = logits_up.shape[1]
    ce = F.cross_entropy(logits_up, target)
    prob = torch.softmax(logits_up, dim=1)
    y = F.one_hot(target, k).permute(0, 3, 1, 2).to(prob.dtype)
    return ce, (prob * y).sum(dim=(0, 2, 3)), prob.sum(dim=(0, 2, 3)), y.sum(dim=(0, 2, 3))


def dice_loss(inter, psum, ysum):
    """1 - mean over foreground classes k >= 1 of (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)."""
    dice = (2.0 * inter + 1.0) / (psum + ysum + 1.0)
    return 1.0 - dice[1:].mean()


def loss(logits_up, target):
    """Step 11: mean pixel cross-entropy + Dice loss over the foreground classes."""
    ce, inter, psum, ysum = loss_terms(logits_up, target)
    return ce + dice_loss(inter, psum, ysum)
