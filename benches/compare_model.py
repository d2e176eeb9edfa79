"""Times the whole VLSA model in PyTorch eager on the CPU (the independent reference of
tests/reference/vlsa_ref.py, in float32) and in vlsa (the examples/model_time.rs binary) at the
same configuration and batch sizes, in one run, and prints the time ratios.

Usage (from the repository root; needs `pip install torch`):
    python3 benches/compare_model.py [--config configs/fundus-tiny.json] [--batches 1 8] [--reps 3] [--rounds 1]
With --rounds R the two sides are measured R times in turn (PyTorch, vlsa, PyTorch, ...), one
line per round, then the median of the per-round ratios: on a machine whose speed drifts from
minute to minute, a ratio of two measurements taken back to back is steadier than one of
medians taken minutes apart.
CARGO_TARGET_DIR, VLSA_ADAPTER and WGPU_BACKEND are passed through to cargo.
Both sides run on this machine's CPU cores (vlsa through lavapipe when there is no GPU).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import vlsa_ref  # noqa: E402
from compare_em import median_ms  # noqa: E402  (same timing rule as the EM comparison)


def with_defaults(cfg):
    """The optional keys of docs/DESIGN.md's configuration, filled in as vlsa does."""
    cfg.setdefault("ln_eps", 1e-5)
    cfg["vision"].setdefault("mlp_ratio", 4)
    cfg["vision"].setdefault("act", "quick_gelu")
    cfg["decoder"].setdefault("mlp_ratio", 4)
    for key, value in {"iters": 3, "lambda": 1.0, "momentum": 0.9, "grad": "detached"}.items():
        cfg["em"].setdefault(key, value)
    return cfg


def torch_times(cfg, b, reps):
    gen = torch.Generator().manual_seed(0)
    params = {k: v.float().requires_grad_(k not in ("text.class_embeddings", "head.em.bases")) for k, v in vlsa_ref.init_params(cfg, gen).items()}
    s, k = cfg["image_size"], len(cfg["classes"])
    x = torch.rand(b, 3, s, s, generator=gen) * 4 - 2
    target = torch.randint(0, k, (b, s, s), generator=gen)
    mode = cfg["em"].get("grad", "detached")

    def forward():
        with torch.no_grad():
            vlsa_ref.forward(params, cfg, x, target, mode)

    def train():
        out = vlsa_ref.forward(params, cfg, x, target, mode)
        out["loss"].sum().backward()
        for p in params.values():
            p.grad = None

    return median_ms(forward, reps), median_ms(train, reps)


def vlsa_times(config, b, reps, release):
    cmd = ["cargo", "run", *(["--release"] if release else []), "--quiet", "--example", "model_time", "--", config, str(b), str(reps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return {k: float(v) for k, v in (p.split("=", 1) for p in out.split())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/fundus-tiny.json")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--release", action="store_true", help="build the vlsa side with --release")
    ap.add_argument("--rounds", type=int, default=1, help="measure both sides this many times in turn")
    args = ap.parse_args()
    with open(args.config) as f:
        cfg = with_defaults(json.load(f))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config {args.config}")
    print(f"{'batch':>5} {'torch fwd ms':>12} {'vlsa fwd ms':>12} {'ratio':>6} | {'torch step ms':>13} {'vlsa step ms':>12} {'ratio':>6} | "
          f"{'img/s fwd t/v':>14} {'img/s step t/v':>15} | dispatches fwd/step | submits fwd/step")
    for b in args.batches:
        ratios = []
        for _ in range(max(1, args.rounds)):
            tf, tt = torch_times(cfg, b, args.reps)
            v = vlsa_times(args.config, b, args.reps, args.release)
            ratios.append((v["forward_ms"] / tf, v["train_ms"] / tt))
            ips = lambda ms: 1000.0 * b / ms
            print(f"{b:>5} {tf:>12.1f} {v['forward_ms']:>12.1f} {v['forward_ms'] / tf:>6.2f} | {tt:>13.1f} {v['train_ms']:>12.1f} {v['train_ms'] / tt:>6.2f} | "
                  f"{ips(tf):>6.2f}/{ips(v['forward_ms']):<7.2f} {ips(tt):>6.2f}/{ips(v['train_ms']):<8.2f} | "
                  f"{int(v['forward_dispatches'])}/{int(v['train_dispatches'])} | {int(v['forward_submits'])}/{int(v['train_submits'])}", flush=True)
        if len(ratios) > 1:
            fwd, step = (statistics.median(r[i] for r in ratios) for i in (0, 1))
            print(f"batch {b}, {len(ratios)} rounds: median ratio forward {fwd:.2f}, step {step:.2f}")
    print("ratio = vlsa time / torch time (below 1: vlsa faster). step = forward + loss + backward (no optimizer).")
    print("img/s t/v = images per second of torch / of vlsa.")


if __name__ == "__main__":
    main()
