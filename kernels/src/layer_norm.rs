//! LayerNorm over the last axis of `[rows, cols]`, forward and backward
//! (shaders/layer_norm.wgsl).
//!
//! The forward saves each row's mean and reciprocal standard deviation (`rstd`) for the
//! backward. Mean and variance are two passes over the row in f32. The row kernels come in two
//! schedules ([`RowSchedule`]): the plain launchers pick one for the adapter, the `*_with`
//! launchers take one explicitly. The buffers travel in groups: [`LayerNormIo`] for the
//! forward, [`LayerNormSaved`] (what the forward saved) and [`LayerNormGrads`] for the backward,
//! which can also add an earlier gradient of x (`dx_in`, a pre-norm block's residual stream)
//! into dx in the same pass. The weight and bias gradients sum over rows in a fixed
//! order (per-chunk partial sums, then a per-column pass over the chunks): deterministic.

use crate::buffer::check_len;
use crate::context::{grid, Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::reduce::{check_u32, RowSchedule, MAX_LOOP};
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "layer_norm.wgsl");
shader!(TEXTURE_SHADER, "layer_norm_texture.wgsl");

/// Invocations the weight/bias gradient pass aims for (chunks x cols).
const PARAM_INVOCATIONS: usize = 8192;
/// Fewest rows per chunk of the weight/bias gradient pass.
const MIN_CHUNK_ROWS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    chunk: u32,
    chunks: u32,
    n: u32,
    accumulate: u32,
    _pad: u32,
}

impl Params {
    fn new(rows: usize, cols: usize, eps: f32) -> Self {
        Params { rows: rows as u32, cols: cols as u32, eps, chunk: 0, chunks: 0, n: 0, accumulate: 0, _pad: 0 }
    }
}

fn check_shape(rows: usize, cols: usize) -> Result<bool> {
    if cols == 0 && rows > 0 {
        return Err(Error::Shape(format!(
            "layer_norm over the last axis of [{rows}, {cols}] needs at least one column"
        )));
    }
    check_u32("layer_norm input", &[rows, cols])?;
    Ok(rows > 0)
}

/// The buffers of a LayerNorm forward over `[rows, cols]`.
#[derive(Clone, Copy)]
pub struct LayerNormIo<'a> {
    /// The input x [rows, cols].
    pub x: &'a GpuBuffer,
    /// The scale applied after normalizing [cols].
    pub weight: &'a GpuBuffer,
    /// The shift added after scaling [cols].
    pub bias: &'a GpuBuffer,
    /// The output [rows, cols] (written).
    pub out: &'a GpuBuffer,
    /// Each row's mean [rows] (written, saved for the backward).
    pub mean: &'a GpuBuffer,
    /// Each row's reciprocal standard deviation [rows] (written, saved for the backward).
    pub rstd: &'a GpuBuffer,
}

impl<'a> LayerNormIo<'a> {
    /// What the backward of this forward reads: x, weight and the saved mean and rstd.
    pub fn saved(&self) -> LayerNormSaved<'a> {
        LayerNormSaved { x: self.x, weight: self.weight, mean: self.mean, rstd: self.rstd }
    }
}

/// What a LayerNorm backward over `[rows, cols]` reads from its forward.
#[derive(Clone, Copy)]
pub struct LayerNormSaved<'a> {
    /// The forward's input x [rows, cols].
    pub x: &'a GpuBuffer,
    /// The forward's scale [cols].
    pub weight: &'a GpuBuffer,
    /// The mean the forward saved [rows].
    pub mean: &'a GpuBuffer,
    /// The reciprocal standard deviation the forward saved [rows].
    pub rstd: &'a GpuBuffer,
}

/// The gradients a LayerNorm backward over `[rows, cols]` writes.
#[derive(Clone, Copy)]
pub struct LayerNormGrads<'a> {
    /// The input gradient dx [rows, cols] (written).
    pub dx: &'a GpuBuffer,
    /// The weight gradient [cols], summed over rows (written).
    pub dweight: &'a GpuBuffer,
    /// The bias gradient [cols], summed over rows (written).
    pub dbias: &'a GpuBuffer,
    /// An earlier gradient of x [rows, cols] from another path (a pre-norm block's residual
    /// stream), added into `dx` in the same pass: `dx = dx_in + dLN/dx`. Must not be `dx`.
    pub dx_in: Option<&'a GpuBuffer>,
}

