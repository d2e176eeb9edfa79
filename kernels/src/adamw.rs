//! AdamW parameter update with decoupled weight decay (shaders/adamw.wgsl).
//!
//! One dispatch per parameter tensor updates the parameter and both moment buffers in place,
//! in PyTorch's order (`torch.optim.AdamW`): first `p *= 1 - lr * wd`, then
//! `m = b1 m + (1 - b1) g` (as torch's lerp), `v = b2 v + (1 - b2) g^2`, and
//! `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use crate::context::{grid, Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "adamw.wgsl");

/// AdamW hyper-parameters (PyTorch's names and defaults but the learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// Decay rate of the first moment.
    pub beta1: f32,
    /// Decay rate of the second moment.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay (multiplied by lr).
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
    _pad: [u32; 3],
}

/// The four buffers of one parameter tensor's AdamW step, each of at least the step's `len`
/// elements and four distinct buffers.
#[derive(Clone, Copy)]
pub struct AdamWTensor<'a> {
    /// The parameter (updated in place).
    pub param: &'a GpuBuffer,
    /// Its gradient (read).
    pub grad: &'a GpuBuffer,
    /// The first moment (updated in place).
    pub m: &'a GpuBuffer,
    /// The second moment (updated in place).
    pub v: &'a GpuBuffer,
}

/// One AdamW step (`step` counts from 1) over the first `len` elements of `tensor`'s parameter,
/// with its gradient and moments (`param`, `m`, `v` are updated).
pub fn step(gpu: &Gpu, tensor: &AdamWTensor, len: usize, step: u32, cfg: &AdamW) -> Result<()> {
    let AdamWTensor { param, grad, m, v } = *tensor;
    if step == 0 {
        return Err(Error::Shape(format!(
            "AdamW step of a tensor of {len} elements: the step count starts at 1, got 0"
        )));
    }
    for (what, buf) in [("parameter", param), ("gradient", grad), ("first moment", m), ("second moment", v)] {
        if buf.len() < len {
            return Err(Error::Shape(format!(
                "AdamW step of a tensor of {len} elements: the {what} buffer has only {} elements",
                buf.len()
            )));
        }
    }
    let bufs = [param, grad, m, v];
    for i in 0..4 {
        for j in i + 1..4 {
            if bufs[i].raw() == bufs[j].raw() {
                return Err(Error::Shape(format!("AdamW step of a tensor of {len} elements: parameter, gradient and moments must be four distinct buffers")));
            }
        }
    }
    let t = step as f64;
    let bias1 = 1.0 - (cfg.beta1 as f64).powf(t);
    let bias2 = 1.0 - (cfg.beta2 as f64).powf(t);
    let params = Params {
        n: len as u32,
        decay: (1.0 - cfg.lr as f64 * cfg.weight_decay as f64) as f32,
        beta1: cfg.beta1,
        one_minus_beta1: (1.0 - cfg.beta1 as f64) as f32,
        beta2: cfg.beta2,
        one_minus_beta2: (1.0 - cfg.beta2 as f64) as f32,
        step_size: (cfg.lr as f64 / bias1) as f32,
        bias2_sqrt: bias2.sqrt() as f32,
        eps: cfg.eps,
        _pad: [0; 3],
    };
    let label =
        KernelLabel { kernel: "adamw", shape: format!("[{len}]"), flops: 16 * len as u64, bytes: 28 * len as u64 };
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry: "adamw",
        params: bytemuck::bytes_of(&params),
        buffers: &[param, grad, m, v],
        workgroups: grid(len.div_ceil(256) as u32),
        label,
    })
}
