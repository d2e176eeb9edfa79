//! Batched matmul: FLOP/s of square products (256³ to 2048³), of the default model's linear
//! layers (forward x·Wᵀ, input gradient dY·W, weight gradient dYᵀ·X; batch 1 and 8), and of its
//! attention products at batch 8 (batches of heads x images: the ViT's scores q·kᵀ over 260
//! padded keys and P·v, the decoder's scores and P·v with 32-wide heads). On lavapipe the
//! linear layers take the 64-column subgroup kernels, the 260-key scores and 32-wide heads the
//! 32-column ones, and the 257-row products the one-row tail block.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::matmul::{matmul, matmul_row_sums, Matmul};

/// (batch, M, N, K, trans_a, trans_b) of the shapes benchmarked.
fn shapes() -> Vec<(usize, usize, usize, usize, bool, bool)> {
    let mut s: Vec<(usize, usize, usize, usize, bool, bool)> =
        [256, 512, 1024, 2048].iter().map(|&n| (1, n, n, n, false, false)).collect();
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
            for shape in
                [(1, t, dout, din, false, true), (1, t, din, dout, false, false), (1, dout, din, t, true, false)]
            {
                if !s.contains(&shape) {
                    s.push(shape);
                }
            }
        }
    }
    // Attention at batch 8: ViT 3 heads x 8 images, 257 queries, 260 keys, head width 64; decoder
    // 4 heads x 8 images, 256 tokens, head width 32.
    s.extend([
        (24, 257, 260, 64, false, true),
        (24, 257, 64, 260, false, false),
        (32, 256, 256, 32, false, true),
        (32, 256, 32, 256, false, false),
    ]);
    s
}

fn bench_matmul(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("matmul");
    common::configure(&mut group);
    for (batch, m, n, k, ta, tb) in shapes() {
        let op = Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb);
        let a = gpu.upload(&common::data(op.a_len(), 1)).unwrap();
        let b = gpu.upload(&common::data(op.b_len(), 2)).unwrap();
        let out = gpu.alloc(op.out_len()).unwrap();
        let layout = format!("{}{}", if ta { "t" } else { "n" }, if tb { "t" } else { "n" });
        let name = if batch == 1 { format!("{m}x{n}x{k}/{layout}") } else { format!("{batch}x{m}x{n}x{k}/{layout}") };
        common::bench_gpu(&mut group, &name, &gpu, Throughput::Elements(op.flops()), || {
            matmul(&gpu, &a, &b, &out, &op).unwrap();
        });
    }
    group.finish();
}

/// A Linear's weight gradient with its bias gradient in the same launch (`matmul_row_sums`), at
/// the default model's batch-8 weight-gradient shapes: the product's FLOPs plus the sums' adds,
/// to read against the plain product above.
fn bench_matmul_row_sums(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("matmul_row_sums");
    common::configure(&mut group);
    for (m, n, k) in [(576, 192, 2056), (768, 192, 2056), (192, 768, 2056), (512, 128, 2048)] {
        let op = Matmul::new(1, m, n, k).trans_a(true);
        let a = gpu.upload(&common::data(op.a_len(), 1)).unwrap();
        let b = gpu.upload(&common::data(op.b_len(), 2)).unwrap();
        let (out, sums) = (gpu.alloc(op.out_len()).unwrap(), gpu.alloc(m).unwrap());
        let flops = op.flops() + (m * k) as u64;
        common::bench_gpu(&mut group, &format!("{m}x{n}x{k}/tn"), &gpu, Throughput::Elements(flops), || {
            matmul_row_sums(&gpu, &a, &b, &out, &sums, &op).unwrap();
        });
    }
    group.finish();
}

criterion_group!(benches, bench_matmul, bench_matmul_row_sums);
criterion_main!(benches);
