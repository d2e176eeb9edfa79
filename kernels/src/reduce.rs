//! Sums over an axis and the broadcast-gradient reduction `sum_to_shape` (shaders/reduce.wgsl),
//! and [`RowSchedule`], the choice every last-axis row kernel (softmax, layer_norm, l2norm)
//! makes between one invocation per row and one workgroup per row.
//!
//! Every sum here is computed by one invocation in a fixed order, so results are
//! deterministic run to run; long axes are split into chunks whose partial sums a second
//! dispatch adds up.

use crate::buffer::check_len;
use crate::context::{grid, Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "reduce.wgsl");
shader!(TEXTURE_SHADER, "reduce_texture.wgsl");

/// Outputs (including partial sums) below which a long axis is split into chunks.
const TARGET_OUTPUTS: usize = 4096;
/// Shortest chunk of a split axis.
const MIN_CHUNK: usize = 64;
/// Most loop iterations one invocation of a vlsa kernel may run. Mesa's llvmpipe/lavapipe
/// stops a shader's loops after 65535 iterations in total per invocation (measured: a softmax
/// row of 40000 columns in one invocation summed only part of the row), silently; kernels
/// split longer loops over invocations or dispatches.
pub const MAX_LOOP: usize = 16384;

/// How a row kernel over the last axis of `[rows, cols]` spreads its rows over the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSchedule {
    /// One invocation walks a whole row, 64 rows per workgroup: no barriers. Best on CPU
    /// adapters (lavapipe, llvmpipe), where barriers cost far more than the serial loop.
    Invocation,
    /// One 256-invocation workgroup per row, reducing through workgroup memory. Best on GPUs,
    /// and on any adapter when there are too few rows to keep it busy one row per invocation.
    Workgroup,
}

/// Rows per workgroup of the [`RowSchedule::Invocation`] kernels.
pub(crate) const ROWS_PER_WORKGROUP: usize = 64;
/// Longest row the [`RowSchedule::Invocation`] kernels take (they loop over a row up to three
/// times, which must stay under [`MAX_LOOP`]); longer rows run per workgroup whatever was asked.
pub const MAX_ROW_INVOCATION: usize = MAX_LOOP / 3;

impl RowSchedule {
    /// The schedule for this adapter and shape: `Invocation` on CPU adapters unless the rows
    /// are too few for two cores and long enough to be worth splitting; `Workgroup` elsewhere.
    pub fn choose(gpu: &Gpu, rows: usize, cols: usize) -> RowSchedule {
        if gpu.info().is_cpu() && (rows >= 16 || cols < 4096) && cols <= MAX_ROW_INVOCATION {
            RowSchedule::Invocation
        } else {
            RowSchedule::Workgroup
        }
    }

    /// Picks the entry point of this schedule (`per_invocation` or `per_workgroup`) and its grid
    /// for `rows` rows of `cols`; rows longer than [`MAX_ROW_INVOCATION`] always run per workgroup.
    pub(crate) fn pick(
        self,
        rows: usize,
        cols: usize,
        per_invocation: &'static str,
        per_workgroup: &'static str,
    ) -> (&'static str, [u32; 3]) {
        self.pick_grouped(rows, cols, (per_invocation, 1), per_workgroup)
    }

