//! Pixel cross-entropy and Dice losses, forward and backward, and the per-pixel argmax
//! (shaders/loss.wgsl).
//!
//! Logits are [B, K, P] (P = pixels per image, S*S for the model's [B, K, S, S]) and targets
//! [B, P] u32 class indices; a [`LossShape`] gives the launchers B, K and P. Losses are
//! scalars in a 1-element buffer, reduced in two deterministic passes; backward launchers take
//! the upstream gradient as a 1-element buffer so a training step needs no readback.
//!
//! A target value >= K names no class: the pixel adds 0 to the cross-entropy sum (the mean
//! still divides by all B*P pixels) and gets a zero cross-entropy gradient; for Dice its one-hot
//! row is all zeros. It is never used as an index.

use crate::context::{grid, Dispatch, Gpu, OperandTexture};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "loss.wgsl");
shader!(TEXTURE_SHADER, "loss_texture.wgsl");

/// Most partial-sum workgroups of a reduction on a GPU (each invocation then sums several
/// pixels): enough to fill a large one.
const MAX_GROUPS: usize = 256;

/// The same on a CPU adapter. Lavapipe runs a 256-invocation workgroup as 32 SIMD groups
/// switched at every barrier of the tree reduction, so each workgroup has a large fixed cost;
/// 16 still gives every core work. Measured on the default model's losses (batch 8, 4 classes,
/// 128 px; AMD EPYC Zen 4, two threads, vlsa profile model, two runs each): dice 22 ms with 256
/// workgroups per class against 6-9 ms with 4 or 16, cross entropy 6.6-8.0 ms against 1.8-3.8.
const MAX_GROUPS_CPU: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    classes: u32,
    pixels: u32,
    n: u32,
    groups: u32,
    _pad: [u32; 3],
}

/// The shape of one loss or argmax call: logits [batch, classes, pixels], targets and labels
/// [batch, pixels].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossShape {
    /// B: images.
    pub batch: usize,
    /// K: classes, class 0 the background (Dice covers the foreground classes k >= 1).
    pub classes: usize,
    /// P: pixels per image (S*S for the model's [B, K, S, S] logits).
    pub pixels: usize,
}

impl LossShape {
    /// Refuses a shape without a class or a pixel; `what` names the call in the message.
    fn validate(&self, what: &str) -> Result<()> {
        let LossShape { batch, classes, pixels } = *self;
        if batch * pixels == 0 || classes == 0 {
            return Err(Error::Shape(format!(
                "{what} of logits [{batch}, {classes}, {pixels}]: needs at least one class and one pixel"
            )));
        }
        Ok(())
    }
    fn n(&self) -> usize {
        self.batch * self.pixels
    }
    fn logits_len(&self) -> usize {
        self.n() * self.classes
    }
    fn logits_desc(&self) -> String {
        format!("[{}, {}, {}]", self.batch, self.classes, self.pixels)
    }
    fn check(&self, what: &str, buf: &GpuBuffer, need: usize, desc: &str) -> Result<()> {
        if buf.len() < need {
            return Err(Error::Shape(format!(
                "loss over logits {} and targets [{}, {}]: {what} has {} elements but {desc} needs {need}",
                self.logits_desc(),
                self.batch,
                self.pixels,
                buf.len()
            )));
        }
        Ok(())
    }
    fn check_inputs(&self, logits: &GpuBuffer, target: &GpuBuffer) -> Result<()> {
        self.check("the logits", logits, self.n() * self.classes, &self.logits_desc())?;
        self.check("the targets", target, self.n(), &format!("[{}, {}]", self.batch, self.pixels))
    }
    /// Partial-sum workgroups of a reduction: fixed by n and the kind of adapter, so one
    /// adapter always sums in the same order (bit-identical runs).
    fn groups(&self, gpu: &Gpu) -> usize {
        let most = if gpu.info().is_cpu() { MAX_GROUPS_CPU } else { MAX_GROUPS };
        self.n().div_ceil(256).clamp(1, most)
    }
    fn params(&self, gpu: &Gpu) -> Params {
        Params {
            batch: self.batch as u32,
            classes: self.classes as u32,
            pixels: self.pixels as u32,
            n: self.n() as u32,
            groups: self.groups(gpu) as u32,
            _pad: [0; 3],
        }
    }
    fn label(&self, kernel: &'static str, flops_per_logit: usize) -> KernelLabel {
        let logits = self.n() * self.classes;
        KernelLabel {
            kernel,
            shape: self.logits_desc(),
            flops: (flops_per_logit * logits) as u64,
            bytes: 4 * (logits + self.n()) as u64,
        }
    }
}

