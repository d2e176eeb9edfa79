//! Mask head: FLOP/s of the cosine logits and their backward at the default model's shapes
//! (N = 256 tokens, C = 128, K = 3; batch 1 and 8).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::mask_head::{self, MaskHead, MaskHeadGrads, MaskHeadInputs};

fn mask_head(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("mask_head");
    common::configure(&mut group);
    let (tokens, width, classes) = (256usize, 128usize, 3usize);
    for batch in [1usize, 8] {
        let x = gpu.upload(&common::data(batch * tokens * width, 1)).unwrap();
        let text = gpu.upload(&common::data(classes * width, 2)).unwrap();
        let scale = gpu.upload(&[(1.0f32 / 0.07).ln()]).unwrap();
        let out = gpu.alloc(batch * classes * tokens).unwrap();
        let d_out = gpu.upload(&common::data(batch * classes * tokens, 3)).unwrap();
        let (dx, dt, ds) =
            (gpu.alloc(batch * tokens * width).unwrap(), gpu.alloc(classes * width).unwrap(), gpu.alloc(1).unwrap());
        let macs = (batch * tokens * width * classes) as u64;
        let shape = MaskHead { batch, tokens, width, classes };
        let inputs = MaskHeadInputs { x: &x, text: &text, logit_scale: &scale };
        let grads = MaskHeadGrads { d_x: &dx, d_text: &dt, d_logit_scale: &ds };
        // Forward: a dot product and a text norm per (row, class, channel), plus the row norm.
        common::bench_gpu(&mut group, &format!("forward/b{batch}"), &gpu, Throughput::Elements(4 * macs), || {
            mask_head::forward(&gpu, &inputs, &out, &shape).unwrap();
        });
        // Backward: cosines again, dx^ and dt^ (two multiply-adds each per MAC).
        common::bench_gpu(&mut group, &format!("backward/b{batch}"), &gpu, Throughput::Elements(8 * macs), || {
            mask_head::backward(&gpu, &inputs, &d_out, &grads, &shape).unwrap();
        });
    }
    group.finish();
}

criterion_group!(benches, mask_head);
criterion_main!(benches);
