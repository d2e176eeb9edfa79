//! Reduction and normalization kernels (reduce, softmax, layer_norm, l2norm, embedding,
//! permute) against their f64 CPU references, with finite-difference checks of every backward.
//! Row kernels are checked in both schedules (one invocation per row, one workgroup per row).

mod common;

use common::{check, Case, Input, Rng};
use vlsa_kernels::elementwise::{self, BinaryOp};
use vlsa_kernels::l2norm::{self, L2Mode};
use vlsa_kernels::reduce::{self, RowSchedule};
use vlsa_kernels::{embedding, layer_norm, permute, softmax};

const SCHEDULES: [RowSchedule; 2] = [RowSchedule::Invocation, RowSchedule::Workgroup];
/// Row shapes every row kernel is checked at: sizes 1, 7, 33, 130 and several row counts.
const ROW_SHAPES: &[(usize, usize)] = &[(1, 1), (1, 7), (7, 33), (33, 7), (3, 130), (130, 33), (2, 300)];

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

/// Mean and 1/sqrt(var + eps) of one row.
fn row_stats(row: &[f64], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn ref_layer_norm(x: &[f64], w: &[f64], b: &[f64], cols: usize, eps: f64) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let (mean, rstd) = row_stats(row, eps);
            row.iter().enumerate().map(move |(j, v)| (v - mean) * rstd * w[j] + b[j]).collect::<Vec<_>>()
        })
        .collect()
}

fn ref_layer_norm_backward(x: &[f64], w: &[f64], dy: &[f64], cols: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = cols as f64;
    let (mut dx, mut dw, mut db) = (Vec::new(), vec![0.0; cols], vec![0.0; cols]);
    for (row, g) in x.chunks(cols).zip(dy.chunks(cols)) {
        let (mean, rstd) = row_stats(row, eps);
        let xhat: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        let gw: Vec<f64> = (0..cols).map(|j| g[j] * w[j]).collect();
        let sg = gw.iter().sum::<f64>() / n;
        let sgx = gw.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
        for j in 0..cols {
            dx.push(rstd * (gw[j] - sg - xhat[j] * sgx));
            dw[j] += g[j] * xhat[j];
            db[j] += g[j];
        }
    }
    (dx, dw, db)
}

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

// ----- softmax -----

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

// ----- layer_norm -----

#[test]
fn layer_norm_forward_backward_both_schedules() {
    let mut rng = Rng::new(20);
    let eps = 1e-5f32;
    // (300, 7) and (130, 33) split the weight/bias gradient over several row chunks.
    let shapes: Vec<(usize, usize)> = ROW_SHAPES.iter().cloned().chain([(300, 7)]).collect();
    for schedule in SCHEDULES {
        for &(rows, cols) in &shapes {
            let x = Input::random(&mut rng, &[rows, cols]);
            let mut w = Input::random(&mut rng, &[cols]);
            w.data.iter_mut().for_each(|v| *v += 1.0);
            let b = Input::random(&mut rng, &[cols]);
            let forward = move |gpu: &vlsa_kernels::Gpu, x: &[vlsa_kernels::GpuBuffer]| {
                let (out, mean, rstd) = (gpu.alloc(rows * cols)?, gpu.alloc(rows)?, gpu.alloc(rows)?);
                layer_norm::forward_with(gpu, schedule, &x[0], &x[1], &x[2], &out, &mean, &rstd, rows, cols, eps)?;
                Ok((out, mean, rstd))
            };
            // A single column normalizes to zero: its gradient is pure eps noise; skip FD there.
            let case = Case::new(
                format!("layer_norm {schedule:?} [{rows},{cols}]"),
                vec![x, w, b],
                move |x| ref_layer_norm(&x[0], &x[1], &x[2], cols, eps as f64),
                move |gpu, x| Ok(forward(gpu, x)?.0),
            )
            .backward(
                move |gpu, x, dy| {
                    let (_, mean, rstd) = forward(gpu, x)?;
                    let (dx, dw, db) = (gpu.alloc(rows * cols)?, gpu.alloc(cols)?, gpu.alloc(cols)?);
                    layer_norm::backward_with(
                        gpu, schedule, &x[0], &x[1], &mean, &rstd, dy, &dx, &dw, &db, rows, cols,
                    )?;
                    Ok(vec![Some(dx), Some(dw), Some(db)])
                },
                move |x, dy| {
                    let (dx, dw, db) = ref_layer_norm_backward(&x[0], &x[1], dy, cols, eps as f64);
                    vec![Some(dx), Some(dw), Some(db)]
                },
            );
            check(case);
        }
    }
}

