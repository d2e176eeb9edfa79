//! AdamW: bytes/s of one update over ~3M parameters (the default model's size), as one tensor
//! and as the model's per-tensor dispatches would see it (192 x 768 blocks).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::adamw::{self, AdamW, AdamWTensor};

fn adamw(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("adamw");
    common::configure(&mut group);
    let cfg = AdamW::default();
    let n = 3_000_000usize;
    let param = gpu.upload(&common::data(n, 1)).unwrap();
    let grad = gpu.upload(&common::data(n, 2)).unwrap();
    let (m, v) = (gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap());
    // Reads p, g, m, v and writes p, m, v: 28 bytes per parameter.
    let mut t = 0;
    common::bench_gpu(&mut group, "step/3M", &gpu, Throughput::Bytes(28 * n as u64), || {
        t += 1;
        adamw::step(&gpu, &AdamWTensor { param: &param, grad: &grad, m: &m, v: &v }, n, t, &cfg).unwrap();
    });
    let block = 192 * 768;
    let blocks = n / block;
    let tensors: Vec<_> = (0..blocks)
        .map(|i| {
            (
                gpu.upload(&common::data(block, 10 + i as u64)).unwrap(),
                gpu.upload(&common::data(block, 100 + i as u64)).unwrap(),
                gpu.zeros(block).unwrap(),
                gpu.zeros(block).unwrap(),
            )
        })
        .collect();
    let mut t = 0;
    common::bench_gpu(
        &mut group,
        &format!("step/{blocks}x192x768"),
        &gpu,
        Throughput::Bytes(28 * (blocks * block) as u64),
        || {
            t += 1;
            for (p, g, m, v) in &tensors {
                adamw::step(&gpu, &AdamWTensor { param: p, grad: g, m, v }, block, t, &cfg).unwrap();
            }
        },
    );
    group.finish();
}

criterion_group!(benches, adamw);
criterion_main!(benches);
