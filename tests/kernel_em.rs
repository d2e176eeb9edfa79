//! The EM Aggregation kernels (shaders/em.wgsl) against f64 CPU references and finite
//! differences, step by step and as a whole unrolled loop, plus PyTorch autograd fixtures
//! (tests/fixtures/em_*.json, written by tests/reference/em_ref.py).

mod common;

use common::{assert_close, check, Case, Input, Rng};
use vlsa_kernels::em::{self, Bases, Em, EmOutputGrads, EmShape, GradMode, Out};
use vlsa_kernels::{Gpu, GpuBuffer, KernelPath, Result};

const EPS: f64 = 1e-6;

/// Every kernel path this adapter runs: each test checks each of them (the EM products run on
/// the path's matmul).
fn paths() -> Vec<KernelPath> {
    common::gpu().kernel_paths()
}

/// The step shapes (B, N, C, M): sizes 1, 7, 33, 130 for N,
/// odd C, M from 1 to 64, B 1 and 3; N = 300 spans two E-step tiles of 256 tokens.
const SHAPES: &[(usize, usize, usize, usize)] =
    &[(1, 1, 3, 1), (3, 7, 5, 4), (1, 33, 9, 7), (3, 130, 7, 16), (1, 70, 3, 64), (2, 300, 3, 5)];

fn shape(b: usize, n: usize, c: usize, m: usize, iters: usize, lambda: f32) -> EmShape {
    EmShape { batch: b, tokens: n, width: c, bases: m, iters, lambda }
}

// ----- f64 reference -----

/// Z = softmax_M(lambda u mu^T); `mu` is [B,M,C] or, when `shared`, [M,C].
fn ref_e_step(u: &[f64], mu: &[f64], shared: bool, s: &EmShape) -> Vec<f64> {
    let (n, c, m) = (s.tokens, s.width, s.bases);
    let mut z = vec![0.0; s.z_len()];
    for b in 0..s.batch {
        let mb = if shared { 0 } else { b * m * c };
        for i in 0..n {
            let row = &u[(b * n + i) * c..][..c];
            let logits: Vec<f64> =
                (0..m).map(|k| s.lambda as f64 * (0..c).map(|j| row[j] * mu[mb + k * c + j]).sum::<f64>()).collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for k in 0..m {
                z[(b * n + i) * m + k] = e[k] / total;
            }
        }
    }
    z
}

fn ref_colsum(z: &[f64], s: &EmShape) -> Vec<f64> {
    let mut out = vec![0.0; s.batch * s.bases];
    for b in 0..s.batch {
        for i in 0..s.tokens {
            for k in 0..s.bases {
                out[b * s.bases + k] += z[(b * s.tokens + i) * s.bases + k];
            }
        }
    }
    out
}

/// out[b,m,:] = sum_n z[b,n,m] x[b,n,:] (/ (eps + cs[b,m]) when given).
fn ref_ztx(z: &[f64], x: &[f64], cs: Option<&[f64]>, s: &EmShape) -> Vec<f64> {
    let (n, c, m) = (s.tokens, s.width, s.bases);
    let mut out = vec![0.0; s.mu_len()];
    for b in 0..s.batch {
        for k in 0..m {
            let scale = cs.map_or(1.0, |cs| 1.0 / (EPS + cs[b * m + k]));
            for j in 0..c {
                let v: f64 = (0..n).map(|i| z[(b * n + i) * m + k] * x[(b * n + i) * c + j]).sum();
                out[(b * m + k) * c + j] = v * scale;
            }
        }
    }
    out
}

/// out[b,n,:] = sum_m z[b,n,m] mu[b,m,:] (mu shared over b when `shared`).
fn ref_zmu(z: &[f64], mu: &[f64], shared: bool, s: &EmShape) -> Vec<f64> {
    let (n, c, m) = (s.tokens, s.width, s.bases);
    let mut out = vec![0.0; s.tokens_len()];
    for b in 0..s.batch {
        let mb = if shared { 0 } else { b * m * c };
        for i in 0..n {
            for j in 0..c {
                out[(b * n + i) * c + j] = (0..m).map(|k| z[(b * n + i) * m + k] * mu[mb + k * c + j]).sum();
            }
        }
    }
    out
}

/// out[b,n,m] = x[b,n,:] . y[b,m,:]
fn ref_xyt(x: &[f64], y: &[f64], s: &EmShape) -> Vec<f64> {
    let (n, c, m) = (s.tokens, s.width, s.bases);
    let mut out = vec![0.0; s.z_len()];
    for b in 0..s.batch {
        for i in 0..n {
            for k in 0..m {
                out[(b * n + i) * m + k] = (0..c).map(|j| x[(b * n + i) * c + j] * y[(b * m + k) * c + j]).sum();
            }
        }
    }
    out
}

fn ref_l2norm_rows(x: &[f64], c: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|row| {
            let r = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            row.iter().map(move |v| v / (EPS + r)).collect::<Vec<_>>()
        })
        .collect()
}

/// mu = l2norm(z^T u / (eps + cs)).
fn ref_m_step_normalized(z: &[f64], u: &[f64], cs: &[f64], s: &EmShape) -> Vec<f64> {
    ref_l2norm_rows(&ref_ztx(z, u, Some(cs), s), s.width)
}

/// The whole loop: returns (Z_T, mu_T, R).
fn ref_loop(u: &[f64], bases: &[f64], s: &EmShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut z = ref_e_step(u, bases, true, s);
    let mut mu = ref_m_step_normalized(&z, u, &ref_colsum(&z, s), s);
    for _ in 1..s.iters {
        z = ref_e_step(u, &mu, false, s);
        mu = ref_m_step_normalized(&z, u, &ref_colsum(&z, s), s);
    }
    let r = ref_zmu(&z, &mu, false, s);
    (z, mu, r)
}

/// Random normalised bases [M,C].
fn random_bases(rng: &mut Rng, m: usize, c: usize) -> Vec<f32> {
    let raw: Vec<f64> = rng.vec(m * c).iter().map(|&v| v as f64).collect();
    ref_l2norm_rows(&raw, c).iter().map(|&v| v as f32).collect()
}

/// Random responsibilities: rows of positive values summing to 1.
fn random_z(rng: &mut Rng, rows: usize, m: usize) -> Vec<f32> {
    let mut z: Vec<f32> = (0..rows * m).map(|_| rng.range(0.05, 1.0)).collect();
    for row in z.chunks_mut(m) {
        let t: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= t);
    }
    z
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ----- step kernels -----