/// Rows per invocation of the `*_rows4` kernels (layer_norm.wgsl): each weight and bias vec4
/// they load serves four rows.
const ROWS4: usize = 4;

/// LayerNorm forward: `out = (x - mean) * rstd * weight + bias` per row, saving `mean` and
/// `rstd` ([rows] each) for the backward.
pub fn forward(gpu: &Gpu, io: &LayerNormIo, rows: usize, cols: usize, eps: f32) -> Result<()> {
    forward_with(gpu, RowSchedule::choose(gpu, rows, cols), io, rows, cols, eps)
}

/// [`forward`] in a given schedule.
pub fn forward_with(
    gpu: &Gpu,
    schedule: RowSchedule,
    io: &LayerNormIo,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    let LayerNormIo { x, weight, bias, out, mean, rstd } = *io;
    check_len("layer_norm input", x, &[rows, cols])?;
    check_len("layer_norm weight", weight, &[cols])?;
    check_len("layer_norm bias", bias, &[cols])?;
    check_len("layer_norm output", out, &[rows, cols])?;
    check_len("layer_norm saved mean", mean, &[rows])?;
    check_len("layer_norm saved rstd", rstd, &[rows])?;
    if !check_shape(rows, cols)? {
        return Ok(());
    }
    // The row-per-invocation schedule by vec4 when the columns allow it.
    let per_row = if cols.is_multiple_of(4) { ("forward_rows4", ROWS4) } else { ("forward_rows", 1) };
    let (entry, workgroups) = schedule.pick_grouped(rows, cols, per_row, "forward_workgroup");
    let n = (rows * cols) as u64;
    let textures = if entry == "forward_rows4" {
        gpu.flat_operands(&[(x, rows * cols), (weight, cols), (bias, cols)])
    } else {
        None
    };
    let p = Params::new(rows, cols, eps);
    let d = Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(&p),
        buffers: &[x, weight, bias, out, mean, rstd],
        workgroups,
        label: KernelLabel {
            kernel: "layer_norm",
            shape: format!("[{rows},{cols}]"),
            flops: 8 * n,
            bytes: 8 * n + 8 * (rows + cols) as u64,
        },
    };
    gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, textures.as_deref())
}

/// LayerNorm backward: `grads.dx` ([rows, cols]) and, summed over rows, `grads.dweight` and
/// `grads.dbias` ([cols]) from the output gradient `dy` ([rows, cols]) and what the forward
/// `saved`. With `grads.dx_in`, that earlier gradient of x is added into dx in the same pass.
pub fn backward(
    gpu: &Gpu,
    saved: &LayerNormSaved,
    dy: &GpuBuffer,
    grads: &LayerNormGrads,
    rows: usize,
    cols: usize,
) -> Result<()> {
    backward_with(gpu, RowSchedule::choose(gpu, rows, cols), saved, dy, grads, rows, cols)
}

