//! EM Aggregation: FLOP/s of the forward loop, of its unrolled backward, of the E-step,
//! M-step and reconstruction kernels alone, and of one iteration in four dispatches (the CPU
//! paths' E-step softmax and one-pass M-step), in seven (the step kernels) and in two (the GPU
//! path's em_fused.wgsl), at the default model's sizes (N=256, C=128, M=16,
//! B=1 and 8) and at EMANet's (N=4096, C=256 and 512, M=64), T=3.
//! An E-step or M-step product is 2*B*N*C*M FLOPs.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::em::{self, Bases, Em, EmShape};

fn em(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("em");
    common::configure(&mut group);
    for &(b, n, ch, m) in
        &[(1usize, 256usize, 128usize, 16usize), (8, 256, 128, 16), (1, 4096, 256, 64), (1, 4096, 512, 64)]
    {
        let s = EmShape { batch: b, tokens: n, width: ch, bases: m, iters: 3, lambda: 1.0 };
        let tag = format!("B{b}_N{n}_C{ch}_M{m}");
        let u = gpu.upload(&common::data(s.tokens_len(), 1)).unwrap();
        let bases_host: Vec<f32> = common::data(s.bases_len(), 2)
            .chunks(ch)
            .flat_map(|r| {
                let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
                r.iter().map(move |v| v / norm).collect::<Vec<_>>()
            })
            .collect();
        let bases = gpu.upload(&bases_host).unwrap();
        let d_recon = gpu.upload(&common::data(s.tokens_len(), 3)).unwrap();
        let product = s.product_flops();
        let em = Em::new(&gpu, s).unwrap();

        // Forward: T x (E-step + M-step) + the reconstruction.
        let flops = Throughput::Elements((2 * s.iters as u64 + 1) * product);
        common::bench_gpu(&mut group, &format!("forward_T3/{tag}"), &gpu, flops, || {
            em.forward(&u, &bases, false).unwrap();
        });
        // Unrolled backward alone (the forward is run once, outside the timing): the
        // reconstruction's 2 products, then 4 per iteration (3 at t = 1).
        let fwd = em.forward(&u, &bases, true).unwrap();
        let flops = Throughput::Elements((2 + 4 * s.iters as u64 - 1) * product);
        common::bench_gpu(&mut group, &format!("backward_unrolled_T3/{tag}"), &gpu, flops, || {
            em.backward_unrolled(&u, &bases, &fwd, &d_recon).unwrap();
        });

        // The kernels alone.
        let z = gpu.alloc(s.z_len()).unwrap();
        let partial = gpu.alloc(s.batch * s.tokens.div_ceil(em::TILE) * s.bases).unwrap();
        let colsum = gpu.alloc(s.batch * s.bases).unwrap();
        let mu = gpu.alloc(s.mu_len()).unwrap();
        let recon = gpu.alloc(s.tokens_len()).unwrap();
        common::bench_gpu(&mut group, &format!("e_step/{tag}"), &gpu, Throughput::Elements(product), || {
            em.e_step(&u, Bases::Shared(&bases), &z, &partial).unwrap();
        });
        common::bench_gpu(&mut group, &format!("m_step/{tag}"), &gpu, Throughput::Elements(product), || {
            em.m_step(&z, &u, &colsum, &mu).unwrap();
        });
        common::bench_gpu(&mut group, &format!("reconstruct/{tag}"), &gpu, Throughput::Elements(product), || {
            em.reconstruct(&z, &mu, &recon).unwrap();
        });
        // One iteration (E-step + M-step products) as the four dispatches of the CPU paths, as
        // the seven of the step kernels and as the two passes of the GPU path (em_fused.wgsl),
        // whatever the adapter.
        let mu_raw = gpu.alloc(s.mu_len()).unwrap();
        let mu_out = gpu.alloc(s.mu_len()).unwrap();
        common::bench_gpu(&mut group, &format!("m_step_fused/{tag}"), &gpu, Throughput::Elements(product), || {
            em.m_step_fused(&z, &u, &colsum, &mu_raw, &mu_out).unwrap();
        });
        common::bench_gpu(
            &mut group,
            &format!("iteration_4_dispatches/{tag}"),
            &gpu,
            Throughput::Elements(2 * product),
            || {
                em.e_step_softmax(&u, Bases::Shared(&bases), &z).unwrap();
                em.m_step_fused(&z, &u, &colsum, &mu_raw, &mu_out).unwrap();
            },
        );
        common::bench_gpu(
            &mut group,
            &format!("iteration_7_dispatches/{tag}"),
            &gpu,
            Throughput::Elements(2 * product),
            || {
                em.e_step(&u, Bases::Shared(&bases), &z, &partial).unwrap();
                em.colsum(&partial, &colsum).unwrap();
                em.m_step(&z, &u, &colsum, &mu_raw).unwrap();
                em.normalize(&mu_raw, &mu_out).unwrap();
            },
        );
        common::bench_gpu(
            &mut group,
            &format!("iteration_fused/{tag}"),
            &gpu,
            Throughput::Elements(2 * product),
            || {
                em.fused_iteration(&u, Bases::Shared(&bases), &z, &colsum, &mu_raw, &mu_out).unwrap();
            },
        );
    }
    group.finish();
}

criterion_group!(benches, em);
criterion_main!(benches);
