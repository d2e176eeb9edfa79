//! Axis permutation (transpose) of a tensor of up to [`MAX_RANK`] axes (shaders/permute.wgsl).
//!
//! The launcher simplifies the permutation first: axes of size 1 are dropped and input axes
//! that stay neighbours in the output are merged, so a `[B, N, H, Dh] -> [B, H, N, Dh]` head
//! split runs as a 3-axis copy and an identity permutation as a 1-axis copy.

use crate::buffer::check_len;
use crate::context::{grid, Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::reduce::check_u32;
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "permute.wgsl");

/// Most axes a permuted tensor may have.
pub const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    rank: u32,
    _pad: [u32; 2],
    out_shape: [u32; MAX_RANK],
    in_strides: [u32; MAX_RANK],
}

/// The shape of `x` permuted by `perm`, or an error naming both when `perm` is not a
/// permutation of `0..shape.len()`.
pub fn permuted_shape(shape: &[usize], perm: &[usize]) -> Result<Vec<usize>> {
    let mut seen = [false; MAX_RANK];
    let valid = shape.len() == perm.len()
        && perm.len() <= MAX_RANK
        && perm.iter().all(|&a| a < perm.len() && !std::mem::replace(&mut seen[a], true));
    if !valid {
        return Err(Error::Shape(format!(
            "permutation {perm:?} is not a permutation of the {} axes of shape {shape:?} (at most {MAX_RANK})",
            shape.len()
        )));
    }
    Ok(perm.iter().map(|&a| shape[a]).collect())
}

/// out = x with its axes permuted: out has shape [shape[perm[0]], shape[perm[1]], ...].
pub fn permute(gpu: &Gpu, x: &GpuBuffer, shape: &[usize], perm: &[usize], out: &GpuBuffer) -> Result<()> {
    let out_shape = permuted_shape(shape, perm)?;
    check_u32("permute input", shape)?;
    check_len("permute input", x, shape)?;
    check_len("permute output", out, &out_shape)?;
    let n: usize = shape.iter().product();
    if n == 0 {
        return Ok(());
    }
    // Input strides, then the output axes as (size, input stride), merging an output axis into
    // the previous one when it is the input axis right after it (their elements stay contiguous).
    let mut strides = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    let mut axes: Vec<(usize, usize)> = Vec::new();
    let mut last_input_axis: Option<usize> = None;
    for &a in perm {
        if shape[a] == 1 {
            continue;
        }
        match axes.last_mut() {
            Some((size, stride))
                if last_input_axis.is_some_and(|l| l < a && shape[l + 1..a].iter().all(|&s| s == 1)) =>
            {
                *size *= shape[a];
                *stride = strides[a];
            }
            _ => axes.push((shape[a], strides[a])),
        }
        last_input_axis = Some(a);
    }
    let mut p = Params {
        n: n as u32,
        rank: axes.len() as u32,
        _pad: [0; 2],
        out_shape: [1; MAX_RANK],
        in_strides: [0; MAX_RANK],
    };
    for (k, &(size, stride)) in axes.iter().enumerate() {
        p.out_shape[k] = size as u32;
        p.in_strides[k] = stride as u32;
    }
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry: "permute",
        params: bytemuck::bytes_of(&p),
        buffers: &[x, out],
        workgroups: grid(n.div_ceil(256) as u32),
        label: KernelLabel { kernel: "permute", shape: format!("{shape:?}{perm:?}"), flops: 0, bytes: 8 * n as u64 },
    })
}