#[test]
fn e_step_forward_and_backward() {
    for path in paths() {
        let mut rng = Rng::new(11);
        for &(b, n, c, m) in SHAPES {
            for lambda in [1.0f32, 2.5] {
                let s = shape(b, n, c, m, 1, lambda);
                let u = Input::random(&mut rng, &[b, n, c]);
                let mu = Input::random(&mut rng, &[b, m, c]);
                check(
                    Case::new(
                        format!("[{path}] e_step {s} lambda={lambda}"),
                        vec![u, mu],
                        move |x| ref_e_step(&x[0], &x[1], false, &s),
                        move |gpu, x| {
                            let z = gpu.alloc(s.z_len())?;
                            let partial = gpu.alloc(s.batch * s.tokens.div_ceil(em::TILE) * s.bases)?;
                            launcher(gpu, &s, path)?.e_step(&x[0], Bases::PerBatch(&x[1]), &z, &partial)?;
                            Ok(z)
                        },
                    )
                    .backward(
                        move |gpu, x, dz| {
                            let d_logits = gpu.alloc(s.z_len())?;
                            launcher(gpu, &s, path)?.e_step_backward_softmax(
                                &fwd_z(gpu, &x[0], &x[1], &s, path)?,
                                dz,
                                &d_logits,
                            )?;
                            let du = gpu.alloc(s.tokens_len())?;
                            let dmu = gpu.alloc(s.mu_len())?;
                            launcher(gpu, &s, path)?.e_step_backward(
                                &x[0],
                                Bases::PerBatch(&x[1]),
                                &d_logits,
                                Out::to(&du),
                                Some(&dmu),
                            )?;
                            Ok(vec![Some(du), Some(dmu)])
                        },
                        move |x, dz| {
                            let z = ref_e_step(&x[0], &x[1], false, &s);
                            let mut ds = vec![0.0; z.len()];
                            for (row, (zr, gr)) in ds.chunks_mut(m).zip(z.chunks(m).zip(dz.chunks(m))) {
                                let inner: f64 = zr.iter().zip(gr).map(|(a, b)| a * b).sum();
                                for k in 0..m {
                                    row[k] = lambda as f64 * zr[k] * (gr[k] - inner);
                                }
                            }
                            vec![Some(ref_zmu(&ds, &x[1], false, &s)), Some(ref_ztx(&ds, &x[0], None, &s))]
                        },
                    ),
                );
            }
        }
    }
}

/// The EM launchers for `s` on `path`.
fn launcher<'a>(gpu: &'a Gpu, s: &EmShape, path: KernelPath) -> Result<Em<'a>> {
    Ok(Em::new(gpu, *s)?.on_path(path))
}

fn fwd_z(gpu: &Gpu, u: &GpuBuffer, mu: &GpuBuffer, s: &EmShape, path: KernelPath) -> Result<GpuBuffer> {
    let z = gpu.alloc(s.z_len())?;
    let partial = gpu.alloc(s.batch * s.tokens.div_ceil(em::TILE) * s.bases)?;
    launcher(gpu, s, path)?.e_step(u, Bases::PerBatch(mu), &z, &partial)?;
    Ok(z)
}

#[test]
fn e_step_with_shared_bases_and_column_sums() {
    for path in paths() {
        let mut rng = Rng::new(12);
        for &(b, n, c, m) in SHAPES {
            let s = shape(b, n, c, m, 1, 1.0);
            let u = Input::random(&mut rng, &[b, n, c]);
            let bases = Input::float(&[m, c], random_bases(&mut rng, m, c));
            check(Case::new(
                format!("[{path}] e_step shared bases {s}"),
                vec![u.clone(), bases.clone()],
                move |x| ref_e_step(&x[0], &x[1], true, &s),
                move |gpu, x| {
                    let z = gpu.alloc(s.z_len())?;
                    let partial = gpu.alloc(s.batch * s.tokens.div_ceil(em::TILE) * s.bases)?;
                    launcher(gpu, &s, path)?.e_step(&x[0], Bases::Shared(&x[1]), &z, &partial)?;
                    Ok(z)
                },
            ));
            check(Case::new(
                format!("[{path}] colsum {s}"),
                vec![u, bases],
                move |x| ref_colsum(&ref_e_step(&x[0], &x[1], true, &s), &s),
                move |gpu, x| {
                    let z = gpu.alloc(s.z_len())?;
                    let partial = gpu.alloc(s.batch * s.tokens.div_ceil(em::TILE) * s.bases)?;
                    launcher(gpu, &s, path)?.e_step(&x[0], Bases::Shared(&x[1]), &z, &partial)?;
                    let cs = gpu.alloc(s.batch * s.bases)?;
                    launcher(gpu, &s, path)?.colsum(&partial, &cs)?;
                    Ok(cs)
                },
            ));
        }
    }
}

/// s = sum over n of z [B,M], on the GPU: the M-step product with a column of ones (C = 1).
fn gpu_colsum(gpu: &Gpu, z: &GpuBuffer, s: &EmShape, path: KernelPath) -> Result<GpuBuffer> {
    let one_wide = EmShape { width: 1, ..*s };
    let ones = gpu.upload(&vec![1.0f32; s.batch * s.tokens])?;
    let cs = gpu.alloc(s.batch * s.bases)?;
    launcher(gpu, &one_wide, path)?.m_step_product("test_colsum", z, &ones, None, Out::to(&cs))?;
    Ok(cs)
}

