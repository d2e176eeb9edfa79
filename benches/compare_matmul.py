#!/usr/bin/env python3
"""vlsa's matmul against numpy (OpenBLAS sgemm, float32) on the same shapes, in the same run.

Runs `cargo run --example matmul_gflops` (dev profile: the kernel speed is set by the adapter,
not by Rust's optimisation level) (one line per shape and path: M N K GFLOPS LAYOUT PATH; extra arguments such as
`--path all` or `--shape 512x192x768/nt` are passed on),
then times numpy on each shape (best of a few repetitions) and prints a table with the ratio.
Usage: python3 benches/compare_matmul.py [--quick]. Needs numpy (`pip install numpy`).
"""
import os
import subprocess
import sys
import time

# OpenBLAS settings meant for other tools on this machine would skew numpy; OpenBLAS reads them
# when it loads, so drop them (for this process only) before importing numpy.
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import numpy as np  # noqa: E402


def numpy_gflops(m, n, k, layout):
    rng = np.random.default_rng(0)
    # Stored layouts as vlsa reads them: nt = B stored [N, K] (a Linear weight), tn = A stored [K, M].
    a = rng.standard_normal((k, m) if layout[0] == "t" else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if layout[1] == "t" else (k, n), dtype=np.float32)
    a_op = a.T if layout[0] == "t" else a
    b_op = b.T if layout[1] == "t" else b
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(a_op, b_op, out=out)
    flops = 2.0 * m * n * k
    reps = max(1, min(50, int(2e8 / flops)))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            np.matmul(a_op, b_op, out=out)
        best = min(best, (time.perf_counter() - t) / reps)
    return flops / best / 1e9


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = ["cargo", "run", "--quiet", "--example", "matmul_gflops", "--"] + sys.argv[1:]
    t = time.time()
    load0 = os.getloadavg()[0]
    lines = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True).stdout.split("\n")
    print(f"vlsa run: {time.time() - t:.1f} s, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    rows = []
    for line in lines:
        parts = line.split()
        if len(parts) == 6:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]), parts[4], parts[5]))
    print(f"{'M':>6} {'N':>6} {'K':>6} {'layout':>6} {'path':>9} {'vlsa GFLOP/s':>13} {'numpy GFLOP/s':>14} {'vlsa/numpy':>11}")
    numpy = {}
    for m, n, k, ours, layout, path in rows:
        if (m, n, k, layout) not in numpy:
            numpy[(m, n, k, layout)] = numpy_gflops(m, n, k, layout)
        theirs = numpy[(m, n, k, layout)]
        print(f"{m:>6} {n:>6} {k:>6} {layout:>6} {path:>9} {ours:>13.2f} {theirs:>14.2f} {ours / theirs:>11.3f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores; figures drop when other work runs)")


if __name__ == "__main__":
    main()
