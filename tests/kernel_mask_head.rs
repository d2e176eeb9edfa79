//! The cosine mask head (shaders/include/mask_head_core.wgsl) against its f64 CPU reference, with
//! gradients; its texture module against its storage one.

mod common;

use common::{assert_close, check, zeros, Case, Input, Rng};
use vlsa_kernels::mask_head::{self, MaskHead, MaskHeadGrads, MaskHeadInputs};

const NORM_EPS: f64 = 1e-6;

fn ref_scale(ls: f64) -> f64 {
    ls.exp().min(100.0)
}

/// Unit vector and the clamped norm of `v`.
fn normalize(v: &[f64]) -> (Vec<f64>, f64) {
    let a = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(NORM_EPS);
    (v.iter().map(|x| x / a).collect(), a)
}

fn ref_mask_head(h: MaskHead, x: &[f64], t: &[f64], ls: f64) -> Vec<f64> {
    let c = h.width;
    let s = ref_scale(ls);
    let mut out = vec![0.0; h.batch * h.classes * h.tokens];
    for b in 0..h.batch {
        for n in 0..h.tokens {
            let (xh, _) = normalize(&x[(b * h.tokens + n) * c..][..c]);
            for k in 0..h.classes {
                let (th, _) = normalize(&t[k * c..][..c]);
                out[(b * h.classes + k) * h.tokens + n] = s * xh.iter().zip(&th).map(|(a, b)| a * b).sum::<f64>();
            }
        }
    }
    out
}

/// Backward of a normalization v^ = v / max(||v||, eps) given dv^.
fn normalize_backward(v: &[f64], dvh: &[f64]) -> Vec<f64> {
    let (vh, a) = normalize(v);
    let clamped = v.iter().map(|x| x * x).sum::<f64>().sqrt() < NORM_EPS;
    let proj: f64 = if clamped { 0.0 } else { vh.iter().zip(dvh).map(|(a, b)| a * b).sum() };
    vh.iter().zip(dvh).map(|(&u, &g)| (g - u * proj) / a).collect()
}

fn ref_mask_head_backward(h: MaskHead, x: &[f64], t: &[f64], ls: f64, dy: &[f64]) -> (Vec<f64>, Vec<f64>, f64) {
    let c = h.width;
    let s = ref_scale(ls);
    let ths: Vec<Vec<f64>> = (0..h.classes).map(|k| normalize(&t[k * c..][..c]).0).collect();
    let mut dx = vec![0.0; x.len()];
    let mut dth = vec![vec![0.0; c]; h.classes];
    let mut ds = 0.0;
    for b in 0..h.batch {
        for n in 0..h.tokens {
            let row = b * h.tokens + n;
            let xv = &x[row * c..][..c];
            let (xh, _) = normalize(xv);
            let mut dxh = vec![0.0; c];
            for k in 0..h.classes {
                let g = dy[(b * h.classes + k) * h.tokens + n];
                let cos: f64 = xh.iter().zip(&ths[k]).map(|(a, b)| a * b).sum();
                ds += g * cos;
                for j in 0..c {
                    dxh[j] += s * g * ths[k][j];
                    dth[k][j] += s * g * xh[j];
                }
            }
            dx[row * c..][..c].copy_from_slice(&normalize_backward(xv, &dxh));
        }
    }
    let dt: Vec<f64> = (0..h.classes).flat_map(|k| normalize_backward(&t[k * c..][..c], &dth[k])).collect();
    let e = ls.exp();
    (dx, dt, if e <= 100.0 { ds * e } else { 0.0 })
}

