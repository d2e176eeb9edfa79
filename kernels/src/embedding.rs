//! Embedding gather and its scatter-add backward (shaders/embedding.wgsl).
//!
//! Indices live in a u32 buffer on the GPU, so the launcher cannot check them: an index
//! `>= vocab` makes `gather` write a zero row (it never reads out of bounds) and contributes
//! nothing to the backward. The backward is deterministic (no atomics): each (row, channel) of
//! the table gradient scans all indices, O(vocab * dim * count) index reads.

use crate::buffer::check_len;
use crate::context::{grid, Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::reduce::{check_u32, MAX_LOOP};
use crate::{shader, GpuBuffer, Result};

shader!(SHADER, "embedding.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    dim: u32,
    vocab: u32,
    n: u32,
    start: u32,
    stop: u32,
    accumulate: u32,
    _pad: u32,
}

/// out[i, :] = table[indices[i], :] for `count` indices into a `[vocab, dim]` table; a zero row
/// where `indices[i] >= vocab`.
pub fn gather(
    gpu: &Gpu,
    table: &GpuBuffer,
    indices: &GpuBuffer,
    out: &GpuBuffer,
    count: usize,
    dim: usize,
    vocab: usize,
) -> Result<()> {
    check_u32("embedding table", &[vocab, dim])?;
    check_u32("embedding output", &[count, dim])?;
    check_len("embedding table", table, &[vocab, dim])?;
    check_len("embedding indices", indices, &[count])?;
    check_len("embedding output", out, &[count, dim])?;
    let n = count * dim;
    let p = Params {
        count: count as u32,
        dim: dim as u32,
        vocab: vocab as u32,
        n: n as u32,
        start: 0,
        stop: 0,
        accumulate: 0,
        _pad: 0,
    };
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry: "gather",
        params: bytemuck::bytes_of(&p),
        buffers: &[table, indices, out],
        workgroups: grid(n.div_ceil(256) as u32),
        label: KernelLabel {
            kernel: "embedding_gather",
            shape: format!("[{vocab},{dim}][{count}]"),
            flops: 0,
            bytes: 8 * n as u64 + 4 * count as u64,
        },
    })
}

/// dtable[v, :] = sum over i with indices[i] == v of dy[i, :]  (overwrites dtable; deterministic)
pub fn scatter_add_backward(
    gpu: &Gpu,
    indices: &GpuBuffer,
    dy: &GpuBuffer,
    dtable: &GpuBuffer,
    count: usize,
    dim: usize,
    vocab: usize,
) -> Result<()> {
    check_u32("embedding table gradient", &[vocab, dim])?;
    check_u32("embedding output gradient", &[count, dim])?;
    check_len("embedding indices", indices, &[count])?;
    check_len("embedding output gradient", dy, &[count, dim])?;
    check_len("embedding table gradient", dtable, &[vocab, dim])?;
    let n = vocab * dim;
    // Slices of the indices, one dispatch each, so no invocation loops more than MAX_LOOP times.
    let mut start = 0;
    loop {
        let stop = (start + MAX_LOOP).min(count);
        let p = Params {
            count: count as u32,
            dim: dim as u32,
            vocab: vocab as u32,
            n: n as u32,
            start: start as u32,
            stop: stop as u32,
            accumulate: (start > 0) as u32,
            _pad: 0,
        };
        gpu.dispatch(Dispatch {
            shader: &SHADER,
            entry: "scatter_add_backward",
            params: bytemuck::bytes_of(&p),
            buffers: &[dy, indices, dtable],
            workgroups: grid(n.div_ceil(256) as u32),
            label: KernelLabel {
                kernel: "embedding_backward",
                shape: format!("[{vocab},{dim}][{start}..{stop}]"),
                flops: ((stop - start) * dim) as u64,
                bytes: 4 * (n + (stop - start) * (dim + 1)) as u64,
            },
        })?;
        start = stop;
        if start >= count {
            return Ok(());
        }
    }
}
