//! Times vlsa's EM Aggregation loop at one shape, for benches/compare_em.py.
//!
//! `cargo run --release --example em_time -- N C M T B REPS` prints one line of
//! `key=value` pairs: the median wall time (ms, with a device sync) of the forward loop and of
//! the unrolled backward, and, from one profiled run, the GPU time of one EM iteration (E-step,
//! column sums, M-step, normalisation) and of each step per run of it (a step's matmul and
//! fused kernel together).

use vlsa::kernels::em::{Em, EmShape};
use vlsa::kernels::Gpu;
use vlsa::profile::{profile_em, EmProfileOptions};

mod timing;
use timing::median_ms;

fn main() {
    let args: Vec<usize> =
        std::env::args().skip(1).map(|a| a.parse().expect("usage: em_time N C M T B REPS")).collect();
    let [n, c, m, t, b, reps] = args[..] else { panic!("usage: em_time N C M T B REPS") };
    let gpu = Gpu::new().expect("a GPU adapter");
    let opts =
        EmProfileOptions { batch: b, tokens: n, width: c, bases: m, iters: t, backward: false, ..Default::default() };
    let s: EmShape = opts.shape();
    let data = |len: usize, seed: u64| -> Vec<f32> {
        (0..len).map(|i| (((i as u64 + 1) * (seed * 2654435761 + 97)) % 2000) as f32 / 1000.0 - 1.0).collect()
    };
    let u = gpu.upload(&data(s.tokens_len(), 1)).unwrap();
    let bases_host: Vec<f32> = data(s.bases_len(), 2)
        .chunks(c)
        .flat_map(|r| {
            let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt() + 1e-6;
            r.iter().map(move |v| v / norm).collect::<Vec<_>>()
        })
        .collect();
    let bases = gpu.upload(&bases_host).unwrap();
    let d_recon = gpu.upload(&data(s.tokens_len(), 3)).unwrap();

    let em = Em::new(&gpu, s).unwrap();
    let forward_ms = median_ms(|| drop(em.forward(&u, &bases, false).unwrap()), &gpu, reps);
    let fwd = em.forward(&u, &bases, true).unwrap();
    let backward_ms = median_ms(|| drop(em.backward_unrolled(&u, &bases, &fwd, &d_recon).unwrap()), &gpu, reps);

    let report = profile_em(&gpu, &opts).unwrap();
    let iter_ns: f64 =
        report.steps.iter().filter(|r| r.scope.starts_with("iter=")).map(|r| r.time_ns).sum::<f64>() / t as f64;
    let mut line = format!(
        "adapter={:?} forward_ms={forward_ms:.3} backward_ms={backward_ms:.3} iter_gpu_ms={:.3}",
        gpu.info().name,
        iter_ns / 1e6
    );
    for kernel in ["em_e_step", "em_colsum", "em_m_step", "em_normalize", "em_recon"] {
        // One report row per scope the step ran in (its matmul and fused kernel together).
        // (The one-pass M-step leaves no em_colsum or em_normalize rows: none printed.)
        let rows: Vec<_> = report.steps.iter().filter(|r| r.kernel == kernel).collect();
        if rows.is_empty() {
            continue;
        }
        let ns: f64 = rows.iter().map(|r| r.time_ns).sum();
        line += &format!(" {kernel}_ms={:.3}", ns / rows.len().max(1) as f64 / 1e6);
    }
    eprintln!("{report}");
    // Per dispatch label: the matmuls apart from the fused EM kernels.
    eprintln!("{}", report.profile.table());
    println!("{line}");
}
