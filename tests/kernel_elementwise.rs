//! Elementwise kernels (shaders/elementwise.wgsl) against their CPU references.

mod common;

use common::{check, Case, Input, Rng};
use vlsa_kernels::elementwise::{self, broadcast_shape, broadcast_strides, BiasAct, BinaryOp, UnaryOp};

/// Reference broadcast binary op in f64.
fn ref_binary(op: BinaryOp, a: &[f64], sa: &[usize], b: &[f64], sb: &[usize]) -> Vec<f64> {
    let out = broadcast_shape(sa, sb).unwrap();
    let (ta, tb) = (broadcast_strides(sa, &out), broadcast_strides(sb, &out));
    let n: usize = out.iter().product();
    (0..n)
        .map(|i| {
            let (mut rest, mut ia, mut ib) = (i, 0, 0);
            for k in (0..out.len()).rev() {
                let c = rest % out[k];
                rest /= out[k];
                ia += c * ta[k];
                ib += c * tb[k];
            }
            match op {
                BinaryOp::Add => a[ia] + b[ib],
                BinaryOp::Sub => a[ia] - b[ib],
                BinaryOp::Mul => a[ia] * b[ib],
                BinaryOp::Div => a[ia] / b[ib],
            }
        })
        .collect()
}

#[test]
fn broadcast_binary_matches_reference() {
    let mut rng = Rng::new(1);
    let shapes: &[(&[usize], &[usize])] = &[
        (&[1], &[1]),
        (&[7], &[7]),
        (&[33, 7], &[7]),
        (&[2, 130, 3], &[2, 1, 3]),
        (&[4, 1, 5], &[1, 6, 1]),
        (&[3, 1], &[1, 33]),
        // Same shapes with a multiple of 4 elements: the vec4 kernel.
        (&[8], &[8]),
        (&[5, 12], &[5, 12]),
        // b the trailing axes of a with a multiple of 4 elements (with and without leading 1s):
        // the vec4 kernel indexing b modulo its length.
        (&[3, 5, 8], &[5, 8]),
        (&[3, 5, 8], &[1, 1, 8]),
        (&[6, 4], &[4]),
        // Not that kernel: b's length not a multiple of 4; a broadcast too.
        (&[2, 9, 6], &[9, 6]),
        (&[1, 8], &[3, 8]),
    ];
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        for &(sa, sb) in shapes {
            let a = Input::random(&mut rng, sa);
            let mut b = Input::random(&mut rng, sb);
            if op == BinaryOp::Div {
                b.data.iter_mut().for_each(|v| *v = 0.5 + v.abs());
            }
            let (sa2, sb2) = (sa.to_vec(), sb.to_vec());
            check(Case::new(
                format!("{op:?} {sa:?} {sb:?}"),
                vec![a, b],
                move |x| ref_binary(op, &x[0], &sa2, &x[1], &sb2),
                move |gpu, x| {
                    let out = gpu.alloc(broadcast_shape(sa, sb)?.iter().product())?;
                    elementwise::binary(gpu, op, &x[0], sa, &x[1], sb, &out)?;
                    Ok(out)
                },
            ));
        }
    }
}

#[test]
fn binary_rejects_incompatible_shapes_naming_both() {
    let gpu = common::gpu();
    let a = gpu.zeros(6).unwrap();
    let b = gpu.zeros(4).unwrap();
    let out = gpu.alloc(24).unwrap();
    let err = elementwise::binary(gpu, BinaryOp::Add, &a, &[2, 3], &b, &[4], &out).unwrap_err().to_string();
    assert!(err.contains("[2, 3]") && err.contains("[4]"), "{err}");
}