#[test]
fn m_step_and_normalize_forward_and_backward() {
    for path in paths() {
        let mut rng = Rng::new(13);
        for &(b, n, c, m) in SHAPES {
            let s = shape(b, n, c, m, 1, 1.0);
            let z = Input::float(&[b, n, m], random_z(&mut rng, b * n, m));
            let u = Input::random(&mut rng, &[b, n, c]);
            // mu = l2norm(z^T u / (eps + colsum(z))): the gradient of z includes the column sums'.
            let forward = move |x: &[Vec<f64>]| ref_m_step_normalized(&x[0], &x[1], &ref_colsum(&x[0], &s), &s);
            check(
                Case::new(format!("[{path}] m_step+normalize {s}"), vec![z, u], forward, move |gpu, x| {
                    let cs = gpu_colsum(gpu, &x[0], &s, path)?;
                    let raw = gpu.alloc(s.mu_len())?;
                    launcher(gpu, &s, path)?.m_step(&x[0], &x[1], &cs, &raw)?;
                    let mu = gpu.alloc(s.mu_len())?;
                    launcher(gpu, &s, path)?.normalize(&raw, &mu)?;
                    Ok(mu)
                })
                .backward(
                    move |gpu, x, dmu| {
                        let cs = gpu_colsum(gpu, &x[0], &s, path)?;
                        let raw = gpu.alloc(s.mu_len())?;
                        launcher(gpu, &s, path)?.m_step(&x[0], &x[1], &cs, &raw)?;
                        let (da, dcs) = (gpu.alloc(s.mu_len())?, gpu.alloc(s.batch * s.bases)?);
                        launcher(gpu, &s, path)?.normalize_backward(&raw, dmu, &cs, &da, &dcs)?;
                        let (dz, du) = (gpu.alloc(s.z_len())?, gpu.alloc(s.tokens_len())?);
                        launcher(gpu, &s, path)?.m_step_backward(
                            &x[1],
                            &x[0],
                            &da,
                            &dcs,
                            Out::to(&dz),
                            Out::to(&du),
                        )?;
                        Ok(vec![Some(dz), Some(du)])
                    },
                    move |x, dmu| {
                        let (z, u) = (&x[0], &x[1]);
                        let cs = ref_colsum(z, &s);
                        let raw = ref_ztx(z, u, Some(&cs), &s);
                        // L2 norm backward per row, then the division by (eps + cs).
                        let mut da = vec![0.0; raw.len()];
                        let mut dcs = vec![0.0; cs.len()];
                        for r in 0..b * m {
                            let xr = &raw[r * c..][..c];
                            let gy = &dmu[r * c..][..c];
                            let nr = xr.iter().map(|v| v * v).sum::<f64>().sqrt();
                            let gdx: f64 = gy.iter().zip(xr).map(|(a, b)| a * b).sum();
                            let inv_s = 1.0 / (EPS + cs[r]);
                            for j in 0..c {
                                let gx = gy[j] / (EPS + nr) - xr[j] * gdx / ((EPS + nr).powi(2) * nr);
                                da[r * c + j] = gx * inv_s;
                                dcs[r] -= gx * xr[j] * inv_s;
                            }
                        }
                        let mut dz = ref_xyt(u, &da, &s);
                        for (i, v) in dz.iter_mut().enumerate() {
                            *v += dcs[(i / (n * m)) * m + i % m];
                        }
                        vec![Some(dz), Some(ref_zmu(z, &da, false, &s))]
                    },
                ),
            );
        }
    }
}

#[test]
fn normalize_alone_forward_and_backward() {
    let mut rng = Rng::new(14);
    for &(b, _n, c, m) in SHAPES {
        let s = shape(b, 1, c, m, 1, 1.0);
        let x = Input::random(&mut rng, &[b, m, c]);
        check(
            Case::new(
                format!("normalize {s}"),
                vec![x],
                move |x| ref_l2norm_rows(&x[0], c),
                move |gpu, x| {
                    let out = gpu.alloc(s.mu_len())?;
                    Em::new(gpu, s)?.normalize(&x[0], &out)?;
                    Ok(out)
                },
            )
            .backward(
                move |gpu, x, dy| {
                    // Column sums of 1 - eps make the M-step division a no-op: d_a is then dx.
                    let ones = gpu.upload(&vec![1.0f32 - 1e-6; s.batch * s.bases])?;
                    let (dx, dcs) = (gpu.alloc(s.mu_len())?, gpu.alloc(s.batch * s.bases)?);
                    Em::new(gpu, s)?.normalize_backward(&x[0], dy, &ones, &dx, &dcs)?;
                    Ok(vec![Some(dx)])
                },
                move |x, dy| {
                    let mut dx = vec![0.0; x[0].len()];
                    for (r, (xr, gy)) in x[0].chunks(c).zip(dy.chunks(c)).enumerate() {
                        let nr = xr.iter().map(|v| v * v).sum::<f64>().sqrt();
                        let gdx: f64 = gy.iter().zip(xr).map(|(a, b)| a * b).sum();
                        for j in 0..c {
                            dx[r * c + j] = gy[j] / (EPS + nr) - xr[j] * gdx / ((EPS + nr).powi(2) * nr);
                        }
                    }
                    vec![Some(dx)]
                },
            ),
        );
    }
}

#[test]
fn reconstruct_forward_and_backward() {
    for path in paths() {
        let mut rng = Rng::new(15);
        for &(b, n, c, m) in SHAPES {
            let s = shape(b, n, c, m, 1, 1.0);
            let z = Input::float(&[b, n, m], random_z(&mut rng, b * n, m));
            let mu = Input::random(&mut rng, &[b, m, c]);
            check(
                Case::new(
                    format!("[{path}] reconstruct {s}"),
                    vec![z, mu],
                    move |x| ref_zmu(&x[0], &x[1], false, &s),
                    move |gpu, x| {
                        let out = gpu.alloc(s.tokens_len())?;
                        launcher(gpu, &s, path)?.reconstruct(&x[0], &x[1], &out)?;
                        Ok(out)
                    },
                )
                .backward(
                    move |gpu, x, dr| {
                        let (dz, dmu) = (gpu.alloc(s.z_len())?, gpu.alloc(s.mu_len())?);
                        launcher(gpu, &s, path)?.reconstruct_backward(&x[0], &x[1], dr, Out::to(&dz), Out::to(&dmu))?;
                        Ok(vec![Some(dz), Some(dmu)])
                    },
                    move |x, dr| vec![Some(ref_xyt(dr, &x[1], &s)), Some(ref_ztx(&x[0], dr, None, &s))],
                ),
            );
        }
    }
}

// ----- the whole loop -----

/// Central differences of `loss(u)` at every coordinate of u.
fn fd_gradient(u: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-5;
    (0..u.len())
        .map(|i| {
            let (mut up, mut um) = (u.to_vec(), u.to_vec());
            up[i] += h;
            um[i] -= h;
            (loss(&up) - loss(&um)) / (2.0 * h)
        })
        .collect()
}