#[test]
fn layer_norm_backward_adds_an_earlier_gradient_in_the_same_pass() {
    // A pre-norm block: x feeds the norm and the residual stream, whose gradient dx_in joins
    // dx inside the norm's backward. dx must equal dx_in + the plain backward's dx (checked
    // against the f64 reference, whose finite differences the plain test covers), and the
    // weight and bias gradients must not change.
    let gpu = common::gpu();
    let mut rng = Rng::new(22);
    let eps = 1e-5f32;
    for schedule in SCHEDULES {
        for &(rows, cols) in &[(1usize, 1usize), (5, 7), (33, 64), (300, 7), (3, 513)] {
            let (x, w, dy, dx_in) = (rng.vec(rows * cols), rng.vec(cols), rng.vec(rows * cols), rng.vec(rows * cols));
            let b = rng.vec(cols);
            let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let (rdx, rdw, rdb) = ref_layer_norm_backward(&f64s(&x), &f64s(&w), &f64s(&dy), cols, eps as f64);
            let want_dx: Vec<f64> = rdx.iter().zip(&dx_in).map(|(a, &e)| a + e as f64).collect();
            let up = |v: &[f32]| gpu.upload(v).unwrap();
            let (xb, wb, bb, dyb, dinb) = (up(&x), up(&w), up(&b), up(&dy), up(&dx_in));
            let (out, mean, rstd) =
                (gpu.alloc(rows * cols).unwrap(), gpu.alloc(rows).unwrap(), gpu.alloc(rows).unwrap());
            layer_norm::forward_with(gpu, schedule, &xb, &wb, &bb, &out, &mean, &rstd, rows, cols, eps).unwrap();
            let (dx, dw, db) = (gpu.alloc(rows * cols).unwrap(), gpu.alloc(cols).unwrap(), gpu.alloc(cols).unwrap());
            layer_norm::backward_accumulate_with(
                gpu, schedule, &xb, &wb, &mean, &rstd, &dyb, &dinb, &dx, &dw, &db, rows, cols,
            )
            .unwrap();
            let name = format!("layer_norm backward_accumulate {schedule:?} [{rows},{cols}]");
            common::assert_close(&format!("{name} dx"), &gpu.download(&dx).unwrap(), &want_dx, 1e-3, 1e-4);
            common::assert_close(&format!("{name} dweight"), &gpu.download(&dw).unwrap(), &rdw, 1e-3, 1e-4);
            common::assert_close(&format!("{name} dbias"), &gpu.download(&db).unwrap(), &rdb, 1e-3, 1e-4);
        }
    }
    // Adding in place would read dx while other rows write it: refused with one sentence.
    let (rows, cols) = (4usize, 8usize);
    let big = || gpu.alloc(rows * cols).unwrap();
    let (x, w, mean, rstd, dy, dx) = (big(), big(), big(), big(), big(), big());
    let err = layer_norm::backward_accumulate(gpu, &x, &w, &mean, &rstd, &dy, &dx, &dx, &w, &w, rows, cols)
        .unwrap_err()
        .to_string();
    assert!(err.contains("in place"), "{err}");
}

#[test]
fn layer_norm_saves_statistics_and_handles_large_offsets() {
    // Rows with mean 1000 and spread 0.1: a one-pass E[x^2] - E[x]^2 in f32 loses it all.
    let gpu = common::gpu();
    let mut rng = Rng::new(21);
    let (rows, cols, eps) = (9usize, 192usize, 1e-5f32);
    let x: Vec<f32> = rng.vec(rows * cols).iter().map(|v| 1000.0 + 0.1 * v).collect();
    let w: Vec<f32> = rng.vec(cols);
    let b: Vec<f32> = rng.vec(cols);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (w64, b64): (Vec<f64>, Vec<f64>) =
        (w.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect());
    let want = ref_layer_norm(&x64, &w64, &b64, cols, eps as f64);
    let stats: Vec<(f64, f64)> = x64.chunks(cols).map(|r| row_stats(r, eps as f64)).collect();
    let (xb, wb, bb) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap(), gpu.upload(&b).unwrap());
    for schedule in SCHEDULES {
        let (out, mean, rstd) = (gpu.alloc(rows * cols).unwrap(), gpu.alloc(rows).unwrap(), gpu.alloc(rows).unwrap());
        layer_norm::forward_with(gpu, schedule, &xb, &wb, &bb, &out, &mean, &rstd, rows, cols, eps).unwrap();
        common::assert_close(
            &format!("layer_norm {schedule:?} offset output"),
            &gpu.download(&out).unwrap(),
            &want,
            1e-4,
            1e-4,
        );
        // The saved mean is rounded to f32 (steps of 6e-5 near 1000).
        common::assert_close(
            "saved mean",
            &gpu.download(&mean).unwrap(),
            &stats.iter().map(|s| s.0).collect::<Vec<_>>(),
            1e-7,
            0.0,
        );
        common::assert_close(
            "saved rstd",
            &gpu.download(&rstd).unwrap(),
            &stats.iter().map(|s| s.1).collect::<Vec<_>>(),
            1e-4,
            0.0,
        );
    }
}

