//! Resizing: bytes/s of bilinear upsampling of the default model's logits [B, 3, 16, 16] ->
//! [B, 3, 128, 128] (forward and backward) and of nearest resizing of a class map back to an
//! original image size.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::upsample::{self, Resize};

fn upsample(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("upsample");
    common::configure(&mut group);
    for batch in [1usize, 8] {
        let r = Resize { batch, channels: 3, in_h: 16, in_w: 16, out_h: 128, out_w: 128 };
        let small = gpu.upload(&common::data(r.in_len(), 1)).unwrap();
        let big = gpu.upload(&common::data(r.out_len(), 2)).unwrap();
        let bytes = Throughput::Bytes(4 * (r.in_len() + r.out_len()) as u64);
        common::bench_gpu(&mut group, &format!("bilinear/b{batch}"), &gpu, bytes.clone(), || {
            upsample::bilinear(&gpu, &small, &big, &r).unwrap();
        });
        common::bench_gpu(&mut group, &format!("bilinear_backward/b{batch}"), &gpu, bytes.clone(), || {
            upsample::bilinear_backward(&gpu, &big, &small, &r).unwrap();
        });
    }
    // A prediction [1, 1, 128, 128] back to a 512 x 384 image.
    let r = Resize { batch: 1, channels: 1, in_h: 128, in_w: 128, out_h: 384, out_w: 512 };
    let labels = gpu.upload(&vec![1u32; r.in_len()]).unwrap();
    let out = gpu.alloc(r.out_len()).unwrap();
    common::bench_gpu(
        &mut group,
        "nearest_u32/128to384x512",
        &gpu,
        Throughput::Bytes(4 * (r.in_len() + r.out_len()) as u64),
        || {
            upsample::nearest_u32(&gpu, &labels, &out, &r).unwrap();
        },
    );
    group.finish();
}

criterion_group!(benches, upsample);
criterion_main!(benches);