/// [`backward`] in a given schedule (of the dx kernel; the weight/bias pass has one form).
pub fn backward_with(
    gpu: &Gpu,
    schedule: RowSchedule,
    saved: &LayerNormSaved,
    dy: &GpuBuffer,
    grads: &LayerNormGrads,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let LayerNormSaved { x, weight, mean, rstd } = *saved;
    let LayerNormGrads { dx, dweight, dbias, dx_in } = *grads;
    if let Some(dx_in) = dx_in {
        check_len("layer_norm earlier input gradient", dx_in, &[rows, cols])?;
    }
    check_len("layer_norm input", x, &[rows, cols])?;
    check_len("layer_norm weight", weight, &[cols])?;
    check_len("layer_norm saved mean", mean, &[rows])?;
    check_len("layer_norm saved rstd", rstd, &[rows])?;
    check_len("layer_norm output gradient", dy, &[rows, cols])?;
    check_len("layer_norm input gradient", dx, &[rows, cols])?;
    check_len("layer_norm weight gradient", dweight, &[cols])?;
    check_len("layer_norm bias gradient", dbias, &[cols])?;
    if dx_in.is_some_and(|d| std::ptr::eq(d, dx)) {
        return Err(Error::Shape("layer_norm backward cannot add the earlier gradient in place (dx_in is dx)".into()));
    }
    if cols > 0 && rows == 0 {
        // No rows: the parameter gradients are empty sums.
        gpu.clear(dweight)?;
        return gpu.clear(dbias);
    }
    if !check_shape(rows, cols)? {
        return Ok(());
    }
    let n = (rows * cols) as u64;
    let per_row = if cols.is_multiple_of(4) { ("backward_rows4", ROWS4) } else { ("backward_rows", 1) };
    let (entry, workgroups) = schedule.pick_grouped(rows, cols, per_row, "backward_workgroup");
    let mut p = Params::new(rows, cols, 0.0);
    p.accumulate = u32::from(dx_in.is_some());
    // The vec4 kernel on texture operands: x, dy, dx_in (dy again when there is none), weight.
    let len = rows * cols;
    let textures = if entry == "backward_rows4" {
        gpu.flat_operands(&[(x, len), (dy, len), (dx_in.unwrap_or(dy), len), (weight, cols)])
    } else {
        None
    };
    let d = Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(&p),
        // Without an earlier gradient, dy fills the dx_in slot (never read: accumulate = 0).
        buffers: &[x, weight, dy, dx, mean, rstd, dx_in.unwrap_or(dy)],
        workgroups,
        label: KernelLabel {
            kernel: if dx_in.is_some() { "layer_norm_backward_acc" } else { "layer_norm_backward" },
            shape: format!("[{rows},{cols}]"),
            flops: 11 * n,
            bytes: 12 * n + 8 * (rows + cols) as u64,
        },
    };
    gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, textures.as_deref())?;

    // dweight, dbias: chunks of rows per invocation, then the chunks per column.
    let chunks =
        PARAM_INVOCATIONS.div_ceil(cols).min(rows.div_ceil(MIN_CHUNK_ROWS)).max(rows.div_ceil(MAX_LOOP)).max(1);
    let chunk = rows.div_ceil(chunks);
    let chunks = rows.div_ceil(chunk);
    let mut p = Params::new(rows, cols, 0.0);
    p.chunk = chunk as u32;
    p.chunks = chunks as u32;
    // By vec4 (four columns per invocation) when the columns allow it.
    let per_invocation = if cols.is_multiple_of(4) { 4 } else { 1 };
    p.n = (chunks * cols / per_invocation) as u32;
    let partials = if chunks > 1 { Some((gpu.alloc(chunks * cols)?, gpu.alloc(chunks * cols)?)) } else { None };
    let (pw, pb) = match &partials {
        Some((w, b)) => (w, b),
        None => (dweight, dbias),
    };
    let textures = if per_invocation == 4 { gpu.flat_operands(&[(x, len), (dy, len)]) } else { None };
    let d = Dispatch {
        shader: &SHADER,
        entry: if per_invocation == 4 { "backward_params4" } else { "backward_params" },
        params: bytemuck::bytes_of(&p),
        buffers: &[x, pw, dy, pb, mean, rstd],
        workgroups: grid((p.n as usize).div_ceil(256) as u32),
        label: KernelLabel {
            kernel: "layer_norm_backward_params",
            shape: format!("[{rows},{cols}]/{chunks}"),
            flops: 4 * n,
            bytes: 8 * n + 8 * (rows + chunks * cols) as u64,
        },
    };
    gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, textures.as_deref())?;
    if let Some((pw, pb)) = &partials {
        gpu.dispatch(Dispatch {
            shader: &SHADER,
            entry: "backward_params_finish",
            params: bytemuck::bytes_of(&p),
            buffers: &[pw, dweight, pb, dbias],
            workgroups: grid(cols.div_ceil(256) as u32),
            label: KernelLabel {
                kernel: "layer_norm_backward_params_finish",
                shape: format!("[{chunks},{cols}]"),
                flops: 2 * (chunks * cols) as u64,
                bytes: 8 * (chunks * cols + cols) as u64,
            },
        })?;
    }
    Ok(())
}