/// Binds `used` at their binding numbers (1-based) and `filler` everywhere else.
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    params: &Params,
    used: &[(usize, &GpuBuffer)],
    workgroups: [u32; 3],
    label: KernelLabel,
) -> Result<()> {
    launch_textured(gpu, entry, params, used, &[], workgroups, label)
}

/// [`launch`] reading `textures` (buffer and length, in loss_texture.wgsl's binding order)
/// from flat textures where texture operands are on and they all fit.
fn launch_textured(
    gpu: &Gpu,
    entry: &'static str,
    params: &Params,
    used: &[(usize, &GpuBuffer)],
    textures: &[(&GpuBuffer, usize)],
    workgroups: [u32; 3],
    label: KernelLabel,
) -> Result<()> {
    let filler = used[0].1;
    let count = used.iter().map(|&(b, _)| b).max().unwrap_or(0);
    let mut buffers = vec![filler; count];
    for &(binding, buf) in used {
        buffers[binding - 1] = buf;
    }
    let operands: Option<Vec<OperandTexture>> = if textures.is_empty() { None } else { gpu.flat_operands(textures) };
    let d =
        Dispatch { shader: &SHADER, entry, params: bytemuck::bytes_of(params), buffers: &buffers, workgroups, label };
    gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, operands.as_deref())
}

fn per_pixel(s: &LossShape) -> [u32; 3] {
    grid(s.n().div_ceil(256) as u32)
}

/// Mean pixel cross-entropy of `logits` [B, K, P] against `target` [B, P] into `loss` [1].
pub fn cross_entropy(
    gpu: &Gpu,
    logits: &GpuBuffer,
    target: &GpuBuffer,
    loss: &GpuBuffer,
    shape: &LossShape,
) -> Result<()> {
    let s = shape;
    s.validate("cross entropy")?;
    s.check_inputs(logits, target)?;
    s.check("the loss", loss, 1, "a scalar")?;
    let p = s.params(gpu);
    let partials = gpu.alloc(p.groups as usize)?;
    launch_textured(
        gpu,
        "cross_entropy_partial",
        &p,
        &[(1, logits), (2, target), (4, &partials)],
        &[(logits, s.logits_len())],
        [p.groups, 1, 1],
        s.label("cross_entropy", 4),
    )?;
    let label = KernelLabel {
        kernel: "cross_entropy_finish",
        shape: s.logits_desc(),
        flops: p.groups as u64,
        bytes: 4 * p.groups as u64,
    };
    launch(gpu, "cross_entropy_finish", &p, &[(4, &partials), (5, loss)], [1, 1, 1], label)
}

/// `d_logits = d_loss[0] / (B P) * (softmax(logits) - onehot(target))` (zero rows where the
/// target names no class).
pub fn cross_entropy_backward(
    gpu: &Gpu,
    logits: &GpuBuffer,
    target: &GpuBuffer,
    d_loss: &GpuBuffer,
    d_logits: &GpuBuffer,
    shape: &LossShape,
) -> Result<()> {
    let s = shape;
    s.validate("cross entropy backward")?;
    s.check_inputs(logits, target)?;
    s.check("the loss gradient", d_loss, 1, "a scalar")?;
    s.check("the logits gradient", d_logits, s.n() * s.classes, &s.logits_desc())?;
    launch_textured(
        gpu,
        "cross_entropy_backward",
        &s.params(gpu),
        &[(1, logits), (2, target), (7, d_loss), (8, d_logits)],
        &[(logits, s.logits_len())],
        per_pixel(s),
        s.label("cross_entropy_backward", 6),
    )
}