#[test]
fn unrolled_loop_matches_reference_and_finite_differences() {
    for path in paths() {
        let mut rng = Rng::new(16);
        // (2, 9, 4, 4): M and C multiples of 4, so the forward's M-step runs in one pass.
        let shapes =
            [(1usize, 7usize, 5usize, 4usize, 1.0f32), (3, 33, 3, 7, 2.0), (1, 70, 5, 3, 1.0), (2, 9, 4, 4, 1.5)];
        for &(b, n, c, m, lambda) in &shapes {
            let s = shape(b, n, c, m, 3, lambda);
            let u = Input::random(&mut rng, &[b, n, c]);
            let bases = Input::float(&[m, c], random_bases(&mut rng, m, c));
            let reference = move |x: &[Vec<f64>]| ref_loop(&x[0], &x[1], &s).2;
            check(
                Case::new(
                    format!("[{path}] unrolled EM loop {s} lambda={lambda}"),
                    vec![u, bases],
                    reference,
                    move |gpu, x| Ok(launcher(gpu, &s, path)?.forward(&x[0], &x[1], false)?.recon),
                )
                .backward(
                    move |gpu, x, dr| {
                        let fwd = launcher(gpu, &s, path)?.forward(&x[0], &x[1], true)?;
                        Ok(vec![Some(launcher(gpu, &s, path)?.backward_unrolled(&x[0], &x[1], &fwd, dr)?), None])
                    },
                    move |x, dr| {
                        let g =
                            fd_gradient(&x[0], |u| ref_loop(u, &x[1], &s).2.iter().zip(dr).map(|(a, b)| a * b).sum());
                        vec![Some(g), None]
                    },
                ),
            );
        }
    }
}

#[test]
fn unrolled_loop_with_gradients_of_z_and_mu() {
    for path in paths() {
        let gpu = common::gpu();
        let mut rng = Rng::new(17);
        let s = shape(3, 7, 5, 4, 3, 1.5);
        let u = rng.vec(s.tokens_len());
        let bases = random_bases(&mut rng, s.bases, s.width);
        let (dr, dz, dmu) = (rng.vec(s.tokens_len()), rng.vec(s.z_len()), rng.vec(s.mu_len()));
        let (ub, bb) = (gpu.upload(&u).unwrap(), gpu.upload(&bases).unwrap());
        let (drb, dzb, dmub) = (gpu.upload(&dr).unwrap(), gpu.upload(&dz).unwrap(), gpu.upload(&dmu).unwrap());
        let fwd = launcher(gpu, &s, path).unwrap().forward(&ub, &bb, true).unwrap();
        let (want_z, want_mu, want_r) = ref_loop(&f64s(&u), &f64s(&bases), &s);
        assert_close(&format!("[{path}] Z_T"), &gpu.download(&fwd.z).unwrap(), &want_z, 1e-4, 1e-5);
        assert_close(&format!("[{path}] mu_T"), &gpu.download(&fwd.mu).unwrap(), &want_mu, 1e-4, 1e-5);
        assert_close(&format!("[{path}] R"), &gpu.download(&fwd.recon).unwrap(), &want_r, 1e-4, 1e-5);
        let grads = EmOutputGrads { recon: &drb, z: Some(&dzb), mu: Some(&dmub) };
        let du = gpu
            .download(&launcher(gpu, &s, path).unwrap().backward(GradMode::Unrolled, &ub, &bb, &fwd, &grads).unwrap())
            .unwrap();
        let (dr, dz, dmu, b64) = (f64s(&dr), f64s(&dz), f64s(&dmu), f64s(&bases));
        let want = fd_gradient(&f64s(&u), |u| {
            let (z, mu, r) = ref_loop(u, &b64, &s);
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            dot(&r, &dr) + dot(&z, &dz) + dot(&mu, &dmu)
        });
        assert_close(&format!("[{path}] du with dR, dZ_T and dmu_T"), &du, &want, 1e-3, 1e-4);
    }
}

/// The accumulating forms of the step launchers (`out = acc + product`, also with the bias or
/// the column-sum division), with an accumulator longer than the output and one that is the
/// output itself; both matmul paths (vec4: C and M multiples of 4; scalar: odd sizes).
#[test]
fn accumulating_products_add_to_their_accumulator() {
    for path in paths() {
        let gpu = common::gpu();
        let mut rng = Rng::new(18);
        for &(b, n, c, m) in &[(2usize, 33usize, 8usize, 4usize), (3, 7, 5, 7)] {
            let s = shape(b, n, c, m, 1, 1.0);
            let (x, y, bias) = (rng.vec(s.tokens_len()), rng.vec(s.mu_len()), rng.vec(b * m));
            let (acc_z, acc_mu, acc_u) = (rng.vec(s.z_len() + 5), rng.vec(s.mu_len()), rng.vec(s.tokens_len()));
            let z: Vec<f32> = rng.vec(s.z_len()).iter().map(|v| v.abs()).collect();
            let cs: Vec<f32> = (0..b * m).map(|i| 1.0 + i as f32).collect();
            let up = |v: &[f32]| gpu.upload(v).unwrap();
            let (xb, yb, biasb, zb, csb) = (up(&x), up(&y), up(&bias), up(&z), up(&cs));
            let (x, y, z, cs) = (f64s(&x), f64s(&y), f64s(&z), f64s(&cs));

            // token_dots with bias and an accumulator 5 elements longer than the output.
            let out = gpu.alloc(s.z_len()).unwrap();
            let acc = up(&acc_z);
            let em = launcher(gpu, &s, path).unwrap();
            em.token_dots("test", &xb, Bases::PerBatch(&yb), Some(&biasb), Out::to(&out).plus(Some(&acc))).unwrap();
            let want: Vec<f64> = ref_xyt(&x, &y, &s)
                .iter()
                .enumerate()
                .map(|(i, v)| v + bias[(i / (n * m)) * m + i % m] as f64 + acc_z[i] as f64)
                .collect();
            assert_close(
                &format!("[{path}] token_dots + bias + acc {s}"),
                &gpu.download(&out).unwrap(),
                &want,
                1e-4,
                1e-5,
            );

            // The M-step product divided by the column sums, plus an accumulator.
            let out = gpu.alloc(s.mu_len()).unwrap();
            let acc = up(&acc_mu);
            em.m_step_product("test", &zb, &xb, Some(&csb), Out::to(&out).plus(Some(&acc))).unwrap();
            let want: Vec<f64> =
                ref_ztx(&z, &x, Some(&cs), &s).iter().zip(&acc_mu).map(|(v, a)| v + *a as f64).collect();
            assert_close(
                &format!("[{path}] m_step_product / colsum + acc {s}"),
                &gpu.download(&out).unwrap(),
                &want,
                1e-4,
                1e-5,
            );

            // The reconstruction product accumulating into its own accumulator.
            let out = up(&acc_u);
            em.reconstruct_product("test", &zb, Bases::PerBatch(&yb), Out::to(&out).plus(Some(&out))).unwrap();
            let want: Vec<f64> = ref_zmu(&z, &y, false, &s).iter().zip(&acc_u).map(|(v, a)| v + *a as f64).collect();
            assert_close(
                &format!("[{path}] reconstruct_product into acc {s}"),
                &gpu.download(&out).unwrap(),
                &want,
                1e-4,
                1e-5,
            );
        }
    }
}

