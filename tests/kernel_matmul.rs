//! The batched matmul (shaders/matmul.wgsl) against an f64 CPU reference: every kernel path the
//! adapter can run (registers, subgroup, tiled) on whatever adapter runs the tests, every
//! transpose combination, broadcasts, accumulation, edge sizes and zero sizes; its backward
//! (the same kernel with transpose flags) against the reference and finite differences.

mod common;

use common::{check, Case, Input, Rng};
use vlsa_kernels::elementwise::UnaryOp;
use vlsa_kernels::matmul::{
    matmul, matmul_act_only_with, matmul_bias, matmul_bias_act, matmul_bias_act_with, matmul_bias_with,
    matmul_row_sums, matmul_row_sums_with, matmul_with, plan, BiasActOut, Matmul,
};
use vlsa_kernels::{Gpu, GpuBuffer, KernelPath, Result};

/// Every kernel path the adapter can run: each is tested here whatever the default is.
fn paths() -> Vec<KernelPath> {
    common::gpu().kernel_paths()
}

/// Reference product in f64 with the same storage conventions as the kernel.
fn reference(op: &Matmul, a: &[f64], b: &[f64]) -> Vec<f64> {
    let (m, n, k) = (op.m, op.n, op.k);
    let mut out = vec![0.0; op.out_len()];
    for bi in 0..op.batch {
        let ab = if op.broadcast_a { 0 } else { bi * m * k };
        let bb = if op.broadcast_b { 0 } else { bi * k * n };
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for kk in 0..k {
                    let x = if op.trans_a { a[ab + kk * m + i] } else { a[ab + i * k + kk] };
                    let y = if op.trans_b { b[bb + j * k + kk] } else { b[bb + kk * n + j] };
                    s += x * y;
                }
                out[(bi * m + i) * n + j] = s;
            }
        }
    }
    out
}

/// [`reference`] of f32 operands.
fn reference_f32(op: &Matmul, a: &[f32], b: &[f32]) -> Vec<f64> {
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    reference(op, &wide(a), &wide(b))
}

fn run(gpu: &Gpu, path: KernelPath, op: &Matmul, a: &GpuBuffer, b: &GpuBuffer) -> Result<GpuBuffer> {
    let out = gpu.alloc(op.out_len())?;
    matmul_with(gpu, a, b, &out, op, path)?;
    Ok(out)
}

fn forward_case(rng: &mut Rng, op: Matmul, path: KernelPath) {
    let a = Input::random(rng, &[op.a_len()]);
    let b = Input::random(rng, &[op.b_len()]);
    check(Case::new(
        format!("{path:?} {}", op.describe()),
        vec![a, b],
        move |x| reference(&op, &x[0], &x[1]),
        move |gpu, x| run(gpu, path, &op, &x[0], &x[1]),
    ));
}

#[test]
fn forward_matches_reference_over_shapes_and_transposes() {
    let mut rng = Rng::new(1);
    // (batch, m, n, k): edges of every tile size, 1, 7, 33, 130, batch > 1, and shapes the
    // vec4 register kernel takes (n and the contiguous axes multiples of 4) with row and
    // column edges and, for trans_a, a K tail.
    let shapes = [
        (1, 1, 1, 1),
        (1, 7, 33, 130),
        (2, 33, 7, 1),
        (3, 130, 33, 7),
        (1, 1, 130, 33),
        (2, 33, 36, 20),
        (1, 130, 68, 132),
        (2, 36, 40, 7),
        (1, 4, 4, 4),
        // The subgroup kernels' 64 x 32 workgroup block: one row past it, partial lanes, a
        // column edge inside a lane's 32 columns, K tails for the general and tn kernels.
        (1, 65, 36, 12),
        (2, 72, 100, 9),
        (1, 200, 96, 36),
        // The 64-column subgroup kernels (N = 100 above, 228 here): a column edge inside the
        // last lane's 64 columns, several column blocks, a row edge. Row blocks with at most 8
        // rows left take the one-row-per-lane tail (65, 72 with a K tail for tn, 200, 66, 130
        // rows); 33 and 36 rows keep the full block with lanes past M.
        (2, 66, 228, 12),
    ];
    for path in paths() {
        for &(batch, m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                forward_case(&mut rng, Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb), path);
            }
        }
    }
}

#[test]
fn forward_matches_reference_on_model_shapes() {
    // Linear forward, input gradient and weight gradient at default-model-like sizes: 257 rows
    // (class token + 256 patches), several register blocks, the K tail of the weight gradient.
    let mut rng = Rng::new(2);
    for path in paths() {
        for (m, n, k, ta, tb) in
            [(257, 192, 64, false, true), (257, 64, 192, false, false), (192, 64, 257, true, false)]
        {
            forward_case(&mut rng, Matmul::new(1, m, n, k).trans_a(ta).trans_b(tb), path);
        }
    }
}