/// Elements of the Dice statistics buffer: (sum p_k, sum y_k, sum p_k y_k) per foreground
/// class.
pub fn dice_stats_len(classes: usize) -> usize {
    3 * classes.saturating_sub(1)
}

/// Dice loss over the foreground classes k >= 1 into `loss` [1]; `stats` (at least
/// [`dice_stats_len`] = 3 (K - 1) elements; may be 1 when K = 1) receives the per-class sums that
/// [`dice_backward`] needs. With K = 1 the loss is 0.
pub fn dice(
    gpu: &Gpu,
    logits: &GpuBuffer,
    target: &GpuBuffer,
    stats: &GpuBuffer,
    loss: &GpuBuffer,
    shape: &LossShape,
) -> Result<()> {
    let s = shape;
    s.validate("dice")?;
    let classes = s.classes;
    s.check_inputs(logits, target)?;
    s.check("the dice statistics", stats, 3 * (classes - 1), &format!("[{}, 3]", classes - 1))?;
    s.check("the loss", loss, 1, "a scalar")?;
    let p = s.params(gpu);
    let foreground = (classes - 1) as u32;
    let partials = gpu.alloc((p.groups as usize * 3 * (classes - 1)).max(1))?;
    launch_textured(
        gpu,
        "dice_partial",
        &p,
        &[(1, logits), (2, target), (4, &partials)],
        &[(logits, s.logits_len())],
        [p.groups, foreground, 1],
        s.label("dice", 3 + 2 * classes),
    )?;
    let label = KernelLabel {
        kernel: "dice_finish",
        shape: s.logits_desc(),
        flops: partials.len() as u64,
        bytes: 4 * partials.len() as u64,
    };
    launch(gpu, "dice_finish", &p, &[(4, &partials), (5, loss), (6, stats)], [1, 1, 1], label)
}

/// Gradient of [`dice`] scaled by `d_loss[0]`, from the `stats` its forward wrote.
pub fn dice_backward(
    gpu: &Gpu,
    logits: &GpuBuffer,
    target: &GpuBuffer,
    stats: &GpuBuffer,
    d_loss: &GpuBuffer,
    d_logits: &GpuBuffer,
    shape: &LossShape,
) -> Result<()> {
    let s = shape;
    s.validate("dice backward")?;
    let classes = s.classes;
    s.check_inputs(logits, target)?;
    s.check("the dice statistics", stats, 3 * (classes - 1), &format!("[{}, 3]", classes - 1))?;
    s.check("the loss gradient", d_loss, 1, "a scalar")?;
    s.check("the logits gradient", d_logits, s.n() * classes, &s.logits_desc())?;
    let used = [(1, logits), (2, target), (6, stats), (7, d_loss), (8, d_logits)];
    // The statistics from a texture too, beside the logits (none with K = 1: nothing to read).
    let stats_len = dice_stats_len(classes);
    let textures: &[(&GpuBuffer, usize)] =
        if stats_len > 0 { &[(logits, s.logits_len()), (stats, stats_len)] } else { &[] };
    let label = s.label("dice_backward", 8 + 2 * classes);
    launch_textured(gpu, "dice_backward", &s.params(gpu), &used, textures, per_pixel(s), label)
}

/// `labels[b, i]` = the first class with the largest logit at pixel i; labels [B, P] u32.
pub fn argmax(gpu: &Gpu, logits: &GpuBuffer, labels: &GpuBuffer, shape: &LossShape) -> Result<()> {
    let s = shape;
    s.validate("argmax")?;
    s.check("the logits", logits, s.n() * s.classes, &s.logits_desc())?;
    s.check("the labels", labels, s.n(), &format!("[{}, {}]", s.batch, s.pixels))?;
    let used = [(1, logits), (3, labels)];
    launch_textured(
        gpu,
        "argmax",
        &s.params(gpu),
        &used,
        &[(logits, s.logits_len())],
        per_pixel(s),
        s.label("argmax", 1),
    )
}
