//! Losses: bytes/s of cross entropy and Dice (forward and backward) and argmax over the default
//! model's upsampled logits [B, 3, 128, 128].

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::loss::{self, LossShape};

fn losses(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("loss");
    common::configure(&mut group);
    let (classes, pixels) = (3usize, 128 * 128);
    for batch in [1usize, 8] {
        let n = batch * pixels;
        let shape = LossShape { batch, classes, pixels };
        let logits = gpu.upload(&common::data(n * classes, 1)).unwrap();
        let target = gpu.upload(&(0..n).map(|i| (i % 3) as u32).collect::<Vec<_>>()).unwrap();
        let value = gpu.alloc(1).unwrap();
        let d_loss = gpu.upload(&[1.0f32]).unwrap();
        let stats = gpu.alloc(loss::dice_stats_len(classes)).unwrap();
        let d_logits = gpu.alloc(n * classes).unwrap();
        let labels = gpu.alloc(n).unwrap();
        // Logits and targets read once; backward also writes the logits gradient.
        let read = Throughput::Bytes(4 * (n * classes + n) as u64);
        let read_write = Throughput::Bytes(4 * (2 * n * classes + n) as u64);
        common::bench_gpu(&mut group, &format!("cross_entropy/b{batch}"), &gpu, read.clone(), || {
            loss::cross_entropy(&gpu, &logits, &target, &value, &shape).unwrap();
        });
        common::bench_gpu(&mut group, &format!("cross_entropy_backward/b{batch}"), &gpu, read_write.clone(), || {
            loss::cross_entropy_backward(&gpu, &logits, &target, &d_loss, &d_logits, &shape).unwrap();
        });
        common::bench_gpu(&mut group, &format!("dice/b{batch}"), &gpu, read.clone(), || {
            loss::dice(&gpu, &logits, &target, &stats, &value, &shape).unwrap();
        });
        common::bench_gpu(&mut group, &format!("dice_backward/b{batch}"), &gpu, read_write.clone(), || {
            loss::dice_backward(&gpu, &logits, &target, &stats, &d_loss, &d_logits, &shape).unwrap();
        });
        common::bench_gpu(
            &mut group,
            &format!("argmax/b{batch}"),
            &gpu,
            Throughput::Bytes(4 * (n * classes + n) as u64),
            || {
                loss::argmax(&gpu, &logits, &labels, &shape).unwrap();
            },
        );
    }
    group.finish();
}

criterion_group!(benches, losses);
criterion_main!(benches);