#[test]
fn broadcasts_match_reference() {
    let mut rng = Rng::new(3);
    for path in paths() {
        for &(batch, m, n, k) in &[(3, 7, 33, 5), (2, 33, 36, 20), (4, 1, 8, 130)] {
            for (ba, bb) in [(true, false), (false, true), (true, true)] {
                for (ta, tb) in [(false, false), (true, true), (false, true)] {
                    forward_case(
                        &mut rng,
                        Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb).broadcast_a(ba).broadcast_b(bb),
                        path,
                    );
                }
            }
        }
    }
}

#[test]
fn accumulate_adds_to_the_output() {
    let mut rng = Rng::new(4);
    for path in paths() {
        for &(batch, m, n, k, ta, tb) in
            &[(2, 7, 33, 130, false, true), (1, 33, 36, 20, false, false), (2, 36, 40, 7, true, false)]
        {
            let op = Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb).accumulate(true);
            let a = Input::random(&mut rng, &[op.a_len()]);
            let b = Input::random(&mut rng, &[op.b_len()]);
            let c = Input::random(&mut rng, &[op.out_len()]);
            check(Case::new(
                format!("{path:?} {}", op.describe()),
                vec![a, b, c],
                move |x| reference(&op, &x[0], &x[1]).iter().zip(&x[2]).map(|(p, c)| p + c).collect(),
                move |gpu, x| {
                    let out = gpu.alloc(op.out_len())?;
                    gpu.copy(&x[2], &out)?;
                    matmul_with(gpu, &x[0], &x[1], &out, &op, path)?;
                    Ok(out)
                },
            ));
        }
    }
}

#[test]
fn bias_is_added_to_every_column() {
    // out = A·B + bias[j] and out += A·B + bias[j], on vec4 and general kernels of every path,
    // a Linear layer's x·Wᵀ with the weight shared by the batch, and K = 0 (out = bias).
    let mut rng = Rng::new(7);
    for path in paths() {
        for &(batch, m, n, k, ta, tb, bb) in &[
            (2, 7, 33, 130, false, true, true),
            (1, 65, 36, 12, false, false, false),
            (2, 72, 100, 9, true, false, false),
            (1, 130, 68, 132, false, true, false),
            (2, 33, 40, 20, true, true, false),
            (1, 5, 6, 0, false, false, false),
        ] {
            for accumulate in [false, true] {
                let op = Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb).broadcast_b(bb).accumulate(accumulate);
                let a = Input::random(&mut rng, &[op.a_len()]);
                let b = Input::random(&mut rng, &[op.b_len()]);
                let c = Input::random(&mut rng, &[op.out_len()]);
                let bias = Input::random(&mut rng, &[n]);
                check(Case::new(
                    format!("{path:?} {} + bias", op.describe()),
                    vec![a, b, c, bias],
                    move |x| {
                        let product = reference(&op, &x[0], &x[1]);
                        let old = |i: usize| if accumulate { x[2][i] } else { 0.0 };
                        product.iter().enumerate().map(|(i, p)| p + x[3][i % n] + old(i)).collect()
                    },
                    move |gpu, x| {
                        let out = gpu.alloc(op.out_len())?;
                        gpu.copy(&x[2], &out)?;
                        matmul_bias_with(gpu, &x[0], &x[1], &x[3], &out, &op, path)?;
                        Ok(out)
                    },
                ));
            }
        }
    }
}

#[test]
fn split_k_products_match_reference() {
    // Small outputs with a long K (weight gradients) run split-K on the tiled path: partial
    // sums per K range, then a fixed-order reduction that applies bias and accumulate. Aligned
    // (vec4) and general kernels, a K that does not divide evenly, batch, broadcast.
    let gpu = common::gpu();
    let mut rng = Rng::new(8);
    for &(batch, m, n, k, ta, tb, ba) in &[
        (1, 36, 40, 2100, true, false, false),
        (2, 7, 33, 2053, false, false, false),
        (1, 64, 64, 4096, false, true, false),
        (2, 12, 8, 2048, true, true, true),
    ] {
        let op0 = Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb).broadcast_a(ba);
        assert!(
            plan(gpu, &op0, KernelPath::Tiled).splits > 1 || gpu.limits().max_compute_invocations_per_workgroup < 256
        );
        for accumulate in [false, true] {
            let op = op0.accumulate(accumulate);
            let a = Input::random(&mut rng, &[op.a_len()]);
            let b = Input::random(&mut rng, &[op.b_len()]);
            let c = Input::random(&mut rng, &[op.out_len()]);
            let bias = Input::random(&mut rng, &[n]);
            check(Case::new(
                format!("Tiled split-K {} + bias", op.describe()),
                vec![a, b, c, bias],
                move |x| {
                    let product = reference(&op, &x[0], &x[1]);
                    let old = |i: usize| if accumulate { x[2][i] } else { 0.0 };
                    product.iter().enumerate().map(|(i, p)| p + x[3][i % n] + old(i)).collect()
                },
                move |gpu, x| {
                    let out = gpu.alloc(op.out_len())?;
                    gpu.copy(&x[2], &out)?;
                    matmul_bias_with(gpu, &x[0], &x[1], &x[3], &out, &op, KernelPath::Tiled)?;
                    Ok(out)
                },
            ));
        }
        // Deterministic: the same product twice gives the same bits.
        let a = gpu.upload(&rng.vec(op0.a_len())).unwrap();
        let b = gpu.upload(&rng.vec(op0.b_len())).unwrap();
        let first = run(gpu, KernelPath::Tiled, &op0, &a, &b).unwrap();
        let second = run(gpu, KernelPath::Tiled, &op0, &a, &b).unwrap();
        assert_eq!(gpu.download(&first).unwrap(), gpu.download(&second).unwrap(), "{}", op0.describe());
    }
}

