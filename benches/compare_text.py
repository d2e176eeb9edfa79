#!/usr/bin/env python3
"""vlsa's MiniLM-L6 text encoder next to sentence-transformers on the CPU, same batch.

Runs `cargo bench --bench text` (unless --no-bench: then it reads the last result) for vlsa's
time per batch of the 32 prompts in benches/text_prompts.txt, from criterion's estimates
(target/criterion/text/embed_32_prompts/new/estimates.json), then times
SentenceTransformer.encode on the same 32 prompts (one batch, CPU, --threads torch threads),
and prints sentences per second for both and their ratio.

Usage: python3 benches/compare_text.py [--model DIR] [--iters N] [--threads T] [--no-bench]
Needs sentence-transformers (`pip install sentence-transformers`) and the model folder
(scripts/fetch-minilm.sh; default .cache/minilm or $VLSA_MINILM_DIR). Set CARGO_TARGET_DIR as
usual; WGPU_BACKEND and VLSA_ADAPTER choose vlsa's adapter.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vlsa_seconds(run_bench):
    if run_bench:
        res = subprocess.run(["cargo", "bench", "--bench", "text", "--", "--noplot"], cwd=ROOT)
        if res.returncode != 0:
            sys.exit("cargo bench --bench text failed")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(target, "criterion", "text", "embed_32_prompts", "new", "estimates.json")
    if not os.path.exists(path):
        sys.exit(f"no vlsa result at {path}: run without --no-bench (and fetch the model first)")
    with open(path) as f:
        return json.load(f)["mean"]["point_estimate"] / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.environ.get("VLSA_MINILM_DIR", os.path.join(ROOT, ".cache", "minilm")))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bench", action="store_true", help="reuse the last `cargo bench --bench text` result")
    args = parser.parse_args()

    with open(os.path.join(ROOT, "benches", "text_prompts.txt")) as f:
        prompts = [line.strip() for line in f if line.strip()]
    vlsa = vlsa_seconds(not args.no_bench)

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device="cpu")
    with torch.inference_mode():
        model.encode(prompts, batch_size=len(prompts))
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            model.encode(prompts, batch_size=len(prompts))
            times.append(time.perf_counter() - start)
    st = statistics.median(times)

    n = len(prompts)
    print(f"batch of {n} prompts (benches/text_prompts.txt)")
    print(f"vlsa (criterion mean)                      {vlsa * 1e3:9.1f} ms  {n / vlsa:8.1f} sentences/s")
    print(f"sentence-transformers CPU, {args.threads} threads (median) {st * 1e3:9.1f} ms  {n / st:8.1f} sentences/s")
    print(f"vlsa takes {vlsa / st:.1f}x the time of sentence-transformers")


if __name__ == "__main__":
    main()
