//! Patch embedding: FLOP/s of the forward and both backward GEMMs at the default model's shapes
//! (image 128, patch 8, D 192, 3 channels; batch 1 and 8).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::patch_embed;

fn patch_embed(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("patch_embed");
    common::configure(&mut group);
    let (channels, size, patch, dim) = (3usize, 128usize, 8usize, 192usize);
    for batch in [1usize, 8] {
        let tokens = (size / patch).pow(2);
        let image = gpu.upload(&common::data(batch * channels * size * size, 1)).unwrap();
        let weight = gpu.upload(&common::data(dim * channels * patch * patch, 2)).unwrap();
        let out = gpu.alloc(batch * tokens * dim).unwrap();
        let d_out = gpu.upload(&common::data(batch * tokens * dim, 3)).unwrap();
        let d_image = gpu.alloc(batch * channels * size * size).unwrap();
        let d_weight = gpu.alloc(dim * channels * patch * patch).unwrap();
        let flops = Throughput::Elements(2 * (batch * tokens * dim * channels * patch * patch) as u64);
        common::bench_gpu(&mut group, &format!("forward/b{batch}"), &gpu, flops.clone(), || {
            patch_embed::forward(&gpu, &image, &weight, &out, batch, channels, size, patch, dim).unwrap();
        });
        common::bench_gpu(&mut group, &format!("backward_weight/b{batch}"), &gpu, flops.clone(), || {
            patch_embed::backward_weight(&gpu, &image, &d_out, &d_weight, batch, channels, size, patch, dim).unwrap();
        });
        common::bench_gpu(&mut group, &format!("backward_image/b{batch}"), &gpu, flops.clone(), || {
            patch_embed::backward_image(&gpu, &weight, &d_out, &d_image, batch, channels, size, patch, dim).unwrap();
        });
    }
    group.finish();
}

criterion_group!(benches, patch_embed);
criterion_main!(benches);
