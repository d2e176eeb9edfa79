//! Axis permutation (shaders/permute.wgsl) against its CPU reference, 2-D to 5-D.

mod common;

use common::{check, Case, Input, Rng};
use vlsa_kernels::permute;

// ----- CPU references (f64) -----

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

fn ref_permute(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    (0..x.len())
        .map(|o| {
            let oc = coords(o, &out_shape);
            let mut ic = vec![0; shape.len()];
            for (k, &a) in perm.iter().enumerate() {
                ic[a] = oc[k];
            }
            x[flat(&ic, shape)]
        })
        .collect()
}

// ----- tests -----

#[test]
fn permute_matches_reference_2d_to_5d() {
    let mut rng = Rng::new(60);
    let cases: &[(&[usize], &[usize])] = &[
        (&[1, 1], &[1, 0]),
        (&[33, 7], &[1, 0]),
        (&[7, 130], &[0, 1]),
        (&[2, 3, 4], &[0, 2, 1]),
        (&[2, 3, 4], &[1, 0, 2]),
        (&[2, 3, 4], &[1, 2, 0]),
        (&[2, 3, 4], &[2, 0, 1]),
        (&[2, 3, 4], &[2, 1, 0]),
        (&[2, 33, 3, 4], &[0, 2, 1, 3]),
        (&[2, 3, 4, 5], &[3, 2, 1, 0]),
        (&[2, 1, 3, 4, 2], &[4, 0, 3, 1, 2]),
        (&[3, 1, 7, 1, 2], &[1, 0, 3, 2, 4]),
        (&[2, 2, 2, 2, 2, 2, 2, 3], &[7, 0, 6, 1, 5, 2, 4, 3]),
    ];
    for &(shape, perm) in cases {
        let x = Input::random(&mut rng, shape);
        let n: usize = shape.iter().product();
        check(Case::new(
            format!("permute {shape:?} by {perm:?}"),
            vec![x],
            move |x| ref_permute(&x[0], shape, perm),
            move |gpu, x| {
                let out = gpu.alloc(n)?;
                permute::permute(gpu, &x[0], shape, perm, &out)?;
                Ok(out)
            },
        ));
    }
}

#[test]
fn permute_rejects_bad_shapes() {
    let gpu = common::gpu();
    // alloc, not zeros: a clear recorded with no dispatch after it stays pending, and a later
    // upload into the recycled buffer would be wiped by it (see the report on Gpu::write).
    let small = gpu.alloc(6).unwrap();
    let big = gpu.alloc(64).unwrap();
    let msg = |r: vlsa_kernels::Result<()>| r.unwrap_err().to_string();

    let e = msg(permute::permute(gpu, &small, &[2, 3], &[0, 0], &big));
    assert!(e.contains("[0, 0]") && e.contains("[2, 3]"), "{e}");
    let e = msg(permute::permute(gpu, &small, &[2, 3], &[1, 0, 2], &big));
    assert!(e.contains("[1, 0, 2]") && e.contains("[2, 3]"), "{e}");
    let e = msg(permute::permute(gpu, &big, &[4, 4, 4], &[2, 1, 0], &small));
    assert!(e.contains("[4, 4, 4]"), "{e}");
}