#[test]
fn scale_and_bias_add_match_reference() {
    let mut rng = Rng::new(2);
    for &(rows, c) in &[(1usize, 1usize), (7, 33), (130, 7), (3, 130)] {
        let x = Input::random(&mut rng, &[rows, c]);
        let bias = Input::random(&mut rng, &[c]);
        check(Case::new(
            format!("bias_add [{rows},{c}]"),
            vec![x.clone(), bias],
            move |x| (0..rows * c).map(|i| x[0][i] + x[1][i % c]).collect(),
            move |gpu, x| {
                let out = gpu.alloc(rows * c)?;
                elementwise::bias_add(gpu, &x[0], &x[1], &out, rows, c)?;
                Ok(out)
            },
        ));
        check(Case::new(
            format!("scale [{rows},{c}]"),
            vec![x],
            move |x| x[0].iter().map(|v| -1.5 * v + 0.25).collect(),
            move |gpu, x| {
                let out = gpu.alloc(rows * c)?;
                elementwise::scale(gpu, &x[0], -1.5, 0.25, &out, rows * c)?;
                Ok(out)
            },
        ));
    }
}

/// erf in f64 (Abramowitz-Stegun 7.1.28 is too coarse; use a series / continued fraction).
pub fn erf64(x: f64) -> f64 {
    // Series for |x| < 3, complementary continued fraction beyond.
    let ax = x.abs();
    let r = if ax < 3.0 {
        let mut sum = ax;
        let mut term = ax;
        let x2 = ax * ax;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc via Lentz continued fraction.
        let mut f = ax;
        for k in (1..60).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        1.0 - (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt())
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

fn ref_unary(op: UnaryOp, x: f64) -> f64 {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    match op {
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf64(x / 2f64.sqrt())),
        UnaryOp::QuickGelu => x * sig(1.702 * x),
        UnaryOp::Sigmoid => sig(x),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Neg => -x,
    }
}

fn ref_unary_grad(op: UnaryOp, x: f64) -> f64 {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    match op {
        UnaryOp::Relu => (x > 0.0) as u8 as f64,
        UnaryOp::Gelu => {
            0.5 * (1.0 + erf64(x / 2f64.sqrt())) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
        }
        UnaryOp::QuickGelu => {
            let s = sig(1.702 * x);
            s + 1.702 * x * s * (1.0 - s)
        }
        UnaryOp::Sigmoid => sig(x) * (1.0 - sig(x)),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Neg => -1.0,
    }
}

#[test]
fn activations_forward_backward_and_finite_differences() {
    let mut rng = Rng::new(3);
    for op in [UnaryOp::Relu, UnaryOp::Gelu, UnaryOp::QuickGelu, UnaryOp::Sigmoid, UnaryOp::Exp, UnaryOp::Neg] {
        // 8 and 4100: multiples of 4, the vec4 kernels.
        for &n in &[1usize, 7, 8, 33, 130, 4099, 4100] {
            // Spread inputs over [-5, 5] to cover erf's tails; keep relu away from its kink.
            let mut x = Input::random(&mut rng, &[n]);
            x.data.iter_mut().for_each(|v| {
                *v *= 5.0;
                if op == UnaryOp::Relu && v.abs() < 1e-3 {
                    *v = 0.5;
                }
            });
            check(
                Case::new(
                    format!("{op:?} [{n}]"),
                    vec![x],
                    move |x| x[0].iter().map(|&v| ref_unary(op, v)).collect(),
                    move |gpu, x| {
                        let out = gpu.alloc(n)?;
                        elementwise::unary(gpu, op, &x[0], &out, n)?;
                        Ok(out)
                    },
                )
                .backward(
                    move |gpu, x, dy| {
                        let dx = gpu.alloc(n)?;
                        elementwise::unary_backward(gpu, op, &x[0], dy, &dx, n)?;
                        Ok(vec![Some(dx)])
                    },
                    move |x, dy| vec![Some(x[0].iter().zip(dy).map(|(&v, &g)| g * ref_unary_grad(op, v)).collect())],
                ),
            );
        }
    }
}

#[test]
fn large_flat_grid_covers_more_than_65535_workgroups() {
    let gpu = common::gpu();
    let n = 65536 * 256 + 300; // needs a 2-D grid
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let xb = gpu.upload(&x).unwrap();
    let out = gpu.alloc(n).unwrap();
    elementwise::scale(gpu, &xb, 2.0, 1.0, &out, n).unwrap();
    let y = gpu.download(&out).unwrap();
    for i in [0, 1, 65535 * 256, 65536 * 256 + 299, n - 1] {
        assert_eq!(y[i], 2.0 * x[i] + 1.0, "element {i}");
    }
}

/// Sums a [rows, c] gradient over rows, as the launchers' callers do for a bias.
fn sum_rows(
    gpu: &vlsa_kernels::Gpu,
    g: &vlsa_kernels::GpuBuffer,
    rows: usize,
    c: usize,
) -> vlsa_kernels::Result<vlsa_kernels::GpuBuffer> {
    let out = gpu.alloc(c)?;
    vlsa_kernels::reduce::sum_axis(gpu, g, 1, rows, c, &out)?;
    Ok(out)
}

fn ref_sum_rows(g: &[f64], c: usize) -> Vec<f64> {
    let mut out = vec![0.0; c];
    for (i, v) in g.iter().enumerate() {
        out[i % c] += v;
    }
    out
}

#[test]
fn bias_act_forward_backward_and_finite_differences() {
    let mut rng = Rng::new(11);
    for op in [UnaryOp::Relu, UnaryOp::Gelu, UnaryOp::QuickGelu] {
        // c = 4 and 20 take the vec4 kernels (bias length a multiple of 4), the others the scalar ones.
        for &(rows, c) in &[(1usize, 1usize), (3, 7), (9, 4), (17, 33), (6, 20), (65, 129)] {
            let mut x = Input::random(&mut rng, &[rows, c]);
            x.data.iter_mut().for_each(|v| *v *= 3.0);
            let bias = Input::random(&mut rng, &[c]);
            if op == UnaryOp::Relu {
                // Keep x + bias away from relu's kink, where finite differences are meaningless.
                for (i, v) in x.data.iter_mut().enumerate() {
                    if (*v + bias.data[i % c]).abs() < 1e-2 {
                        *v += 0.1;
                    }
                }
            }
            let pre = move |x: &[Vec<f64>], i: usize| x[0][i] + x[1][i % c];
            check(
                Case::new(
                    format!("bias_act {op:?} [{rows},{c}]"),
                    vec![x, bias],
                    move |x| (0..rows * c).map(|i| ref_unary(op, pre(x, i))).collect(),
                    move |gpu, x| {
                        let out = gpu.alloc(rows * c)?;
                        elementwise::bias_act(gpu, &x[0], &x[1], &out, &BiasAct { op, rows, c })?;
                        Ok(out)
                    },
                )
                .backward(
                    move |gpu, x, dy| {
                        let dz = gpu.alloc(rows * c)?;
                        elementwise::bias_act_backward(gpu, &x[0], &x[1], dy, &dz, &BiasAct { op, rows, c })?;
                        let db = sum_rows(gpu, &dz, rows, c)?;
                        Ok(vec![Some(dz), Some(db)])
                    },
                    move |x, dy| {
                        let dz: Vec<f64> = (0..rows * c).map(|i| dy[i] * ref_unary_grad(op, pre(x, i))).collect();
                        let db = ref_sum_rows(&dz, c);
                        vec![Some(dz), Some(db)]
                    },
                ),
            );
        }
    }
}

#[test]
fn bias_residual_forward_backward_and_finite_differences() {
    let mut rng = Rng::new(12);
    // c = 64 and 12 take the vec4 kernel, the others the scalar one.
    for &(rows, c) in &[(1usize, 1usize), (5, 3), (31, 64), (7, 12), (129, 33)] {
        let inputs = vec![
            Input::random(&mut rng, &[rows, c]),
            Input::random(&mut rng, &[c]),
            Input::random(&mut rng, &[rows, c]),
        ];
        check(
            Case::new(
                format!("bias_residual [{rows},{c}]"),
                inputs,
                move |x| (0..rows * c).map(|i| x[0][i] + x[1][i % c] + x[2][i]).collect(),
                move |gpu, x| {
                    let out = gpu.alloc(rows * c)?;
                    elementwise::bias_residual(gpu, &x[0], &x[1], &x[2], &out, rows, c)?;
                    Ok(out)
                },
            )
            .backward(
                move |gpu, _x, dy| {
                    // The backward of a sum: dy to the product and the residual, its row sum to the bias.
                    let (dx, dr) = (gpu.alloc(rows * c)?, gpu.alloc(rows * c)?);
                    gpu.copy(dy, &dx)?;
                    gpu.copy(dy, &dr)?;
                    Ok(vec![Some(dx), Some(sum_rows(gpu, dy, rows, c)?), Some(dr)])
                },
                move |_x, dy| vec![Some(dy.to_vec()), Some(ref_sum_rows(dy, c)), Some(dy.to_vec())],
            ),
        );
    }
}

#[test]
fn fused_epilogues_reject_mismatched_bias_with_one_sentence() {
    let gpu = common::gpu();
    let (a, bias, out) = (gpu.alloc(12).unwrap(), gpu.alloc(3).unwrap(), gpu.alloc(12).unwrap());
    let spec = BiasAct { op: UnaryOp::Gelu, rows: 3, c: 4 };
    let err = elementwise::bias_act(gpu, &a, &bias, &out, &spec).unwrap_err().to_string();
    assert!(err.contains("bias"), "{err}");
    let err = elementwise::bias_residual(gpu, &a, &bias, &a, &out, 3, 4).unwrap_err().to_string();
    assert!(err.contains("bias"), "{err}");
}

/// Texture copies in a profile taken around `f` (profiling on, then off).
fn texture_copies(gpu: &vlsa_kernels::Gpu, f: impl FnOnce()) -> usize {
    gpu.set_profiling(true).unwrap();
    f();
    let profile = gpu.take_profile().unwrap().expect("profiling is on");
    gpu.set_profiling(false).unwrap();
    profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count()
}

#[test]
fn texture_operands_give_the_storage_kernels_results_bit_for_bit() {
    // Where texture operands are on (lavapipe's default), the fused vec4 kernels fetch a, the
    // bias and the third operand from flat textures: the same values as the storage loads, so
    // the outputs equal the storage kernels' bit for bit (the reference checks above run
    // whichever is the default). Shapes: one partial texture row, several rows and a partial
    // one, and a bias no multiple of 4 (the scalar kernels, storage only). A context of its own,
    // so that switching textures off changes no other test.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(31);
    for &(rows, c) in &[(3usize, 8usize), (70, 192), (5, 7)] {
        let n = rows * c;
        let (a, bias, third) = (rng.vec(n), rng.vec(c), rng.vec(n));
        let (a, bias, third) = (gpu.upload(&a).unwrap(), gpu.upload(&bias).unwrap(), gpu.upload(&third).unwrap());
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            let outs: Vec<_> = (0..3).map(|_| gpu.alloc(n).unwrap()).collect();
            let copies = texture_copies(&gpu, || {
                let shape = BiasAct { op: UnaryOp::Gelu, rows, c };
                elementwise::bias_act(&gpu, &a, &bias, &outs[0], &shape).unwrap();
                elementwise::bias_act_backward(&gpu, &a, &bias, &third, &outs[1], &shape).unwrap();
                elementwise::bias_residual(&gpu, &a, &bias, &third, &outs[2], rows, c).unwrap();
            });
            // a and the bias for the first kernel, the third operand for the second; the later
            // launches find them in their textures (nothing wrote them in between).
            let want = if textures && c % 4 == 0 { 2 + 1 } else { 0 };
            assert_eq!(copies, want, "[{rows},{c}], textures {textures}: texture copies");
            runs.push(outs.iter().map(|b| gpu.download(b).unwrap()).collect::<Vec<_>>());
        }
        assert_eq!(runs[0], runs[1], "[{rows},{c}]: textures and storage differ");
    }
}

