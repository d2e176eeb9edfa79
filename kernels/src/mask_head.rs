//! Cosine-similarity mask head, forward and backward (shaders/mask_head.wgsl).
//!
//! `out[b, k, n] = s * cos(X[b, n], T[k])` with `s = min(exp(logit_scale), 100)` and the cosine
//! taken as `x / max(||x||, 1e-6) . t / max(||t||, 1e-6)`; X is [B, N, C], T is [K, C],
//! `logit_scale` a 1-element buffer and out [B, K, N] (reshaped by the model to [B, K, h, w]).
//! The backward gives dX, dT (summed over the batch in a fixed order) and d logit_scale, which
//! is 0 while the clamp at 100 is active (as PyTorch's clamp).
//! The launchers take the shape as a [`MaskHead`] and the buffers as [`MaskHeadInputs`] and
//! [`MaskHeadGrads`].

use crate::context::{grid, Dispatch, Gpu, OperandTexture};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "mask_head.wgsl");
shader!(TEXTURE_SHADER, "mask_head_texture.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    tokens: u32,
    width: u32,
    classes: u32,
    rows: u32,
    _pad: [u32; 3],
}

/// The shape of one mask head call: features X [batch, tokens, width], text embeddings
/// T [classes, width], logits [batch, classes, tokens].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskHead {
    /// B: images.
    pub batch: usize,
    /// N: feature tokens (pixels of the feature map) per image.
    pub tokens: usize,
    /// C: channels of a feature token and of a text embedding.
    pub width: usize,
    /// K: classes (text embeddings).
    pub classes: usize,
}

/// The inputs of a mask head call (read by the forward and the backward).
#[derive(Clone, Copy)]
pub struct MaskHeadInputs<'a> {
    /// Features X [B, N, C].
    pub x: &'a GpuBuffer,
    /// Text embeddings T [K, C].
    pub text: &'a GpuBuffer,
    /// The logit scale before exp and clamp [1].
    pub logit_scale: &'a GpuBuffer,
}

/// The gradients a mask head backward writes.
#[derive(Clone, Copy)]
pub struct MaskHeadGrads<'a> {
    /// Of the features, dX [B, N, C].
    pub d_x: &'a GpuBuffer,
    /// Of the text embeddings, dT [K, C] (summed over the batch).
    pub d_text: &'a GpuBuffer,
    /// Of the logit scale [1].
    pub d_logit_scale: &'a GpuBuffer,
}

impl MaskHead {
    fn rows(&self) -> usize {
        self.batch * self.tokens
    }
    fn desc(&self) -> String {
        format!(
            "features [{}, {}, {}] and text [{}, {}]",
            self.batch, self.tokens, self.width, self.classes, self.width
        )
    }
    fn check(&self, what: &str, buf: &GpuBuffer, need: usize, desc: String) -> Result<()> {
        if buf.len() < need {
            return Err(Error::Shape(format!(
                "mask head of {}: {what} has {} elements but {desc} needs {need}",
                self.desc(),
                buf.len()
            )));
        }
        Ok(())
    }
    fn check_inputs(&self, inputs: &MaskHeadInputs) -> Result<()> {
        let MaskHeadInputs { x, text, logit_scale } = *inputs;
        self.check(
            "the features",
            x,
            self.rows() * self.width,
            format!("[{}, {}, {}]", self.batch, self.tokens, self.width),
        )?;
        self.check(
            "the text embeddings",
            text,
            self.classes * self.width,
            format!("[{}, {}]", self.classes, self.width),
        )?;
        self.check("the logit scale", logit_scale, 1, "[1]".into())
    }
    fn out_desc(&self) -> String {
        format!("[{}, {}, {}]", self.batch, self.classes, self.tokens)
    }
    fn params(&self) -> Params {
        Params {
            batch: self.batch as u32,
            tokens: self.tokens as u32,
            width: self.width as u32,
            classes: self.classes as u32,
            rows: self.rows() as u32,
            _pad: [0; 3],
        }
    }
    fn label(&self, kernel: &'static str, flops_per_mac: usize) -> KernelLabel {
        let macs = self.rows() * self.classes * self.width;
        let bytes = 4 * (self.rows() * self.width + self.classes * self.width + self.rows() * self.classes);
        KernelLabel { kernel, shape: self.desc(), flops: (flops_per_mac * macs) as u64, bytes: bytes as u64 }
    }
}

