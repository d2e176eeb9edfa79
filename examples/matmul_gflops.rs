//! Prints the matmul kernel's speed on square shapes and on the default model's shapes, one
//! line per shape: `M N K GFLOPS LAYOUT` (LAYOUT: nn, nt = B stored transposed as a Linear
//! weight, tn = A stored transposed). Each figure is the best of a few timed repetitions with
//! a device sync inside the timing. benches/compare_matmul.py runs numpy on the same lines.
//!
//! Run: `cargo run --example matmul_gflops [-- --quick]` (the dev profile is enough: the kernel
//! speed is set by the adapter's shader compiler, not by Rust's optimisation level).

use std::time::Instant;

use vlsa_kernels::matmul::{matmul, Matmul};
use vlsa_kernels::Gpu;

/// (M, N, K, trans_a, trans_b) of square products and of the default model's linear layers,
/// forward (x·Wᵀ), input gradient (dY·W) and weight gradient (dYᵀ·X), for batch 1 and 8.
fn shapes(quick: bool) -> Vec<(usize, usize, usize, bool, bool)> {
    let mut s: Vec<(usize, usize, usize, bool, bool)> =
        [256, 512, 1024, 2048].iter().map(|&n| (n, n, n, false, false)).collect();
    if quick {
        s.truncate(3);
    }
    for batch in [1usize, 8] {
        let encoder = batch * 257;
        let decoder = batch * 256;
        // (tokens, in, out) of every Linear: encoder attention/MLP, visual_proj, decoder.
        let layers = [
            (encoder, 192, 192),
            (encoder, 192, 768),
            (encoder, 768, 192),
            (decoder, 192, 128),
            (decoder, 128, 128),
            (decoder, 128, 512),
            (decoder, 512, 128),
        ];
        for (t, din, dout) in layers {
            for shape in [(t, dout, din, false, true), (t, din, dout, false, false), (dout, din, t, true, false)] {
                if !s.contains(&shape) {
                    s.push(shape);
                }
            }
        }
    }
    s
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let gpu = Gpu::new().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    eprintln!("adapter: {} ({}, {})", gpu.info().name, gpu.info().backend, gpu.info().device_type);
    let fill = |n: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect() };
    for (m, n, k, ta, tb) in shapes(quick) {
        let op = Matmul::new(1, m, n, k).trans_a(ta).trans_b(tb);
        let a = gpu.upload(&fill(op.a_len())).expect("upload A");
        let b = gpu.upload(&fill(op.b_len())).expect("upload B");
        let out = gpu.alloc(op.out_len()).expect("allocate the output");
        // Enough repetitions per timing that the ~50 us dispatch cost does not dominate.
        let reps = (2e8 / op.flops() as f64).ceil().clamp(1.0, 50.0) as usize;
        matmul(&gpu, &a, &b, &out, &op).expect("matmul");
        gpu.sync().expect("sync");
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..reps {
                matmul(&gpu, &a, &b, &out, &op).expect("matmul");
            }
            gpu.sync().expect("sync");
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        let layout = match (ta, tb) {
            (false, false) => "nn",
            (false, true) => "nt",
            (true, false) => "tn",
            (true, true) => "tt",
        };
        println!("{m} {n} {k} {:.2} {layout}", op.flops() as f64 / best / 1e9);
    }
}
