//! Patch embedding (stride-p convolution without bias), forward and backward
//! (shaders/patch_embed.wgsl).
//!
//! Images are [B, C, S, S] (NCHW, f32), the weight is [D, C, p, p] (PyTorch's Conv2d layout) and
//! the tokens are [B, N, D] with N = (S/p)^2 in row-major patch order. The backward gives the
//! weight gradient (reduced over batch and tokens in a fixed order, so it is deterministic) and
//! the image gradient.

use crate::context::{grid, Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "patch_embed.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    channels: u32,
    size: u32,
    patch: u32,
    dim: u32,
    grid_side: u32,
    tokens: u32,
    kdim: u32,
    rows: u32,
    cols: u32,
    col_tiles: u32,
    tiles: u32,
}

/// The sizes of one patch embedding, checked.
struct Shape {
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
    dim: usize,
}

impl Shape {
    fn new(batch: usize, channels: usize, size: usize, patch: usize, dim: usize) -> Result<Shape> {
        if patch == 0 || !size.is_multiple_of(patch) {
            return Err(Error::Shape(format!("patch size {patch} does not divide the image size {size} (image [{batch}, {channels}, {size}, {size}])")));
        }
        Ok(Shape { batch, channels, size, patch, dim })
    }
    fn tokens(&self) -> usize {
        (self.size / self.patch).pow(2)
    }
    fn kdim(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    fn image_len(&self) -> usize {
        self.batch * self.channels * self.size * self.size
    }
    fn weight_len(&self) -> usize {
        self.dim * self.kdim()
    }
    fn out_len(&self) -> usize {
        self.batch * self.tokens() * self.dim
    }
    fn image_desc(&self) -> String {
        format!("[{}, {}, {}, {}]", self.batch, self.channels, self.size, self.size)
    }
    fn weight_desc(&self) -> String {
        format!("[{}, {}, {}, {}]", self.dim, self.channels, self.patch, self.patch)
    }
    fn out_desc(&self) -> String {
        format!("[{}, {}, {}]", self.batch, self.tokens(), self.dim)
    }
    fn check(&self, what: &str, buf: &GpuBuffer, need: usize, desc: &str) -> Result<()> {
        if buf.len() < need {
            return Err(Error::Shape(format!(
                "patch embedding of image {} with weight {}: {what} has {} elements but {desc} needs {need}",
                self.image_desc(),
                self.weight_desc(),
                buf.len()
            )));
        }
        Ok(())
    }
    /// Parameters for an output of `rows x cols` computed in 4 x 4 tiles.
    fn params(&self, rows: usize, cols: usize) -> Params {
        let col_tiles = cols.div_ceil(4);
        Params {
            batch: self.batch as u32,
            channels: self.channels as u32,
            size: self.size as u32,
            patch: self.patch as u32,
            dim: self.dim as u32,
            grid_side: (self.size / self.patch) as u32,
            tokens: self.tokens() as u32,
            kdim: self.kdim() as u32,
            rows: rows as u32,
            cols: cols as u32,
            col_tiles: col_tiles as u32,
            tiles: (rows.div_ceil(4) * col_tiles) as u32,
        }
    }
    fn label(&self, kernel: &'static str) -> KernelLabel {
        let flops = 2 * (self.batch * self.tokens() * self.dim * self.kdim()) as u64;
        let bytes = 4 * (self.image_len() + self.weight_len() + self.out_len()) as u64;
        KernelLabel { kernel, shape: format!("{}x{}", self.image_desc(), self.weight_desc()), flops, bytes }
    }
}

fn launch(gpu: &Gpu, entry: &'static str, params: &Params, buffers: &[&GpuBuffer], label: KernelLabel) -> Result<()> {
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(params),
        buffers,
        workgroups: grid((params.tiles as usize).div_ceil(64) as u32),
        label,
    })
}

/// `out[b, n, d] = sum_{c,i,j} image[b, c, py p + i, px p + j] weight[d, c, i, j]` for the
/// token n = py (S/p) + px; image [B, C, S, S], weight [D, C, p, p], out [B, N, D].
#[allow(clippy::too_many_arguments)]
pub fn forward(
    gpu: &Gpu,
    image: &GpuBuffer,
    weight: &GpuBuffer,
    out: &GpuBuffer,
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
    dim: usize,
) -> Result<()> {
    let s = Shape::new(batch, channels, size, patch, dim)?;
    s.check("the image", image, s.image_len(), &s.image_desc())?;
    s.check("the weight", weight, s.weight_len(), &s.weight_desc())?;
    s.check("the output", out, s.out_len(), &s.out_desc())?;
    let p = s.params(batch * s.tokens(), dim);
    launch(gpu, "forward", &p, &[image, weight, image, out], s.label("patch_embed"))
}

/// The image gradient `d_image` [B, C, S, S] from `d_out` [B, N, D].
#[allow(clippy::too_many_arguments)]
pub fn backward_image(
    gpu: &Gpu,
    weight: &GpuBuffer,
    d_out: &GpuBuffer,
    d_image: &GpuBuffer,
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
    dim: usize,
) -> Result<()> {
    let s = Shape::new(batch, channels, size, patch, dim)?;
    s.check("the weight", weight, s.weight_len(), &s.weight_desc())?;
    s.check("the output gradient", d_out, s.out_len(), &s.out_desc())?;
    s.check("the image gradient", d_image, s.image_len(), &s.image_desc())?;
    let p = s.params(batch * s.tokens(), s.kdim());
    launch(gpu, "backward_image", &p, &[weight, weight, d_out, d_image], s.label("patch_embed_backward_image"))
}

/// The weight gradient `d_weight` [D, C, p, p] from `d_out` [B, N, D], summed over batch and
/// tokens in a fixed order (deterministic).
#[allow(clippy::too_many_arguments)]
pub fn backward_weight(
    gpu: &Gpu,
    image: &GpuBuffer,
    d_out: &GpuBuffer,
    d_weight: &GpuBuffer,
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
    dim: usize,
) -> Result<()> {
    let s = Shape::new(batch, channels, size, patch, dim)?;
    s.check("the image", image, s.image_len(), &s.image_desc())?;
    s.check("the output gradient", d_out, s.out_len(), &s.out_desc())?;
    s.check("the weight gradient", d_weight, s.weight_len(), &s.weight_desc())?;
    let p = s.params(dim, s.kdim());
    launch(gpu, "backward_weight", &p, &[image, image, d_out, d_weight], s.label("patch_embed_backward_weight"))
}

/// Both gradients: `d_weight` [D, C, p, p] and, when given, `d_image` [B, C, S, S] (the
/// model's input image needs none).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    image: &GpuBuffer,
    weight: &GpuBuffer,
    d_out: &GpuBuffer,
    d_image: Option<&GpuBuffer>,
    d_weight: &GpuBuffer,
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
    dim: usize,
) -> Result<()> {
    backward_weight(gpu, image, d_out, d_weight, batch, channels, size, patch, dim)?;
    if let Some(d_image) = d_image {
        backward_image(gpu, weight, d_out, d_image, batch, channels, size, patch, dim)?;
    }
    Ok(())
}
