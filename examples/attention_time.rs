//! Times vlsa's attention forward and backward at the shapes given on the command line, for
//! benches/compare_attention.py (which times PyTorch at the same shapes).
//!
//! Usage: attention_time [--iters N] [--method auto|fused|products|scores] SHAPE...
//!        with SHAPE = B,Bk,Nq,Nk,H,dh[,causal]
//! `auto` (the default) is what the model runs on this adapter; `fused` the fused kernels
//! (few-keys or blocked forward); `products` the score matrix materialised; `scores` the
//! fused kernels with the stored-scores backward (`fused` where the keys are shared).
//! Prints one line per shape: `SHAPE forward_ms backward_ms` (medians over N runs, each
//! submitted and waited for).

use std::time::Instant;

use vlsa_kernels::attention::{self, Attention, AttentionGrads, AttentionIo, BackwardPath, ForwardPath};
use vlsa_kernels::Gpu;

fn parse(spec: &str) -> Result<Attention, String> {
    let parts: Vec<&str> = spec.split(',').collect();
    let n: Vec<usize> = parts
        .iter()
        .take(6)
        .map(|p| p.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("shape `{spec}`: {e}"))?;
    if n.len() != 6 {
        return Err(format!("shape `{spec}` must be B,Bk,Nq,Nk,H,dh[,causal]"));
    }
    let mut s = Attention::new(n[0], n[2], n[3], n[4], n[5]);
    s.kv_batch = n[1];
    s.causal = parts.get(6) == Some(&"causal");
    Ok(s)
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn data(n: usize, seed: u64) -> Vec<f32> {
    vlsa::random::Rng::new(seed).vec(n)
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut iters = 10;
    if let Some(i) = args.iter().position(|a| a == "--iters") {
        iters = args.get(i + 1).and_then(|v| v.parse().ok()).ok_or("--iters needs a number")?;
        args.drain(i..i + 2);
    }
    let mut method = "auto".to_string();
    if let Some(i) = args.iter().position(|a| a == "--method") {
        method = args.get(i + 1).cloned().ok_or("--method needs auto, fused, products or scores")?;
        args.drain(i..i + 2);
    }
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    eprintln!("adapter: {} ({}, {})", gpu.info().name, gpu.info().backend, gpu.info().device_type);
    for spec in &args {
        let s = parse(spec)?;
        let e = |e: vlsa_kernels::Error| e.to_string();
        let q = gpu.upload(&data(s.q_elements(), 1)).map_err(e)?;
        let k = gpu.upload(&data(s.kv_elements(), 2)).map_err(e)?;
        let v = gpu.upload(&data(s.kv_elements(), 3)).map_err(e)?;
        let d_out = gpu.upload(&data(s.q_elements(), 4)).map_err(e)?;
        let out = gpu.alloc(s.q_elements()).map_err(e)?;
        let lse = gpu.alloc(s.lse_elements()).map_err(e)?;
        let (dq, dk, dv) = (
            gpu.alloc(s.q_elements()).map_err(e)?,
            gpu.alloc(s.kv_elements()).map_err(e)?,
            gpu.alloc(s.kv_elements()).map_err(e)?,
        );
        let time = |f: &dyn Fn() -> vlsa_kernels::Result<()>| -> Result<f64, String> {
            f().map_err(e)?;
            gpu.sync().map_err(e)?;
            let mut t = Vec::new();
            for _ in 0..iters {
                let start = Instant::now();
                f().map_err(e)?;
                gpu.sync().map_err(e)?;
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
            Ok(median(t))
        };
        let (fp, bp) = match method.as_str() {
            "auto" => (ForwardPath::Auto, BackwardPath::Auto),
            "fused" if s.kv_len <= attention::FEW_KEYS => (ForwardPath::FewKeys, BackwardPath::Fused),
            "fused" => (ForwardPath::Blocked, BackwardPath::Fused),
            "products" => (ForwardPath::Products, BackwardPath::Products),
            // The stored-scores backward where the shape allows it (keys per batch element).
            "scores" if s.kv_batch == s.batch => (ForwardPath::Blocked, BackwardPath::Scores),
            "scores" if s.kv_len <= attention::FEW_KEYS => (ForwardPath::FewKeys, BackwardPath::Fused),
            "scores" => (ForwardPath::Blocked, BackwardPath::Fused),
            other => return Err(format!("--method {other} is not one of auto, fused, products, scores")),
        };
        let path = gpu.kernel_path();
        let io = AttentionIo { q: &q, k: &k, v: &v, key_mask: None, out: &out, lse: &lse, probs: None };
        let grads = AttentionGrads { dq: &dq, dk: &dk, dv: &dv };
        let fwd = time(&|| attention::forward_path(&gpu, &io, &s, fp, path).map(|_| ()))?;
        // The backward as the model runs it: with the probabilities a products forward returned.
        let probs = attention::forward_path(&gpu, &io, &s, fp, path).map_err(e)?;
        let io = AttentionIo { probs: probs.as_ref(), ..io };
        let bwd = time(&|| attention::backward_path(&gpu, &io, &d_out, &grads, &s, bp, path))?;
        println!("{spec} {fwd:.4} {bwd:.4}");
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("attention_time: {e}");
        std::process::exit(1);
    }
}
