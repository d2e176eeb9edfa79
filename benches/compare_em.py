"""Times the EM Aggregation loop in PyTorch eager on the CPU and vlsa's WGSL loop (the
examples/em_time.rs binary) at the same shapes, in one run, and prints the time ratios.

Usage (from the repository root; needs `pip install torch`):
    python3 benches/compare_em.py [--reps 5] [--shapes N,C,M,T,B ...]
CARGO_TARGET_DIR, VLSA_ADAPTER and WGPU_BACKEND are passed through to cargo.
Both sides run on this machine's CPU cores (vlsa through lavapipe when there is no GPU).
"""
import argparse
import statistics
import subprocess
import time

import torch

EPS = 1e-6
RELEASE = False


def em_loop(u, bases, iters, lam=1.0):
    mu = bases.unsqueeze(0).expand(u.shape[0], -1, -1)
    for _ in range(iters):
        z = torch.softmax(lam * torch.bmm(u, mu.transpose(1, 2)), dim=2)
        mu = torch.bmm(z.transpose(1, 2), u) / (EPS + z.sum(dim=1).unsqueeze(2))
        mu = mu / (EPS + mu.norm(dim=2, keepdim=True))
    return z, mu, torch.bmm(z, mu)


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_times(n, c, m, t, b, reps):
    g = torch.Generator().manual_seed(0)
    u = torch.rand(b, n, c, generator=g) * 2 - 1
    bases = torch.randn(m, c, generator=g)
    bases = bases / bases.norm(dim=1, keepdim=True)
    d_recon = torch.rand(b, n, c, generator=g) * 2 - 1

    def forward():
        with torch.no_grad():
            em_loop(u, bases, t)

    mu_b = bases.unsqueeze(0).expand(b, -1, -1).contiguous()

    def one_iter():
        # One E-step + M-step + normalisation, as vlsa's iter_gpu_ms measures.
        with torch.no_grad():
            z = torch.softmax(torch.bmm(u, mu_b.transpose(1, 2)), dim=2)
            mu = torch.bmm(z.transpose(1, 2), u) / (EPS + z.sum(dim=1).unsqueeze(2))
            mu / (EPS + mu.norm(dim=2, keepdim=True))

    def backward():
        uu = u.clone().requires_grad_(True)
        _, _, r = em_loop(uu, bases, t)
        (r * d_recon).sum().backward()

    return {"forward_ms": median_ms(forward, reps), "iter_ms": median_ms(one_iter, reps) , "fwd_bwd_ms": median_ms(backward, reps)}


def vlsa_times(n, c, m, t, b, reps):
    # The dev profile builds dependencies at opt-level 2 (Cargo.toml); GPU time does not depend
    # on the host build, so `--release` (a long first build) is optional.
    cmd = ["cargo", "run", *(["--release"] if RELEASE else []), "--quiet", "--example", "em_time", "--", str(n), str(c), str(m), str(t), str(b), str(reps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    fields = {}
    for part in out.split(" "):
        if "=" in part:
            k, v = part.split("=", 1)
            fields[k] = v.strip('"')
    return fields


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--release", action="store_true", help="build the vlsa side with --release")
    ap.add_argument("--shapes", nargs="*", default=["256,128,16,3,1", "256,128,16,3,8", "4096,256,64,3,1", "4096,512,64,3,1"])
    args = ap.parse_args()
    global RELEASE
    RELEASE = args.release
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'N,C,M,T,B':<18} {'torch fwd ms':>12} {'vlsa fwd ms':>12} {'ratio':>6} | {'torch iter':>10} {'vlsa iter':>10} {'ratio':>6} | {'torch f+b':>10} {'vlsa f+b':>10} {'ratio':>6}")
    for spec in args.shapes:
        n, c, m, t, b = map(int, spec.split(","))
        pt = torch_times(n, c, m, t, b, args.reps)
        vl = vlsa_times(n, c, m, t, b, args.reps)
        vf, vi = float(vl["forward_ms"]), float(vl["iter_gpu_ms"])
        vb = vf + float(vl["backward_ms"])
        print(
            f"{spec:<18} {pt['forward_ms']:>12.3f} {vf:>12.3f} {vf / pt['forward_ms']:>6.2f} | "
            f"{pt['iter_ms']:>10.3f} {vi:>10.3f} {vi / pt['iter_ms']:>6.2f} | "
            f"{pt['fwd_bwd_ms']:>10.3f} {vb:>10.3f} {vb / pt['fwd_bwd_ms']:>6.2f}"
        )
        kernels = {k: v for k, v in vl.items() if k.startswith("em_")}
        print(f"{'':<18} vlsa per step (GPU ms, matmul + fused kernel): " + " ".join(f"{k[3:-3]}={v}" for k, v in kernels.items()))
    print("ratio = vlsa time / torch time (below 1: vlsa faster). fwd = T iterations + reconstruction (wall,")
    print("vlsa with a device sync); iter = one E-step + M-step + normalise (vlsa: profiled GPU time, mean of T);")
    print("f+b = forward + unrolled backward (vlsa: forward + backward_unrolled, timed separately).")


if __name__ == "__main__":
    main()