#[test]
fn activation_epilogue_keeps_the_product_and_applies_f() {
    // matmul_bias_act: out = A·B (bare) and act_out = f(A·B + bias), on vec4 and general kernels
    // of every path, a Linear's x·Wᵀ, and a long-K product that the tiled path splits (the
    // activation then runs in the split-K reduction). Gelu's own accuracy is tested with the
    // elementwise kernels, which share activation.wgsl.
    let mut rng = Rng::new(9);
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    for path in paths() {
        for &(batch, m, n, k, ta, tb) in &[
            (1, 65, 36, 12, false, true),
            (2, 7, 33, 130, false, false),
            (1, 72, 100, 9, true, false),
            (1, 36, 40, 2100, true, false),
        ] {
            for act in [UnaryOp::Relu, UnaryOp::QuickGelu] {
                let op = Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb);
                let inputs = vec![
                    Input::random(&mut rng, &[op.a_len()]),
                    Input::random(&mut rng, &[op.b_len()]),
                    Input::random(&mut rng, &[n]),
                ];
                let f = move |z: f64| match act {
                    UnaryOp::Relu => z.max(0.0),
                    _ => z * sigmoid(1.702 * z),
                };
                // "product" and "f": the two outputs of matmul_bias_act; "f only": matmul_act_only
                // (inference), which stores f alone.
                for (activated, only) in [(false, false), (true, false), (true, true)] {
                    check(
                        Case::new(
                            format!(
                                "{path:?} {} + bias, {act:?} ({})",
                                op.describe(),
                                if only {
                                    "f only"
                                } else if activated {
                                    "f"
                                } else {
                                    "product"
                                }
                            ),
                            inputs.clone(),
                            move |x| {
                                let product = reference(&op, &x[0], &x[1]);
                                if !activated {
                                    return product;
                                }
                                product.iter().enumerate().map(|(i, p)| f(p + x[2][i % n])).collect()
                            },
                            move |gpu, x| {
                                let out = gpu.alloc(op.out_len())?;
                                let act_out = gpu.alloc(op.out_len())?;
                                let epi = BiasActOut { bias: &x[2], act, act_out: &act_out };
                                if only {
                                    matmul_act_only_with(gpu, &x[0], &x[1], &op, &epi, path)?;
                                    return Ok(act_out);
                                }
                                matmul_bias_act_with(gpu, &x[0], &x[1], &out, &op, &epi, path)?;
                                Ok(if activated { act_out } else { out })
                            },
                        )
                        // K up to 2100: f32 sums of that length carry about 1e-5 of rounding.
                        .fwd_tol(1e-4, 1e-4),
                    );
                }
            }
        }
    }
}

#[test]
fn activation_epilogue_refuses_accumulation_and_a_shared_buffer() {
    let gpu = common::gpu();
    let op = Matmul::new(1, 4, 4, 4);
    let (a, b, bias) = (gpu.zeros(16).unwrap(), gpu.zeros(16).unwrap(), gpu.zeros(4).unwrap());
    let (out, act_out) = (gpu.zeros(16).unwrap(), gpu.zeros(16).unwrap());
    let epi = BiasActOut { bias: &bias, act: UnaryOp::Gelu, act_out: &act_out };
    let err = matmul_bias_act(gpu, &a, &b, &out, &op.accumulate(true), &epi).unwrap_err().to_string();
    assert!(err.contains("cannot accumulate"), "{err}");
    let same = BiasActOut { bias: &bias, act: UnaryOp::Gelu, act_out: &out };
    let err = matmul_bias_act(gpu, &a, &b, &out, &op, &same).unwrap_err().to_string();
    assert!(err.contains("two different buffers"), "{err}");
    let short = gpu.zeros(8).unwrap();
    let small = BiasActOut { bias: &bias, act: UnaryOp::Gelu, act_out: &short };
    let err = matmul_bias_act(gpu, &a, &b, &out, &op, &small).unwrap_err().to_string();
    assert!(err.contains("activation output has 8 elements"), "{err}");
    // The inference form: the same refusals where they apply.
    let path = gpu.kernel_path();
    let err = matmul_act_only_with(gpu, &a, &b, &op.accumulate(true), &epi, path).unwrap_err().to_string();
    assert!(err.contains("cannot accumulate"), "{err}");
    let err = matmul_act_only_with(gpu, &a, &b, &op, &small, path).unwrap_err().to_string();
    assert!(err.contains("has 8 elements"), "{err}");
}