#[test]
fn binary_and_activations_from_textures_equal_storage_bit_for_bit() {
    // binary_same4, binary_suffix4, unary4 and unary_backward4 read their operands from flat
    // textures where texture operands are on: the same values as the storage loads. Sizes: one
    // partial texture row, several rows and a partial one, and no multiple of 4 (the scalar
    // kernels, storage only). A context of its own.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(32);
    for &(rows, c) in &[(2usize, 4usize), (70, 192), (3, 7)] {
        let n = rows * c;
        let (a, b, bias) = (rng.vec(n), rng.vec(n), rng.vec(c));
        let (a, b, bias) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap(), gpu.upload(&bias).unwrap());
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            let outs: Vec<_> = (0..4).map(|_| gpu.alloc(n).unwrap()).collect();
            let copies = texture_copies(&gpu, || {
                elementwise::binary(&gpu, BinaryOp::Mul, &a, &[rows, c], &b, &[rows, c], &outs[0]).unwrap();
                elementwise::binary(&gpu, BinaryOp::Sub, &a, &[rows, c], &bias, &[c], &outs[1]).unwrap();
                elementwise::unary(&gpu, UnaryOp::Gelu, &a, &outs[2], n).unwrap();
                elementwise::unary_backward(&gpu, UnaryOp::QuickGelu, &a, &b, &outs[3], n).unwrap();
            });
            // a, b and the bias once each: the later launches find them in their textures.
            let want = if textures && n % 4 == 0 { 3 } else { 0 };
            assert_eq!(copies, want, "[{rows},{c}], textures {textures}: texture copies");
            runs.push(outs.iter().map(|o| gpu.download(o).unwrap()).collect::<Vec<_>>());
        }
        assert_eq!(runs[0], runs[1], "[{rows},{c}]: textures and storage differ");
    }
}

