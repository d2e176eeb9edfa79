//! Row softmax (shaders/softmax.wgsl) against its f64 CPU reference, forward and backward with
//! finite-difference checks, in both row schedules (one invocation per row, one workgroup per row).

mod common;

use common::{check, Case, Input, Rng, ROW_SHAPES, SCHEDULES};
use vlsa_kernels::softmax;

// ----- CPU references (f64) -----

fn ref_softmax(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

fn ref_softmax_backward(x: &[f64], dy: &[f64], cols: usize) -> Vec<f64> {
    let y = ref_softmax(x, cols);
    y.chunks(cols)
        .zip(dy.chunks(cols))
        .flat_map(|(y, g)| {
            let d: f64 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            y.iter().zip(g).map(move |(a, b)| a * (b - d)).collect::<Vec<_>>()
        })
        .collect()
}

// ----- tests -----

#[test]
fn softmax_forward_backward_both_schedules() {
    let mut rng = Rng::new(10);
    for schedule in SCHEDULES {
        for &(rows, cols) in ROW_SHAPES {
            // Spread logits over [-8, 8] so the max subtraction matters.
            let mut x = Input::random(&mut rng, &[rows, cols]);
            x.data.iter_mut().for_each(|v| *v *= 8.0);
            check(
                Case::new(
                    format!("softmax {schedule:?} [{rows},{cols}]"),
                    vec![x],
                    move |x| ref_softmax(&x[0], cols),
                    move |gpu, x| {
                        let out = gpu.alloc(rows * cols)?;
                        softmax::forward_with(gpu, schedule, &x[0], &out, rows, cols)?;
                        Ok(out)
                    },
                )
                .backward(
                    move |gpu, x, dy| {
                        let y = gpu.alloc(rows * cols)?;
                        softmax::forward_with(gpu, schedule, &x[0], &y, rows, cols)?;
                        let dx = gpu.alloc(rows * cols)?;
                        softmax::backward_with(gpu, schedule, &y, dy, &dx, rows, cols)?;
                        Ok(vec![Some(dx)])
                    },
                    move |x, dy| vec![Some(ref_softmax_backward(&x[0], dy, cols))],
                ),
            );
        }
    }
}

#[test]
fn softmax_survives_large_logits_and_long_rows() {
    let gpu = common::gpu();
    let mut rng = Rng::new(11);
    // Logits near 1e4 overflow exp without the max subtraction; 10^5 columns is the longest row.
    for &(rows, cols, scale, offset) in &[(3usize, 257usize, 50.0f32, 1.0e4f32), (2, 100_000, 4.0, -300.0)] {
        let x: Vec<f32> = rng.vec(rows * cols).iter().map(|v| v * scale + offset).collect();
        let want = ref_softmax(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), cols);
        let xb = gpu.upload(&x).unwrap();
        for schedule in SCHEDULES {
            let out = gpu.alloc(rows * cols).unwrap();
            softmax::forward_with(gpu, schedule, &xb, &out, rows, cols).unwrap();
            common::assert_close(
                &format!("softmax {schedule:?} [{rows},{cols}] +{offset}"),
                &gpu.download(&out).unwrap(),
                &want,
                1e-4,
                1e-6,
            );
        }
    }
}

#[test]
fn row_kernels_cover_more_than_65535_workgroups() {
    // One workgroup per row: 70000 rows need the 2-D grid.
    let gpu = common::gpu();
    let (rows, cols) = (70_000usize, 2usize);
    let x: Vec<f32> = (0..rows * cols).map(|i| if i % 2 == 0 { 0.0 } else { (i % 7) as f32 * 0.5 }).collect();
    let xb = gpu.upload(&x).unwrap();
    let want = ref_softmax(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), cols);
    for schedule in SCHEDULES {
        let out = gpu.alloc(rows * cols).unwrap();
        softmax::forward_with(gpu, schedule, &xb, &out, rows, cols).unwrap();
        common::assert_close(
            &format!("softmax {schedule:?} [{rows},{cols}]"),
            &gpu.download(&out).unwrap(),
            &want,
            1e-5,
            1e-6,
        );
    }
}

#[test]
fn softmax_rejects_bad_shapes() {
    let gpu = common::gpu();
    // alloc, not zeros: a clear recorded with no dispatch after it stays pending, and a later
    // upload into the recycled buffer would be wiped by it (see the report on Gpu::write).
    let small = gpu.alloc(6).unwrap();
    let big = gpu.alloc(64).unwrap();
    let msg = |r: vlsa_kernels::Result<()>| r.unwrap_err().to_string();

    let e = msg(softmax::forward(gpu, &small, &big, 4, 3));
    assert!(e.contains("[4, 3]") && e.contains("6"), "{e}");
    let e = msg(softmax::backward(gpu, &big, &big, &small, 2, 7));
    assert!(e.contains("[2, 7]"), "{e}");
}