#[test]
fn plans_name_the_entry_points() {
    // The vec4 kernels where the contiguous axes allow, general ones otherwise, the large tile
    // for big aligned outputs, split-K for long K and small outputs.
    let gpu = common::gpu();
    let aligned = Matmul::new(1, 1024, 1024, 1024);
    let odd = Matmul::new(1, 7, 33, 130);
    assert_eq!(plan(gpu, &aligned, KernelPath::Registers).entry, "registers_nn");
    assert_eq!(plan(gpu, &odd.trans_b(true), KernelPath::Registers).entry, "registers_general");
    if gpu.limits().max_compute_invocations_per_workgroup >= 256 {
        // 256 tiles of 128 x 128: enough for the large tile (1024² has only 64).
        assert_eq!(plan(gpu, &Matmul::new(1, 2048, 2048, 64), KernelPath::Tiled).entry, "tiled_128");
        assert_eq!(plan(gpu, &aligned, KernelPath::Tiled).entry, "tiled_64");
        assert_eq!(plan(gpu, &Matmul::new(1, 256, 192, 64), KernelPath::Tiled).entry, "tiled_64");
        assert_eq!(plan(gpu, &odd, KernelPath::Tiled).entry, "tiled_general");
        let grad = plan(gpu, &Matmul::new(1, 192, 768, 2056).trans_a(true), KernelPath::Tiled);
        assert_eq!((grad.entry, grad.splits), ("tiled_64", 5), "{}", grad.describe());
    }
    let sub = plan(gpu, &aligned.trans_a(true), KernelPath::Subgroup);
    if gpu.info().runs_subgroup_kernels() {
        // From storage: 64-column blocks where they pad N no more than 32-column ones: 1024 and
        // 192 (none), 100 (to 128 either way); 32-column blocks for N = 32 and the 260 keys (288,
        // not 320). From textures, where the operands fit them (64 keys per row here): 32-column
        // blocks for every N.
        let textures = gpu.texture_operands();
        let (wide, cols) = if textures { ("texture", 32) } else { ("subgroup_wide", 64) };
        assert_eq!((sub.entry, sub.cols), (format!("{wide}_tn").as_str(), cols));
        let narrow = if textures { "texture_nt" } else { "subgroup_nt" };
        for (n, entry) in
            [(192, format!("{wide}_nt")), (100, format!("{wide}_nt")), (32, narrow.into()), (260, narrow.into())]
        {
            assert_eq!(
                plan(gpu, &Matmul::new(24, 257, n, 64).trans_b(true), KernelPath::Subgroup).entry,
                entry,
                "N = {n}"
            );
        }
        assert_eq!(plan(gpu, &odd, KernelPath::Subgroup).entry, "subgroup_general");
    } else {
        assert_eq!((sub.path, sub.entry), (KernelPath::Registers, "registers_tn"));
    }
}

/// Σₖ A[b, i, k] of A as the product reads it ([M, K] per batch), in f64.
fn reference_row_sums(op: &Matmul, a: &[f64]) -> Vec<f64> {
    let mut sums = vec![0.0; op.batch * op.m];
    for bi in 0..op.batch {
        let ab = if op.broadcast_a { 0 } else { bi * op.m * op.k };
        for i in 0..op.m {
            sums[bi * op.m + i] =
                (0..op.k).map(|kk| if op.trans_a { a[ab + kk * op.m + i] } else { a[ab + i * op.k + kk] }).sum();
        }
    }
    sums
}

