//! Axis sums: bytes/s of sum_axis and sum_to_shape reducing [2048, 768] to [768] (a bias
//! gradient over the MLP's rows), and a whole-tensor sum.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::reduce;

fn reduce_bench(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("reduce");
    common::configure(&mut group);
    let (rows, cols) = (2048usize, 768usize);
    let n = rows * cols;
    let x = gpu.upload(&common::data(n, 1)).unwrap();
    let out = gpu.alloc(cols).unwrap();
    let bytes = Throughput::Bytes(4 * (n + cols) as u64);
    common::bench_gpu(&mut group, &format!("sum_axis/{rows}x{cols}->{cols}"), &gpu, bytes.clone(), || {
        reduce::sum_axis(&gpu, &x, 1, rows, cols, &out).unwrap();
    });
    common::bench_gpu(&mut group, "sum_to_shape/[8,256,768]->[768]", &gpu, bytes, || {
        reduce::sum_to_shape(&gpu, &x, &[8, 256, cols], &[cols], &out).unwrap();
    });
    let total = gpu.alloc(1).unwrap();
    common::bench_gpu(&mut group, &format!("sum_all/{n}->1"), &gpu, Throughput::Bytes(4 * n as u64), || {
        reduce::sum_axis(&gpu, &x, 1, n, 1, &total).unwrap();
    });
    group.finish();
}

criterion_group!(benches, reduce_bench);
criterion_main!(benches);
