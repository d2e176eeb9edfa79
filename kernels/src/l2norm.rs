//! L2 normalization over the last axis of `[rows, cols]`, forward and backward
//! (shaders/l2norm.wgsl), in the two forms the model uses ([`L2Mode`]); an [`L2Norm`] gives the
//! launchers the shape and the form.
//!
//! The forward saves each row's norm ||x||_2 for the backward. The row kernels come in two
//! schedules ([`RowSchedule`]): the plain launchers pick one for the adapter, the `*_with`
//! launchers take one explicitly.

use crate::buffer::check_len;
use crate::context::{Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::reduce::{check_u32, RowSchedule};
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "l2norm.wgsl");

/// Which denominator the normalization uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum L2Mode {
    /// x / (eps + ||x||): the EM M-step (eps 1e-6).
    AddEps(f32),
    /// x / max(||x||, eps): the mask head's cosine (eps 1e-6); no gradient flows through the
    /// norm where it is clamped.
    ClampMin(f32),
}

impl L2Mode {
    fn code_and_eps(self) -> (u32, f32) {
        match self {
            L2Mode::AddEps(eps) => (0, eps),
            L2Mode::ClampMin(eps) => (1, eps),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    mode: u32,
}

/// The shape and form of one L2 normalization: rows of `cols` elements, normalized by `mode`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct L2Norm {
    /// Rows normalized independently (x, out, dy and dx are [rows, cols]; norms [rows]).
    pub rows: usize,
    /// Elements per row: the axis the norm is taken over.
    pub cols: usize,
    /// The denominator's form and its eps.
    pub mode: L2Mode,
}

impl L2Norm {
    /// The kernel parameters, or `None` when there are no rows.
    fn params(&self) -> Result<Option<Params>> {
        let L2Norm { rows, cols, mode } = *self;
        if cols == 0 && rows > 0 {
            return Err(Error::Shape(format!(
                "l2norm over the last axis of [{rows}, {cols}] needs at least one column"
            )));
        }
        check_u32("l2norm input", &[rows, cols])?;
        let (code, eps) = mode.code_and_eps();
        Ok((rows > 0).then_some(Params { rows: rows as u32, cols: cols as u32, eps, mode: code }))
    }
}

/// y = x / denominator(||x||) per row of `[rows, cols]`; `norms` ([rows]) receives ||x||.
pub fn forward(gpu: &Gpu, x: &GpuBuffer, out: &GpuBuffer, norms: &GpuBuffer, shape: &L2Norm) -> Result<()> {
    forward_with(gpu, RowSchedule::choose(gpu, shape.rows, shape.cols), x, out, norms, shape)
}

/// [`forward`] in a given schedule.
pub fn forward_with(
    gpu: &Gpu,
    schedule: RowSchedule,
    x: &GpuBuffer,
    out: &GpuBuffer,
    norms: &GpuBuffer,
    shape: &L2Norm,
) -> Result<()> {
    let (rows, cols) = (shape.rows, shape.cols);
    check_len("l2norm input", x, &[rows, cols])?;
    check_len("l2norm output", out, &[rows, cols])?;
    check_len("l2norm saved norms", norms, &[rows])?;
    let Some(p) = shape.params()? else { return Ok(()) };
    let (entry, workgroups) = schedule.pick(rows, cols, "forward_rows", "forward_workgroup");
    let n = (rows * cols) as u64;
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(&p),
        buffers: &[x, x, out, norms],
        workgroups,
        label: KernelLabel {
            kernel: "l2norm",
            shape: format!("[{rows},{cols}]"),
            flops: 3 * n,
            bytes: 8 * n + 4 * rows as u64,
        },
    })
}

/// dx from dy, with `x` and `norms` from the forward.
pub fn backward(
    gpu: &Gpu,
    x: &GpuBuffer,
    norms: &GpuBuffer,
    dy: &GpuBuffer,
    dx: &GpuBuffer,
    shape: &L2Norm,
) -> Result<()> {
    backward_with(gpu, RowSchedule::choose(gpu, shape.rows, shape.cols), x, norms, dy, dx, shape)
}

/// [`backward`] in a given schedule.
pub fn backward_with(
    gpu: &Gpu,
    schedule: RowSchedule,
    x: &GpuBuffer,
    norms: &GpuBuffer,
    dy: &GpuBuffer,
    dx: &GpuBuffer,
    shape: &L2Norm,
) -> Result<()> {
    let (rows, cols) = (shape.rows, shape.cols);
    check_len("l2norm input", x, &[rows, cols])?;
    check_len("l2norm saved norms", norms, &[rows])?;
    check_len("l2norm output gradient", dy, &[rows, cols])?;
    check_len("l2norm input gradient", dx, &[rows, cols])?;
    let Some(p) = shape.params()? else { return Ok(()) };
    let (entry, workgroups) = schedule.pick(rows, cols, "backward_rows", "backward_workgroup");
    let n = (rows * cols) as u64;
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(&p),
        buffers: &[x, dy, dx, norms],
        workgroups,
        label: KernelLabel {
            kernel: "l2norm_backward",
            shape: format!("[{rows},{cols}]"),
            flops: 5 * n,
            bytes: 12 * n + 4 * rows as u64,
        },
    })
}
