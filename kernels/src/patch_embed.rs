//! Patch embedding (stride-p convolution without bias), forward and backward
//! (shaders/patch_embed.wgsl).
//!
//! Images are [B, C, S, S] (NCHW, f32), the weight is [D, C, p, p] (PyTorch's Conv2d layout) and
//! the tokens are [B, N, D] with N = (S/p)^2 in row-major patch order. The backward gives the
//! weight gradient (reduced over batch and tokens in a fixed order, so it is deterministic) and
//! the image gradient.
//!
//! Two methods compute the same thing ([`Method`]): the direct kernels read the image through
//! the implicit im2col matrix, four outputs by four per invocation; the products method writes
//! that matrix once (`im2col`, [B*N, C*p*p]) and runs the three products on the matmul kernels
//! of the kernel path. On CPU adapters (registers and subgroup paths) the products are about 7x
//! faster (`cargo bench --bench patch_embed`, default model at batch 8, lavapipe, one run: forward
//! 271 -> 39.8 ms, weight gradient 273 -> 39.2 ms), so `Auto` takes them there; GPUs (the tiled
//! path) keep the direct kernels.

use crate::context::{grid, Dispatch, Gpu};
use crate::matmul::{matmul_with, Matmul};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, KernelPath, Result};

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
    // im2col and col2im: one patch row (p pixels) per invocation, B*N*C*p of them.
    let invocations = if entry == "im2col" || entry == "col2im" {
        params.rows * params.channels * params.patch
    } else {
        params.tiles
    };
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(params),
        buffers,
        workgroups: grid((invocations as usize).div_ceil(64) as u32),
        label,
    })
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `Products` on the registers and subgroup kernel paths, `Direct` on the tiled path.
    Auto,
    /// The 4 x 4 register-tile kernels over the implicit im2col matrix.
    Direct,
    /// im2col, then the products on the matmul kernels (and col2im for the image gradient).
    Products,
}

impl Method {
    fn products(self, path: KernelPath) -> bool {
        match self {
            Method::Auto => path != KernelPath::Tiled,
            Method::Direct => false,
            Method::Products => true,
        }
    }
}

/// The shape of one patch embedding: images [batch, channels, size, size], patches of
/// `patch` x `patch`, `dim` output features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchEmbed {
    pub batch: usize,
    pub channels: usize,
    pub size: usize,
    pub patch: usize,
    pub dim: usize,
}

impl PatchEmbed {
    fn shape(&self) -> Result<Shape> {
        Shape::new(self.batch, self.channels, self.size, self.patch, self.dim)
    }
}

/// The operands of a patch embedding (read by the forward and the backward).
#[derive(Clone, Copy)]
pub struct PatchEmbedInputs<'a> {
    /// The images [B, C, S, S].
    pub image: &'a GpuBuffer,
    /// The convolution weight [D, C, p, p].
    pub weight: &'a GpuBuffer,
}

/// The gradients a patch-embedding backward writes.
#[derive(Clone, Copy)]
pub struct PatchEmbedGrads<'a> {
    /// Of the weight [D, C, p, p], summed over batch and tokens in a fixed order.
    pub d_weight: &'a GpuBuffer,
    /// Of the images [B, C, S, S], when wanted (the model's input image needs none).
    pub d_image: Option<&'a GpuBuffer>,
}

/// The im2col matrix A [B*N, K] of `image`.
fn im2col(gpu: &Gpu, s: &Shape, image: &GpuBuffer) -> Result<GpuBuffer> {
    let rows = s.batch * s.tokens();
    let cols = gpu.alloc(rows * s.kdim())?;
    let p = s.params(rows, s.kdim());
    let mut label = s.label("patch_embed_im2col");
    (label.flops, label.bytes) = (0, 8 * (rows * s.kdim()) as u64);
    launch(gpu, "im2col", &p, &[image, image, image, &cols], label)?;
    Ok(cols)
}

