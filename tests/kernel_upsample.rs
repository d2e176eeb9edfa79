//! Bilinear (PyTorch semantics, align_corners = false) and nearest resizing
//! (shaders/include/upsample_core.wgsl) against f64 CPU references, with gradients; the
//! bilinear kernels' texture module against the storage one.

mod common;

use common::{check, zeros, Case, Input, Rng};
use vlsa_kernels::upsample::{self, Resize};

/// PyTorch's per-axis bilinear taps (align_corners = false): (i0, i1, l0, l1).
fn bilinear_tap(dst: usize, n_in: usize, n_out: usize) -> (usize, usize, f64, f64) {
    let scale = n_in as f64 / n_out as f64;
    let src = (scale * (dst as f64 + 0.5) - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(n_in - 1);
    let i1 = (i0 + 1).min(n_in - 1);
    let l1 = src - i0 as f64;
    (i0, i1, 1.0 - l1, l1)
}

fn ref_bilinear(r: Resize, x: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(r.out_len());
    for plane in 0..r.batch * r.channels {
        let base = plane * r.in_h * r.in_w;
        for y in 0..r.out_h {
            let (y0, y1, a0, a1) = bilinear_tap(y, r.in_h, r.out_h);
            for xo in 0..r.out_w {
                let (x0, x1, b0, b1) = bilinear_tap(xo, r.in_w, r.out_w);
                let at = |yy: usize, xx: usize| x[base + yy * r.in_w + xx];
                out.push(a0 * (b0 * at(y0, x0) + b1 * at(y0, x1)) + a1 * (b0 * at(y1, x0) + b1 * at(y1, x1)));
            }
        }
    }
    out
}

/// The adjoint of [`ref_bilinear`], by scattering (the GPU gathers).
fn ref_bilinear_backward(r: Resize, dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; r.in_len()];
    let mut i = 0;
    for plane in 0..r.batch * r.channels {
        let base = plane * r.in_h * r.in_w;
        for y in 0..r.out_h {
            let (y0, y1, a0, a1) = bilinear_tap(y, r.in_h, r.out_h);
            for xo in 0..r.out_w {
                let (x0, x1, b0, b1) = bilinear_tap(xo, r.in_w, r.out_w);
                let g = dy[i];
                i += 1;
                dx[base + y0 * r.in_w + x0] += a0 * b0 * g;
                dx[base + y0 * r.in_w + x1] += a0 * b1 * g;
                dx[base + y1 * r.in_w + x0] += a1 * b0 * g;
                dx[base + y1 * r.in_w + x1] += a1 * b1 * g;
            }
        }
    }
    dx
}

fn resize(batch: usize, channels: usize, (in_h, in_w): (usize, usize), (out_h, out_w): (usize, usize)) -> Resize {
    Resize { batch, channels, in_h, in_w, out_h, out_w }
}

#[test]
fn bilinear_matches_pytorch_semantics_with_gradients() {
    let mut rng = Rng::new(12);
    let shapes = [
        resize(1, 1, (1, 1), (1, 1)),
        resize(1, 1, (1, 1), (7, 5)),
        resize(2, 3, (4, 4), (16, 16)),
        resize(2, 3, (16, 16), (128, 128)),
        resize(1, 2, (7, 5), (33, 13)),
        resize(2, 1, (16, 16), (130, 130)),
        resize(1, 2, (33, 33), (7, 7)),
        resize(1, 1, (130, 7), (16, 33)),
        resize(1, 1, (7, 7), (7, 7)),
        resize(1, 1, (128, 96), (37, 200)),
        // Downsampling with W a multiple of 4 (bilinear4: a new left tap at every output).
        resize(1, 2, (33, 50), (9, 12)),
    ];
    for r in shapes {
        let x = Input::random(&mut rng, &[r.batch, r.channels, r.in_h, r.in_w]);
        check(
            Case::new(
                format!("bilinear {r:?}"),
                vec![x],
                move |x| ref_bilinear(r, &x[0]),
                move |gpu, x| {
                    let out = gpu.alloc(r.out_len())?;
                    upsample::bilinear(gpu, &x[0], &out, &r)?;
                    Ok(out)
                },
            )
            .backward(
                move |gpu, _x, dy| {
                    let dx = gpu.alloc(r.in_len())?;
                    upsample::bilinear_backward(gpu, dy, &dx, &r)?;
                    Ok(vec![Some(dx)])
                },
                move |_x, dy| vec![Some(ref_bilinear_backward(r, dy))],
            ),
        );
    }
}