#[test]
fn row_sums_come_with_the_product() {
    // matmul_row_sums: the product as matmul gives it (bit for bit, accumulating too) and the
    // sums of A's rows against the f64 reference, on every path, with texture operands on and
    // off; the subgroup blocks compute the sums in the product's own launch (no sum_axis
    // launch), the other paths and the general kernels after it. Shapes: a Linear's weight
    // gradient (tn, K = the rows, with a K tail), the one-row tail block with 4 and 8 rows,
    // several column blocks (only the first computes the sums), the 64-column kernels, batches,
    // a shared A, M no multiple of 4 (65, 7: the sums after the product), an unaligned shape
    // and K = 0. With subgroups a context of its own, as texture operands
    // are switched here; without (llvmpipe GL, where a second context would contend for the one
    // GL context under parallel tests) the shared one.
    let subgroups = common::gpu().info().runs_subgroup_kernels();
    let own = subgroups.then(|| Gpu::new().unwrap());
    let gpu = own.as_ref().unwrap_or(common::gpu());
    let mut rng = Rng::new(12);
    let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect() };
    let cases = [
        (1, 192, 64, 257, true, false, false),
        (1, 128, 192, 516, true, false, false),
        (1, 65, 36, 12, false, false, false),
        (1, 68, 36, 12, false, false, false),
        (2, 72, 100, 9, true, false, false),
        (3, 68, 228, 12, false, true, false),
        (2, 64, 64, 64, false, false, true),
        (2, 68, 96, 36, true, true, true),
        (1, 7, 33, 130, false, false, false),
        (1, 64, 16, 20, true, false, false),
        (2, 5, 8, 0, true, false, false),
    ];
    // Texture operands change only the subgroup path's kernels.
    let mut runs: Vec<(KernelPath, bool)> = gpu.kernel_paths().into_iter().map(|path| (path, true)).collect();
    if subgroups {
        runs.push((KernelPath::Subgroup, false));
    }
    for (path, textures) in runs {
        if subgroups {
            gpu.set_texture_operands(textures);
        }
        for &(batch, m, n, k, ta, tb, ba) in &cases {
            for accumulate in [false, true] {
                let op = Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb).broadcast_a(ba).accumulate(accumulate);
                let name = format!("{path:?}, textures {textures}: {}", op.describe());
                let (av, bv, prev) = (random(op.a_len()), random(op.b_len()), random(op.out_len()));
                let (a, b) = (gpu.upload(&av).unwrap(), gpu.upload(&bv).unwrap());
                let (out, want_out) = (gpu.upload(&prev).unwrap(), gpu.upload(&prev).unwrap());
                let sums = gpu.upload(&random(batch * m + 3)).unwrap();
                gpu.set_profiling(true).unwrap();
                matmul_row_sums_with(gpu, &a, &b, &out, &sums, &op, path).unwrap();
                let profile = gpu.take_profile().unwrap().expect("profiling is on");
                gpu.set_profiling(false).unwrap();
                matmul_with(gpu, &a, &b, &want_out, &op, path).unwrap();
                assert_eq!(gpu.download(&out).unwrap(), gpu.download(&want_out).unwrap(), "{name}: the product");
                let got = gpu.download(&sums).unwrap();
                let wide: Vec<f64> = av.iter().map(|&x| x as f64).collect();
                common::assert_close(
                    &format!("{name}: row sums"),
                    &got[..batch * m],
                    &reference_row_sums(&op, &wide),
                    1e-5,
                    1e-5,
                );
                let entry = plan(gpu, &op, path).entry;
                // K = 0: zeros, no sums to take.
                let in_launch = subgroups && path == KernelPath::Subgroup && entry != "subgroup_general" && m % 4 == 0;
                let reductions = profile.records.iter().filter(|r| r.label.kernel == "sum_axis").count();
                assert_eq!(reductions == 0, in_launch || k == 0, "{name}: {entry} with {reductions} sum_axis launches");
            }
        }
    }
}

#[test]
fn row_sums_refuse_a_short_or_shared_buffer() {
    let gpu = common::gpu();
    let op = Matmul::new(2, 4, 6, 3);
    let (a, b, out) = (gpu.alloc(24).unwrap(), gpu.alloc(36).unwrap(), gpu.alloc(48).unwrap());
    let err = matmul_row_sums(gpu, &a, &b, &out, &gpu.alloc(7).unwrap(), &op).unwrap_err().to_string();
    assert!(err.contains("row sums have 7 elements") && err.contains("needs 8"), "{err}");
    let err = matmul_row_sums(gpu, &a, &b, &out, &out, &op).unwrap_err().to_string();
    assert!(err.contains("a buffer of their own"), "{err}");
}

#[test]
fn short_bias_is_an_error() {
    let gpu = common::gpu();
    let op = Matmul::new(1, 4, 6, 3);
    let (a, b, out) = (gpu.alloc(12).unwrap(), gpu.alloc(18).unwrap(), gpu.alloc(24).unwrap());
    let bias = gpu.alloc(5).unwrap();
    let err = matmul_bias(gpu, &a, &b, &bias, &out, &op).unwrap_err().to_string();
    assert!(err.contains("bias has 5 elements") && err.contains("6 columns"), "{err}");
}

