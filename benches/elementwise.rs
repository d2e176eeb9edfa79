//! Elementwise kernels: bytes/s of broadcast add, bias add, activations and the fused bias +
//! activation backward.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::elementwise::{self, BiasAct, BinaryOp, UnaryOp};

fn elementwise(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("elementwise");
    common::configure(&mut group);
    // The default model's activations: [B*N, D] = [8*256, 192] and its MLP [8*256, 768]; and 4M.
    for &(rows, cols) in &[(2048usize, 192usize), (2048, 768), (4096, 1024)] {
        let n = rows * cols;
        let a = gpu.upload(&common::data(n, 1)).unwrap();
        let b = gpu.upload(&common::data(cols, 2)).unwrap();
        let out = gpu.alloc(n).unwrap();
        let bytes = Throughput::Bytes(8 * n as u64);
        common::bench_gpu(
            &mut group,
            &format!("add_broadcast/{rows}x{cols}"),
            &gpu,
            Throughput::Bytes(8 * n as u64 + 4 * cols as u64),
            || {
                elementwise::binary(&gpu, BinaryOp::Add, &a, &[rows, cols], &b, &[cols], &out).unwrap();
            },
        );
        common::bench_gpu(&mut group, &format!("bias_add/{rows}x{cols}"), &gpu, bytes.clone(), || {
            elementwise::bias_add(&gpu, &a, &b, &out, rows, cols).unwrap();
        });
        for op in [UnaryOp::Gelu, UnaryOp::QuickGelu, UnaryOp::Relu] {
            common::bench_gpu(&mut group, &format!("{op:?}/{rows}x{cols}"), &gpu, bytes.clone(), || {
                elementwise::unary(&gpu, op, &a, &out, n).unwrap();
            });
        }
        // The MLP's backward through its bias and activation: reads a and dy, writes dz.
        let dy = gpu.upload(&common::data(n, 3)).unwrap();
        for op in [UnaryOp::Gelu, UnaryOp::QuickGelu] {
            let shape = BiasAct { op, rows, c: cols };
            common::bench_gpu(
                &mut group,
                &format!("bias_act_backward_{op:?}/{rows}x{cols}"),
                &gpu,
                Throughput::Bytes(12 * n as u64 + 4 * cols as u64),
                || {
                    elementwise::bias_act_backward(&gpu, &a, &b, &dy, &out, &shape).unwrap();
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, elementwise);
criterion_main!(benches);
