//! Patch embedding: FLOP/s of the forward and the backward (weight gradient alone, and with the
//! image gradient) at the default model's shapes (image 128, patch 8, D 192, 3 channels; batch 1
//! and 8), for the direct kernels and the products method.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::patch_embed::{self, Method, PatchEmbed, PatchEmbedGrads, PatchEmbedInputs};

fn patch_embed(c: &mut Criterion) {
    let gpu = common::gpu();
    let path = gpu.kernel_path();
    let mut group = c.benchmark_group("patch_embed");
    common::configure(&mut group);
    let (channels, size, patch, dim) = (3usize, 128usize, 8usize, 192usize);
    for batch in [1usize, 8] {
        let s = PatchEmbed { batch, channels, size, patch, dim };
        let tokens = (size / patch).pow(2);
        let image = gpu.upload(&common::data(batch * channels * size * size, 1)).unwrap();
        let weight = gpu.upload(&common::data(dim * channels * patch * patch, 2)).unwrap();
        let out = gpu.alloc(batch * tokens * dim).unwrap();
        let d_out = gpu.upload(&common::data(batch * tokens * dim, 3)).unwrap();
        let d_image = gpu.alloc(batch * channels * size * size).unwrap();
        let d_weight = gpu.alloc(dim * channels * patch * patch).unwrap();
        let flops = 2 * (batch * tokens * dim * channels * patch * patch) as u64;
        let inputs = PatchEmbedInputs { image: &image, weight: &weight };
        let weight_only = PatchEmbedGrads { d_weight: &d_weight, d_image: None };
        let both = PatchEmbedGrads { d_weight: &d_weight, d_image: Some(&d_image) };
        for method in [Method::Direct, Method::Products] {
            let m = format!("{method:?}").to_lowercase();
            common::bench_gpu(&mut group, &format!("forward_{m}/b{batch}"), &gpu, Throughput::Elements(flops), || {
                patch_embed::forward_with(&gpu, &inputs, &out, &s, method, path).unwrap();
            });
            let name = format!("backward_weight_{m}/b{batch}");
            common::bench_gpu(&mut group, &name, &gpu, Throughput::Elements(flops), || {
                patch_embed::backward_with(&gpu, &inputs, &d_out, &weight_only, &s, method, path).unwrap();
            });
            let name = format!("backward_both_{m}/b{batch}");
            common::bench_gpu(&mut group, &name, &gpu, Throughput::Elements(2 * flops), || {
                patch_embed::backward_with(&gpu, &inputs, &d_out, &both, &s, method, path).unwrap();
            });
        }
    }
    group.finish();
}

criterion_group!(benches, patch_embed);
criterion_main!(benches);