#[test]
fn zero_sizes() {
    let gpu = common::gpu();
    let junk = vec![7.0f32; 12];
    for path in paths() {
        // K = 0: the product is zero; it overwrites the output, or leaves it when accumulating.
        for accumulate in [false, true] {
            let op = Matmul::new(2, 2, 3, 0).accumulate(accumulate);
            let (a, b) = (gpu.alloc(0).unwrap(), gpu.alloc(0).unwrap());
            let out = gpu.upload(&junk).unwrap();
            matmul_with(gpu, &a, &b, &out, &op, path).unwrap();
            let want = if accumulate { 7.0 } else { 0.0 };
            assert_eq!(gpu.download(&out).unwrap(), vec![want; 12], "{path:?} {}", op.describe());
        }
        // M, N or batch = 0: nothing to write, and no error.
        for op in [Matmul::new(2, 0, 3, 4), Matmul::new(2, 3, 0, 4), Matmul::new(0, 3, 3, 4)] {
            let a = gpu.alloc(op.a_len()).unwrap();
            let b = gpu.alloc(op.b_len()).unwrap();
            let out = gpu.alloc(op.out_len()).unwrap();
            matmul_with(gpu, &a, &b, &out, &op, path).unwrap();
        }
    }
    gpu.sync().unwrap();
}

#[test]
fn default_path_matches_the_adapter() {
    // matmul() runs the path Gpu::kernel_path picks; check it gives the same answer.
    let gpu = common::gpu();
    let op = Matmul::new(2, 33, 36, 20).trans_b(true);
    let mut rng = Rng::new(5);
    let a = gpu.upload(&rng.vec(op.a_len())).unwrap();
    let b = gpu.upload(&rng.vec(op.b_len())).unwrap();
    let out = gpu.alloc(op.out_len()).unwrap();
    matmul(gpu, &a, &b, &out, &op).unwrap();
    let want = run(gpu, gpu.kernel_path(), &op, &a, &b).unwrap();
    assert_eq!(gpu.download(&out).unwrap(), gpu.download(&want).unwrap());
}

/// dA and dB of C = op(A)·op(B) as products of the same kernel, in A's and B's storage layouts.
/// With a shared B (a Linear weight), dB sums over the batch: the batch folds into the K axis.
fn gradients(
    gpu: &Gpu,
    path: KernelPath,
    op: &Matmul,
    a: &GpuBuffer,
    b: &GpuBuffer,
    dc: &GpuBuffer,
) -> Result<Vec<Option<GpuBuffer>>> {
    let (m, n, k, batch) = (op.m, op.n, op.k, op.batch);
    assert!(!op.broadcast_a && (!op.broadcast_b || !op.trans_a), "not expressible as one product");
    let da = if op.trans_a {
        // A stored [K, M]: dA = (dC·Bᵀ)ᵀ = B·dCᵀ
        run(
            gpu,
            path,
            &Matmul::new(batch, k, m, n).trans_a(op.trans_b).trans_b(true).broadcast_a(op.broadcast_b),
            b,
            dc,
        )?
    } else {
        // dA = dC·Bᵀ
        run(gpu, path, &Matmul::new(batch, m, k, n).trans_b(!op.trans_b).broadcast_b(op.broadcast_b), dc, b)?
    };
    let (rows, fold) = if op.broadcast_b { (batch * m, 1) } else { (m, batch) };
    let db = if op.trans_b {
        // B stored [N, K]: dB = dCᵀ·A
        run(gpu, path, &Matmul::new(fold, n, k, rows).trans_a(true).trans_b(op.trans_a), dc, a)?
    } else {
        // dB = Aᵀ·dC
        run(gpu, path, &Matmul::new(fold, k, n, rows).trans_a(!op.trans_a), a, dc)?
    };
    Ok(vec![Some(da), Some(db)])
}

fn reference_gradients(op: &Matmul, x: &[Vec<f64>], dc: &[f64]) -> Vec<Option<Vec<f64>>> {
    let (m, n, k) = (op.m, op.n, op.k);
    let mut da = vec![0.0; x[0].len()];
    let mut db = vec![0.0; x[1].len()];
    for bi in 0..op.batch {
        let ab = if op.broadcast_a { 0 } else { bi * m * k };
        let bb = if op.broadcast_b { 0 } else { bi * k * n };
        for i in 0..m {
            for j in 0..n {
                let g = dc[(bi * m + i) * n + j];
                for kk in 0..k {
                    let ia = if op.trans_a { ab + kk * m + i } else { ab + i * k + kk };
                    let ib = if op.trans_b { bb + j * k + kk } else { bb + kk * n + j };
                    da[ia] += g * x[1][ib];
                    db[ib] += g * x[0][ia];
                }
            }
        }
    }
    vec![Some(da), Some(db)]
}