fn head_case(name: String, h: MaskHead, inputs: Vec<Input>) -> Case<'static> {
    let out_len = h.batch * h.classes * h.tokens;
    Case::new(
        name,
        inputs,
        move |x| ref_mask_head(h, &x[0], &x[1], x[2][0]),
        move |gpu, x| {
            let out = gpu.alloc(out_len)?;
            let inputs = MaskHeadInputs { x: &x[0], text: &x[1], logit_scale: &x[2] };
            mask_head::forward(gpu, &inputs, &out, &h)?;
            Ok(out)
        },
    )
    .backward(
        move |gpu, x, dy| {
            let (dx, dt, ds) = (gpu.alloc(x[0].len())?, gpu.alloc(x[1].len())?, gpu.alloc(1)?);
            let inputs = MaskHeadInputs { x: &x[0], text: &x[1], logit_scale: &x[2] };
            let grads = MaskHeadGrads { d_x: &dx, d_text: &dt, d_logit_scale: &ds };
            mask_head::backward(gpu, &inputs, dy, &grads, &h)?;
            Ok(vec![Some(dx), Some(dt), Some(ds)])
        },
        move |x, dy| {
            let (dx, dt, ds) = ref_mask_head_backward(h, &x[0], &x[1], x[2][0], dy);
            vec![Some(dx), Some(dt), Some(vec![ds])]
        },
    )
}

#[test]
fn mask_head_matches_reference_with_gradients() {
    let mut rng = Rng::new(19);
    let shapes = [
        MaskHead { batch: 1, tokens: 1, width: 1, classes: 1 },
        MaskHead { batch: 2, tokens: 7, width: 33, classes: 3 },
        MaskHead { batch: 1, tokens: 130, width: 7, classes: 2 },
        MaskHead { batch: 2, tokens: 33, width: 16, classes: 16 },
        MaskHead { batch: 2, tokens: 256, width: 128, classes: 3 },
    ];
    // ln(1/0.07) (the initial value), a small scale, and one past the clamp (zero gradient).
    let scales = [(1.0f32 / 0.07).ln(), -0.5, 150f32.ln()];
    for (j, h) in shapes.into_iter().enumerate() {
        let ls = scales[j % scales.len()];
        let inputs = vec![
            Input::random(&mut rng, &[h.batch, h.tokens, h.width]),
            Input::random(&mut rng, &[h.classes, h.width]),
            Input::float(&[1], vec![ls]),
        ];
        check(head_case(format!("mask_head {h:?} logit_scale {ls}"), h, inputs).grad_tol(1e-3, 2e-4));
    }
    // The clamped scale at the default shape too.
    let h = MaskHead { batch: 1, tokens: 33, width: 128, classes: 3 };
    let inputs = vec![
        Input::random(&mut rng, &[1, 33, 128]),
        Input::random(&mut rng, &[3, 128]),
        Input::float(&[1], vec![150f32.ln()]),
    ];
    check(head_case(format!("mask_head {h:?} clamped"), h, inputs));
}

#[test]
fn mask_head_zero_feature_rows_give_zero_logits() {
    let gpu = common::gpu();
    let h = MaskHead { batch: 1, tokens: 3, width: 5, classes: 2 };
    let mut x = Rng::new(20).vec(15);
    x[5..10].iter_mut().for_each(|v| *v = 0.0);
    let t = Rng::new(21).vec(10);
    let out = gpu.alloc(6).unwrap();
    let (xb, tb, sb) = (gpu.upload(&x).unwrap(), gpu.upload(&t).unwrap(), gpu.upload(&[2.0f32]).unwrap());
    mask_head::forward(gpu, &MaskHeadInputs { x: &xb, text: &tb, logit_scale: &sb }, &out, &h).unwrap();
    let got = gpu.download(&out).unwrap();
    let want = ref_mask_head(
        h,
        &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &t.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        2.0,
    );
    assert_close("mask head with a zero row", &got, &want, 1e-4, 1e-5);
    assert_eq!((got[1], got[4]), (0.0, 0.0));
}