/// T = 1: the backward's first iteration is also its last (no saved Z or mu in between).
#[test]
fn single_iteration_loop_gradient() {
    for path in paths() {
        let gpu = common::gpu();
        let mut rng = Rng::new(19);
        for &(b, n, c, m) in &[(2usize, 9usize, 4usize, 8usize), (1, 5, 3, 3)] {
            let s = shape(b, n, c, m, 1, 1.0);
            let (u, dr) = (rng.vec(s.tokens_len()), rng.vec(s.tokens_len()));
            let bases = random_bases(&mut rng, m, c);
            let (ub, bb, drb) = (gpu.upload(&u).unwrap(), gpu.upload(&bases).unwrap(), gpu.upload(&dr).unwrap());
            let fwd = launcher(gpu, &s, path).unwrap().forward(&ub, &bb, true).unwrap();
            let (_, _, want_r) = ref_loop(&f64s(&u), &f64s(&bases), &s);
            assert_close(&format!("[{path}] R {s}"), &gpu.download(&fwd.recon).unwrap(), &want_r, 1e-4, 1e-5);
            let du = gpu
                .download(&launcher(gpu, &s, path).unwrap().backward_unrolled(&ub, &bb, &fwd, &drb).unwrap())
                .unwrap();
            let (b64, dr) = (f64s(&bases), f64s(&dr));
            let want = fd_gradient(&f64s(&u), |u| ref_loop(u, &b64, &s).2.iter().zip(&dr).map(|(a, b)| a * b).sum());
            assert_close(&format!("[{path}] du {s}"), &du, &want, 1e-3, 1e-4);
        }
    }
}

#[test]
fn detached_mode_gives_no_gradient_to_u() {
    for path in paths() {
        let gpu = common::gpu();
        let mut rng = Rng::new(18);
        let s = shape(3, 33, 5, 7, 3, 1.0);
        let u = gpu.upload(&rng.vec(s.tokens_len())).unwrap();
        let bases = gpu.upload(&random_bases(&mut rng, s.bases, s.width)).unwrap();
        let dr = gpu.upload(&rng.vec(s.tokens_len())).unwrap();
        // Detached needs nothing saved.
        let fwd = launcher(gpu, &s, path).unwrap().forward(&u, &bases, false).unwrap();
        let grads = EmOutputGrads { recon: &dr, z: None, mu: None };
        let du = gpu
            .download(&launcher(gpu, &s, path).unwrap().backward(GradMode::Detached, &u, &bases, &fwd, &grads).unwrap())
            .unwrap();
        assert_eq!(du.len(), s.tokens_len());
        assert!(du.iter().all(|&v| v == 0.0), "detached backward must give du = 0");
        // The unrolled backward of the same forward is refused: nothing was saved.
        let err = launcher(gpu, &s, path)
            .unwrap()
            .backward(GradMode::Unrolled, &u, &bases, &fwd, &grads)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("save_for_backward"), "{err}");
    }
}