#[test]
fn texture_operands_give_the_storage_kernels_products_bit_for_bit() {
    // The 64-column subgroup kernels reading A and B from textures (lavapipe's default where the
    // operands fit: rows of a multiple of 64 floats) against the same kernels reading storage
    // and the f64 reference: every layout, batch and broadcast, the one-row tail block, a
    // column edge, a K tail, and the bias, accumulate and activation epilogues. A context of
    // its own, so that switching textures off here changes no other test's plans.
    let gpu = Gpu::new().unwrap();
    if !gpu.info().runs_subgroup_kernels() {
        // No subgroups (llvmpipe GL): the texture kernels are never chosen.
        assert!(!gpu.texture_operands(), "texture operands on without subgroups");
        gpu.set_texture_operands(true);
        assert!(!plan(&gpu, &Matmul::new(1, 128, 64, 64), KernelPath::Subgroup).entry.starts_with("texture_"));
        return;
    }
    let mut rng = Rng::new(11);
    let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect() };
    // (batch, m, n, k, trans_a, trans_b, broadcast_b); each fits textures in its layout, as
    // stored rows or flat.
    let cases = [
        (1, 128, 64, 64, false, false, false),
        (1, 128, 64, 64, false, true, false),
        (1, 128, 64, 64, true, false, false),
        (1, 128, 64, 64, true, true, false),
        (2, 65, 100, 64, false, true, false), // one-row tail block, a column edge in the last lane
        (3, 192, 64, 9, true, false, false),  // a K tail, batched
        (2, 257, 192, 128, false, true, true), // a Linear: x · Wᵀ, W shared by the batch
        (2, 64, 192, 128, true, true, false), // both transposed, batched
        // Rows of other lengths than multiples of 64 floats, from flat textures (A_FLAT_ROW,
        // B_FLAT_ROW): the EM's M-step Zᵀ X (Z rows of 16 bases) and reconstruction Z mu,
        // then both operands flat in every layout, with a 4-row tail block and a K tail.
        (8, 16, 128, 256, true, false, false),
        (8, 256, 128, 16, false, false, false),
        (2, 68, 20, 36, false, false, false),
        (2, 68, 20, 36, false, true, false),
        (3, 68, 20, 36, true, false, false),
        (1, 68, 20, 36, true, true, false),
        (2, 72, 12, 44, false, true, true), // a shared flat B
    ];
    for &(batch, m, n, k, ta, tb, bb) in &cases {
        let op = Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb).broadcast_b(bb);
        let (av, bv, biasv, prev) = (random(op.a_len()), random(op.b_len()), random(n), random(op.out_len()));
        let (a, b, bias) = (gpu.upload(&av).unwrap(), gpu.upload(&bv).unwrap(), gpu.upload(&biasv).unwrap());
        let want = reference_f32(&op, &av, &bv);
        // Per source: the plain product, bias + accumulate onto `prev`, bias + gelu (with the product kept).
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            let entry = plan(&gpu, &op, KernelPath::Subgroup).entry;
            assert_eq!(entry.starts_with("texture_"), textures, "{} ran {entry}", op.describe());
            let plain = gpu.alloc(op.out_len()).unwrap();
            let acc = gpu.upload(&prev).unwrap();
            // Texture copies per launch: A and B for the plain product (which binds a
            // placeholder for the old output and copies nothing for it); then only the old
            // output, as A and B are still in their textures.
            gpu.set_profiling(true).unwrap();
            matmul_with(&gpu, &a, &b, &plain, &op, KernelPath::Subgroup).unwrap();
            let plain_copies = copies(&gpu);
            matmul_bias_with(&gpu, &a, &b, &bias, &acc, &op.accumulate(true), KernelPath::Subgroup).unwrap();
            let acc_copies = copies(&gpu);
            gpu.set_profiling(false).unwrap();
            let want = if textures { (2, 1) } else { (0, 0) };
            assert_eq!((plain_copies, acc_copies), want, "{}: texture copies, plain and accumulating", op.describe());
            let (kept, act) = (gpu.alloc(op.out_len()).unwrap(), gpu.alloc(op.out_len()).unwrap());
            let epi = BiasActOut { bias: &bias, act: UnaryOp::Gelu, act_out: &act };
            matmul_bias_act_with(&gpu, &a, &b, &kept, &op, &epi, KernelPath::Subgroup).unwrap();
            let got: Vec<Vec<f32>> = [&plain, &acc, &kept, &act].iter().map(|buf| gpu.download(buf).unwrap()).collect();
            runs.push(got);
        }
        assert_eq!(runs[0], runs[1], "{}: textures and storage differ", op.describe());
        common::assert_close(&format!("texture {}", op.describe()), &runs[0][0], &want, 1e-5, 1e-5);
        let with_bias: Vec<f64> =
            want.iter().enumerate().map(|(i, &v)| v + biasv[i % n] as f64 + prev[i] as f64).collect();
        common::assert_close(
            &format!("texture {} + bias, accumulate", op.describe()),
            &runs[0][1],
            &with_bias,
            1e-5,
            1e-5,
        );
    }
    // Rows that are no multiple of 64 floats read flat textures; unaligned shapes (no vec4
    // kernel) keep the storage loads.
    gpu.set_texture_operands(true);
    assert_eq!(plan(&gpu, &Matmul::new(1, 128, 100, 64), KernelPath::Subgroup).entry, "texture_nn");
    assert_eq!(plan(&gpu, &Matmul::new(1, 7, 33, 130), KernelPath::Subgroup).entry, "subgroup_general");
}