#[test]
fn texture_operands_give_the_storage_kernels_results_bit_for_bit() {
    // Where texture operands are on (lavapipe's default), the vec4 kernels (widths a multiple
    // of 4) fetch x, t, t^, d_out and the rows' 1/a from flat textures: the same values in the
    // same order as the storage loads, so every output equals the storage module's bit for
    // bit (the reference checks above run whichever is the default). Shapes: the default
    // model's head; 66 rows, whose 1/a are copied rounded up to whole texels; a zero feature
    // row (the clamped norm). A context of its own, so that switching textures off changes no
    // other test.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(29);
    let shapes = [
        MaskHead { batch: 2, tokens: 256, width: 128, classes: 3 },
        MaskHead { batch: 2, tokens: 33, width: 16, classes: 16 },
        MaskHead { batch: 1, tokens: 12, width: 8, classes: 5 },
    ];
    for h in shapes {
        let mut x = rng.vec(h.batch * h.tokens * h.width);
        x[h.width..2 * h.width].iter_mut().for_each(|v| *v = 0.0);
        let (t, dy) = (rng.vec(h.classes * h.width), rng.vec(h.batch * h.classes * h.tokens));
        let (xb, tb, sb, dyb) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&t).unwrap(),
            gpu.upload(&[2.5f32]).unwrap(),
            gpu.upload(&dy).unwrap(),
        );
        let inputs = MaskHeadInputs { x: &xb, text: &tb, logit_scale: &sb };
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            gpu.set_profiling(true).unwrap();
            let out = gpu.alloc(dy.len()).unwrap();
            mask_head::forward(&gpu, &inputs, &out, &h).unwrap();
            let (dx, dt, ds) = (gpu.alloc(x.len()).unwrap(), gpu.alloc(t.len()).unwrap(), gpu.alloc(1).unwrap());
            let grads = MaskHeadGrads { d_x: &dx, d_text: &dt, d_logit_scale: &ds };
            mask_head::backward(&gpu, &inputs, &dyb, &grads, &h).unwrap();
            let profile = gpu.take_profile().unwrap().expect("profiling is on");
            gpu.set_profiling(false).unwrap();
            let copies =
                profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count();
            // x and t for the forward; t^ and d_out for backward_x4 (x is still in its
            // texture); 1/a for backward_text4.
            let want = if textures && gpu.texture_operands() { 5 } else { 0 };
            assert_eq!(copies, want, "{h:?}, textures {textures}: texture copies");
            runs.push([&out, &dx, &dt, &ds].map(|b| gpu.download(b).unwrap()));
        }
        assert_eq!(runs[0], runs[1], "{h:?}: textures and storage differ");
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let td: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        let dyd: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
        assert_close(&format!("{h:?} forward"), &runs[0][0], &ref_mask_head(h, &xd, &td, 2.5), 1e-4, 1e-5);
        let (dx, dt, _) = ref_mask_head_backward(h, &xd, &td, 2.5, &dyd);
        assert_close(&format!("{h:?} dx"), &runs[0][1], &dx, 1e-3, 1e-4);
        assert_close(&format!("{h:?} dt"), &runs[0][2], &dt, 1e-3, 1e-4);
    }
}

#[test]
fn mask_head_rejects_bad_shapes() {
    let gpu = common::gpu();
    let x = zeros(gpu, 2 * 7 * 33).unwrap();
    let t = zeros(gpu, 3 * 32).unwrap();
    let one = zeros(gpu, 1).unwrap();
    let out = zeros(gpu, 2 * 3 * 7).unwrap();
    let h = MaskHead { batch: 2, tokens: 7, width: 33, classes: 3 };
    let inputs = MaskHeadInputs { x: &x, text: &t, logit_scale: &one };
    let err = mask_head::forward(gpu, &inputs, &out, &h).unwrap_err().to_string();
    assert!(err.contains("[2, 7, 33]") && err.contains("[3, 33]") && err.contains("96 elements"), "{err}");
    let t = zeros(gpu, 3 * 33).unwrap();
    let inputs = MaskHeadInputs { x: &x, text: &t, logit_scale: &one };
    let grads = MaskHeadGrads { d_x: &x, d_text: &t, d_logit_scale: &one };
    let err = mask_head::backward(gpu, &inputs, &one, &grads, &h).unwrap_err().to_string();
    assert!(err.contains("output gradient") && err.contains("[2, 3, 7]"), "{err}");
}