#[test]
fn bases_moving_average_update() {
    let gpu = common::gpu();
    let mut rng = Rng::new(19);
    for &(b, c, m) in &[(1usize, 3usize, 1usize), (3, 7, 16), (3, 33, 64)] {
        let s = shape(b, 1, c, m, 1, 1.0);
        let bases = random_bases(&mut rng, m, c);
        let mu = rng.vec(s.mu_len());
        let (bases_buf, mu_buf) = (gpu.upload(&bases).unwrap(), gpu.upload(&mu).unwrap());
        let out = Em::new(gpu, s).unwrap().update_bases(&bases_buf, &mu_buf, 0.9).unwrap();
        let mut v = vec![0.0f64; m * c];
        for k in 0..m * c {
            let mean: f64 = (0..b).map(|bb| mu[bb * m * c + k] as f64).sum::<f64>() / b as f64;
            v[k] = 0.9 * bases[k] as f64 + 0.1 * mean;
        }
        assert_close(&format!("bases update {s}"), &gpu.download(&out).unwrap(), &ref_l2norm_rows(&v, c), 1e-4, 1e-5);
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_shapes() {
    for path in paths() {
        let gpu = common::gpu();
        // `alloc`, not `zeros`: these buffers never reach a kernel (the launchers refuse them).
        let u = gpu.alloc(2 * 7 * 5).unwrap();
        let bases = gpu.alloc(4 * 5).unwrap();
        // u too short for B=3.
        let s = shape(3, 7, 5, 4, 3, 1.0);
        let err =
            launcher(gpu, &s, path).and_then(|em| em.forward(&u, &bases, false)).err().expect("error").to_string();
        assert!(err.contains("[B=3,N=7,C=5,M=4,T=3]") && err.contains("70") && err.contains("105"), "{err}");
        // Too many bases.
        let s = shape(1, 7, 5, 65, 1, 1.0);
        let err = launcher(gpu, &s, path)
            .and_then(|em| em.forward(&u, &gpu.alloc(65 * 5)?, false))
            .err()
            .expect("error")
            .to_string();
        assert!(err.contains("M=65") && err.contains("64"), "{err}");
        // No iterations, empty axes.
        for s in [shape(1, 7, 5, 4, 0, 1.0), shape(1, 0, 5, 4, 1, 1.0)] {
            let err =
                launcher(gpu, &s, path).and_then(|em| em.forward(&u, &bases, false)).err().expect("error").to_string();
            assert!(err.contains(&s.to_string()), "{err}");
        }
        // Bases of the wrong size.
        let s = shape(1, 7, 5, 4, 1, 1.0);
        let err = launcher(gpu, &s, path)
            .and_then(|em| em.forward(&u, &gpu.alloc(3)?, false))
            .err()
            .expect("error")
            .to_string();
        assert!(err.contains("bases") && err.contains("[M,C]"), "{err}");
        let err =
            Em::new(gpu, s).unwrap().update_bases(&bases, &gpu.alloc(3).unwrap(), 0.9).expect_err("error").to_string();
        assert!(err.contains("mu_T") && err.contains("[B,M,C]"), "{err}");
    }
}

// ----- PyTorch fixtures -----

/// Reads the number arrays of a fixture: a flat JSON object of `"name": [numbers]` (and a
/// few scalars), as written by tests/reference/em_ref.py.
fn parse_fixture(text: &str) -> std::collections::HashMap<String, Vec<f64>> {
    let mut out = std::collections::HashMap::new();
    let mut rest = text;
    while let Some(q) = rest.find('"') {
        let after = &rest[q + 1..];
        let end = after.find('"').expect("closing quote");
        let key = after[..end].to_string();
        let value = after[end + 1..].trim_start().strip_prefix(':').expect("colon").trim_start();
        let (body, tail) = if let Some(v) = value.strip_prefix('[') {
            let close = v.find(']').expect("closing bracket");
            (&v[..close], &v[close + 1..])
        } else {
            let stop = value.find([',', '}']).unwrap_or(value.len());
            (&value[..stop], &value[stop..])
        };
        let nums = body
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<f64>().unwrap_or_else(|_| panic!("{key}: {t}")))
            .collect();
        out.insert(key, nums);
        rest = tail;
    }
    out
}

#[test]
fn matches_pytorch_autograd_fixtures() {
    for path in paths() {
        let gpu = common::gpu();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("tests/fixtures") {
            let file = entry.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            if !(name.starts_with("em_") && name.ends_with(".json")) {
                continue;
            }
            seen += 1;
            let f = parse_fixture(&std::fs::read_to_string(&file).unwrap());
            let dims = &f["shape"];
            let s = shape(
                dims[0] as usize,
                dims[1] as usize,
                dims[2] as usize,
                dims[3] as usize,
                dims[4] as usize,
                f["lambda"][0] as f32,
            );
            let up = |k: &str| gpu.upload(&f[k].iter().map(|&v| v as f32).collect::<Vec<f32>>()).unwrap();
            let (u, bases, dr) = (up("u"), up("bases"), up("d_recon"));
            let em = launcher(gpu, &s, path).unwrap();
            let fwd = em.forward(&u, &bases, true).unwrap();
            let (rtol, atol) = (1e-3, 1e-4);
            assert_close(&format!("[{path}] {name} Z_T"), &gpu.download(&fwd.z).unwrap(), &f["z"], rtol, atol);
            assert_close(&format!("[{path}] {name} mu_T"), &gpu.download(&fwd.mu).unwrap(), &f["mu"], rtol, atol);
            assert_close(&format!("[{path}] {name} R"), &gpu.download(&fwd.recon).unwrap(), &f["recon"], rtol, atol);
            let du = em.backward_unrolled(&u, &bases, &fwd, &dr).unwrap();
            assert_close(&format!("[{path}] {name} du"), &gpu.download(&du).unwrap(), &f["d_u"], rtol, atol);
            let nb = em.update_bases(&bases, &fwd.mu, f["momentum"][0] as f32).unwrap();
            assert_close(
                &format!("[{path}] {name} new bases"),
                &gpu.download(&nb).unwrap(),
                &f["new_bases"],
                rtol,
                atol,
            );
        }
        assert!(seen >= 2, "expected the PyTorch fixtures tests/fixtures/em_*.json (run tests/reference/em_ref.py)");
    }
}

// ----- the two-pass iteration of the GPU path -----

/// Which output of [`Em::fused_iteration`] a check reads.
#[derive(Clone, Copy, Debug)]
enum FusedOut {
    Z,
    Colsum,
    MuRaw,
    Mu,
}

#[test]
fn fused_iteration_matches_the_reference_on_every_path() {
    // The GPU path's iteration in two passes (shaders/em_fused.wgsl), forced on each path: token
    // counts that leave a partial tile of 64 (7, 33, 130, 300), a single token, M from 1 to 64,
    // odd C, shared bases (t = 1) and per-batch mu (t > 1).
    let extra = [(2usize, 129usize, 37usize, 64usize)];
    for path in paths() {
        let mut rng = Rng::new(21);
        for &(b, n, c, m) in SHAPES.iter().chain(&extra) {
            for shared in [true, false] {
                let s = shape(b, n, c, m, 1, if shared { 1.0 } else { -2.5 });
                let u = Input::random(&mut rng, &[b, n, c]);
                let mu = if shared {
                    Input::float(&[m, c], random_bases(&mut rng, m, c))
                } else {
                    let per: Vec<f32> = (0..b).flat_map(|_| random_bases(&mut rng, m, c)).collect();
                    Input::float(&[b, m, c], per)
                };
                for which in [FusedOut::Z, FusedOut::Colsum, FusedOut::MuRaw, FusedOut::Mu] {
                    check(Case::new(
                        format!("[{path}] fused iteration {which:?} shared={shared} {s}"),
                        vec![u.clone(), mu.clone()],
                        move |x| {
                            let z = ref_e_step(&x[0], &x[1], shared, &s);
                            let cs = ref_colsum(&z, &s);
                            match which {
                                FusedOut::Z => z,
                                FusedOut::Colsum => cs,
                                FusedOut::MuRaw => ref_ztx(&z, &x[0], Some(&cs), &s),
                                FusedOut::Mu => ref_m_step_normalized(&z, &x[0], &cs, &s),
                            }
                        },
                        move |gpu, x| {
                            let (z, cs) = (gpu.alloc(s.z_len())?, gpu.alloc(s.batch * s.bases)?);
                            let (mu_raw, mu_out) = (gpu.alloc(s.mu_len())?, gpu.alloc(s.mu_len())?);
                            let mu_in = if shared { Bases::Shared(&x[1]) } else { Bases::PerBatch(&x[1]) };
                            launcher(gpu, &s, path)?.fused_iteration(&x[0], mu_in, &z, &cs, &mu_raw, &mu_out)?;
                            Ok(match which {
                                FusedOut::Z => z,
                                FusedOut::Colsum => cs,
                                FusedOut::MuRaw => mu_raw,
                                FusedOut::Mu => mu_out,
                            })
                        },
                    ));
                }
            }
        }
    }
}

#[test]
fn the_gpu_path_fuses_iterations_and_the_cpu_paths_do_not() {
    let gpu = common::gpu();
    let s = shape(2, 100, 8, 4, 2, 1.0);
    for path in [KernelPath::Registers, KernelPath::Subgroup, KernelPath::Tiled] {
        assert_eq!(launcher(gpu, &s, path).unwrap().fuses_iterations(), path == KernelPath::Tiled, "{path}");
    }
    // Forced either way on any path.
    for path in [KernelPath::Registers, KernelPath::Tiled] {
        let em = launcher(gpu, &s, path).unwrap();
        assert!(em.with_iteration(em::Iteration::TwoPass).fuses_iterations());
        assert!(!em.with_iteration(em::Iteration::PerStep).fuses_iterations());
    }
    // Too many token tiles for one dispatch: the tiled path falls back to the seven dispatches.
    let huge = shape(1, 32 * 65536 + 1, 1, 1, 1, 1.0);
    assert!(!launcher(gpu, &huge, KernelPath::Tiled).unwrap().fuses_iterations());
    // The whole loop forced to two passes on a CPU path gives what the per-step loop gives.
    let mut rng = Rng::new(5);
    let s = shape(2, 70, 9, 5, 3, 1.0);
    let u = gpu.upload(&rng.vec(s.tokens_len())).unwrap();
    let bases = gpu.upload(&random_bases(&mut rng, 5, 9)).unwrap();
    let run = |iteration| {
        let em = launcher(gpu, &s, KernelPath::Registers).unwrap().with_iteration(iteration);
        let fwd = em.forward(&u, &bases, false).unwrap();
        (gpu.download(&fwd.z).unwrap(), gpu.download(&fwd.recon).unwrap())
    };
    let (two, per) = (run(em::Iteration::TwoPass), run(em::Iteration::PerStep));
    assert_close("Z_T, two passes against per step", &two.0, &f64s(&per.0), 1e-4, 1e-5);
    assert_close("R, two passes against per step", &two.1, &f64s(&per.1), 1e-4, 1e-5);
}

#[test]
fn texture_operands_give_the_storage_kernels_results_bit_for_bit() {
    // Where texture operands are on (lavapipe's default), softmax4 and tile_colsum4 fetch Z
    // from a flat texture: the same values in the same order as the storage loads, so Z and
    // the partial column sums equal the storage kernels' bit for bit (the reference checks
    // above run whichever is the default). Shapes: one partial texture row, several rows and a
    // partial one, and M no multiple of 4 (the scalar kernels, storage only). Texture copies
    // counted: the logits matmul's u and mu (flat textures, their rows being no multiple of 64
    // floats; on adapters with subgroups, where the texture matmul runs) and Z's two. A context of its own, so that switching textures off changes no
    // other test.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(51);
    for &(b, n, c, m) in &[(2usize, 300usize, 20usize, 16usize), (1, 4100, 36, 64), (2, 33, 20, 6)] {
        let s = shape(b, n, c, m, 1, 0.7);
        let em = Em::new(&gpu, s).unwrap();
        let (u, mu) = (gpu.upload(&rng.vec(b * n * c)).unwrap(), gpu.upload(&rng.vec(m * c)).unwrap());
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            gpu.set_profiling(true).unwrap();
            let z = gpu.alloc(s.z_len()).unwrap();
            let partial = gpu.alloc(b * n.div_ceil(256) * m).unwrap();
            em.e_step(&u, Bases::Shared(&mu), &z, &partial).unwrap();
            runs.push([gpu.download(&z).unwrap(), gpu.download(&partial).unwrap()]);
            let profile = gpu.take_profile().unwrap().expect("profiling is on");
            gpu.set_profiling(false).unwrap();
            let copies =
                profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count();
            // The logits product reads textures only where the subgroup matmul runs.
            let matmul_textures = gpu.info().runs_subgroup_kernels();
            let want = if textures && m % 4 == 0 { 2 + 2 * usize::from(matmul_textures) } else { 0 };
            assert_eq!(copies, want, "{s}, textures {textures}: texture copies");
        }
        assert_eq!(runs[0], runs[1], "{s}: textures and storage differ");
    }
}

