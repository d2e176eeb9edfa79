//! The model's edge kernels against their CPU references: patch embedding, bilinear and nearest
//! resizing, cross-entropy / Dice / argmax, AdamW and the cosine mask head
//! (shaders/{patch_embed,upsample,loss,adamw,mask_head}.wgsl).

mod common;

use common::{assert_close, check, Case, Input, Rng};
use vlsa_kernels::adamw::{self, AdamW};
use vlsa_kernels::upsample::{self, Resize};
use vlsa_kernels::{loss, mask_head, patch_embed, GpuBuffer};

/// A zero-filled buffer made by an upload rather than `Gpu::zeros`: a pooled buffer cleared by
/// `zeros` and dropped before the clear is submitted can be handed to a later upload whose data
/// the pending clear then wipes (`Gpu::write` flushes only when dispatches are pending).
fn zeros(gpu: &vlsa_kernels::Gpu, n: usize) -> vlsa_kernels::Result<GpuBuffer> {
    gpu.upload(&vec![0.0f32; n])
}

// ---------------------------------------------------------------------------------------------
// Patch embedding

#[derive(Clone, Copy, Debug)]
struct Patch {
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
    dim: usize,
}

impl Patch {
    fn side(&self) -> usize {
        self.size / self.patch
    }
    fn tokens(&self) -> usize {
        self.side() * self.side()
    }
    fn kdim(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    /// Index into the image of token t's patch element k (the im2col map).
    fn pixel(&self, t: usize, k: usize) -> usize {
        let (b, n) = (t / self.tokens(), t % self.tokens());
        let (py, px) = (n / self.side(), n % self.side());
        let (c, i, j) = (k / (self.patch * self.patch), k / self.patch % self.patch, k % self.patch);
        ((b * self.channels + c) * self.size + py * self.patch + i) * self.size + px * self.patch + j
    }
}

fn ref_patch_embed(s: Patch, image: &[f64], weight: &[f64]) -> Vec<f64> {
    let rows = s.batch * s.tokens();
    let mut out = vec![0.0; rows * s.dim];
    for t in 0..rows {
        for d in 0..s.dim {
            out[t * s.dim + d] = (0..s.kdim()).map(|k| image[s.pixel(t, k)] * weight[d * s.kdim() + k]).sum();
        }
    }
    out
}

fn ref_patch_embed_backward(s: Patch, image: &[f64], weight: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut d_image = vec![0.0; image.len()];
    let mut d_weight = vec![0.0; weight.len()];
    for t in 0..s.batch * s.tokens() {
        for d in 0..s.dim {
            let g = dy[t * s.dim + d];
            for k in 0..s.kdim() {
                d_image[s.pixel(t, k)] += g * weight[d * s.kdim() + k];
                d_weight[d * s.kdim() + k] += g * image[s.pixel(t, k)];
            }
        }
    }
    (d_image, d_weight)
}

#[test]
fn patch_embed_matches_reference_with_gradients() {
    let mut rng = Rng::new(11);
    let shapes = [
        Patch { batch: 1, channels: 3, size: 8, patch: 8, dim: 1 },
        Patch { batch: 2, channels: 3, size: 14, patch: 7, dim: 7 },
        Patch { batch: 1, channels: 1, size: 7, patch: 1, dim: 5 },
        Patch { batch: 1, channels: 3, size: 33, patch: 11, dim: 33 },
        Patch { batch: 2, channels: 3, size: 16, patch: 4, dim: 130 },
    ];
    for s in shapes {
        let image = Input::random(&mut rng, &[s.batch, s.channels, s.size, s.size]);
        let weight = Input::random(&mut rng, &[s.dim, s.channels, s.patch, s.patch]);
        check(
            Case::new(
                format!("patch_embed {s:?}"),
                vec![image, weight],
                move |x| ref_patch_embed(s, &x[0], &x[1]),
                move |gpu, x| {
                    let out = gpu.alloc(s.batch * s.tokens() * s.dim)?;
                    patch_embed::forward(gpu, &x[0], &x[1], &out, s.batch, s.channels, s.size, s.patch, s.dim)?;
                    Ok(out)
                },
            )
            .backward(
                move |gpu, x, dy| {
                    let d_image = gpu.alloc(x[0].len())?;
                    let d_weight = gpu.alloc(x[1].len())?;
                    patch_embed::backward(
                        gpu,
                        &x[0],
                        &x[1],
                        dy,
                        Some(&d_image),
                        &d_weight,
                        s.batch,
                        s.channels,
                        s.size,
                        s.patch,
                        s.dim,
                    )?;
                    Ok(vec![Some(d_image), Some(d_weight)])
                },
                move |x, dy| {
                    let (di, dw) = ref_patch_embed_backward(s, &x[0], &x[1], dy);
                    vec![Some(di), Some(dw)]
                },
            ),
        );
    }
}

#[test]
fn patch_embed_rejects_bad_shapes() {
    let gpu = common::gpu();
    let image = zeros(gpu, 3 * 16 * 16).unwrap();
    let weight = zeros(gpu, 4 * 3 * 5 * 5).unwrap();
    let out = zeros(gpu, 1024).unwrap();
    let err = patch_embed::forward(gpu, &image, &weight, &out, 1, 3, 16, 5, 4).unwrap_err().to_string();
    assert!(err.contains("patch size 5") && err.contains("image size 16"), "{err}");
    let weight = zeros(gpu, 10).unwrap();
    let err = patch_embed::forward(gpu, &image, &weight, &out, 1, 3, 16, 4, 4).unwrap_err().to_string();
    assert!(err.contains("[4, 3, 4, 4]") && err.contains("[1, 3, 16, 16]") && err.contains("10 elements"), "{err}");
    let d_out = zeros(gpu, 5).unwrap();
    let err =
        patch_embed::backward(gpu, &image, &weight, &d_out, None, &weight, 1, 3, 16, 4, 4).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 16, 16]"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Resizing

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

// ---------------------------------------------------------------------------------------------
// Losses

#[derive(Clone, Copy, Debug)]
struct Seg {
    batch: usize,
    classes: usize,
    pixels: usize,
}

impl Seg {
    fn n(&self) -> usize {
        self.batch * self.pixels
    }
    fn at(&self, i: usize, k: usize) -> usize {
        (i / self.pixels * self.classes + k) * self.pixels + i % self.pixels
    }
    fn softmax(&self, z: &[f64], i: usize) -> Vec<f64> {
        let m = (0..self.classes).map(|k| z[self.at(i, k)]).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = (0..self.classes).map(|k| (z[self.at(i, k)] - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }
}

fn ref_cross_entropy(s: Seg, z: &[f64], t: &[f64]) -> f64 {
    let mut total = 0.0;
    for (i, &target) in t.iter().enumerate().take(s.n()) {
        let k = target as usize;
        if k < s.classes {
            total -= s.softmax(z, i)[k].ln();
        }
    }
    total / s.n() as f64
}

fn ref_cross_entropy_backward(s: Seg, z: &[f64], t: &[f64], g: f64) -> Vec<f64> {
    let mut dz = vec![0.0; z.len()];
    for i in 0..s.n() {
        let tk = t[i] as usize;
        if tk >= s.classes {
            continue;
        }
        let p = s.softmax(z, i);
        for k in 0..s.classes {
            dz[s.at(i, k)] = g / s.n() as f64 * (p[k] - (k == tk) as u8 as f64);
        }
    }
    dz
}

/// Per foreground class: (sum p, sum y, sum p y).
fn ref_dice_stats(s: Seg, z: &[f64], t: &[f64]) -> Vec<(f64, f64, f64)> {
    let mut st = vec![(0.0, 0.0, 0.0); s.classes.saturating_sub(1)];
    for (i, &target) in t.iter().enumerate().take(s.n()) {
        let p = s.softmax(z, i);
        for k in 1..s.classes {
            let y = (target as usize == k) as u8 as f64;
            st[k - 1].0 += p[k];
            st[k - 1].1 += y;
            st[k - 1].2 += p[k] * y;
        }
    }
    st
}

fn ref_dice(s: Seg, z: &[f64], t: &[f64]) -> f64 {
    let st = ref_dice_stats(s, z, t);
    if st.is_empty() {
        return 0.0;
    }
    1.0 - st.iter().map(|&(p, y, i)| (2.0 * i + 1.0) / (p + y + 1.0)).sum::<f64>() / st.len() as f64
}

fn ref_dice_backward(s: Seg, z: &[f64], t: &[f64], g: f64) -> Vec<f64> {
    let st = ref_dice_stats(s, z, t);
    let mut dz = vec![0.0; z.len()];
    if st.is_empty() {
        return dz;
    }
    let f = st.len() as f64;
    for i in 0..s.n() {
        let p = s.softmax(z, i);
        let dp: Vec<f64> = (0..s.classes)
            .map(|k| {
                if k == 0 {
                    return 0.0;
                }
                let (sp, sy, spy) = st[k - 1];
                let den = sp + sy + 1.0;
                let y = (t[i] as usize == k) as u8 as f64;
                -(2.0 * y * den - (2.0 * spy + 1.0)) / (den * den) / f
            })
            .collect();
        let dot: f64 = (0..s.classes).map(|k| p[k] * dp[k]).sum();
        for k in 0..s.classes {
            dz[s.at(i, k)] = g * p[k] * (dp[k] - dot);
        }
    }
    dz
}

fn seg_inputs(rng: &mut Rng, s: Seg, out_of_range: bool) -> Vec<Input> {
    let mut z = Input::random(rng, &[s.batch, s.classes, s.pixels]);
    z.data.iter_mut().for_each(|v| *v *= 3.0);
    let t: Vec<usize> = (0..s.n())
        .map(|i| {
            if out_of_range && i % 5 == 2 {
                [s.classes, 1000, u32::MAX as usize][i % 3]
            } else {
                rng.below(s.classes)
            }
        })
        .collect();
    vec![z, Input::index(&[s.batch, s.pixels], t)]
}

const SEG_SHAPES: [Seg; 6] = [
    Seg { batch: 1, classes: 1, pixels: 1 },
    Seg { batch: 2, classes: 3, pixels: 49 },
    Seg { batch: 1, classes: 2, pixels: 33 * 33 },
    Seg { batch: 2, classes: 3, pixels: 130 * 7 },
    Seg { batch: 1, classes: 16, pixels: 7 },
    Seg { batch: 3, classes: 3, pixels: 128 * 128 },
];

#[test]
fn cross_entropy_matches_reference_with_gradients() {
    let mut rng = Rng::new(14);
    for (j, s) in SEG_SHAPES.into_iter().enumerate() {
        let out_of_range = j % 2 == 1;
        check(
            Case::new(
                format!("cross_entropy {s:?} out_of_range={out_of_range}"),
                seg_inputs(&mut rng, s, out_of_range),
                move |x| vec![ref_cross_entropy(s, &x[0], &x[1])],
                move |gpu, x| {
                    let out = gpu.alloc(1)?;
                    loss::cross_entropy(gpu, &x[0], &x[1], &out, s.batch, s.classes, s.pixels)?;
                    Ok(out)
                },
            )
            .backward(
                move |gpu, x, dy| {
                    let dz = gpu.alloc(x[0].len())?;
                    loss::cross_entropy_backward(gpu, &x[0], &x[1], dy, &dz, s.batch, s.classes, s.pixels)?;
                    Ok(vec![Some(dz), None])
                },
                move |x, dy| vec![Some(ref_cross_entropy_backward(s, &x[0], &x[1], dy[0])), None],
            )
            // Gradients are O(1 / pixels): an absolute floor of 1e-4 would accept anything.
            .grad_tol(1e-3, 1e-8),
        );
    }
}

#[test]
fn dice_matches_reference_with_gradients() {
    let mut rng = Rng::new(15);
    for (j, s) in SEG_SHAPES.into_iter().enumerate() {
        let out_of_range = j % 2 == 0;
        let dice_on_gpu =
            move |gpu: &vlsa_kernels::Gpu, x: &[GpuBuffer]| -> vlsa_kernels::Result<(GpuBuffer, GpuBuffer)> {
                let stats = gpu.alloc(loss::dice_stats_len(s.classes).max(1))?;
                let out = gpu.alloc(1)?;
                loss::dice(gpu, &x[0], &x[1], &stats, &out, s.batch, s.classes, s.pixels)?;
                Ok((stats, out))
            };
        check(
            Case::new(
                format!("dice {s:?} out_of_range={out_of_range}"),
                seg_inputs(&mut rng, s, out_of_range),
                move |x| vec![ref_dice(s, &x[0], &x[1])],
                move |gpu, x| Ok(dice_on_gpu(gpu, x)?.1),
            )
            .backward(
                move |gpu, x, dy| {
                    let (stats, _) = dice_on_gpu(gpu, x)?;
                    let dz = gpu.alloc(x[0].len())?;
                    loss::dice_backward(gpu, &x[0], &x[1], &stats, dy, &dz, s.batch, s.classes, s.pixels)?;
                    Ok(vec![Some(dz), None])
                },
                move |x, dy| vec![Some(ref_dice_backward(s, &x[0], &x[1], dy[0])), None],
            )
            .grad_tol(1e-3, 1e-8),
        );
    }
}

#[test]
fn single_class_dice_is_zero_and_losses_are_deterministic() {
    let gpu = common::gpu();
    let s = Seg { batch: 2, classes: 1, pixels: 33 };
    let z = gpu.upload(&Rng::new(3).vec(s.n())).unwrap();
    let t = gpu.upload(&vec![0u32; s.n()]).unwrap();
    let stats = gpu.alloc(1).unwrap();
    let out = gpu.upload(&[7.0f32]).unwrap();
    loss::dice(gpu, &z, &t, &stats, &out, s.batch, s.classes, s.pixels).unwrap();
    assert_eq!(gpu.download(&out).unwrap(), vec![0.0]);

    let s = Seg { batch: 3, classes: 3, pixels: 128 * 128 };
    let mut rng = Rng::new(4);
    let z = gpu.upload(&rng.vec(s.n() * s.classes)).unwrap();
    let t = gpu.upload(&(0..s.n()).map(|_| rng.below(3) as u32).collect::<Vec<_>>()).unwrap();
    let stats = gpu.alloc(6).unwrap();
    let runs: Vec<(u32, u32)> = (0..2)
        .map(|_| {
            let (ce, dice) = (gpu.alloc(1).unwrap(), gpu.alloc(1).unwrap());
            loss::cross_entropy(gpu, &z, &t, &ce, s.batch, s.classes, s.pixels).unwrap();
            loss::dice(gpu, &z, &t, &stats, &dice, s.batch, s.classes, s.pixels).unwrap();
            (gpu.download(&ce).unwrap()[0].to_bits(), gpu.download(&dice).unwrap()[0].to_bits())
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn argmax_picks_the_first_largest_class() {
    let gpu = common::gpu();
    let mut rng = Rng::new(16);
    for s in [
        Seg { batch: 1, classes: 1, pixels: 7 },
        Seg { batch: 2, classes: 3, pixels: 33 * 33 },
        Seg { batch: 3, classes: 16, pixels: 130 },
    ] {
        // Few distinct values, so ties are common.
        let z: Vec<f32> = (0..s.n() * s.classes).map(|_| rng.below(4) as f32).collect();
        let labels = gpu.alloc(s.n()).unwrap();
        loss::argmax(gpu, &gpu.upload(&z).unwrap(), &labels, s.batch, s.classes, s.pixels).unwrap();
        let got: Vec<u32> = gpu.download_pod(&labels).unwrap();
        for i in 0..s.n() {
            let mut best = 0;
            for k in 1..s.classes {
                if z[s.at(i, k)] > z[s.at(i, best)] {
                    best = k;
                }
            }
            assert_eq!(got[i] as usize, best, "argmax {s:?} at pixel {i}");
        }
    }
}

#[test]
fn losses_reject_bad_shapes() {
    let gpu = common::gpu();
    let z = zeros(gpu, 3 * 16).unwrap();
    let t = zeros(gpu, 10).unwrap();
    let one = zeros(gpu, 1).unwrap();
    let err = loss::cross_entropy(gpu, &z, &t, &one, 1, 3, 16).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 16]") && err.contains("[1, 16]") && err.contains("10 elements"), "{err}");
    let err = loss::dice(gpu, &z, &z, &one, &one, 1, 3, 16).unwrap_err().to_string();
    assert!(err.contains("[2, 3]") && err.contains("1 elements"), "{err}");
    let err = loss::argmax(gpu, &t, &t, 1, 3, 16).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 16]"), "{err}");
    assert!(loss::cross_entropy(gpu, &z, &t, &one, 1, 0, 16).unwrap_err().to_string().contains("[1, 0, 16]"));
}

// ---------------------------------------------------------------------------------------------
// AdamW

/// PyTorch's AdamW step in f64 on (p, m, v).
fn ref_adamw(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], t: u32, c: &AdamW) {
    let (lr, b1, b2, eps, wd) = (c.lr as f64, c.beta1 as f64, c.beta2 as f64, c.eps as f64, c.weight_decay as f64);
    let bias1 = 1.0 - b1.powi(t as i32);
    let bias2 = 1.0 - b2.powi(t as i32);
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= lr * (m[i] / bias1) / ((v[i] / bias2).sqrt() + eps);
    }
}

#[test]
fn adamw_first_step_matches_reference() {
    let mut rng = Rng::new(17);
    let cfg = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
    for n in [1usize, 7, 33, 130, 4099] {
        let inputs = vec![
            Input::random(&mut rng, &[n]),
            Input::random(&mut rng, &[n]),
            Input::random(&mut rng, &[n]),
            Input::float(&[n], (0..n).map(|_| rng.uniform()).collect()),
        ];
        check(Case::new(
            format!("adamw step 3 [{n}]"),
            inputs,
            move |x| {
                let (mut p, mut m, mut v) = (x[0].clone(), x[2].clone(), x[3].clone());
                ref_adamw(&mut p, &mut m, &mut v, &x[1], 3, &cfg);
                p
            },
            move |gpu, x| {
                let (p, m, v) = (gpu.alloc(n)?, gpu.alloc(n)?, gpu.alloc(n)?);
                gpu.copy(&x[0], &p)?;
                gpu.copy(&x[2], &m)?;
                gpu.copy(&x[3], &v)?;
                adamw::step(gpu, &p, &x[1], &m, &v, n, 3, &cfg)?;
                Ok(p)
            },
        ));
    }
}

#[test]
fn adamw_several_steps_match_reference() {
    let gpu = common::gpu();
    let mut rng = Rng::new(18);
    let cfg = AdamW { lr: 3e-2, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.1 };
    for n in [1usize, 33, 130, 70_001] {
        let p0 = rng.vec(n);
        let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let pb = gpu.upload(&p0).unwrap();
        let (mb, vb) = (zeros(gpu, n).unwrap(), zeros(gpu, n).unwrap());
        for t in 1..=6 {
            // Every 7th gradient is zero (the denominator is then eps alone at step 1).
            let g: Vec<f32> =
                rng.vec(n).into_iter().enumerate().map(|(i, x)| if i % 7 == 3 { 0.0 } else { x * t as f32 }).collect();
            adamw::step(gpu, &pb, &gpu.upload(&g).unwrap(), &mb, &vb, n, t, &cfg).unwrap();
            ref_adamw(&mut p, &mut m, &mut v, &g.iter().map(|&x| x as f64).collect::<Vec<_>>(), t, &cfg);
        }
        assert_close(&format!("adamw param [{n}] after 6 steps"), &gpu.download(&pb).unwrap(), &p, 1e-4, 1e-5);
        assert_close(&format!("adamw m [{n}] after 6 steps"), &gpu.download(&mb).unwrap(), &m, 1e-4, 1e-6);
        assert_close(&format!("adamw v [{n}] after 6 steps"), &gpu.download(&vb).unwrap(), &v, 1e-4, 1e-7);
    }
}

#[test]
fn adamw_rejects_bad_arguments() {
    let gpu = common::gpu();
    let cfg = AdamW::default();
    let (p, g, m, v) = (zeros(gpu, 8).unwrap(), zeros(gpu, 8).unwrap(), zeros(gpu, 4).unwrap(), zeros(gpu, 8).unwrap());
    let err = adamw::step(gpu, &p, &g, &m, &v, 8, 1, &cfg).unwrap_err().to_string();
    assert!(err.contains("8 elements") && err.contains("first moment") && err.contains("only 4"), "{err}");
    assert!(adamw::step(gpu, &p, &g, &v, &v, 8, 1, &cfg).unwrap_err().to_string().contains("distinct"));
    assert!(adamw::step(gpu, &p, &g, &m, &v, 4, 0, &cfg).unwrap_err().to_string().contains("starts at 1"));
}

// ---------------------------------------------------------------------------------------------
// Mask head

#[derive(Clone, Copy, Debug)]
struct Head {
    batch: usize,
    tokens: usize,
    width: usize,
    classes: usize,
}

const NORM_EPS: f64 = 1e-6;

fn ref_scale(ls: f64) -> f64 {
    ls.exp().min(100.0)
}

/// Unit vector and the clamped norm of `v`.
fn normalize(v: &[f64]) -> (Vec<f64>, f64) {
    let a = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(NORM_EPS);
    (v.iter().map(|x| x / a).collect(), a)
}

fn ref_mask_head(h: Head, x: &[f64], t: &[f64], ls: f64) -> Vec<f64> {
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

fn ref_mask_head_backward(h: Head, x: &[f64], t: &[f64], ls: f64, dy: &[f64]) -> (Vec<f64>, Vec<f64>, f64) {
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

fn head_case(name: String, h: Head, inputs: Vec<Input>) -> Case<'static> {
    let out_len = h.batch * h.classes * h.tokens;
    Case::new(
        name,
        inputs,
        move |x| ref_mask_head(h, &x[0], &x[1], x[2][0]),
        move |gpu, x| {
            let out = gpu.alloc(out_len)?;
            mask_head::forward(gpu, &x[0], &x[1], &x[2], &out, h.batch, h.tokens, h.width, h.classes)?;
            Ok(out)
        },
    )
    .backward(
        move |gpu, x, dy| {
            let (dx, dt, ds) = (gpu.alloc(x[0].len())?, gpu.alloc(x[1].len())?, gpu.alloc(1)?);
            mask_head::backward(gpu, &x[0], &x[1], &x[2], dy, &dx, &dt, &ds, h.batch, h.tokens, h.width, h.classes)?;
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
        Head { batch: 1, tokens: 1, width: 1, classes: 1 },
        Head { batch: 2, tokens: 7, width: 33, classes: 3 },
        Head { batch: 1, tokens: 130, width: 7, classes: 2 },
        Head { batch: 2, tokens: 33, width: 16, classes: 16 },
        Head { batch: 2, tokens: 256, width: 128, classes: 3 },
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
    let h = Head { batch: 1, tokens: 33, width: 128, classes: 3 };
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
    let h = Head { batch: 1, tokens: 3, width: 5, classes: 2 };
    let mut x = Rng::new(20).vec(15);
    x[5..10].iter_mut().for_each(|v| *v = 0.0);
    let t = Rng::new(21).vec(10);
    let out = gpu.alloc(6).unwrap();
    mask_head::forward(
        gpu,
        &gpu.upload(&x).unwrap(),
        &gpu.upload(&t).unwrap(),
        &gpu.upload(&[2.0f32]).unwrap(),
        &out,
        h.batch,
        h.tokens,
        h.width,
        h.classes,
    )
    .unwrap();
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
fn mask_head_rejects_bad_shapes() {
    let gpu = common::gpu();
    let x = zeros(gpu, 2 * 7 * 33).unwrap();
    let t = zeros(gpu, 3 * 32).unwrap();
    let one = zeros(gpu, 1).unwrap();
    let out = zeros(gpu, 2 * 3 * 7).unwrap();
    let err = mask_head::forward(gpu, &x, &t, &one, &out, 2, 7, 33, 3).unwrap_err().to_string();
    assert!(err.contains("[2, 7, 33]") && err.contains("[3, 33]") && err.contains("96 elements"), "{err}");
    let t = zeros(gpu, 3 * 33).unwrap();
    let err = mask_head::backward(gpu, &x, &t, &one, &one, &x, &t, &one, 2, 7, 33, 3).unwrap_err().to_string();
    assert!(err.contains("output gradient") && err.contains("[2, 3, 7]"), "{err}");
}
