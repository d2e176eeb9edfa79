//! Row L2 normalisation in both denominators (shaders/l2norm.wgsl) against its f64 CPU reference,
//! forward and backward with finite-difference checks, in both row schedules.

mod common;

use common::{check, Case, Input, Rng, ROW_SHAPES, SCHEDULES};
use vlsa_kernels::l2norm::{self, L2Mode, L2Norm};

// ----- CPU references (f64) -----

fn l2_denominator(n: f64, mode: L2Mode) -> f64 {
    match mode {
        L2Mode::AddEps(eps) => eps as f64 + n,
        L2Mode::ClampMin(eps) => n.max(eps as f64),
    }
}

fn ref_l2norm(x: &[f64], cols: usize, mode: L2Mode) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let d = l2_denominator(row.iter().map(|v| v * v).sum::<f64>().sqrt(), mode);
            row.iter().map(move |v| v / d).collect::<Vec<_>>()
        })
        .collect()
}

fn ref_l2norm_backward(x: &[f64], dy: &[f64], cols: usize, mode: L2Mode) -> Vec<f64> {
    x.chunks(cols)
        .zip(dy.chunks(cols))
        .flat_map(|(row, g)| {
            let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            let d = l2_denominator(n, mode);
            let through_norm = match mode {
                L2Mode::AddEps(_) => n > 0.0,
                L2Mode::ClampMin(eps) => n >= eps as f64 && n > 0.0,
            };
            let dot: f64 = row.iter().zip(g).map(|(a, b)| a * b).sum();
            let c = if through_norm { dot / (d * d * n) } else { 0.0 };
            row.iter().zip(g).map(move |(v, gv)| gv / d - c * v).collect::<Vec<_>>()
        })
        .collect()
}

// ----- tests -----

#[test]
fn l2norm_both_modes_forward_backward_both_schedules() {
    let mut rng = Rng::new(30);
    for schedule in SCHEDULES {
        for mode in [L2Mode::AddEps(1e-6), L2Mode::ClampMin(1e-6)] {
            for &(rows, cols) in ROW_SHAPES {
                let x = Input::random(&mut rng, &[rows, cols]);
                let forward = move |gpu: &vlsa_kernels::Gpu, x: &[vlsa_kernels::GpuBuffer]| {
                    let (out, norms) = (gpu.alloc(rows * cols)?, gpu.alloc(rows)?);
                    l2norm::forward_with(gpu, schedule, &x[0], &out, &norms, &L2Norm { rows, cols, mode })?;
                    Ok((out, norms))
                };
                check(
                    Case::new(
                        format!("l2norm {schedule:?} {mode:?} [{rows},{cols}]"),
                        vec![x],
                        move |x| ref_l2norm(&x[0], cols, mode),
                        move |gpu, x| Ok(forward(gpu, x)?.0),
                    )
                    .backward(
                        move |gpu, x, dy| {
                            let (_, norms) = forward(gpu, x)?;
                            let dx = gpu.alloc(rows * cols)?;
                            l2norm::backward_with(gpu, schedule, &x[0], &norms, dy, &dx, &L2Norm { rows, cols, mode })?;
                            Ok(vec![Some(dx)])
                        },
                        move |x, dy| vec![Some(ref_l2norm_backward(&x[0], dy, cols, mode))],
                    ),
                );
            }
        }
    }
}

#[test]
fn l2norm_clamped_rows_and_zero_rows() {
    let mut rng = Rng::new(31);
    let (rows, cols) = (6usize, 7usize);
    // Even rows have norms around 0.02, below eps 0.05 (clamped); odd rows around 1.5.
    let mut x = Input::random(&mut rng, &[rows, cols]);
    for (i, v) in x.data.iter_mut().enumerate() {
        if (i / cols) % 2 == 0 {
            *v *= 0.01;
        }
    }
    for schedule in SCHEDULES {
        for mode in [L2Mode::ClampMin(0.05), L2Mode::AddEps(0.05)] {
            let forward = move |gpu: &vlsa_kernels::Gpu, x: &[vlsa_kernels::GpuBuffer]| {
                let (out, norms) = (gpu.alloc(rows * cols)?, gpu.alloc(rows)?);
                l2norm::forward_with(gpu, schedule, &x[0], &out, &norms, &L2Norm { rows, cols, mode })?;
                Ok((out, norms))
            };
            check(
                Case::new(
                    format!("l2norm {schedule:?} {mode:?} small rows"),
                    vec![x.clone()],
                    move |x| ref_l2norm(&x[0], cols, mode),
                    move |gpu, x| Ok(forward(gpu, x)?.0),
                )
                .backward(
                    move |gpu, x, dy| {
                        let (_, norms) = forward(gpu, x)?;
                        let dx = gpu.alloc(rows * cols)?;
                        l2norm::backward_with(gpu, schedule, &x[0], &norms, dy, &dx, &L2Norm { rows, cols, mode })?;
                        Ok(vec![Some(dx)])
                    },
                    move |x, dy| vec![Some(ref_l2norm_backward(&x[0], dy, cols, mode))],
                ),
            );
        }
    }
    // An all-zero row stays zero and its gradient is dy / eps: no NaN.
    let gpu = common::gpu();
    let x = gpu.upload(&[0.0f32; 4]).unwrap();
    let dy = gpu.upload(&[1.0f32, -2.0, 0.5, 0.0]).unwrap();
    for mode in [L2Mode::AddEps(1e-6), L2Mode::ClampMin(1e-6)] {
        let (out, norms, dx) = (gpu.alloc(4).unwrap(), gpu.alloc(1).unwrap(), gpu.alloc(4).unwrap());
        let shape = L2Norm { rows: 1, cols: 4, mode };
        l2norm::forward(gpu, &x, &out, &norms, &shape).unwrap();
        l2norm::backward(gpu, &x, &norms, &dy, &dx, &shape).unwrap();
        assert_eq!(gpu.download(&out).unwrap(), vec![0.0; 4], "{mode:?}");
        common::assert_close(
            &format!("{mode:?} zero-row gradient"),
            &gpu.download(&dx).unwrap(),
            &[1e6, -2e6, 0.5e6, 0.0],
            1e-5,
            0.0,
        );
    }
}

#[test]
fn l2norm_rejects_bad_shapes() {
    let gpu = common::gpu();
    // alloc, not zeros: a clear recorded with no dispatch after it stays pending, and a later
    // upload into the recycled buffer would be wiped by it (see the report on Gpu::write).
    let small = gpu.alloc(6).unwrap();
    let big = gpu.alloc(64).unwrap();
    let msg = |r: vlsa_kernels::Result<()>| r.unwrap_err().to_string();

    let e = msg(l2norm::forward(gpu, &big, &big, &small, &L2Norm { rows: 8, cols: 4, mode: L2Mode::AddEps(1e-6) }));
    assert!(e.contains("norms") && e.contains("[8]"), "{e}");
}
