//! Patch embedding (shaders/patch_embed.wgsl) against its f64 CPU reference, with gradients,
//! for the direct kernels and the products method on every kernel path.

mod common;

use common::{check, zeros, Case, Input, Rng};
use vlsa_kernels::patch_embed::{self, Method, PatchEmbed, PatchEmbedGrads, PatchEmbedInputs};

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
    let gpu = common::gpu();
    for s in shapes {
        let image = Input::random(&mut rng, &[s.batch, s.channels, s.size, s.size]);
        let weight = Input::random(&mut rng, &[s.dim, s.channels, s.patch, s.patch]);
        let shape = PatchEmbed { batch: s.batch, channels: s.channels, size: s.size, patch: s.patch, dim: s.dim };
        for path in gpu.kernel_paths() {
            for method in [Method::Direct, Method::Products] {
                check(
                    Case::new(
                        format!("patch_embed {s:?}, {method:?}, {path} path"),
                        vec![image.clone(), weight.clone()],
                        move |x| ref_patch_embed(s, &x[0], &x[1]),
                        move |gpu, x| {
                            let out = gpu.alloc(s.batch * s.tokens() * s.dim)?;
                            let inputs = PatchEmbedInputs { image: &x[0], weight: &x[1] };
                            patch_embed::forward_with(gpu, &inputs, &out, &shape, method, path)?;
                            Ok(out)
                        },
                    )
                    .backward(
                        move |gpu, x, dy| {
                            let d_image = gpu.alloc(x[0].len())?;
                            let d_weight = gpu.alloc(x[1].len())?;
                            let inputs = PatchEmbedInputs { image: &x[0], weight: &x[1] };
                            let grads = PatchEmbedGrads { d_weight: &d_weight, d_image: Some(&d_image) };
                            patch_embed::backward_with(gpu, &inputs, dy, &grads, &shape, method, path)?;
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
    }
}

#[test]
fn patch_embed_rejects_bad_shapes() {
    let pe = |patch| PatchEmbed { batch: 1, channels: 3, size: 16, patch, dim: 4 };
    let gpu = common::gpu();
    let image = zeros(gpu, 3 * 16 * 16).unwrap();
    let weight = zeros(gpu, 4 * 3 * 5 * 5).unwrap();
    let out = zeros(gpu, 1024).unwrap();
    let inputs = PatchEmbedInputs { image: &image, weight: &weight };
    let err = patch_embed::forward(gpu, &inputs, &out, &pe(5)).unwrap_err().to_string();
    assert!(err.contains("patch size 5") && err.contains("image size 16"), "{err}");
    let weight = zeros(gpu, 10).unwrap();
    let inputs = PatchEmbedInputs { image: &image, weight: &weight };
    let err = patch_embed::forward(gpu, &inputs, &out, &pe(4)).unwrap_err().to_string();
    assert!(err.contains("[4, 3, 4, 4]") && err.contains("[1, 3, 16, 16]") && err.contains("10 elements"), "{err}");
    let d_out = zeros(gpu, 5).unwrap();
    let grads = PatchEmbedGrads { d_weight: &weight, d_image: None };
    let err = patch_embed::backward(gpu, &inputs, &d_out, &grads, &pe(4)).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 16, 16]"), "{err}");
}
