//! Sums over an axis and to a broadcast shape (shaders/reduce.wgsl) against f64 CPU references,
//! with finite-difference checks of the backward (a broadcast).

mod common;

use common::{check, Case, Input, Rng};
use vlsa_kernels::elementwise::{self, BinaryOp};
use vlsa_kernels::reduce;

// ----- CPU references (f64) -----

/// x [outer, len, inner] summed over the middle axis.
fn ref_sum_axis(x: &[f64], outer: usize, len: usize, inner: usize) -> Vec<f64> {
    let mut out = vec![0.0; outer * inner];
    for o in 0..outer {
        for j in 0..len {
            for i in 0..inner {
                out[o * inner + i] += x[(o * len + j) * inner + i];
            }
        }
    }
    out
}

/// Row-major coordinates of flat index `i` in `shape`.
fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for k in (0..shape.len()).rev() {
        c[k] = i % shape[k];
        i /= shape[k];
    }
    c
}

fn flat(c: &[usize], shape: &[usize]) -> usize {
    c.iter().zip(shape).fold(0, |acc, (&ci, &s)| acc * s + ci)
}

fn ref_sum_to_shape(x: &[f64], x_shape: &[usize], target: &[usize]) -> Vec<f64> {
    let front = x_shape.len() - target.len();
    let mut out = vec![0.0; target.iter().product()];
    for (i, v) in x.iter().enumerate() {
        let c = coords(i, x_shape);
        let t: Vec<usize> = target.iter().enumerate().map(|(k, &s)| if s == 1 { 0 } else { c[k + front] }).collect();
        out[flat(&t, target)] += v;
    }
    out
}

// ----- tests -----

#[test]
fn sum_axis_matches_reference_with_broadcast_backward() {
    let mut rng = Rng::new(50);
    // (1, 1000, 1), (2, 300, 3) and (1, 600, 8) are split into chunks and summed in two passes;
    // an inner axis that is a multiple of 4 ((5, 1, 4), (2, 9, 12), (1, 600, 8)) takes sum_axis4.
    for &(outer, len, inner) in &[
        (1usize, 1usize, 1usize),
        (1, 7, 1),
        (7, 33, 1),
        (1, 33, 130),
        (3, 130, 7),
        (1, 1000, 1),
        (2, 300, 3),
        (5, 1, 4),
        (2, 9, 12),
        (1, 600, 8),
    ] {
        let x = Input::random(&mut rng, &[outer, len, inner]);
        check(
            Case::new(
                format!("sum_axis [{outer},{len},{inner}]"),
                vec![x],
                move |x| ref_sum_axis(&x[0], outer, len, inner),
                move |gpu, x| {
                    let out = gpu.alloc(outer * inner)?;
                    reduce::sum_axis(gpu, &x[0], outer, len, inner, &out)?;
                    Ok(out)
                },
            )
            // The backward of a sum is a broadcast of dy; finite differences of the reference
            // sum confirm that broadcast is its gradient (the adjoint check).
            .backward(
                move |gpu, _x, dy| {
                    let zeros = gpu.zeros(outer * len * inner)?;
                    let dx = gpu.alloc(outer * len * inner)?;
                    elementwise::binary(gpu, BinaryOp::Add, &zeros, &[outer, len, inner], dy, &[outer, 1, inner], &dx)?;
                    Ok(vec![Some(dx)])
                },
                move |_x, dy| {
                    vec![Some((0..outer * len * inner).map(|g| dy[(g / (len * inner)) * inner + g % inner]).collect())]
                },
            ),
        );
    }
}

#[test]
fn sum_to_shape_matches_reference() {
    let mut rng = Rng::new(51);
    let cases: &[(&[usize], &[usize])] = &[
        (&[1], &[1]),
        (&[7], &[1]),
        (&[130, 7], &[7]),
        (&[2, 3, 4], &[3, 4]),
        (&[2, 3, 4], &[2, 1, 4]),
        (&[2, 3, 4], &[1, 3, 1]),
        (&[5, 1, 7], &[1]),
        (&[5, 1, 7], &[]),
        (&[4, 5], &[4, 5]),
        (&[6, 1, 4], &[1, 4]),
        (&[3, 33, 2, 5], &[3, 1, 2, 1]),
        (&[2, 3, 33, 2, 5], &[1, 3, 1, 2, 1]),
        (&[1000, 3], &[1, 1]),
        (&[2048, 7], &[7]),
    ];
    for &(xs, ts) in cases {
        let x = Input::random(&mut rng, xs);
        let n_out: usize = ts.iter().product();
        check(
            Case::new(
                format!("sum_to_shape {xs:?} -> {ts:?}"),
                vec![x],
                move |x| ref_sum_to_shape(&x[0], xs, ts),
                move |gpu, x| {
                    let out = gpu.alloc(n_out)?;
                    reduce::sum_to_shape(gpu, &x[0], xs, ts, &out)?;
                    Ok(out)
                },
            )
            .fwd_tol(1e-4, 2e-5),
        );
    }
}