/// Texture copies recorded since profiling was switched on or the profile last taken.
fn copies(gpu: &Gpu) -> usize {
    let profile = gpu.take_profile().unwrap().expect("profiling is on");
    profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count()
}

#[test]
fn texture_operands_are_safe_across_threads() {
    // Launches of one shape share scratch textures: each launch's copies and dispatch are
    // recorded together, so threads launching the same shape at once each get their own
    // product. (Copies and launches recorded apart let one thread's copy overwrite another's
    // operand before its launch: the text encoder's tests caught that.)
    let gpu = Gpu::new().unwrap();
    if !gpu.info().runs_subgroup_kernels() {
        return; // no texture kernels without subgroups (texture_operands_give_... checks that)
    }
    gpu.set_texture_operands(true);
    let op = Matmul::new(1, 128, 64, 64);
    assert_eq!(plan(&gpu, &op, KernelPath::Subgroup).entry, "texture_nn");
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let gpu = gpu.clone();
            scope.spawn(move || {
                let mut rng = Rng::new(100 + t);
                for i in 0..8 {
                    let av: Vec<f32> = (0..op.a_len()).map(|_| rng.uniform() * 2.0 - 1.0).collect();
                    let bv: Vec<f32> = (0..op.b_len()).map(|_| rng.uniform() * 2.0 - 1.0).collect();
                    let (a, b) = (gpu.upload(&av).unwrap(), gpu.upload(&bv).unwrap());
                    let out = gpu.alloc(op.out_len()).unwrap();
                    matmul_with(&gpu, &a, &b, &out, &op, KernelPath::Subgroup).unwrap();
                    let want = reference_f32(&op, &av, &bv);
                    common::assert_close(
                        &format!("thread {t}, product {i}"),
                        &gpu.download(&out).unwrap(),
                        &want,
                        1e-5,
                        1e-5,
                    );
                }
            });
        }
    });
}

#[test]
fn backward_matches_reference_and_finite_differences() {
    let mut rng = Rng::new(6);
    let mut ops = Vec::new();
    // (1, 9, 40, 8): a 64-column subgroup kernel in the forward and in B's gradient.
    for &(batch, m, n, k) in &[(1, 7, 5, 3), (2, 1, 9, 4), (2, 33, 8, 7), (1, 9, 40, 8)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            ops.push(Matmul::new(batch, m, n, k).trans_a(ta).trans_b(tb));
        }
    }
    // A Linear layer: x [2, 7, 5] · Wᵀ with W [6, 5] shared by the batch; and a shared B [K, N].
    ops.push(Matmul::new(2, 7, 6, 5).trans_b(true).broadcast_b(true));
    ops.push(Matmul::new(3, 4, 8, 12).broadcast_b(true));
    // Operands whose rows are 64 floats: the forward and every gradient read textures on
    // lavapipe (texture_operands_give_the_storage_kernels_products_bit_for_bit).
    ops.push(Matmul::new(1, 64, 64, 64));
    ops.push(Matmul::new(1, 64, 64, 64).trans_b(true));
    for path in paths() {
        for &op in &ops {
            let a = Input::random(&mut rng, &[op.a_len()]);
            let b = Input::random(&mut rng, &[op.b_len()]);
            check(
                Case::new(
                    format!("{path:?} backward {}", op.describe()),
                    vec![a, b],
                    move |x| reference(&op, &x[0], &x[1]),
                    move |gpu, x| run(gpu, path, &op, &x[0], &x[1]),
                )
                .backward(
                    move |gpu, x, dc| gradients(gpu, path, &op, &x[0], &x[1], dc),
                    move |x, dc| reference_gradients(&op, x, dc),
                ),
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_shapes() {
    let gpu = common::gpu();
    let op = Matmul::new(2, 7, 5, 3).trans_b(true);
    let a = gpu.alloc(2 * 7 * 3).unwrap();
    let b = gpu.alloc(2 * 5 * 3).unwrap();
    let out = gpu.alloc(2 * 7 * 5).unwrap();
    let short = gpu.alloc(10).unwrap();
    for (a, b, out, what) in [(&short, &b, &out, "A"), (&a, &short, &out, "B"), (&a, &b, &short, "output")] {
        let err = matmul(gpu, a, b, out, &op).unwrap_err().to_string();
        assert!(err.contains(what) && err.contains("has 10 elements"), "{err}");
        assert!(err.contains("[2, 7, 3]") && err.contains("[2, 5, 3]") && err.contains("[2, 7, 5]"), "{err}");
    }
}
