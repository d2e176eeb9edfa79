//! LayerNorm over the last axis (shaders/layer_norm.wgsl) against its f64 CPU reference, forward
//! and backward (input, weight, bias) with finite-difference checks, in both row schedules.

mod common;

use common::{check, Case, Input, Rng, ROW_SHAPES, SCHEDULES};
use vlsa_kernels::layer_norm::{self, LayerNormGrads, LayerNormIo, LayerNormSaved};

// ----- CPU references (f64) -----

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

// ----- tests -----

#[test]
fn layer_norm_forward_backward_both_schedules() {
    let mut rng = Rng::new(20);
    let eps = 1e-5f32;
    // (300, 7), (300, 8) and (130, 33) split the weight/bias gradient over several row chunks;
    // (2, 300), (9, 12), (300, 8), (7, 16) and (6, 20) take the vec4 kernels (columns a multiple
    // of 4), four rows per invocation: 2, 9, 7 and 6 rows end mid-group.
    let shapes: Vec<(usize, usize)> =
        ROW_SHAPES.iter().cloned().chain([(300, 7), (300, 8), (9, 12), (7, 16), (6, 20)]).collect();
    for schedule in SCHEDULES {
        for &(rows, cols) in &shapes {
            let x = Input::random(&mut rng, &[rows, cols]);
            let mut w = Input::random(&mut rng, &[cols]);
            w.data.iter_mut().for_each(|v| *v += 1.0);
            let b = Input::random(&mut rng, &[cols]);
            let forward = move |gpu: &vlsa_kernels::Gpu, x: &[vlsa_kernels::GpuBuffer]| {
                let (out, mean, rstd) = (gpu.alloc(rows * cols)?, gpu.alloc(rows)?, gpu.alloc(rows)?);
                let io = LayerNormIo { x: &x[0], weight: &x[1], bias: &x[2], out: &out, mean: &mean, rstd: &rstd };
                layer_norm::forward_with(gpu, schedule, &io, rows, cols, eps)?;
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
                    let saved = LayerNormSaved { x: &x[0], weight: &x[1], mean: &mean, rstd: &rstd };
                    let grads = LayerNormGrads { dx: &dx, dweight: &dw, dbias: &db, dx_in: None };
                    layer_norm::backward_with(gpu, schedule, &saved, dy, &grads, rows, cols)?;
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
        for &(rows, cols) in &[(1usize, 1usize), (5, 7), (33, 64), (6, 8), (300, 7), (3, 513)] {
            let (x, w, dy, dx_in) = (rng.vec(rows * cols), rng.vec(cols), rng.vec(rows * cols), rng.vec(rows * cols));
            let b = rng.vec(cols);
            let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let (rdx, rdw, rdb) = ref_layer_norm_backward(&f64s(&x), &f64s(&w), &f64s(&dy), cols, eps as f64);
            let want_dx: Vec<f64> = rdx.iter().zip(&dx_in).map(|(a, &e)| a + e as f64).collect();
            let up = |v: &[f32]| gpu.upload(v).unwrap();
            let (xb, wb, bb, dyb, dinb) = (up(&x), up(&w), up(&b), up(&dy), up(&dx_in));
            let (out, mean, rstd) =
                (gpu.alloc(rows * cols).unwrap(), gpu.alloc(rows).unwrap(), gpu.alloc(rows).unwrap());
            let io = LayerNormIo { x: &xb, weight: &wb, bias: &bb, out: &out, mean: &mean, rstd: &rstd };
            layer_norm::forward_with(gpu, schedule, &io, rows, cols, eps).unwrap();
            let (dx, dw, db) = (gpu.alloc(rows * cols).unwrap(), gpu.alloc(cols).unwrap(), gpu.alloc(cols).unwrap());
            let grads = LayerNormGrads { dx: &dx, dweight: &dw, dbias: &db, dx_in: Some(&dinb) };
            layer_norm::backward_with(gpu, schedule, &io.saved(), &dyb, &grads, rows, cols).unwrap();
            let name = format!("layer_norm backward with dx_in {schedule:?} [{rows},{cols}]");
            common::assert_close(&format!("{name} dx"), &gpu.download(&dx).unwrap(), &want_dx, 1e-3, 1e-4);
            common::assert_close(&format!("{name} dweight"), &gpu.download(&dw).unwrap(), &rdw, 1e-3, 1e-4);
            common::assert_close(&format!("{name} dbias"), &gpu.download(&db).unwrap(), &rdb, 1e-3, 1e-4);
        }
    }
    // Adding in place would read dx while other rows write it: refused with one sentence.
    let (rows, cols) = (4usize, 8usize);
    let big = || gpu.alloc(rows * cols).unwrap();
    let (x, w, mean, rstd, dy, dx) = (big(), big(), big(), big(), big(), big());
    let saved = LayerNormSaved { x: &x, weight: &w, mean: &mean, rstd: &rstd };
    let grads = LayerNormGrads { dx: &dx, dweight: &w, dbias: &w, dx_in: Some(&dx) };
    let err = layer_norm::backward(gpu, &saved, &dy, &grads, rows, cols).unwrap_err().to_string();
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
        let io = LayerNormIo { x: &xb, weight: &wb, bias: &bb, out: &out, mean: &mean, rstd: &rstd };
        layer_norm::forward_with(gpu, schedule, &io, rows, cols, eps).unwrap();
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
    let io = LayerNormIo { x: &x, weight: &w, bias: &b, out: &out, mean: &mean, rstd: &rstd };
    layer_norm::forward(gpu, &io, rows, cols, 1e-5).unwrap();
    let run = || {
        let (dx, dw, db) = (gpu.alloc(rows * cols).unwrap(), gpu.alloc(cols).unwrap(), gpu.alloc(cols).unwrap());
        let grads = LayerNormGrads { dx: &dx, dweight: &dw, dbias: &db, dx_in: None };
        layer_norm::backward(gpu, &io.saved(), &dy, &grads, rows, cols).unwrap();
        (gpu.download(&dx).unwrap(), gpu.download(&dw).unwrap(), gpu.download(&db).unwrap())
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "layer_norm backward changed between identical runs");
    }
}

#[test]
fn layer_norm_rejects_bad_shapes() {
    let gpu = common::gpu();
    // alloc, not zeros: a clear recorded with no dispatch after it stays pending, and a later
    // upload into the recycled buffer would be wiped by it (see the report on Gpu::write).
    let small = gpu.alloc(6).unwrap();
    let big = gpu.alloc(64).unwrap();
    let msg = |r: vlsa_kernels::Result<()>| r.unwrap_err().to_string();

    let io = LayerNormIo { x: &big, weight: &big, bias: &big, out: &big, mean: &big, rstd: &big };
    let e = msg(layer_norm::forward(gpu, &LayerNormIo { weight: &small, ..io }, 2, 8, 1e-5));
    assert!(e.contains("weight") && e.contains("[8]"), "{e}");
    let e = msg(layer_norm::forward(gpu, &io, 3, 0, 1e-5));
    assert!(e.contains("[3, 0]"), "{e}");
    let saved = LayerNormSaved { x: &big, weight: &big, mean: &big, rstd: &small };
    let grads = LayerNormGrads { dx: &big, dweight: &big, dbias: &big, dx_in: None };
    let e = msg(layer_norm::backward(gpu, &saved, &big, &grads, 8, 8));
    assert!(e.contains("rstd") && e.contains("[8]"), "{e}");
}

#[test]
fn texture_operands_give_the_storage_kernels_results_bit_for_bit() {
    // Where texture operands are on (lavapipe's default), the vec4 row kernels fetch x, dy,
    // dx_in, weight and bias from flat textures: the same values in the same order as the storage loads, so
    // every output equals the storage kernels' bit for bit (the reference checks above run
    // whichever is the default). Shapes: one partial texture row, several rows and a partial
    // one (9600 and 38400 elements), and columns no multiple of 4 (storage only, no copies).
    // A context of its own, so that switching textures off changes no other test.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(23);
    for &(rows, cols) in &[(6usize, 8usize), (75, 128), (200, 192), (33, 7)] {
        let n = rows * cols;
        let (x, w, b, dy, dx_in) = (rng.vec(n), rng.vec(cols), rng.vec(cols), rng.vec(n), rng.vec(n));
        let up = |v: &[f32]| gpu.upload(v).unwrap();
        let (xb, wb, bb, dyb, dinb) = (up(&x), up(&w), up(&b), up(&dy), up(&dx_in));
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            gpu.set_profiling(true).unwrap();
            let (out, mean, rstd) = (gpu.alloc(n).unwrap(), gpu.alloc(rows).unwrap(), gpu.alloc(rows).unwrap());
            let io = LayerNormIo { x: &xb, weight: &wb, bias: &bb, out: &out, mean: &mean, rstd: &rstd };
            layer_norm::forward(&gpu, &io, rows, cols, 1e-5).unwrap();
            let mut got: Vec<Vec<f32>> = [&out, &mean, &rstd].iter().map(|b| gpu.download(b).unwrap()).collect();
            for dx_in in [None, Some(&dinb)] {
                let (dx, dw, db) = (gpu.alloc(n).unwrap(), gpu.alloc(cols).unwrap(), gpu.alloc(cols).unwrap());
                let grads = LayerNormGrads { dx: &dx, dweight: &dw, dbias: &db, dx_in };
                layer_norm::backward(&gpu, &io.saved(), &dyb, &grads, rows, cols).unwrap();
                got.extend([&dx, &dw, &db].iter().map(|b| gpu.download(b).unwrap()));
            }
            let profile = gpu.take_profile().unwrap().expect("profiling is on");
            gpu.set_profiling(false).unwrap();
            let copies =
                profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count();
            // x, weight and bias for the forward; dy for the first backward's dx (once, though
            // it stands in for the absent dx_in too: the same contents share one texture);
            // dx_in for the second. Every other operand is still in its texture: nothing wrote
            // x, weight or dy in between.
            let want = if textures && gpu.texture_operands() && cols % 4 == 0 { 3 + 1 + 1 } else { 0 };
            assert_eq!(copies, want, "[{rows},{cols}], textures {textures}: texture copies");
            runs.push(got);
        }
        assert_eq!(runs[0], runs[1], "[{rows},{cols}]: textures and storage differ");
    }
}
