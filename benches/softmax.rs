//! Softmax over the last axis: bytes/s of forward and backward, in the adapter's schedule and
//! in both schedules explicitly.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::reduce::RowSchedule;
use vlsa_kernels::softmax;

fn softmax_bench(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("softmax");
    common::configure(&mut group);
    // Generic rows, a large case, and the encoder's attention scores (3 heads x 257 tokens).
    for &(rows, cols) in &[(2048usize, 256usize), (8192, 1024), (3 * 257, 257)] {
        let n = rows * cols;
        let x = gpu.upload(&common::data(n, 1)).unwrap();
        let dy = gpu.upload(&common::data(n, 2)).unwrap();
        let (y, dx) = (gpu.alloc(n).unwrap(), gpu.alloc(n).unwrap());
        softmax::forward(&gpu, &x, &y, rows, cols).unwrap();
        for (name, schedule) in [
            ("auto", RowSchedule::choose(&gpu, rows, cols)),
            ("invocation", RowSchedule::Invocation),
            ("workgroup", RowSchedule::Workgroup),
        ] {
            common::bench_gpu(
                &mut group,
                &format!("forward/{name}/{rows}x{cols}"),
                &gpu,
                Throughput::Bytes(8 * n as u64),
                || {
                    softmax::forward_with(&gpu, schedule, &x, &y, rows, cols).unwrap();
                },
            );
            common::bench_gpu(
                &mut group,
                &format!("backward/{name}/{rows}x{cols}"),
                &gpu,
                Throughput::Bytes(12 * n as u64),
                || {
                    softmax::backward_with(&gpu, schedule, &y, &dy, &dx, rows, cols).unwrap();
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, softmax_bench);
criterion_main!(benches);