/// relu(x + bias) per row of x, the bias as long as a row: what `bias_act` with Relu gives.
fn relu_plus_bias(x: &[f32], bias: &[f32]) -> Vec<f32> {
    x.iter().enumerate().map(|(i, v)| (v + bias[i % bias.len()]).max(0.0)).collect()
}

#[test]
fn operand_textures_are_copied_again_after_every_kind_of_write() {
    // A launch skips the copy of an operand whose texture already holds it; any write recorded
    // into the buffer since (an upload, a clear, a buffer copy, a kernel's output) makes the
    // next launch copy it again, and the results follow the buffer's new contents.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    if !gpu.texture_operands() {
        return; // the storage kernels read every operand directly (llvmpipe GL)
    }
    let (rows, c) = (70usize, 192usize);
    let n = rows * c;
    let mut rng = Rng::new(57);
    let (av, biasv, other) = (rng.vec(n), rng.vec(c), rng.vec(n));
    let a = gpu.upload(&av).unwrap();
    let bias = gpu.upload(&biasv).unwrap();
    let src = gpu.upload(&other).unwrap();
    let out = gpu.alloc(n).unwrap();
    let shape = BiasAct { op: UnaryOp::Relu, rows, c };
    let expect = |x: &[f32]| relu_plus_bias(x, &biasv);
    let run = |what: &str, copies: usize, x: &[f32]| {
        let got = texture_copies(&gpu, || elementwise::bias_act(&gpu, &a, &bias, &out, &shape).unwrap());
        assert_eq!(got, copies, "{what}: texture copies");
        assert_eq!(gpu.download(&out).unwrap(), expect(x), "{what}: result");
    };
    run("first launch", 2, &av);
    run("same operands again", 0, &av);
    let written: Vec<f32> = av.iter().map(|v| v + 1.0).collect();
    gpu.write(&a, &written).unwrap();
    run("after an upload into a", 1, &written);
    gpu.copy(&src, &a).unwrap();
    run("after a buffer copy into a", 1, &other);
    gpu.clear(&a).unwrap();
    run("after a clear of a", 1, &vec![0.0; n]);
    let doubled: Vec<f32> = other.iter().map(|v| v + v).collect();
    elementwise::binary(&gpu, BinaryOp::Add, &src, &[n], &src, &[n], &a).unwrap();
    run("after a kernel wrote a", 1, &doubled);
    gpu.copy_region(&src, 0, &a, 5, 10).unwrap();
    let mut patched = doubled.clone();
    patched[5..15].copy_from_slice(&other[..10]);
    run("after a region copy into a", 1, &patched);
    // A new buffer is never mistaken for a dropped one whose memory it reuses.
    drop(src);
    let fresh = gpu.upload(&av).unwrap();
    let got = texture_copies(&gpu, || elementwise::bias_act(&gpu, &fresh, &bias, &out, &shape).unwrap());
    assert_eq!(got, 1, "a new buffer in a's place: texture copies");
    assert_eq!(gpu.download(&out).unwrap(), expect(&av), "a new buffer: result");
}