#[test]
fn layer_norm_backward_is_deterministic() {
    let gpu = common::gpu();
    let mut rng = Rng::new(22);
    let (rows, cols) = (1000usize, 48usize);
    let up = |v: Vec<f32>| gpu.upload(&v).unwrap();
    let (x, w, b, dy) = (up(rng.vec(rows * cols)), up(rng.vec(cols)), up(rng.vec(cols)), up(rng.vec(rows * cols)));
    let (out, mean, rstd) = (gpu.alloc(rows * cols).unwrap(), gpu.alloc(rows).unwrap(), gpu.alloc(rows).unwrap());
    layer_norm::forward(gpu, &x, &w, &b, &out, &mean, &rstd, rows, cols, 1e-5).unwrap();
    let run = || {
        let (dx, dw, db) = (gpu.alloc(rows * cols).unwrap(), gpu.alloc(cols).unwrap(), gpu.alloc(cols).unwrap());
        layer_norm::backward(gpu, &x, &w, &mean, &rstd, &dy, &dx, &dw, &db, rows, cols).unwrap();
        (gpu.download(&dx).unwrap(), gpu.download(&dw).unwrap(), gpu.download(&db).unwrap())
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "layer_norm backward changed between identical runs");
    }
}

// ----- l2norm -----

#[test]
fn l2norm_both_modes_forward_backward_both_schedules() {
    let mut rng = Rng::new(30);
    for schedule in SCHEDULES {
        for mode in [L2Mode::AddEps(1e-6), L2Mode::ClampMin(1e-6)] {
            for &(rows, cols) in ROW_SHAPES {
                let x = Input::random(&mut rng, &[rows, cols]);
                let forward = move |gpu: &vlsa_kernels::Gpu, x: &[vlsa_kernels::GpuBuffer]| {
                    let (out, norms) = (gpu.alloc(rows * cols)?, gpu.alloc(rows)?);
                    l2norm::forward_with(gpu, schedule, &x[0], &out, &norms, rows, cols, mode)?;
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
                            l2norm::backward_with(gpu, schedule, &x[0], &norms, dy, &dx, rows, cols, mode)?;
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
                l2norm::forward_with(gpu, schedule, &x[0], &out, &norms, rows, cols, mode)?;
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
                        l2norm::backward_with(gpu, schedule, &x[0], &norms, dy, &dx, rows, cols, mode)?;
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
        l2norm::forward(gpu, &x, &out, &norms, 1, 4, mode).unwrap();
        l2norm::backward(gpu, &x, &norms, &dy, &dx, 1, 4, mode).unwrap();
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

// ----- embedding -----

#[test]
fn embedding_gather_and_backward() {
    let mut rng = Rng::new(40);
    for &(vocab, dim, count) in &[(1usize, 1usize, 1usize), (7, 33, 12), (33, 7, 130), (130, 3, 5)] {
        let table = Input::random(&mut rng, &[vocab, dim]);
        // Repeated indices, and the last one out of range (vocab + 3): a zero row, no gradient.
        let mut idx: Vec<usize> = (0..count).map(|_| rng.below(vocab)).collect();
        if count > 1 {
            idx[0] = idx[count - 1];
            idx[count - 1] = vocab + 3;
        }
        let indices = Input::index(&[count], idx);
        let gather_ref = move |x: &[Vec<f64>]| -> Vec<f64> {
            (0..count * dim)
                .map(|g| {
                    let v = x[1][g / dim] as usize;
                    if v < vocab {
                        x[0][v * dim + g % dim]
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        check(
            Case::new(
                format!("embedding [{vocab},{dim}] x {count}"),
                vec![table, indices],
                gather_ref,
                move |gpu, x| {
                    let out = gpu.alloc(count * dim)?;
                    embedding::gather(gpu, &x[0], &x[1], &out, count, dim, vocab)?;
                    Ok(out)
                },
            )
            .backward(
                move |gpu, x, dy| {
                    let dtable = gpu.alloc(vocab * dim)?;
                    embedding::scatter_add_backward(gpu, &x[1], dy, &dtable, count, dim, vocab)?;
                    Ok(vec![Some(dtable), None])
                },
                move |x, dy| {
                    let mut dt = vec![0.0; vocab * dim];
                    for i in 0..count {
                        let v = x[1][i] as usize;
                        if v < vocab {
                            (0..dim).for_each(|d| dt[v * dim + d] += dy[i * dim + d]);
                        }
                    }
                    vec![Some(dt), None]
                },
            ),
        );
    }
}

// ----- reduce -----

#[test]
fn sum_axis_matches_reference_with_broadcast_backward() {
    let mut rng = Rng::new(50);
    // (1, 1000, 1) and (2, 300, 3) are split into chunks and summed in two passes.
    for &(outer, len, inner) in &[
        (1usize, 1usize, 1usize),
        (1, 7, 1),
        (7, 33, 1),
        (1, 33, 130),
        (3, 130, 7),
        (1, 1000, 1),
        (2, 300, 3),
        (5, 1, 4),
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

// ----- permute -----

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

// ----- bad shapes -----

#[test]
fn bad_shapes_are_errors_naming_the_shapes() {
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
    let e = msg(layer_norm::forward(gpu, &big, &small, &big, &big, &big, &big, 2, 8, 1e-5));
    assert!(e.contains("weight") && e.contains("[8]"), "{e}");
    let e = msg(layer_norm::forward(gpu, &big, &big, &big, &big, &big, &big, 3, 0, 1e-5));
    assert!(e.contains("[3, 0]"), "{e}");
    let e = msg(layer_norm::backward(gpu, &big, &big, &big, &small, &big, &big, &big, &big, 8, 8));
    assert!(e.contains("rstd") && e.contains("[8]"), "{e}");
    let e = msg(l2norm::forward(gpu, &big, &big, &small, 8, 4, L2Mode::AddEps(1e-6)));
    assert!(e.contains("norms") && e.contains("[8]"), "{e}");
    let e = msg(embedding::gather(gpu, &big, &small, &big, 7, 2, 4));
    assert!(e.contains("indices") && e.contains("[7]"), "{e}");
    let e = msg(embedding::scatter_add_backward(gpu, &big, &big, &small, 4, 2, 5));
    assert!(e.contains("[5, 2]"), "{e}");
    let e = msg(reduce::sum_axis(gpu, &small, 2, 2, 2, &big));
    assert!(e.contains("[2, 2, 2]"), "{e}");
    let e = msg(reduce::sum_to_shape(gpu, &small, &[2, 3], &[4], &big));
    assert!(e.contains("[2, 3]") && e.contains("[4]"), "{e}");
    let e = msg(reduce::sum_to_shape(gpu, &small, &[2, 3], &[1, 2, 3], &big));
    assert!(e.contains("[2, 3]") && e.contains("[1, 2, 3]"), "{e}");
    let e = msg(permute::permute(gpu, &small, &[2, 3], &[0, 0], &big));
    assert!(e.contains("[0, 0]") && e.contains("[2, 3]"), "{e}");
    let e = msg(permute::permute(gpu, &small, &[2, 3], &[1, 0, 2], &big));
    assert!(e.contains("[1, 0, 2]") && e.contains("[2, 3]"), "{e}");
    let e = msg(permute::permute(gpu, &big, &[4, 4, 4], &[2, 1, 0], &small));
    assert!(e.contains("[4, 4, 4]"), "{e}");
}

#[test]
fn long_loops_are_split_for_llvmpipe() {
    // llvmpipe stops an invocation's loops after 65535 iterations; these shapes would need more.
    let gpu = common::gpu();
    let mut rng = Rng::new(70);
    // A sum over an axis of 100000 (split into chunks, then a second pass over the chunks).
    let (len, inner) = (100_000usize, 64usize);
    let x: Vec<f32> = (0..len * inner).map(|i| ((i / inner) % 3) as f32).collect();
    let out = gpu.alloc(inner).unwrap();
    reduce::sum_axis(gpu, &gpu.upload(&x).unwrap(), 1, len, inner, &out).unwrap();
    let want = (0..len).map(|j| (j % 3) as f64).sum::<f64>();
    common::assert_close("sum_axis [1,100000,64]", &gpu.download(&out).unwrap(), &vec![want; inner], 1e-6, 0.0);
    // Embedding backward over 40000 indices of a 3-row table.
    let (vocab, dim, count) = (3usize, 2usize, 40_000usize);
    let idx: Vec<u32> = (0..count).map(|_| rng.below(vocab) as u32).collect();
    let dy: Vec<f32> = (0..count * dim).map(|i| (i % 5) as f32 * 0.25).collect();
    let mut want = vec![0.0f64; vocab * dim];
    for i in 0..count {
        for d in 0..dim {
            want[idx[i] as usize * dim + d] += dy[i * dim + d] as f64;
        }
    }
    let dtable = gpu.alloc(vocab * dim).unwrap();
    embedding::scatter_add_backward(
        gpu,
        &gpu.upload(&idx).unwrap(),
        &gpu.upload(&dy).unwrap(),
        &dtable,
        count,
        dim,
        vocab,
    )
    .unwrap();
    common::assert_close("embedding backward 40000 indices", &gpu.download(&dtable).unwrap(), &want, 1e-6, 0.0);
}