/// [`forward`] with the method and kernel path chosen by the caller.
pub fn forward_with(
    gpu: &Gpu,
    inputs: &PatchEmbedInputs,
    out: &GpuBuffer,
    shape: &PatchEmbed,
    method: Method,
    path: KernelPath,
) -> Result<()> {
    let PatchEmbedInputs { image, weight } = *inputs;
    let s = shape.shape()?;
    s.check("the image", image, s.image_len(), &s.image_desc())?;
    s.check("the weight", weight, s.weight_len(), &s.weight_desc())?;
    s.check("the output", out, s.out_len(), &s.out_desc())?;
    if !method.products(path) {
        let p = s.params(s.batch * s.tokens(), s.dim);
        return launch(gpu, "forward", &p, &[image, weight, image, out], s.label("patch_embed"));
    }
    // out [B*N, D] = A [B*N, K] · weight [D, K]ᵀ
    let cols = im2col(gpu, &s, image)?;
    let op = Matmul::new(1, s.batch * s.tokens(), s.dim, s.kdim()).trans_b(true);
    matmul_with(gpu, &cols, weight, out, &op, path)
}

/// [`backward`] with the method and kernel path chosen by the caller.
pub fn backward_with(
    gpu: &Gpu,
    inputs: &PatchEmbedInputs,
    d_out: &GpuBuffer,
    grads: &PatchEmbedGrads,
    shape: &PatchEmbed,
    method: Method,
    path: KernelPath,
) -> Result<()> {
    let PatchEmbedInputs { image, weight } = *inputs;
    let PatchEmbedGrads { d_weight, d_image } = *grads;
    let s = shape.shape()?;
    s.check("the image", image, s.image_len(), &s.image_desc())?;
    s.check("the weight", weight, s.weight_len(), &s.weight_desc())?;
    s.check("the output gradient", d_out, s.out_len(), &s.out_desc())?;
    s.check("the weight gradient", d_weight, s.weight_len(), &s.weight_desc())?;
    if let Some(d_image) = d_image {
        s.check("the image gradient", d_image, s.image_len(), &s.image_desc())?;
    }
    if !method.products(path) {
        let p = s.params(s.dim, s.kdim());
        let buffers = [image, image, d_out, d_weight];
        launch(gpu, "backward_weight", &p, &buffers, s.label("patch_embed_backward_weight"))?;
        if let Some(d_image) = d_image {
            let p = s.params(s.batch * s.tokens(), s.kdim());
            let buffers = [weight, weight, d_out, d_image];
            launch(gpu, "backward_image", &p, &buffers, s.label("patch_embed_backward_image"))?;
        }
        return Ok(());
    }
    let rows = s.batch * s.tokens();
    // d_weight [D, K] = d_out [B*N, D]ᵀ · A [B*N, K]
    let cols = im2col(gpu, &s, image)?;
    matmul_with(gpu, d_out, &cols, d_weight, &Matmul::new(1, s.dim, s.kdim(), rows).trans_a(true), path)?;
    if let Some(d_image) = d_image {
        // dA [B*N, K] = d_out [B*N, D] · weight [D, K], scattered back to the image.
        let d_cols = gpu.alloc(rows * s.kdim())?;
        matmul_with(gpu, d_out, weight, &d_cols, &Matmul::new(1, rows, s.kdim(), s.dim), path)?;
        let p = s.params(rows, s.kdim());
        let mut label = s.label("patch_embed_col2im");
        (label.flops, label.bytes) = (0, 8 * (rows * s.kdim()) as u64);
        launch(gpu, "col2im", &p, &[&d_cols, &d_cols, &d_cols, d_image], label)?;
    }
    Ok(())
}

/// `out[b, n, d] = sum_{c,i,j} image[b, c, py p + i, px p + j] weight[d, c, i, j]` for the
/// token n = py (S/p) + px; image [B, C, S, S], weight [D, C, p, p], out [B, N, D].
pub fn forward(gpu: &Gpu, inputs: &PatchEmbedInputs, out: &GpuBuffer, shape: &PatchEmbed) -> Result<()> {
    forward_with(gpu, inputs, out, shape, Method::Auto, gpu.kernel_path())
}

/// Both gradients from `d_out` [B, N, D]: `grads.d_weight` [D, C, p, p] and, when given,
/// `grads.d_image` [B, C, S, S] (the model's input image needs none). The weight gradient sums
/// over batch and tokens in a fixed order (deterministic).
pub fn backward(
    gpu: &Gpu,
    inputs: &PatchEmbedInputs,
    d_out: &GpuBuffer,
    grads: &PatchEmbedGrads,
    shape: &PatchEmbed,
) -> Result<()> {
    backward_with(gpu, inputs, d_out, grads, shape, Method::Auto, gpu.kernel_path())
}