#[test]
fn a_whole_buffer_copy_shares_its_sources_texture() {
    // A copy of a whole buffer over a whole buffer of the same length gives the destination
    // the source's contents: a texture copied from either serves both, also after the source
    // is written (the destination still holds what the texture holds). A partial copy, or one
    // into a longer buffer, is a write like any other.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    if !gpu.texture_operands() {
        return; // the storage kernels read every operand directly (llvmpipe GL)
    }
    let (rows, c) = (70usize, 192usize);
    let n = rows * c;
    let mut rng = Rng::new(58);
    let (av, biasv) = (rng.vec(n), rng.vec(c));
    let (a, bias, out) = (gpu.upload(&av).unwrap(), gpu.upload(&biasv).unwrap(), gpu.alloc(n).unwrap());
    let shape = BiasAct { op: UnaryOp::Relu, rows, c };
    let run = |what: &str, x: &vlsa_kernels::GpuBuffer, copies: usize, want: &[f32]| {
        let got = texture_copies(&gpu, || elementwise::bias_act(&gpu, x, &bias, &out, &shape).unwrap());
        assert_eq!(got, copies, "{what}: texture copies");
        assert_eq!(gpu.download(&out).unwrap(), relu_plus_bias(want, &biasv), "{what}: result");
    };
    run("a", &a, 2, &av);
    let (b, d) = (gpu.alloc(n).unwrap(), gpu.alloc(n).unwrap());
    gpu.copy(&a, &b).unwrap();
    run("a whole copy of a", &b, 0, &av);
    gpu.copy_region(&a, 0, &d, 0, n).unwrap();
    run("a whole region copy of a", &d, 0, &av);
    let written: Vec<f32> = av.iter().map(|v| v * 2.0).collect();
    gpu.write(&a, &written).unwrap();
    run("the copy after a was written", &b, 0, &av);
    run("a after its write", &a, 1, &written);
    gpu.copy_region(&a, 0, &d, 0, n - 4).unwrap();
    let mut partial = av.clone();
    partial[..n - 4].copy_from_slice(&written[..n - 4]);
    run("a partial copy", &d, 1, &partial);
    let longer = gpu.alloc(n + 4).unwrap();
    gpu.copy(&a, &longer).unwrap();
    run("a copy into a longer buffer", &longer, 1, &written);
}

