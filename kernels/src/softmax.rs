//! Softmax over the last axis of `[rows, cols]`, forward and backward (shaders/softmax.wgsl).
//!
//! The forward subtracts each row's max before `exp`. Both directions come in two schedules
//! ([`RowSchedule`]): the plain launchers pick one for the adapter, the `*_with` launchers take
//! one explicitly (for tests and benches).

use crate::buffer::check_len;
use crate::context::{Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::reduce::{check_u32, RowSchedule};
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "softmax.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

fn check_rows(rows: usize, cols: usize) -> Result<bool> {
    if cols == 0 && rows > 0 {
        return Err(Error::Shape(format!("softmax over the last axis of [{rows}, {cols}] needs at least one column")));
    }
    check_u32("softmax input", &[rows, cols])?;
    Ok(rows > 0)
}

/// y = softmax(x) over the last axis of `[rows, cols]`, in the adapter's preferred schedule.
pub fn forward(gpu: &Gpu, x: &GpuBuffer, out: &GpuBuffer, rows: usize, cols: usize) -> Result<()> {
    forward_with(gpu, RowSchedule::choose(gpu, rows, cols), x, out, rows, cols)
}

/// [`forward`] in a given schedule.
pub fn forward_with(
    gpu: &Gpu,
    schedule: RowSchedule,
    x: &GpuBuffer,
    out: &GpuBuffer,
    rows: usize,
    cols: usize,
) -> Result<()> {
    check_len("softmax input", x, &[rows, cols])?;
    check_len("softmax output", out, &[rows, cols])?;
    if !check_rows(rows, cols)? {
        return Ok(());
    }
    let (entry, workgroups) = schedule.pick(rows, cols, "forward_rows", "forward_workgroup");
    let n = (rows * cols) as u64;
    let p = Params { rows: rows as u32, cols: cols as u32, _pad: [0; 2] };
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(&p),
        buffers: &[x, x, out],
        workgroups,
        label: KernelLabel { kernel: "softmax", shape: format!("[{rows},{cols}]"), flops: 5 * n, bytes: 8 * n },
    })
}

/// dx = y * (dy - sum(dy * y)) per row
pub fn backward(gpu: &Gpu, y: &GpuBuffer, dy: &GpuBuffer, dx: &GpuBuffer, rows: usize, cols: usize) -> Result<()> {
    backward_with(gpu, RowSchedule::choose(gpu, rows, cols), y, dy, dx, rows, cols)
}

/// [`backward`] in a given schedule.
pub fn backward_with(
    gpu: &Gpu,
    schedule: RowSchedule,
    y: &GpuBuffer,
    dy: &GpuBuffer,
    dx: &GpuBuffer,
    rows: usize,
    cols: usize,
) -> Result<()> {
    check_len("softmax output", y, &[rows, cols])?;
    check_len("softmax output gradient", dy, &[rows, cols])?;
    check_len("softmax input gradient", dx, &[rows, cols])?;
    if !check_rows(rows, cols)? {
        return Ok(());
    }
    let (entry, workgroups) = schedule.pick(rows, cols, "backward_rows", "backward_workgroup");
    let n = (rows * cols) as u64;
    let p = Params { rows: rows as u32, cols: cols as u32, _pad: [0; 2] };
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(&p),
        buffers: &[y, dy, dx],
        workgroups,
        label: KernelLabel {
            kernel: "softmax_backward",
            shape: format!("[{rows},{cols}]"),
            flops: 4 * n,
            bytes: 12 * n,
        },
    })
}
