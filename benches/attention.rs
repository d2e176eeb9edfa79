//! Attention: FLOP/s of forward and backward at the model's shapes (ViT self-attention,
//! decoder pixel self-attention, decoder cross-attention over 3 classes) and at N = 1024, for
//! the fused kernels, the products method and the stored-scores backward (`_Fused`,
//! `_Products`, `_Scores`; plain `forward` / `backward` is what `Auto` picks on this adapter).
//! Forward counts 4*B*H*Nq*Nk*dh FLOPs, backward 2.5x that (see `Attention::backward_flops`).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa_kernels::attention::{self, Attention, AttentionGrads, AttentionIo, BackwardPath, ForwardPath};
use vlsa_kernels::KernelPath;

/// The bench shapes: name, shape, forward paths to time.
pub fn shapes() -> Vec<(&'static str, Attention, Vec<ForwardPath>)> {
    vec![
        (
            "vit_self_n257_d192_h3_b8",
            Attention::new(8, 257, 257, 3, 64),
            vec![ForwardPath::Auto, ForwardPath::Blocked, ForwardPath::Products],
        ),
        (
            "decoder_self_n256_c128_h4_b8",
            Attention::new(8, 256, 256, 4, 32),
            vec![ForwardPath::Auto, ForwardPath::Blocked, ForwardPath::Products],
        ),
        (
            "decoder_cross_n256_k3_c128_h4_b8",
            Attention::new(8, 256, 3, 4, 32).shared_kv(),
            vec![ForwardPath::FewKeys, ForwardPath::Blocked, ForwardPath::Products],
        ),
        (
            "self_n1024_dh64_h4_b1",
            Attention::new(1, 1024, 1024, 4, 64),
            vec![ForwardPath::Auto, ForwardPath::Blocked, ForwardPath::Products],
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("attention");
    common::configure(&mut group);
    for (name, s, paths) in shapes() {
        let q = gpu.upload(&common::data(s.q_elements(), 1)).unwrap();
        let k = gpu.upload(&common::data(s.kv_elements(), 2)).unwrap();
        let v = gpu.upload(&common::data(s.kv_elements(), 3)).unwrap();
        let d_out = gpu.upload(&common::data(s.q_elements(), 4)).unwrap();
        let out = gpu.alloc(s.q_elements()).unwrap();
        let lse = gpu.alloc(s.lse_elements()).unwrap();
        let (dq, dk, dv) = (
            gpu.alloc(s.q_elements()).unwrap(),
            gpu.alloc(s.kv_elements()).unwrap(),
            gpu.alloc(s.kv_elements()).unwrap(),
        );
        let io = AttentionIo { q: &q, k: &k, v: &v, key_mask: None, out: &out, lse: &lse, probs: None };
        let grads = AttentionGrads { dq: &dq, dk: &dk, dv: &dv };
        for path in paths {
            let label =
                if path == ForwardPath::Auto { format!("forward/{name}") } else { format!("forward_{path:?}/{name}") };
            common::bench_gpu(&mut group, &label, &gpu, Throughput::Elements(s.forward_flops()), || {
                attention::forward_path(&gpu, &io, &s, path, gpu.kernel_path()).unwrap();
            });
        }
        attention::forward(&gpu, &io, &s).unwrap();
        let mut methods =
            vec![("", BackwardPath::Auto), ("_Fused", BackwardPath::Fused), ("_Products", BackwardPath::Products)];
        // The stored-scores backward: keys per batch element, register-blocked kernels.
        if s.kv_batch == s.batch && gpu.kernel_path() != KernelPath::Tiled {
            methods.push(("_Scores", BackwardPath::Scores));
        }
        // The few-keys backward: 1 to 4 keys, heads of at most 32, register-blocked paths.
        if (1..=attention::FEW_BACKWARD_KEYS).contains(&s.kv_len)
            && s.head_dim <= attention::FEW_BACKWARD_HEAD_DIM
            && gpu.kernel_path() != KernelPath::Tiled
        {
            methods.push(("_FewKeys", BackwardPath::FewKeys));
        }
        for (tag, method) in methods {
            common::bench_gpu(
                &mut group,
                &format!("backward{tag}/{name}"),
                &gpu,
                Throughput::Elements(s.backward_flops()),
                || {
                    attention::backward_path(&gpu, &io, &d_out, &grads, &s, method, gpu.kernel_path()).unwrap();
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