#[test]
fn operand_textures_are_found_by_contents_and_the_oldest_of_a_size_is_reused() {
    // A texture holding a buffer's current contents serves any later launch and operand slot
    // that reads them; a size keeps a bounded number of textures (24; 256 of one flat row or
    // less), so after many other buffers of that size the oldest is copied again. Every result
    // follows its buffer.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    if !gpu.texture_operands() {
        return; // the storage kernels read every operand directly (llvmpipe GL)
    }
    let (rows, c) = (70usize, 192usize);
    let n = rows * c;
    let mut rng = Rng::new(91);
    let biasv = rng.vec(c);
    let bias = gpu.upload(&biasv).unwrap();
    let out = gpu.alloc(n).unwrap();
    let shape = BiasAct { op: UnaryOp::Relu, rows, c };
    let inputs: Vec<Vec<f32>> = (0..30).map(|_| rng.vec(n)).collect();
    let buffers: Vec<_> = inputs.iter().map(|v| gpu.upload(v).unwrap()).collect();
    let expect = |x: &[f32]| relu_plus_bias(x, &biasv);
    let run = |i: usize, copies: usize, what: &str| {
        let got = texture_copies(&gpu, || elementwise::bias_act(&gpu, &buffers[i], &bias, &out, &shape).unwrap());
        assert_eq!(got, copies, "{what}: texture copies");
        assert_eq!(gpu.download(&out).unwrap(), expect(&inputs[i]), "{what}: result");
    };
    // Read as the third operand first (slot 2 of bias_residual), then as the input (slot 0).
    let third_out = gpu.alloc(n).unwrap();
    let copies = texture_copies(&gpu, || {
        elementwise::bias_residual(&gpu, &buffers[1], &bias, &buffers[0], &third_out, rows, c).unwrap()
    });
    assert_eq!(copies, 3, "bias_residual: its input, the bias and the third operand");
    run(0, 0, "the third operand read again as an input");
    for i in 2..30 {
        run(i, 1, &format!("input {i}"));
    }
    run(29, 0, "the newest input again");
    run(0, 1, "the oldest input again, after 28 others of its size");
    // Textures of one flat row or less (a model's vectors: biases, layer norm weights) are
    // kept up to 256 per size: 40 live biases all stay in their textures.
    let biases: Vec<Vec<f32>> = (0..40).map(|_| rng.vec(c)).collect();
    let bias_buffers: Vec<_> = biases.iter().map(|v| gpu.upload(v).unwrap()).collect();
    for pass in 0..2 {
        for (j, b) in bias_buffers.iter().enumerate() {
            let got = texture_copies(&gpu, || elementwise::bias_act(&gpu, &buffers[29], b, &out, &shape).unwrap());
            assert_eq!(got, usize::from(pass == 0), "bias {j}, pass {pass}: texture copies");
            assert_eq!(gpu.download(&out).unwrap(), relu_plus_bias(&inputs[29], &biases[j]), "bias {j}: result");
        }
    }
}