/// Which output of the one-pass M-step a check reads.
#[derive(Debug, Clone, Copy)]
enum FinishOut {
    Colsum,
    MuRaw,
    Mu,
}

/// The one-pass M-step's outputs (column sums, mu_raw, mu) from `z` and `u`.
fn m_step_fused(gpu: &Gpu, z: &GpuBuffer, u: &GpuBuffer, s: &EmShape, path: KernelPath) -> Result<[GpuBuffer; 3]> {
    let (cs, raw, mu) = (gpu.alloc(s.batch * s.bases)?, gpu.alloc(s.mu_len())?, gpu.alloc(s.mu_len())?);
    launcher(gpu, s, path)?.m_step_fused(z, u, &cs, &raw, &mu)?;
    Ok([cs, raw, mu])
}

/// M and C multiples of 4 (what the one-pass M-step needs): one token, N odd and across two
/// and three tiles of 256 tokens, M from 4 to 64, B 1 to 3; token counts that give 1, 2 and
/// several token splits of the split product.
const FINISH_SHAPES: &[(usize, usize, usize, usize)] =
    &[(1, 1, 4, 4), (3, 7, 8, 4), (2, 300, 12, 16), (1, 129, 36, 64), (2, 513, 4, 8), (1, 4096, 8, 64)];

#[test]
fn one_pass_m_step_matches_the_reference() {
    for path in paths() {
        let mut rng = Rng::new(61);
        for &(b, n, c, m) in FINISH_SHAPES {
            let s = shape(b, n, c, m, 1, 1.0);
            let z = Input::float(&[b, n, m], random_z(&mut rng, b * n, m));
            let u = Input::random(&mut rng, &[b, n, c]);
            for which in [FinishOut::Colsum, FinishOut::MuRaw, FinishOut::Mu] {
                check(Case::new(
                    format!("[{path}] one-pass m_step {which:?} {s}"),
                    vec![z.clone(), u.clone()],
                    move |x| {
                        let cs = ref_colsum(&x[0], &s);
                        match which {
                            FinishOut::Colsum => cs,
                            FinishOut::MuRaw => ref_ztx(&x[0], &x[1], Some(&cs), &s),
                            FinishOut::Mu => ref_m_step_normalized(&x[0], &x[1], &cs, &s),
                        }
                    },
                    move |gpu, x| {
                        let [cs, raw, mu] = m_step_fused(gpu, &x[0], &x[1], &s, path)?;
                        Ok(match which {
                            FinishOut::Colsum => cs,
                            FinishOut::MuRaw => raw,
                            FinishOut::Mu => mu,
                        })
                    },
                ));
            }
        }
    }
}

