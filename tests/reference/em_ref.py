"""PyTorch reference of vlsa's EM Aggregation loop (docs/DESIGN.md step 8); writes the fixtures
tests/fixtures/em_*.json that tests/kernel_em.rs compares the WGSL kernels with.

The loop, in float64 with autograd (gradients flow through all T iterations, the `unrolled`
mode):
    for t in 1..T: Z = softmax_M(lambda u mu^T); mu = Z^T u / (1e-6 + sum_n Z); mu = mu / (1e-6 + ||mu||_C)
    R = Z mu
and the bases moving average l2norm_C(momentum bases + (1 - momentum) mean_B(mu_T)).

Each fixture is a flat JSON object: "shape" [B,N,C,M,T], "lambda", "momentum", inputs "u",
"bases", "d_recon" (float32 values), outputs "z" (Z_T), "mu" (mu_T), "recon" (R), "d_u"
(dL/du for L = sum(d_recon * R)) and "new_bases", all flattened row-major.

Usage: pip install torch; python3 tests/reference/em_ref.py   (from the repository root)
"""
import json
import os

import torch

EPS = 1e-6


def em_loop(u, bases, iters, lam):
    """u [B,N,C], bases [M,C] -> (Z_T [B,N,M], mu_T [B,M,C], R [B,N,C])."""
    mu = bases.unsqueeze(0).expand(u.shape[0], -1, -1)
    for _ in range(iters):
        z = torch.softmax(lam * torch.einsum("bnc,bmc->bnm", u, mu), dim=2)
        mu = torch.einsum("bnm,bnc->bmc", z, u) / (EPS + z.sum(dim=1).unsqueeze(2))
        mu = mu / (EPS + mu.norm(dim=2, keepdim=True))
    return z, mu, torch.einsum("bnm,bmc->bnc", z, mu)


def update_bases(bases, mu, momentum):
    v = momentum * bases + (1.0 - momentum) * mu.mean(dim=0)
    return v / (EPS + v.norm(dim=1, keepdim=True))


def fixture(seed, b, n, c, m, iters, lam, momentum):
    g = torch.Generator().manual_seed(seed)
    # float32 inputs, so the GPU sees exactly the values the reference used.
    u = (torch.rand(b, n, c, generator=g) * 2 - 1).to(torch.float32)
    bases = torch.randn(m, c, generator=g) * (2.0 / m) ** 0.5
    bases = (bases / (EPS + bases.norm(dim=1, keepdim=True))).to(torch.float32)
    d_recon = (torch.rand(b, n, c, generator=g) * 2 - 1).to(torch.float32)

    u64 = u.double().requires_grad_(True)
    z, mu, r = em_loop(u64, bases.double(), iters, lam)
    (r * d_recon.double()).sum().backward()
    new_bases = update_bases(bases.double(), mu.detach(), momentum)

    flat = lambda t: [float(f"{v:.9g}") for v in t.detach().reshape(-1).tolist()]
    return {
        "shape": [b, n, c, m, iters],
        "lambda": lam,
        "momentum": momentum,
        "u": flat(u),
        "bases": flat(bases),
        "d_recon": flat(d_recon),
        "z": flat(z),
        "mu": flat(mu),
        "recon": flat(r),
        "d_u": flat(u64.grad),
        "new_bases": flat(new_bases),
    }


def main():
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    cases = {
        "em_lambda1.json": dict(seed=1, b=2, n=9, c=5, m=4, iters=3, lam=1.0, momentum=0.9),
        "em_lambda3.json": dict(seed=2, b=1, n=70, c=7, m=6, iters=3, lam=3.0, momentum=0.9),
    }
    for name, args in cases.items():
        path = os.path.join(out_dir, name)
        with open(path, "w") as f:
            json.dump(fixture(**args), f, separators=(",", ":"))
        print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