#[test]
fn textures_of_dropped_or_rewritten_buffers_are_reused_first() {
    // A texture whose buffer was dropped, or written since its copy, can never be found again:
    // the next copy of its size goes there rather than into a new texture (the cache stays
    // small and warm). Thirty inputs used once and dropped keep one texture of their size;
    // thirty rewrites of one buffer likewise; results follow the data.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    if !gpu.texture_operands() {
        return; // the storage kernels read every operand directly (llvmpipe GL)
    }
    let (rows, c) = (70usize, 192usize);
    let n = rows * c;
    let mut rng = Rng::new(92);
    let biasv = rng.vec(c);
    let bias = gpu.upload(&biasv).unwrap();
    let out = gpu.alloc(n).unwrap();
    let shape = BiasAct { op: UnaryOp::Relu, rows, c };
    let reused = gpu.upload(&rng.vec(n)).unwrap();
    for i in 0..30 {
        let x = rng.vec(n);
        if i < 15 {
            let input = gpu.upload(&x).unwrap();
            elementwise::bias_act(&gpu, &input, &bias, &out, &shape).unwrap();
        } else {
            gpu.write(&reused, &x).unwrap();
            elementwise::bias_act(&gpu, &reused, &bias, &out, &shape).unwrap();
        }
        assert_eq!(gpu.download(&out).unwrap(), relu_plus_bias(&x, &biasv), "input {i}");
        // One texture for the inputs' size, one for the bias's.
        let (count, bytes) = gpu.operand_texture_memory();
        assert_eq!(count, 2, "after input {i}: textures held: {count} ({bytes} bytes)");
    }
}