    /// [`pick`](Self::pick) for a per-invocation kernel that takes `per_invocation.1`
    /// consecutive rows per invocation.
    pub(crate) fn pick_grouped(
        self,
        rows: usize,
        cols: usize,
        per_invocation: (&'static str, usize),
        per_workgroup: &'static str,
    ) -> (&'static str, [u32; 3]) {
        match self {
            RowSchedule::Invocation if cols <= MAX_ROW_INVOCATION => {
                let (entry, rows_each) = per_invocation;
                (entry, grid(rows.div_ceil(ROWS_PER_WORKGROUP * rows_each) as u32))
            }
            _ => (per_workgroup, grid(rows as u32)),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    chunk: u32,
    chunks: u32,
    n: u32,
    _pad: [u32; 2],
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Checks that every dimension fits the u32 index arithmetic of the shaders.
pub(crate) fn check_u32(what: &str, shape: &[usize]) -> Result<()> {
    if numel(shape) > u32::MAX as usize {
        return Err(Error::Shape(format!("{what} of shape {shape:?} has more than 2^32 elements")));
    }
    Ok(())
}

/// One dispatch of the chunked axis sum over x viewed as `[outer, len, inner]`: `out[o, c, i]`
/// for `chunks` chunks of `chunk` along `len`.
fn dispatch_sum(
    gpu: &Gpu,
    x: &GpuBuffer,
    out: &GpuBuffer,
    [outer, len, inner]: [usize; 3],
    chunk: usize,
    chunks: usize,
) -> Result<()> {
    let n = outer * chunks * inner;
    // Four neighbouring outputs per invocation when the inner axis allows it (sum_axis4).
    let per_invocation = if inner.is_multiple_of(4) { 4 } else { 1 };
    let p = Params {
        outer: outer as u32,
        len: len as u32,
        inner: inner as u32,
        chunk: chunk as u32,
        chunks: chunks as u32,
        n: (n / per_invocation) as u32,
        _pad: [0; 2],
    };
    let read = outer * len * inner;
    // Large inputs of the vec4 kernel from a texture where texture operands are on (below
    // MIN_TEXTURE_READ the copy costs about what it saves).
    let textures = if per_invocation == 4 && read >= MIN_TEXTURE_READ { gpu.flat_operands(&[(x, read)]) } else { None };
    let d = Dispatch {
        shader: &SHADER,
        entry: if per_invocation == 4 { "sum_axis4" } else { "sum_axis" },
        params: bytemuck::bytes_of(&p),
        buffers: &[x, out],
        workgroups: grid((n / per_invocation).div_ceil(256) as u32),
        label: KernelLabel {
            kernel: "sum_axis",
            shape: format!("[{outer},{len},{inner}]/{chunks}"),
            flops: read as u64,
            bytes: 4 * (read + n) as u64,
        },
    };
    gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, textures.as_deref())
}

/// Fewest input elements for which `sum_axis4` reads a texture (see [`dispatch_sum`]).
const MIN_TEXTURE_READ: usize = 1 << 16;

/// The axis sum after shape checks: splits a long axis into chunks when there are few outputs.
fn sum_axis_unchecked(gpu: &Gpu, x: &GpuBuffer, outer: usize, len: usize, inner: usize, out: &GpuBuffer) -> Result<()> {
    let outputs = outer * inner;
    if outputs == 0 {
        return Ok(());
    }
    if (outputs >= TARGET_OUTPUTS || len < 2 * MIN_CHUNK) && len <= MAX_LOOP {
        return dispatch_sum(gpu, x, out, [outer, len, inner], len.max(1), 1);
    }
    let chunks = TARGET_OUTPUTS.div_ceil(outputs).min(len / MIN_CHUNK).max(len.div_ceil(MAX_LOOP)).max(1);
    let chunk = len.div_ceil(chunks);
    let chunks = len.div_ceil(chunk);
    let partial = gpu.alloc(outer * chunks * inner)?;
    dispatch_sum(gpu, x, &partial, [outer, len, inner], chunk, chunks)?;
    dispatch_sum(gpu, &partial, out, [outer, chunks, inner], chunks, 1)
}

/// out[o, i] = sum_j x[o, j, i] for x viewed as [outer, len, inner].
pub fn sum_axis(gpu: &Gpu, x: &GpuBuffer, outer: usize, len: usize, inner: usize, out: &GpuBuffer) -> Result<()> {
    check_u32("sum_axis input", &[outer, len, inner])?;
    check_len("sum_axis input", x, &[outer, len, inner])?;
    check_len("sum_axis output", out, &[outer, inner])?;
    sum_axis_unchecked(gpu, x, outer, len, inner, out)
}

/// Sums x (shape x_shape) down to target_shape (NumPy broadcast rules in reverse: axes that are 1
/// in target, or missing in front, are summed). The backward of a broadcast. Error if target does
/// not broadcast to x_shape.
pub fn sum_to_shape(
    gpu: &Gpu,
    x: &GpuBuffer,
    x_shape: &[usize],
    target_shape: &[usize],
    out: &GpuBuffer,
) -> Result<()> {
    let mismatch = || {
        Error::Shape(format!(
            "cannot sum shape {x_shape:?} down to {target_shape:?}: {target_shape:?} does not broadcast to {x_shape:?}"
        ))
    };
    if target_shape.len() > x_shape.len() {
        return Err(mismatch());
    }
    let front = x_shape.len() - target_shape.len();
    let summed: Vec<bool> =
        (0..x_shape.len()).map(|k| k < front || (target_shape[k - front] == 1 && x_shape[k] != 1)).collect();
    for (k, &t) in target_shape.iter().enumerate() {
        if t != x_shape[k + front] && t != 1 {
            return Err(mismatch());
        }
    }
    check_u32("sum_to_shape input", x_shape)?;
    check_len("sum_to_shape input", x, x_shape)?;
    check_len("sum_to_shape output", out, target_shape)?;
    if numel(target_shape) == 0 {
        return Ok(());
    }
    if numel(x_shape) == 0 {
        // Summing an empty axis gives zeros.
        return gpu.clear(out);
    }

    // Merge neighbouring axes that are both summed or both kept; drop axes of size 1.
    let mut runs: Vec<(usize, bool)> = Vec::new();
    for (&size, &s) in x_shape.iter().zip(&summed) {
        if size == 1 {
            continue;
        }
        match runs.last_mut() {
            Some((n, last)) if *last == s => *n *= size,
            _ => runs.push((size, s)),
        }
    }
    if !runs.iter().any(|r| r.1) {
        // Nothing to sum: a copy, as a sum over an axis of length 1.
        let n = numel(x_shape);
        return dispatch_sum(gpu, x, out, [1, 1, n], 1, 1);
    }

    // Sum one run of summed axes per pass, innermost first, through temporary buffers.
    let mut current: Option<GpuBuffer> = None;
    while let Some(k) = runs.iter().rposition(|r| r.1) {
        let outer: usize = runs[..k].iter().map(|r| r.0).product();
        let inner: usize = runs[k + 1..].iter().map(|r| r.0).product();
        let len = runs[k].0;
        runs.remove(k);
        let last = !runs.iter().any(|r| r.1);
        let next = if last { None } else { Some(gpu.alloc(outer * inner)?) };
        let src = current.as_ref().unwrap_or(x);
        sum_axis_unchecked(gpu, src, outer, len, inner, next.as_ref().unwrap_or(out))?;
        current = next;
    }
    Ok(())
}