#[test]
fn texture_operands_give_the_storage_kernels_results_bit_for_bit() {
    // Where texture operands are on (lavapipe's default), the bilinear kernels fetch their input
    // (the image forward, the output gradient backward) from a flat texture: the same values in
    // the same order as the storage loads, so both results equal the storage module's bit for
    // bit. Shapes: the default model's logits (bilinear4), an odd width (bilinear), a
    // downsampling, and inputs of no whole vec4s (copied rounded up to whole texels). A context
    // of its own, so that switching textures off changes no other test.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(13);
    for r in [
        resize(2, 3, (16, 16), (128, 128)),
        resize(1, 2, (7, 4), (33, 12)),
        resize(1, 2, (33, 52), (9, 13)),
        resize(1, 1, (7, 5), (33, 13)),
    ] {
        let (x, dy) = (rng.vec(r.in_len()), rng.vec(r.out_len()));
        let (xb, dyb) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            gpu.set_profiling(true).unwrap();
            let (out, dx) = (gpu.alloc(r.out_len()).unwrap(), gpu.alloc(r.in_len()).unwrap());
            upsample::bilinear(&gpu, &xb, &out, &r).unwrap();
            upsample::bilinear_backward(&gpu, &dyb, &dx, &r).unwrap();
            let profile = gpu.take_profile().unwrap().expect("profiling is on");
            gpu.set_profiling(false).unwrap();
            let copies =
                profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count();
            let on = textures && gpu.texture_operands();
            let want = if on { 2 } else { 0 };
            assert_eq!(copies, want, "{r:?}, textures {textures}: texture copies");
            runs.push([gpu.download(&out).unwrap(), gpu.download(&dx).unwrap()]);
        }
        assert_eq!(runs[0], runs[1], "{r:?}: textures and storage differ");
        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
        let want = ref_bilinear(r, &f64s(&x));
        common::assert_close(&format!("{r:?} forward"), &runs[0][0], &want, common::FWD_RTOL, common::FWD_ATOL);
        let want = ref_bilinear_backward(r, &f64s(&dy));
        common::assert_close(&format!("{r:?} backward"), &runs[0][1], &want, common::GRAD_RTOL, common::GRAD_ATOL);
    }
}

#[test]
fn bilinear_backward_is_deterministic() {
    let gpu = common::gpu();
    let r = resize(2, 3, (16, 16), (128, 128));
    let dy = gpu.upload(&Rng::new(5).vec(r.out_len())).unwrap();
    let runs: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            let dx = gpu.alloc(r.in_len()).unwrap();
            upsample::bilinear_backward(gpu, &dy, &dx, &r).unwrap();
            gpu.download(&dx).unwrap()
        })
        .collect();
    assert!(runs[0].iter().zip(&runs[1]).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn nearest_resize_of_class_maps_matches_pytorch_rule() {
    let gpu = common::gpu();
    let mut rng = Rng::new(13);
    let shapes = [
        resize(1, 1, (130, 130), (128, 128)),
        resize(2, 1, (128, 128), (130, 130)),
        resize(1, 1, (7, 5), (33, 33)),
        resize(1, 2, (33, 33), (7, 7)),
        resize(1, 1, (1, 1), (5, 3)),
        resize(2, 1, (16, 16), (128, 128)),
        resize(1, 1, (333, 500), (128, 128)),
    ];
    for r in shapes {
        let input: Vec<u32> = (0..r.in_len()).map(|_| rng.below(1000) as u32).collect();
        let out = gpu.alloc(r.out_len()).unwrap();
        upsample::nearest_u32(gpu, &gpu.upload(&input).unwrap(), &out, &r).unwrap();
        let got: Vec<u32> = gpu.download_pod(&out).unwrap();
        // PyTorch: scale = in / out in f32, src = min(floor(dst * scale), in - 1).
        let src = |d: usize, n_in: usize, n_out: usize| {
            (((d as f32) * (n_in as f32 / n_out as f32)).floor() as usize).min(n_in - 1)
        };
        let mut i = 0;
        for plane in 0..r.batch * r.channels {
            for y in 0..r.out_h {
                for x in 0..r.out_w {
                    let want = input[(plane * r.in_h + src(y, r.in_h, r.out_h)) * r.in_w + src(x, r.in_w, r.out_w)];
                    assert_eq!(got[i], want, "nearest {r:?} at plane {plane}, ({y}, {x})");
                    i += 1;
                }
            }
        }
    }
}

#[test]
fn resize_rejects_bad_shapes() {
    let gpu = common::gpu();
    let small = zeros(gpu, 10).unwrap();
    let big = zeros(gpu, 10_000).unwrap();
    let r = resize(2, 3, (16, 16), (32, 32));
    let err = upsample::bilinear(gpu, &small, &big, &r).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 16, 16]") && err.contains("10 elements"), "{err}");
    let err = upsample::bilinear_backward(gpu, &big, &small, &r).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 16, 16]") && err.contains("[2, 3, 32, 32]"), "{err}");
    let err = upsample::nearest_u32(gpu, &big, &small, &r).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 32, 32]"), "{err}");
    let empty = resize(1, 1, (0, 4), (4, 4));
    assert!(upsample::bilinear(gpu, &big, &big, &empty).unwrap_err().to_string().contains("[1, 1, 0, 4]"));
}