/// Launches the scalar entry point `entry.0`, or its vec4 form `entry.1` when the width is a
/// multiple of 4; that one reads `textures` (buffer and length, in the texture module's binding
/// order) from flat textures where texture operands are on and they all fit
/// (mask_head_texture.wgsl).
fn launch(
    gpu: &Gpu,
    entry: (&'static str, &'static str),
    params: &Params,
    buffers: &[&GpuBuffer],
    textures: &[(&GpuBuffer, usize)],
    workgroups: [u32; 3],
    label: KernelLabel,
) -> Result<()> {
    let vec4 = params.width.is_multiple_of(4);
    let operands: Option<Vec<OperandTexture>> = if vec4 { gpu.flat_operands(textures) } else { None };
    let d = Dispatch {
        shader: &SHADER,
        entry: if vec4 { entry.1 } else { entry.0 },
        params: bytemuck::bytes_of(params),
        buffers,
        workgroups,
        label,
    };
    gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, operands.as_deref())
}

pub fn forward(gpu: &Gpu, inputs: &MaskHeadInputs, out: &GpuBuffer, shape: &MaskHead) -> Result<()> {
    let s = shape;
    let MaskHeadInputs { x, text, logit_scale } = *inputs;
    s.check_inputs(inputs)?;
    s.check("the output", out, s.rows() * s.classes, s.out_desc())?;
    let rows = grid(s.rows().div_ceil(64) as u32);
    let textures = [(x, s.rows() * s.width), (text, s.classes * s.width)];
    let entry = ("forward", "forward4");
    launch(gpu, entry, &s.params(), &[x, text, logit_scale, out], &textures, rows, s.label("mask_head", 4))
}

/// Gradients of [`forward`] from `d_out` [B, K, N]: `grads.d_x` [B, N, C], `grads.d_text`
/// [K, C] and `grads.d_logit_scale` [1].
pub fn backward(
    gpu: &Gpu,
    inputs: &MaskHeadInputs,
    d_out: &GpuBuffer,
    grads: &MaskHeadGrads,
    shape: &MaskHead,
) -> Result<()> {
    let s = shape;
    let MaskHeadInputs { x, text, logit_scale } = *inputs;
    let MaskHeadGrads { d_x, d_text, d_logit_scale } = *grads;
    let MaskHead { batch, tokens, width, classes } = *shape;
    s.check_inputs(inputs)?;
    s.check("the output gradient", d_out, s.rows() * classes, s.out_desc())?;
    s.check("the features gradient", d_x, s.rows() * width, format!("[{batch}, {tokens}, {width}]"))?;
    s.check("the text gradient", d_text, classes * width, format!("[{classes}, {width}]"))?;
    s.check("the logit scale gradient", d_logit_scale, 1, "[1]".into())?;
    // Scratch: t^ [K, C] and the clamped norms [K]; per row 1/a and r.
    // (the norms padded to whole vec4s: backward_text4 reads them through a vec4 view)
    let text_hat = gpu.alloc(classes * width + classes.next_multiple_of(4))?;
    let row_stats = gpu.alloc((2 * s.rows()).max(1))?;
    let p = s.params();
    // Buffers in binding order 1..=10 (each entry point binds only those it uses).
    let all = [x, text, logit_scale, x, d_out, d_x, &text_hat, &row_stats, d_text, d_logit_scale];
    let classes_grid = [classes as u32, 1, 1];
    let (x_len, text_len, out_len) = (s.rows() * width, classes * width, s.rows() * classes);
    let normalize = s.label("mask_head_text_normalize", 0);
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry: "text_normalize",
        params: bytemuck::bytes_of(&p),
        buffers: &all,
        workgroups: classes_grid,
        label: normalize,
    })?;
    let rows_grid = grid(s.rows().div_ceil(64) as u32);
    let textures = [(x, x_len), (&text_hat, text_len), (d_out, out_len)];
    let entry = ("backward_x", "backward_x4");
    launch(gpu, entry, &p, &all, &textures, rows_grid, s.label("mask_head_backward_x", 4))?;
    // The rows' 1/a: the first half of row_stats.
    let textures = [(x, x_len), (d_out, out_len), (&row_stats, s.rows())];
    let entry = ("backward_text", "backward_text4");
    launch(gpu, entry, &p, &all, &textures, classes_grid, s.label("mask_head_backward_text", 3))?;
    let label = KernelLabel {
        kernel: "mask_head_backward_scale",
        shape: s.desc(),
        flops: s.rows() as u64,
        bytes: 4 * s.rows() as u64,
    };
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry: "backward_scale",
        params: bytemuck::bytes_of(&p),
        buffers: &all,
        workgroups: [1, 1, 1],
        label,
    })
}