#[test]
fn sum_is_linear_in_its_input() {
    // sum(a x + b y) = a sum(x) + b sum(y), on a multi-pass sum_to_shape.
    let gpu = common::gpu();
    let mut rng = Rng::new(52);
    let (xs, ts): (&[usize], &[usize]) = (&[4, 9, 3, 5], &[1, 9, 1, 5]);
    let n: usize = xs.iter().product();
    let (x, y) = (rng.vec(n), rng.vec(n));
    let z: Vec<f32> = x.iter().zip(&y).map(|(a, b)| 2.0 * a - 0.5 * b).collect();
    let sum = |v: &[f32]| {
        let out = gpu.alloc(45).unwrap();
        reduce::sum_to_shape(gpu, &gpu.upload(v).unwrap(), xs, ts, &out).unwrap();
        gpu.download(&out).unwrap()
    };
    let (sx, sy, sz) = (sum(&x), sum(&y), sum(&z));
    let want: Vec<f64> = sx.iter().zip(&sy).map(|(a, b)| 2.0 * *a as f64 - 0.5 * *b as f64).collect();
    common::assert_close("linearity", &sz, &want, 1e-5, 1e-5);
}

#[test]
fn reduce_rejects_bad_shapes() {
    let gpu = common::gpu();
    // alloc, not zeros: a clear recorded with no dispatch after it stays pending, and a later
    // upload into the recycled buffer would be wiped by it (see the report on Gpu::write).
    let small = gpu.alloc(6).unwrap();
    let big = gpu.alloc(64).unwrap();
    let msg = |r: vlsa_kernels::Result<()>| r.unwrap_err().to_string();

    let e = msg(reduce::sum_axis(gpu, &small, 2, 2, 2, &big));
    assert!(e.contains("[2, 2, 2]"), "{e}");
    let e = msg(reduce::sum_to_shape(gpu, &small, &[2, 3], &[4], &big));
    assert!(e.contains("[2, 3]") && e.contains("[4]"), "{e}");
    let e = msg(reduce::sum_to_shape(gpu, &small, &[2, 3], &[1, 2, 3], &big));
    assert!(e.contains("[2, 3]") && e.contains("[1, 2, 3]"), "{e}");
}

#[test]
fn sum_axis_splits_long_loops_for_llvmpipe() {
    // llvmpipe stops an invocation's loops after 65535 iterations; these shapes would need more.
    let gpu = common::gpu();
    // A sum over an axis of 100000 (split into chunks, then a second pass over the chunks).
    let (len, inner) = (100_000usize, 64usize);
    let x: Vec<f32> = (0..len * inner).map(|i| ((i / inner) % 3) as f32).collect();
    let out = gpu.alloc(inner).unwrap();
    reduce::sum_axis(gpu, &gpu.upload(&x).unwrap(), 1, len, inner, &out).unwrap();
    let want = (0..len).map(|j| (j % 3) as f64).sum::<f64>();
    common::assert_close("sum_axis [1,100000,64]", &gpu.download(&out).unwrap(), &vec![want; inner], 1e-6, 0.0);
}

#[test]
fn texture_operands_give_the_storage_kernel_sums_bit_for_bit() {
    // Where texture operands are on (lavapipe's default), sum_axis4 fetches inputs of at least
    // 2^16 elements from a flat texture, summing in the same order as the storage kernel, so
    // the sums are bit-identical. Shapes: chunked (a bias gradient over many rows) and plain,
    // with several texture rows and a partial one; below the size, and an inner axis no
    // multiple of 4, stay on storage. A context of its own, so switching textures off changes
    // no other test.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(41);
    for &(outer, len, inner, textured) in
        &[(1usize, 2056usize, 192usize, true), (3, 300, 100, true), (2, 50, 64, false), (2, 9000, 7, false)]
    {
        let n = outer * len * inner;
        let x = gpu.upload(&rng.vec(n)).unwrap();
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            gpu.set_profiling(true).unwrap();
            let out = gpu.alloc(outer * inner).unwrap();
            reduce::sum_axis(&gpu, &x, outer, len, inner, &out).unwrap();
            runs.push(gpu.download(&out).unwrap());
            let profile = gpu.take_profile().unwrap().expect("profiling is on");
            gpu.set_profiling(false).unwrap();
            let copies =
                profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count();
            assert_eq!(
                copies > 0,
                textures && textured,
                "[{outer},{len},{inner}], textures {textures}: {copies} copies"
            );
        }
        assert_eq!(runs[0], runs[1], "[{outer},{len},{inner}]: textures and storage differ");
    }
}
