//! LayerNorm over the last axis: bytes/s of forward and backward (dx and the weight/bias
//! gradients), in the adapter's schedule and in both schedules explicitly.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::layer_norm::{self, LayerNormGrads, LayerNormIo};
use vlsa_kernels::reduce::RowSchedule;

fn layer_norm_bench(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("layer_norm");
    common::configure(&mut group);
    // The encoder's tokens (8 x 257 tokens x 192) and the decoder's pixels (8 x 256 x 128).
    for &(rows, cols) in &[(2056usize, 192usize), (2048, 128)] {
        let n = rows * cols;
        let x = gpu.upload(&common::data(n, 1)).unwrap();
        let dy = gpu.upload(&common::data(n, 2)).unwrap();
        let w = gpu.upload(&common::data(cols, 3)).unwrap();
        let b = gpu.upload(&common::data(cols, 4)).unwrap();
        let (y, dx) = (gpu.alloc(n).unwrap(), gpu.alloc(n).unwrap());
        let (mean, rstd) = (gpu.alloc(rows).unwrap(), gpu.alloc(rows).unwrap());
        let (dw, db) = (gpu.alloc(cols).unwrap(), gpu.alloc(cols).unwrap());
        let io = LayerNormIo { x: &x, weight: &w, bias: &b, out: &y, mean: &mean, rstd: &rstd };
        let grads = LayerNormGrads { dx: &dx, dweight: &dw, dbias: &db, dx_in: None };
        // Forward reads x and writes y; backward reads x and dy (twice) and writes dx.
        let (fwd_bytes, bwd_bytes) = (8 * n as u64, 12 * n as u64);
        for (name, schedule) in [
            ("auto", RowSchedule::choose(&gpu, rows, cols)),
            ("invocation", RowSchedule::Invocation),
            ("workgroup", RowSchedule::Workgroup),
        ] {
            common::bench_gpu(
                &mut group,
                &format!("forward/{name}/{rows}x{cols}"),
                &gpu,
                Throughput::Bytes(fwd_bytes),
                || {
                    layer_norm::forward_with(&gpu, schedule, &io, rows, cols, 1e-5).unwrap();
                },
            );
            common::bench_gpu(
                &mut group,
                &format!("backward/{name}/{rows}x{cols}"),
                &gpu,
                Throughput::Bytes(bwd_bytes),
                || {
                    layer_norm::backward_with(&gpu, schedule, &io.saved(), &dy, &grads, rows, cols).unwrap();
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, layer_norm_bench);
criterion_main!(benches);
