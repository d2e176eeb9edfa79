#!/usr/bin/env python3
"""vlsa's attention next to PyTorch's on the CPU, at the bench shapes, in one run.

Runs `cargo run --profile PROFILE --example attention_time --method M` (release by default)
for vlsa's times (forward, and backward of dq/dk/dv) with each method M of --methods (fused
kernels, materialised products, the fused kernels with the stored-scores backward, or auto:
what the model runs on this adapter) and
torch.nn.functional.scaled_dot_product_attention for PyTorch's, with the same layouts
([B, N, H*dh] projected per head), and prints them with their ratios.

Usage: python3 benches/compare_attention.py [--iters N] [--threads T] [--profile dev]
                                            [--methods fused,products,scores,auto]
Needs torch (`pip install torch`). Set CARGO_TARGET_DIR as usual; WGPU_BACKEND and
VLSA_ADAPTER choose vlsa's adapter.
"""

import argparse
import statistics
import subprocess
import sys
import time

# name, B, Bk, Nq, Nk, H, dh (the shapes of benches/attention.rs)
SHAPES = [
    ("vit self-attention N=257 D=192 H=3 B=8", 8, 8, 257, 257, 3, 64),
    ("decoder self-attention N=256 C=128 H=4 B=8", 8, 8, 256, 256, 4, 32),
    ("decoder cross-attention Nq=256 K=3 C=128 H=4 B=8", 8, 1, 256, 3, 4, 32),
    ("self-attention N=1024 dh=64 H=4 B=1", 1, 1, 1024, 1024, 4, 64),
]


def vlsa_times(iters, profile, method):
    specs = [f"{b},{bk},{nq},{nk},{h},{dh}" for _, b, bk, nq, nk, h, dh in SHAPES]
    # Shader speed is lavapipe's LLVM, not Rust's opt level: the dev profile times the same.
    cmd = ["cargo", "run", "--quiet", "--profile", profile, "--example", "attention_time", "--",
           "--iters", str(iters), "--method", method] + specs
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"attention_time failed:\n{res.stderr}")
    sys.stderr.write(res.stderr)
    times = {}
    for line in res.stdout.splitlines():
        spec, fwd, bwd = line.split()
        times[spec] = (float(fwd), float(bwd))
    return [times[s] for s in specs]


def torch_times(torch, iters):
    F = torch.nn.functional
    out = []
    for _, b, bk, nq, nk, h, dh in SHAPES:
        g = torch.Generator().manual_seed(0)
        q = (torch.rand(b, nq, h * dh, generator=g) * 2 - 1).requires_grad_()
        k = (torch.rand(bk, nk, h * dh, generator=g) * 2 - 1).requires_grad_()
        v = (torch.rand(bk, nk, h * dh, generator=g) * 2 - 1).requires_grad_()
        d_out = torch.rand(b, nq, h * dh, generator=g) * 2 - 1

        def fwd():
            # [B, N, H*dh] -> [B, H, N, dh]; shared keys broadcast over the batch (expand, no copy).
            qh = q.view(b, nq, h, dh).transpose(1, 2)
            kh = k.view(bk, nk, h, dh).transpose(1, 2).expand(b, h, nk, dh)
            vh = v.view(bk, nk, h, dh).transpose(1, 2).expand(b, h, nk, dh)
            return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, nq, h * dh)

        def timed(f):
            f()
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                f()
                ts.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(ts)

        with torch.no_grad():
            t_fwd = timed(fwd)

        def fwd_bwd():
            o = fwd()
            torch.autograd.grad(o, (q, k, v), d_out)

        t_both = timed(fwd_bwd)
        out.append((t_fwd, max(t_both - t_fwd, 1e-6)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile", default="release", help="cargo profile for vlsa's timing run (dev builds faster)")
    ap.add_argument("--methods", default="fused,products", help="vlsa methods, comma-separated: auto, fused, products, scores")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is not installed (pip install torch); no comparison made")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    methods = args.methods.split(",")
    ours = {m: vlsa_times(args.iters, args.profile, m) for m in methods}
    theirs = torch_times(torch, args.iters)
    head = f"{'shape':52} {'pass':9} {'method':9} {'vlsa ms':>9} {'torch ms':>9} {'vlsa/torch':>10} {'vlsa GFLOP/s':>12}"
    print(head)
    print("-" * len(head))
    for i, ((name, b, bk, nq, nk, h, dh), (tf, tb)) in enumerate(zip(SHAPES, theirs)):
        flops = 4 * b * h * nq * nk * dh
        for pass_name, t, f, which in (("forward", tf, flops, 0), ("backward", tb, 2.5 * flops, 1)):
            for m in methods:
                v = ours[m][i][which]
                print(f"{name:52} {pass_name:9} {m:9} {v:9.3f} {t:9.3f} {v / t:10.2f} {f / v / 1e6:12.2f}")
    print("torch backward = time(forward + autograd.grad) - time(forward without grad)")


if __name__ == "__main__":
    main()
