//! Prints the matmul kernel's speed on square shapes and on the default model's shapes, one
//! line per shape and kernel path: `M N K GFLOPS LAYOUT PATH` (LAYOUT: nn, nt = B stored
//! transposed as a Linear weight, tn = A stored transposed). Each figure is the best of a few
//! timed repetitions with a device sync inside the timing; the paths of one shape run back to
//! back, so their ratio is measured under the same load. benches/compare_matmul.py runs numpy
//! on the same lines.
//!
//! Run: `cargo run --example matmul_gflops [-- --quick] [--path NAME[,NAME..]|all] [--shape MxNxK/LAYOUT ...]`
//! (default: the adapter's path and the built-in shape list; `--shape` replaces the list). The
//! dev profile is enough: the kernel speed is set by the adapter's shader compiler, not by
//! Rust's optimisation level.

use std::time::Instant;

use vlsa_kernels::matmul::{matmul_with, Matmul};
use vlsa_kernels::{Gpu, KernelPath};

/// (M, N, K, trans_a, trans_b) of square products and of the default model's linear layers,
/// forward (x·Wᵀ), input gradient (dY·W) and weight gradient (dYᵀ·X), for batch 1 and 8.
fn shapes(quick: bool) -> Vec<(usize, usize, usize, bool, bool)> {
    let mut s: Vec<(usize, usize, usize, bool, bool)> =
        [256, 512, 1024, 2048].iter().map(|&n| (n, n, n, false, false)).collect();
    if quick {
        s.truncate(3);
    }
    for batch in [1usize, 8] {
        let encoder = batch * 257;
        let decoder = batch * 256;
        // (tokens, in, out) of every Linear: encoder attention/MLP, visual_proj, decoder.
        let layers = [
            (encoder, 192, 192),
            (encoder, 192, 768),
            (encoder, 768, 192),
            (decoder, 192, 128),
            (decoder, 128, 128),
            (decoder, 128, 512),
            (decoder, 512, 128),
        ];
        for (t, din, dout) in layers {
            for shape in [(t, dout, din, false, true), (t, din, dout, false, false), (dout, din, t, true, false)] {
                if !s.contains(&shape) {
                    s.push(shape);
                }
            }
        }
    }
    s
}

/// Parses `MxNxK/LAYOUT`, e.g. `512x192x768/nt`.
fn parse_shape(text: &str) -> Option<(usize, usize, usize, bool, bool)> {
    let (dims, layout) = text.split_once('/').unwrap_or((text, "nn"));
    let d: Vec<usize> = dims.split('x').map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let (ta, tb) = match layout {
        "nn" => (false, false),
        "nt" => (false, true),
        "tn" => (true, false),
        "tt" => (true, true),
        _ => return None,
    };
    (d.len() == 3).then(|| (d[0], d[1], d[2], ta, tb))
}

fn fail(message: String) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let gpu = Gpu::new().unwrap_or_else(|e| fail(e.to_string()));
    let mut paths = vec![gpu.kernel_path()];
    let mut chosen = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {}
            "--path" => match it.next().map(String::as_str) {
                Some("all") => paths = gpu.kernel_paths(),
                Some(names) => {
                    paths = names
                        .split(',')
                        .map(|name| {
                            KernelPath::parse(name).unwrap_or_else(|| {
                                fail(format!("--path {name} is not registers, subgroup, tiled or all"))
                            })
                        })
                        .collect()
                }
                None => fail("--path needs a value".into()),
            },
            "--shape" => {
                let text = it.next().unwrap_or_else(|| fail("--shape needs a value".into()));
                chosen.push(parse_shape(text).unwrap_or_else(|| fail(format!("--shape {text} is not MxNxK/LAYOUT"))));
            }
            other => fail(format!("unknown argument {other}")),
        }
    }
    eprintln!("adapter: {} ({}, {})", gpu.info().name, gpu.info().backend, gpu.info().device_type);
    let fill = |n: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect() };
    let list = if chosen.is_empty() { shapes(quick) } else { chosen };
    for (m, n, k, ta, tb) in list {
        let op = Matmul::new(1, m, n, k).trans_a(ta).trans_b(tb);
        let a = gpu.upload(&fill(op.a_len())).expect("upload A");
        let b = gpu.upload(&fill(op.b_len())).expect("upload B");
        let out = gpu.alloc(op.out_len()).expect("allocate the output");
        // Enough repetitions per timing that the ~50 us dispatch cost does not dominate.
        let reps = (2e8 / op.flops() as f64).ceil().clamp(1.0, 50.0) as usize;
        let layout = match (ta, tb) {
            (false, false) => "nn",
            (false, true) => "nt",
            (true, false) => "tn",
            (true, true) => "tt",
        };
        for &path in &paths {
            matmul_with(&gpu, &a, &b, &out, &op, path).expect("matmul");
            gpu.sync().expect("sync");
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..reps {
                    matmul_with(&gpu, &a, &b, &out, &op, path).expect("matmul");
                }
                gpu.sync().expect("sync");
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            println!("{m} {n} {k} {:.2} {layout} {path}", op.flops() as f64 / best / 1e9);
        }
    }
}