#[test]
fn one_pass_m_step_equals_the_four_step_kernels_bit_for_bit() {
    // m_step_finish4 adds in the order of tile_colsum4 + colsum, reduce_splits and normalize,
    // so the forward's outputs do not depend on which of the two ways it ran; with texture
    // operands on and off (a context of its own, so the switch changes no other test), where
    // the texture module reads Z and the split products from textures.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(62);
    for path in gpu.kernel_paths() {
        for &(b, n, c, m) in FINISH_SHAPES {
            let s = shape(b, n, c, m, 1, 0.8);
            let u = gpu.upload(&rng.vec(s.tokens_len())).unwrap();
            let bases = gpu.upload(&random_bases(&mut rng, m, c)).unwrap();
            let mut runs = Vec::new();
            for textures in [true, false] {
                gpu.set_texture_operands(textures);
                let em = launcher(&gpu, &s, path).unwrap();
                let z = gpu.alloc(s.z_len()).unwrap();
                let partial = gpu.alloc(b * n.div_ceil(em::TILE) * m).unwrap();
                em.e_step(&u, Bases::Shared(&bases), &z, &partial).unwrap();
                let (cs, raw, mu) =
                    (gpu.alloc(b * m).unwrap(), gpu.alloc(s.mu_len()).unwrap(), gpu.alloc(s.mu_len()).unwrap());
                em.colsum(&partial, &cs).unwrap();
                em.m_step(&z, &u, &cs, &raw).unwrap();
                em.normalize(&raw, &mu).unwrap();
                let steps = [&cs, &raw, &mu].map(|x| gpu.download(x).unwrap());
                let fused = m_step_fused(&gpu, &z, &u, &s, path).unwrap().map(|x| gpu.download(&x).unwrap());
                for (k, what) in ["column sums", "mu_raw", "mu"].iter().enumerate() {
                    assert_eq!(fused[k], steps[k], "[{path}] {s}, textures {textures}: {what}, one pass against steps");
                }
                runs.push(fused);
            }
            assert_eq!(runs[0], runs[1], "[{path}] {s}: textures and storage differ");
        }
    }
    gpu.set_texture_operands(true);
}

#[test]
fn the_per_step_forward_runs_the_one_pass_m_step_where_it_can() {
    // Dispatches per iteration on the CPU paths: logits matmul and softmax (em_e_step), split
    // matmul and m_step_finish4 (em_m_step) for M and C multiples of 4; otherwise the seven of
    // the step kernels. Texture copies are not counted (they depend on the adapter).
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(63);
    for (s, per_iteration) in [
        (shape(2, 40, 8, 4, 2, 1.0), [("em_e_step", 2), ("em_m_step", 2)].as_slice()),
        (
            shape(2, 40, 6, 4, 2, 1.0),
            [("em_e_step", 3), ("em_colsum", 1), ("em_m_step", 2), ("em_normalize", 1)].as_slice(),
        ),
    ] {
        let em = launcher(&gpu, &s, KernelPath::Registers).unwrap();
        assert_eq!(em.fuses_m_step(), s.width % 4 == 0, "{s}");
        let u = gpu.upload(&rng.vec(s.tokens_len())).unwrap();
        let bases = gpu.upload(&random_bases(&mut rng, s.bases, s.width)).unwrap();
        gpu.set_profiling(true).unwrap();
        let fwd = em.forward(&u, &bases, true).unwrap();
        let profile = gpu.take_profile().unwrap().expect("profiling is on");
        gpu.set_profiling(false).unwrap();
        for t in 1..=s.iters {
            let scope = format!("iter={t}");
            let launches: Vec<_> = profile
                .records
                .iter()
                .filter(|r| {
                    r.scopes.first() == Some(&scope) && r.label.kernel != vlsa_kernels::OperandTexture::COPY_KERNEL
                })
                .collect();
            assert_eq!(launches.len(), per_iteration.iter().map(|p| p.1).sum::<usize>(), "{s} {scope}");
            for &(step, count) in per_iteration {
                let n = launches.iter().filter(|r| r.scopes.get(1).map(String::as_str) == Some(step)).count();
                let n = n + launches.iter().filter(|r| r.scopes.len() == 1 && r.label.kernel == step).count();
                assert_eq!(n, count, "{s} {scope} {step}");
            }
        }
        // What the backward needs is saved either way: it matches the reference loop.
        let (z_ref, _, _) = ref_loop(&f64s(&gpu.download(&u).unwrap()), &f64s(&gpu.download(&bases).unwrap()), &s);
        assert_close(&format!("Z_T {s}"), &gpu.download(&fwd.z).unwrap(), &z_ref, 1e-4, 1e-5);
        let saved = fwd.saved.as_ref().unwrap();
        assert_eq!((saved.colsum.len(), saved.mu_raw.len(), saved.mu.len()), (2, 2, 1), "{s}");
    }
}

#[test]
fn one_pass_m_step_refuses_shapes_it_cannot_run() {
    let gpu = common::gpu();
    for s in [shape(1, 8, 5, 4, 1, 1.0), shape(1, 8, 8, 6, 1, 1.0)] {
        let em = Em::new(gpu, s).unwrap();
        assert!(!em.fuses_m_step());
        let (z, u) = (gpu.alloc(s.z_len()).unwrap(), gpu.alloc(s.tokens_len()).unwrap());
        let (cs, raw, mu) =
            (gpu.alloc(s.bases).unwrap(), gpu.alloc(s.mu_len()).unwrap(), gpu.alloc(s.mu_len()).unwrap());
        let err = em.m_step_fused(&z, &u, &cs, &raw, &mu).expect_err("refused").to_string();
        assert!(err.contains(&s.to_string()) && err.contains("multiples of 4"), "{err}");
    }
    // A short output is named.
    let s = shape(1, 8, 8, 4, 1, 1.0);
    let (z, u) = (gpu.alloc(s.z_len()).unwrap(), gpu.alloc(s.tokens_len()).unwrap());
    let (cs, raw) = (gpu.alloc(s.bases).unwrap(), gpu.alloc(s.mu_len()).unwrap());
    let err = Em::new(gpu, s).unwrap().m_step_fused(&z, &u, &cs, &raw, &gpu.alloc(3).unwrap()).expect_err("short");
    assert!(err.to_string().contains("mu has 3 elements"), "{err}");
}
