//! Batched matmul: FLOP/s of square products (256³ to 2048³) and of the default model's linear
//! layers (forward x·Wᵀ, input gradient dY·W, weight gradient dYᵀ·X; batch 1 and 8).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::matmul::{matmul, Matmul};

/// (M, N, K, trans_a, trans_b) of the shapes benchmarked.
fn shapes() -> Vec<(usize, usize, usize, bool, bool)> {
    let mut s: Vec<(usize, usize, usize, bool, bool)> =
        [256, 512, 1024, 2048].iter().map(|&n| (n, n, n, false, false)).collect();
    for batch in [1usize, 8] {
        let (encoder, decoder) = (batch * 257, batch * 256);
        // (tokens, in, out) of the encoder's attention and MLP, visual_proj, the decoder's layers.
        for (t, din, dout) in [
            (encoder, 192, 192),
            (encoder, 192, 768),
            (encoder, 768, 192),
            (decoder, 192, 128),
            (decoder, 128, 128),
            (decoder, 128, 512),
            (decoder, 512, 128),
        ] {
            for shape in [(t, dout, din, false, true), (t, din, dout, false, false), (dout, din, t, true, false)] {
                if !s.contains(&shape) {
                    s.push(shape);
                }
            }
        }
    }
    s
}

fn bench_matmul(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("matmul");
    common::configure(&mut group);
    for (m, n, k, ta, tb) in shapes() {
        let op = Matmul::new(1, m, n, k).trans_a(ta).trans_b(tb);
        let a = gpu.upload(&common::data(op.a_len(), 1)).unwrap();
        let b = gpu.upload(&common::data(op.b_len(), 2)).unwrap();
        let out = gpu.alloc(op.out_len()).unwrap();
        let layout = format!("{}{}", if ta { "t" } else { "n" }, if tb { "t" } else { "n" });
        common::bench_gpu(&mut group, &format!("{m}x{n}x{k}/{layout}"), &gpu, Throughput::Elements(op.flops()), || {
            matmul(&gpu, &a, &b, &out, &op).unwrap();
        });
    }
    group.finish();
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
