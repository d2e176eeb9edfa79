//! Launchers for `shaders/em.wgsl`: the EM Aggregation loop of docs/DESIGN.md step 8 (E-step,
//! column sums, M-step, L2 normalisation, reconstruction), its unrolled backward, and the
//! moving-average update of the bases.
//!
//! Shapes: `u` [B,N,C] tokens, `bases` [M,C] shared over the batch, `Z` [B,N,M], `mu` [B,M,C],
//! all row-major f32. The step launchers are public so that each kernel can be tested and
//! profiled alone; [`forward`], [`backward`] and [`update_bases`] chain them. Everything is
//! recorded into the GPU's open command stream: the T iterations run back to back with no
//! readback.
//!
//! Design: every product of the loop (E-step logits u mu^T, M-step Z^T u, reconstruction Z mu
//! and the backward's transposed products) runs on the batched matmul launcher
//! ([`crate::matmul::matmul`], register-blocked on CPU adapters, shared-memory tiled on GPUs),
//! with transposes and a broadcast B for the shared bases instead of copies. em.wgsl keeps only
//! what a matmul cannot do: the E-step softmax (lambda, in place over the logits), per-tile and
//! final column sums, the M-step's division by 1e-6 + colsum, the L2 normalisation, and the
//! backward's normalisation and softmax kernels (the latter also adds
//! the M-step's per-basis bias gs, which saves a pass over gZ). The Z^T X products have a small
//! output [M,C] and a long sum over N, so they run split over tokens (S <= 16 splits, one
//! matmul of batch B*S, see `EmShape::splits`) and the pass after them sums the S partials. Accumulating products
//! (`out = acc + ...`) copy `acc` into `out` and let the matmul accumulate; inside
//! [`backward`] the gradient of u is one buffer every product accumulates into.
//!
//! No kernel here uses a workgroup barrier (on lavapipe one costs more than an extra dispatch).
//!
//! Kernel paths: the products are where the time goes (about 90 % of an iteration on lavapipe,
//! profiled), so each launcher's `_with` form takes the [`KernelPath`] its matmuls run on
//! (subgroup-shared operands on lavapipe, register-blocked without subgroups, shared-memory
//! tiles on GPUs); the plain form uses the context's path. The fused kernels of em.wgsl are
//! the same on every path.
//!
//! Profiling: each iteration's dispatches sit in the scope `iter=t` (backward: `backward`, then
//! `recon` or `iter=t`). The dispatches of one step sit in a further scope named after the
//! step (`em_e_step`, `em_m_step`, `em_recon`, `em_m_step_backward`, ...): the matmul
//! dispatches carry the kernel label `matmul`, the fused kernels the step's name, and
//! `vlsa profile em` (src/profile.rs) folds both into one row per step.
//!
//! What the forward saves for the backward is [`EmSaved`]: per iteration Z_t, the column sums
//! s_t, the un-normalised mu_raw_t and the normalised mu_t.

use crate::context::{grid, Dispatch, Gpu};
use crate::matmul::{matmul_with, Matmul};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, KernelPath, Result};

shader!(SHADER, "em.wgsl");

/// The epsilon of the M-step's division and of the L2 normalisation (EMANet's 1e-6).
pub const EPS: f32 = 1e-6;
/// Most bases M the EM loop supports (EMANet uses 64; the limit keeps Z and its per-row
/// softmax loops small).
pub const MAX_BASES: usize = 64;
/// Tokens per partial column sum of the E-step.
pub const TILE: usize = 256;

const ACCUMULATE: u32 = 1;
const SCALE_BY_COLSUM: u32 = 2;
const ADD_BIAS: u32 = 4;
/// Most token splits of a Z^T X product, and the fewest tokens per split.
const MAX_SPLITS: usize = 16;
const MIN_SPLIT_TOKENS: usize = 32;

/// Sizes of one EM Aggregation call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmShape {
    /// B, the batch.
    pub batch: usize,
    /// N, tokens per batch element.
    pub tokens: usize,
    /// C, channels per token and per basis.
    pub width: usize,
    /// M, the number of bases (1..=64).
    pub bases: usize,
    /// T, EM iterations (at least 1).
    pub iters: usize,
    /// lambda, the inverse temperature of the E-step softmax.
    pub lambda: f32,
}

impl EmShape {
    /// Checks the sizes; the error names the shape and what is wrong with it.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::Shape(format!("EM shape {self} {why}")));
        if self.batch == 0 || self.tokens == 0 || self.width == 0 || self.bases == 0 {
            return bad("has an empty axis (B, N, C and M must all be at least 1)");
        }
        if self.bases > MAX_BASES {
            return bad(&format!("has M = {} bases but the EM kernels support at most {MAX_BASES}", self.bases));
        }
        if self.iters == 0 {
            return bad("has T = 0 iterations (at least 1 is needed)");
        }
        if !self.lambda.is_finite() {
            return bad("has a lambda that is not finite");
        }
        let largest = (self.batch * self.tokens * self.width.max(self.bases)) as u64;
        if largest >= u32::MAX as u64 / 2 {
            return bad("is too large for 32-bit indexing");
        }
        Ok(())
    }

    fn tiles(&self) -> usize {
        self.tokens.div_ceil(TILE)
    }
    /// S, the token splits of the Z^T X products: the largest divisor of N that is at most 16
    /// and leaves at least 32 tokens per split (1 when N has none). The output [M,C] of these
    /// products is small and their K = N long; split, they are a batch of B*S matmuls that fill
    /// the workgroups, and a cheap pass sums the S partial products.
    fn splits(&self) -> usize {
        let most = MAX_SPLITS.min(self.tokens / MIN_SPLIT_TOKENS).max(1);
        (1..=most).rev().find(|sp| self.tokens.is_multiple_of(*sp)).unwrap_or(1)
    }
    /// Elements of u and R: B*N*C.
    pub fn tokens_len(&self) -> usize {
        self.batch * self.tokens * self.width
    }
    /// Elements of Z: B*N*M.
    pub fn z_len(&self) -> usize {
        self.batch * self.tokens * self.bases
    }
    /// Elements of mu: B*M*C.
    pub fn mu_len(&self) -> usize {
        self.batch * self.bases * self.width
    }
    /// Elements of the bases: M*C.
    pub fn bases_len(&self) -> usize {
        self.bases * self.width
    }
    /// FLOPs of one E-step or one M-step product over the whole batch: 2*B*N*C*M.
    pub fn product_flops(&self) -> u64 {
        2 * (self.batch * self.tokens * self.width * self.bases) as u64
    }
}

impl std::fmt::Display for EmShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[B={},N={},C={},M={},T={}]", self.batch, self.tokens, self.width, self.bases, self.iters)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    tokens: u32,
    width: u32,
    bases: u32,
    lambda: f32,
    momentum: f32,
    flags: u32,
    count: u32,
    tiles: u32,
    splits: u32,
    _pad: [u32; 2],
}

impl Params {
    fn new(s: &EmShape) -> Self {
        Params {
            batch: s.batch as u32,
            tokens: s.tokens as u32,
            width: s.width as u32,
            bases: s.bases as u32,
            lambda: s.lambda,
            momentum: 0.0,
            flags: 0,
            count: 0,
            tiles: s.tiles() as u32,
            splits: 1,
            _pad: [0; 2],
        }
    }
}

/// Whether a [M,C] operand is per batch element ([B,M,C]) or the shared bases ([M,C]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bases {
    /// One [M,C] block per batch element.
    PerBatch,
    /// One [M,C] block for the whole batch (the bases, at t = 1).
    Shared,
}

fn check_len(what: &str, buf: &GpuBuffer, want: usize, dims: &str, shape: &EmShape) -> Result<()> {
    if buf.len() < want {
        return Err(Error::Shape(format!(
            "{what} has {} elements but {dims} of EM shape {shape} needs {want}",
            buf.len()
        )));
    }
    Ok(())
}

fn check_mu(what: &str, buf: &GpuBuffer, layout: Bases, s: &EmShape) -> Result<()> {
    match layout {
        Bases::PerBatch => check_len(what, buf, s.mu_len(), "[B,M,C]", s),
        Bases::Shared => check_len(what, buf, s.bases_len(), "[M,C]", s),
    }
}

fn launch(
    gpu: &Gpu,
    entry: &'static str,
    p: &Params,
    buffers: &[&GpuBuffer],
    workgroups: [u32; 3],
    label: KernelLabel,
) -> Result<()> {
    gpu.dispatch(Dispatch { shader: &SHADER, entry, params: bytemuck::bytes_of(p), buffers, workgroups, label })
}

fn groups(invocations: usize) -> [u32; 3] {
    grid(invocations.div_ceil(64) as u32)
}

fn label(kernel: &'static str, s: &EmShape, flops: u64, floats: usize) -> KernelLabel {
    KernelLabel { kernel, shape: s.to_string(), flops, bytes: 4 * floats as u64 }
}

// ----- the three products, on the matmul launcher -----

/// Token rows times basis rows: `out[b] (+)= x[b] y[b]^T`, x [B,N,C], y [B,M,C] or shared
/// [M,C], out [B,N,M]. (E-step logits; gradient of Z from R and from the M-step.)
#[allow(clippy::too_many_arguments)]
fn product_xyt(
    gpu: &Gpu,
    x: &GpuBuffer,
    y: &GpuBuffer,
    y_layout: Bases,
    accumulate: bool,
    s: &EmShape,
    out: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    let op = Matmul::new(s.batch, s.tokens, s.bases, s.width)
        .trans_b(true)
        .broadcast_b(y_layout == Bases::Shared)
        .accumulate(accumulate);
    matmul_with(gpu, x, y, out, &op, path)
}

/// Responsibilities transposed times tokens, per token split: `out[b,sp] = z[b,sp]^T x[b,sp]`
/// for the S = `s.splits()` splits of N/S tokens, z [B,N,M], x [B,N,C], out [B,S,M,C]
/// (M-step; gradients of mu). Consecutive token splits are consecutive in both operands, so
/// this is one matmul of batch B*S.
fn product_ztx_split(
    gpu: &Gpu,
    z: &GpuBuffer,
    x: &GpuBuffer,
    s: &EmShape,
    out: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    let sp = s.splits();
    let op = Matmul::new(s.batch * sp, s.bases, s.width, s.tokens / sp).trans_a(true);
    matmul_with(gpu, z, x, out, &op, path)
}

/// `out = (acc +) (z^T x) (/ (1e-6 + colsum))`, [B,M,C]: the split product, then one pass that
/// sums the splits and applies the options. With one split and no division, the matmul alone
/// (accumulating onto a copy of `acc`).
#[allow(clippy::too_many_arguments)]
fn product_ztx(
    gpu: &Gpu,
    kernel: &'static str,
    z: &GpuBuffer,
    x: &GpuBuffer,
    colsum: Option<&GpuBuffer>,
    acc: Option<&GpuBuffer>,
    s: &EmShape,
    out: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    let sp = s.splits();
    if sp == 1 && colsum.is_none() {
        if let Some(a) = acc {
            init_from(gpu, a, s.mu_len(), s, out)?;
        }
        let op = Matmul::new(s.batch, s.bases, s.width, s.tokens).trans_a(true).accumulate(acc.is_some());
        return matmul_with(gpu, z, x, out, &op, path);
    }
    let partial = gpu.alloc(s.mu_len() * sp)?;
    product_ztx_split(gpu, z, x, s, &partial, path)?;
    let mut p = Params::new(s);
    p.splits = sp as u32;
    if colsum.is_some() {
        p.flags |= SCALE_BY_COLSUM;
    }
    if acc.is_some() {
        p.flags |= ACCUMULATE;
    }
    let l = label(kernel, s, (sp + 1) as u64 * s.mu_len() as u64, (sp + 2) * s.mu_len());
    launch(
        gpu,
        "reduce_splits",
        &p,
        &[&partial, acc.unwrap_or(&partial), colsum.unwrap_or(&partial), &partial, out],
        groups(s.mu_len()),
        l,
    )
}

/// Responsibilities times basis rows: `out[b] (+)= z[b] y[b]`, z [B,N,M], y [B,M,C] or shared
/// [M,C], out [B,N,C]. (Reconstruction; gradients of u.)
#[allow(clippy::too_many_arguments)]
fn product_zy(
    gpu: &Gpu,
    z: &GpuBuffer,
    y: &GpuBuffer,
    y_layout: Bases,
    accumulate: bool,
    s: &EmShape,
    out: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    let op =
        Matmul::new(s.batch, s.tokens, s.width, s.bases).broadcast_b(y_layout == Bases::Shared).accumulate(accumulate);
    matmul_with(gpu, z, y, out, &op, path)
}

/// Starts `out` as a copy of the first `len` elements of `acc` (nothing when they are the same
/// buffer), so that an accumulating matmul gives `out = acc + product`.
fn init_from(gpu: &Gpu, acc: &GpuBuffer, len: usize, s: &EmShape, out: &GpuBuffer) -> Result<()> {
    if std::ptr::eq(acc, out) || std::ptr::eq(acc.raw(), out.raw()) {
        return Ok(());
    }
    if acc.len() <= out.len() {
        return gpu.copy(acc, out);
    }
    let mut p = Params::new(s);
    p.count = len as u32;
    launch(gpu, "copy_prefix", &p, &[acc, acc, acc, acc, out], groups(len), label("em_copy", s, 0, 2 * len))
}

// ----- forward steps -----

/// E-step: `z = softmax_M(lambda u mu^T)` [B,N,M] and the per-tile partial column sums
/// `partial` [B, ceil(N/256), M]. `mu` is [B,M,C], or the shared bases [M,C]. Three dispatches
/// in the profiling scope `em_e_step`: the logits matmul (written into `z`), the softmax in
/// place and the per-tile column sums.
pub fn e_step(
    gpu: &Gpu,
    u: &GpuBuffer,
    mu: &GpuBuffer,
    mu_layout: Bases,
    s: &EmShape,
    z: &GpuBuffer,
    partial: &GpuBuffer,
) -> Result<()> {
    e_step_with(gpu, u, mu, mu_layout, s, z, partial, gpu.kernel_path())
}

/// [`e_step`] with the kernel path of its products chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn e_step_with(
    gpu: &Gpu,
    u: &GpuBuffer,
    mu: &GpuBuffer,
    mu_layout: Bases,
    s: &EmShape,
    z: &GpuBuffer,
    partial: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    s.validate()?;
    check_len("u", u, s.tokens_len(), "[B,N,C]", s)?;
    check_mu("mu", mu, mu_layout, s)?;
    check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
    check_len("the partial column sums", partial, s.batch * s.tiles() * s.bases, "[B,ceil(N/256),M]", s)?;
    let _scope = gpu.scope("em_e_step");
    product_xyt(gpu, u, mu, mu_layout, false, s, z, path)?;
    // The vec4 forms need M % 4 == 0 (row starts then stay vec4-aligned in every batch).
    let vec4 = s.bases.is_multiple_of(4);
    let p = Params::new(s);
    let parts = s.batch * s.tiles() * s.bases;
    let l = label("em_e_step", s, 3 * s.z_len() as u64, 2 * s.z_len());
    launch(gpu, if vec4 { "softmax4" } else { "softmax" }, &p, &[z, z, z, z, z], groups(s.batch * s.tokens), l)?;
    let l = label("em_e_step", s, s.z_len() as u64, s.z_len() + parts);
    let (entry, invocations) = if vec4 { ("tile_colsum4", parts / 4) } else { ("tile_colsum", parts) };
    launch(gpu, entry, &p, &[z, z, z, z, z, partial], groups(invocations), l)
}

/// Finishes the column sums: `colsum[b,m] = sum over tiles of partial[b,tile,m]` [B,M].
pub fn colsum(gpu: &Gpu, partial: &GpuBuffer, s: &EmShape, colsum: &GpuBuffer) -> Result<()> {
    s.validate()?;
    let parts = s.batch * s.tiles() * s.bases;
    check_len("the partial column sums", partial, parts, "[B,ceil(N/256),M]", s)?;
    check_len("the column sums", colsum, s.batch * s.bases, "[B,M]", s)?;
    let l = label("em_colsum", s, parts as u64, parts + s.batch * s.bases);
    launch(gpu, "colsum", &Params::new(s), &[partial, partial, partial, partial, colsum], groups(s.batch * s.bases), l)
}

/// The M-step product and its transposed uses in the backward:
/// `out[b,m,:] = acc[b,m,:] + (sum_n z[b,n,m] x[b,n,:]) / (1e-6 + colsum[b,m])`, where the
/// accumulator and the division are each optional. `z` [B,N,M], `x` [B,N,C], `colsum` [B,M],
/// `acc` and `out` [B,M,C]. `kernel` names the profiling scope of this use.
#[allow(clippy::too_many_arguments)]
pub fn m_step_product(
    gpu: &Gpu,
    kernel: &'static str,
    z: &GpuBuffer,
    x: &GpuBuffer,
    colsum: Option<&GpuBuffer>,
    acc: Option<&GpuBuffer>,
    s: &EmShape,
    out: &GpuBuffer,
) -> Result<()> {
    m_step_product_with(gpu, kernel, z, x, colsum, acc, s, out, gpu.kernel_path())
}

/// [`m_step_product`] with the kernel path of its products chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn m_step_product_with(
    gpu: &Gpu,
    kernel: &'static str,
    z: &GpuBuffer,
    x: &GpuBuffer,
    colsum: Option<&GpuBuffer>,
    acc: Option<&GpuBuffer>,
    s: &EmShape,
    out: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    s.validate()?;
    check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
    check_len("the token operand", x, s.tokens_len(), "[B,N,C]", s)?;
    check_len("the M-step output", out, s.mu_len(), "[B,M,C]", s)?;
    if let Some(cs) = colsum {
        check_len("the column sums", cs, s.batch * s.bases, "[B,M]", s)?;
    }
    if let Some(a) = acc {
        check_len("the accumulator", a, s.mu_len(), "[B,M,C]", s)?;
    }
    let _scope = gpu.scope(kernel);
    product_ztx(gpu, kernel, z, x, colsum, acc, s, out, path)
}

/// M-step: `mu_raw = (z^T u) / (1e-6 + colsum)` [B,M,C].
pub fn m_step(
    gpu: &Gpu,
    z: &GpuBuffer,
    u: &GpuBuffer,
    colsum: &GpuBuffer,
    s: &EmShape,
    mu_raw: &GpuBuffer,
) -> Result<()> {
    m_step_with(gpu, z, u, colsum, s, mu_raw, gpu.kernel_path())
}

/// [`m_step`] with the kernel path of its products chosen by the caller.
pub fn m_step_with(
    gpu: &Gpu,
    z: &GpuBuffer,
    u: &GpuBuffer,
    colsum: &GpuBuffer,
    s: &EmShape,
    mu_raw: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    m_step_product_with(gpu, "em_m_step", z, u, Some(colsum), None, s, mu_raw, path)
}

/// L2 normalisation over C: `mu = mu_raw / (1e-6 + ||mu_raw||)`, both [B,M,C].
pub fn normalize(gpu: &Gpu, mu_raw: &GpuBuffer, s: &EmShape, mu: &GpuBuffer) -> Result<()> {
    s.validate()?;
    check_len("mu_raw", mu_raw, s.mu_len(), "[B,M,C]", s)?;
    check_len("mu", mu, s.mu_len(), "[B,M,C]", s)?;
    let l = label("em_normalize", s, 3 * s.mu_len() as u64, 3 * s.mu_len());
    launch(gpu, "normalize", &Params::new(s), &[mu_raw, mu_raw, mu_raw, mu_raw, mu], groups(s.batch * s.bases), l)
}

/// The reconstruction product and its uses in the backward:
/// `out[b,n,:] = acc[b,n,:] + sum_m z[b,n,m] mu[b,m,:]`, the accumulator optional.
/// `z` [B,N,M], `mu` [B,M,C] or shared [M,C], `acc` and `out` [B,N,C]. `kernel` names the
/// profiling scope of this use.
#[allow(clippy::too_many_arguments)]
pub fn reconstruct_product(
    gpu: &Gpu,
    kernel: &'static str,
    z: &GpuBuffer,
    mu: &GpuBuffer,
    mu_layout: Bases,
    acc: Option<&GpuBuffer>,
    s: &EmShape,
    out: &GpuBuffer,
) -> Result<()> {
    reconstruct_product_with(gpu, kernel, z, mu, mu_layout, acc, s, out, gpu.kernel_path())
}

/// [`reconstruct_product`] with the kernel path of its products chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn reconstruct_product_with(
    gpu: &Gpu,
    kernel: &'static str,
    z: &GpuBuffer,
    mu: &GpuBuffer,
    mu_layout: Bases,
    acc: Option<&GpuBuffer>,
    s: &EmShape,
    out: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    s.validate()?;
    check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
    check_mu("mu", mu, mu_layout, s)?;
    check_len("the reconstruction output", out, s.tokens_len(), "[B,N,C]", s)?;
    if let Some(a) = acc {
        check_len("the accumulator", a, s.tokens_len(), "[B,N,C]", s)?;
    }
    let _scope = gpu.scope(kernel);
    if let Some(a) = acc {
        init_from(gpu, a, s.tokens_len(), s, out)?;
    }
    product_zy(gpu, z, mu, mu_layout, acc.is_some(), s, out, path)
}

/// Reconstruction: `recon = z mu` [B,N,C].
pub fn reconstruct(gpu: &Gpu, z: &GpuBuffer, mu: &GpuBuffer, s: &EmShape, recon: &GpuBuffer) -> Result<()> {
    reconstruct_with(gpu, z, mu, s, recon, gpu.kernel_path())
}

/// [`reconstruct`] with the kernel path of its products chosen by the caller.
pub fn reconstruct_with(
    gpu: &Gpu,
    z: &GpuBuffer,
    mu: &GpuBuffer,
    s: &EmShape,
    recon: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    reconstruct_product_with(gpu, "em_recon", z, mu, Bases::PerBatch, None, s, recon, path)
}

// ----- backward steps -----

/// Token-by-basis products: `out[b,n,m] = acc[b,n,m] + x[b,n,:] . y[b,m,:] + bias[b,m]`,
/// accumulator and bias optional. `x` [B,N,C], `y` [B,M,C] or shared [M,C], `bias` [B,M],
/// `acc` and `out` [B,N,M]. `kernel` names the profiling scope of this use.
#[allow(clippy::too_many_arguments)]
pub fn token_dots(
    gpu: &Gpu,
    kernel: &'static str,
    x: &GpuBuffer,
    y: &GpuBuffer,
    y_layout: Bases,
    bias: Option<&GpuBuffer>,
    acc: Option<&GpuBuffer>,
    s: &EmShape,
    out: &GpuBuffer,
) -> Result<()> {
    token_dots_with(gpu, kernel, x, y, y_layout, bias, acc, s, out, gpu.kernel_path())
}

/// [`token_dots`] with the kernel path of its products chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn token_dots_with(
    gpu: &Gpu,
    kernel: &'static str,
    x: &GpuBuffer,
    y: &GpuBuffer,
    y_layout: Bases,
    bias: Option<&GpuBuffer>,
    acc: Option<&GpuBuffer>,
    s: &EmShape,
    out: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    s.validate()?;
    check_len("the token operand", x, s.tokens_len(), "[B,N,C]", s)?;
    check_mu("the basis operand", y, y_layout, s)?;
    check_len("the output", out, s.z_len(), "[B,N,M]", s)?;
    if let Some(b) = bias {
        check_len("the bias", b, s.batch * s.bases, "[B,M]", s)?;
    }
    if let Some(a) = acc {
        check_len("the accumulator", a, s.z_len(), "[B,N,M]", s)?;
    }
    let _scope = gpu.scope(kernel);
    if let Some(a) = acc {
        init_from(gpu, a, s.z_len(), s, out)?;
    }
    product_xyt(gpu, x, y, y_layout, acc.is_some(), s, out, path)?;
    if let Some(b) = bias {
        let l = label(kernel, s, s.z_len() as u64, 2 * s.z_len());
        launch(gpu, "add_bias", &Params::new(s), &[b, b, b, b, out], groups(s.z_len()), l)?;
    }
    Ok(())
}

/// Reconstruction backward: `d_z = d_recon mu^T (+ d_z_in)` [B,N,M] and
/// `d_mu = z^T d_recon (+ d_mu_in)` [B,M,C].
#[allow(clippy::too_many_arguments)]
pub fn reconstruct_backward(
    gpu: &Gpu,
    z: &GpuBuffer,
    mu: &GpuBuffer,
    d_recon: &GpuBuffer,
    d_z_in: Option<&GpuBuffer>,
    d_mu_in: Option<&GpuBuffer>,
    s: &EmShape,
    d_z: &GpuBuffer,
    d_mu: &GpuBuffer,
) -> Result<()> {
    reconstruct_backward_with(gpu, z, mu, d_recon, d_z_in, d_mu_in, s, d_z, d_mu, gpu.kernel_path())
}

/// [`reconstruct_backward`] with the kernel path of its products chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn reconstruct_backward_with(
    gpu: &Gpu,
    z: &GpuBuffer,
    mu: &GpuBuffer,
    d_recon: &GpuBuffer,
    d_z_in: Option<&GpuBuffer>,
    d_mu_in: Option<&GpuBuffer>,
    s: &EmShape,
    d_z: &GpuBuffer,
    d_mu: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    token_dots_with(gpu, "em_recon_backward", d_recon, mu, Bases::PerBatch, None, d_z_in, s, d_z, path)?;
    m_step_product_with(gpu, "em_recon_backward", z, d_recon, None, d_mu_in, s, d_mu, path)
}

/// Backward of the L2 normalisation and of the M-step's division by (1e-6 + colsum), per
/// basis: from `d_mu` (gradient of the normalised mu) gives `d_a` = gradient of A = Z^T u
/// [B,M,C] and `d_colsum` [B,M].
#[allow(clippy::too_many_arguments)]
pub fn normalize_backward(
    gpu: &Gpu,
    mu_raw: &GpuBuffer,
    d_mu: &GpuBuffer,
    colsum: &GpuBuffer,
    s: &EmShape,
    d_a: &GpuBuffer,
    d_colsum: &GpuBuffer,
) -> Result<()> {
    s.validate()?;
    check_len("mu_raw", mu_raw, s.mu_len(), "[B,M,C]", s)?;
    check_len("d_mu", d_mu, s.mu_len(), "[B,M,C]", s)?;
    check_len("the column sums", colsum, s.batch * s.bases, "[B,M]", s)?;
    check_len("d_a", d_a, s.mu_len(), "[B,M,C]", s)?;
    check_len("d_colsum", d_colsum, s.batch * s.bases, "[B,M]", s)?;
    let l = label("em_normalize_backward", s, 8 * s.mu_len() as u64, 3 * s.mu_len());
    launch(
        gpu,
        "normalize_backward",
        &Params::new(s),
        &[mu_raw, d_mu, colsum, mu_raw, d_a, d_colsum],
        groups(s.batch * s.bases),
        l,
    )
}

/// M-step backward, given `d_a` and `d_colsum` from [`normalize_backward`]:
/// `d_z = u d_a^T + d_colsum (+ d_z_in)` [B,N,M] and `d_u_out = d_u_in + z d_a` [B,N,C].
#[allow(clippy::too_many_arguments)]
pub fn m_step_backward(
    gpu: &Gpu,
    u: &GpuBuffer,
    z: &GpuBuffer,
    d_a: &GpuBuffer,
    d_colsum: &GpuBuffer,
    d_z_in: Option<&GpuBuffer>,
    d_u_in: Option<&GpuBuffer>,
    s: &EmShape,
    d_z: &GpuBuffer,
    d_u_out: &GpuBuffer,
) -> Result<()> {
    m_step_backward_with(gpu, u, z, d_a, d_colsum, d_z_in, d_u_in, s, d_z, d_u_out, gpu.kernel_path())
}

/// [`m_step_backward`] with the kernel path of its products chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn m_step_backward_with(
    gpu: &Gpu,
    u: &GpuBuffer,
    z: &GpuBuffer,
    d_a: &GpuBuffer,
    d_colsum: &GpuBuffer,
    d_z_in: Option<&GpuBuffer>,
    d_u_in: Option<&GpuBuffer>,
    s: &EmShape,
    d_z: &GpuBuffer,
    d_u_out: &GpuBuffer,
    path: KernelPath,
) -> Result<()> {
    token_dots_with(gpu, "em_m_step_backward", u, d_a, Bases::PerBatch, Some(d_colsum), d_z_in, s, d_z, path)?;
    reconstruct_product_with(gpu, "em_m_step_backward", z, d_a, Bases::PerBatch, d_u_in, s, d_u_out, path)
}

fn softmax_backward_biased(
    gpu: &Gpu,
    z: &GpuBuffer,
    d_z: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    s: &EmShape,
    d_logits: &GpuBuffer,
) -> Result<()> {
    let mut p = Params::new(s);
    if bias.is_some() {
        p.flags |= ADD_BIAS;
    }
    let l = label("em_e_step_backward", s, 5 * s.z_len() as u64, 3 * s.z_len());
    launch(gpu, "softmax_backward", &p, &[z, d_z, bias.unwrap_or(z), z, d_logits], groups(s.batch * s.tokens), l)
}

/// Softmax backward of the E-step with lambda folded in:
/// `d_logits = lambda z (d_z - sum_m z d_z)` [B,N,M], the gradient of the product u mu^T.
pub fn e_step_backward_softmax(
    gpu: &Gpu,
    z: &GpuBuffer,
    d_z: &GpuBuffer,
    s: &EmShape,
    d_logits: &GpuBuffer,
) -> Result<()> {
    s.validate()?;
    check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
    check_len("d_z", d_z, s.z_len(), "[B,N,M]", s)?;
    check_len("d_logits", d_logits, s.z_len(), "[B,N,M]", s)?;
    softmax_backward_biased(gpu, z, d_z, None, s, d_logits)
}

/// E-step backward, given `d_logits` from [`e_step_backward_softmax`]:
/// `d_u_out = d_u_in + d_logits mu` [B,N,C] and, when `d_mu` is given,
/// `d_mu = d_logits^T u` [B,M,C] (the gradient of mu_{t-1} per batch element, also when
/// mu_{t-1} is the shared bases).
#[allow(clippy::too_many_arguments)]
pub fn e_step_backward(
    gpu: &Gpu,
    u: &GpuBuffer,
    mu: &GpuBuffer,
    mu_layout: Bases,
    d_logits: &GpuBuffer,
    d_u_in: Option<&GpuBuffer>,
    s: &EmShape,
    d_u_out: &GpuBuffer,
    d_mu: Option<&GpuBuffer>,
) -> Result<()> {
    e_step_backward_with(gpu, u, mu, mu_layout, d_logits, d_u_in, s, d_u_out, d_mu, gpu.kernel_path())
}

/// [`e_step_backward`] with the kernel path of its products chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn e_step_backward_with(
    gpu: &Gpu,
    u: &GpuBuffer,
    mu: &GpuBuffer,
    mu_layout: Bases,
    d_logits: &GpuBuffer,
    d_u_in: Option<&GpuBuffer>,
    s: &EmShape,
    d_u_out: &GpuBuffer,
    d_mu: Option<&GpuBuffer>,
    path: KernelPath,
) -> Result<()> {
    reconstruct_product_with(gpu, "em_e_step_backward", d_logits, mu, mu_layout, d_u_in, s, d_u_out, path)?;
    if let Some(d_mu) = d_mu {
        m_step_product_with(gpu, "em_e_step_backward", d_logits, u, None, None, s, d_mu, path)?;
    }
    Ok(())
}

// ----- the loop -----

/// What the forward keeps for the unrolled backward, per iteration t = 1..T (index t-1).
pub struct EmSaved {
    /// Z_t [B,N,M].
    pub z: Vec<GpuBuffer>,
    /// s_t = sum over n of Z_t [B,M].
    pub colsum: Vec<GpuBuffer>,
    /// mu_raw_t = Z_t^T u / (1e-6 + s_t) [B,M,C], before normalisation.
    pub mu_raw: Vec<GpuBuffer>,
    /// mu_t [B,M,C] for t = 1..T-1 (mu_T is [`EmForward::mu`]; mu_0 is the bases).
    pub mu: Vec<GpuBuffer>,
}

/// Outputs of [`forward`].
pub struct EmForward {
    /// Z_T, the last responsibilities [B,N,M].
    pub z: GpuBuffer,
    /// mu_T, the last normalised bases [B,M,C].
    pub mu: GpuBuffer,
    /// R = Z_T mu_T [B,N,C].
    pub recon: GpuBuffer,
    /// Per-iteration state for [`backward`]; `None` unless asked for.
    pub saved: Option<EmSaved>,
}

/// How gradients flow through the EM loop (docs/DESIGN.md step 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradMode {
    /// EMANet: Z and mu are constants in backward; R carries no gradient to u.
    Detached,
    /// The exact gradient through all T iterations into u.
    Unrolled,
}

fn check_loop_inputs(u: &GpuBuffer, bases: &GpuBuffer, s: &EmShape) -> Result<()> {
    s.validate()?;
    check_len("u", u, s.tokens_len(), "[B,N,C]", s)?;
    check_len("the bases", bases, s.bases_len(), "[M,C]", s)
}

/// Runs the T EM iterations from the shared `bases` [M,C] on `u` [B,N,C] and the
/// reconstruction, recorded back to back (no readback). Each iteration's dispatches sit in the
/// profiling scope `iter=t` (E-step: logits matmul, softmax, tile column sums; column sums;
/// M-step: split matmul, sum of the splits with the division by 1e-6 + colsum; normalisation);
/// the reconstruction in `recon`.
pub fn forward(gpu: &Gpu, u: &GpuBuffer, bases: &GpuBuffer, s: &EmShape, save_for_backward: bool) -> Result<EmForward> {
    forward_with(gpu, u, bases, s, save_for_backward, gpu.kernel_path())
}

/// [`forward`] with the kernel path of its products chosen by the caller.
pub fn forward_with(
    gpu: &Gpu,
    u: &GpuBuffer,
    bases: &GpuBuffer,
    s: &EmShape,
    save_for_backward: bool,
    path: KernelPath,
) -> Result<EmForward> {
    check_loop_inputs(u, bases, s)?;
    let mut saved = EmSaved { z: Vec::new(), colsum: Vec::new(), mu_raw: Vec::new(), mu: Vec::new() };
    let partial = gpu.alloc(s.batch * s.tiles() * s.bases)?;
    let mut mu_prev: Option<GpuBuffer> = None;
    let mut z_last = None;
    for t in 1..=s.iters {
        let _scope = gpu.scope(format!("iter={t}"));
        let z = gpu.alloc(s.z_len())?;
        let colsum_t = gpu.alloc(s.batch * s.bases)?;
        let mu_raw = gpu.alloc(s.mu_len())?;
        let mu = gpu.alloc(s.mu_len())?;
        match &mu_prev {
            None => e_step_with(gpu, u, bases, Bases::Shared, s, &z, &partial, path)?,
            Some(m) => e_step_with(gpu, u, m, Bases::PerBatch, s, &z, &partial, path)?,
        }
        colsum(gpu, &partial, s, &colsum_t)?;
        m_step_with(gpu, &z, u, &colsum_t, s, &mu_raw, path)?;
        normalize(gpu, &mu_raw, s, &mu)?;
        if let Some(m) = mu_prev.take() {
            if save_for_backward {
                saved.mu.push(m);
            }
        }
        mu_prev = Some(mu);
        if t == s.iters {
            z_last = Some(z);
        } else if save_for_backward {
            saved.z.push(z);
        }
        if save_for_backward {
            saved.colsum.push(colsum_t);
            saved.mu_raw.push(mu_raw);
        }
    }
    let (z, mu) = (z_last.expect("T >= 1"), mu_prev.expect("T >= 1"));
    let recon = gpu.alloc(s.tokens_len())?;
    {
        let _scope = gpu.scope("recon");
        reconstruct_with(gpu, &z, &mu, s, &recon, path)?;
    }
    Ok(EmForward { z, mu, recon, saved: save_for_backward.then_some(saved) })
}

/// Incoming gradients of the EM loop's outputs.
pub struct EmOutputGrads<'a> {
    /// dLoss/dR [B,N,C].
    pub recon: &'a GpuBuffer,
    /// dLoss/dZ_T [B,N,M], if Z_T is used elsewhere.
    pub z: Option<&'a GpuBuffer>,
    /// dLoss/dmu_T [B,M,C], if mu_T is used elsewhere.
    pub mu: Option<&'a GpuBuffer>,
}

/// The gradient of the loss with respect to `u` [B,N,C]. `Detached` returns zeros (Z and mu
/// are constants); `Unrolled` backpropagates through all T iterations and needs a forward run
/// with `save_for_backward`. Dispatches sit in the profiling scopes `backward` / `iter=t`.
pub fn backward(
    gpu: &Gpu,
    mode: GradMode,
    u: &GpuBuffer,
    bases: &GpuBuffer,
    fwd: &EmForward,
    s: &EmShape,
    grads: &EmOutputGrads<'_>,
) -> Result<GpuBuffer> {
    backward_with(gpu, mode, u, bases, fwd, s, grads, gpu.kernel_path())
}

/// [`backward`] with the kernel path of its products chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    gpu: &Gpu,
    mode: GradMode,
    u: &GpuBuffer,
    bases: &GpuBuffer,
    fwd: &EmForward,
    s: &EmShape,
    grads: &EmOutputGrads<'_>,
    path: KernelPath,
) -> Result<GpuBuffer> {
    check_loop_inputs(u, bases, s)?;
    check_len("dR", grads.recon, s.tokens_len(), "[B,N,C]", s)?;
    if mode == GradMode::Detached {
        return gpu.zeros(s.tokens_len());
    }
    let saved = fwd.saved.as_ref().ok_or_else(|| {
        Error::Shape(format!("the unrolled EM backward of shape {s} needs a forward run with save_for_backward"))
    })?;
    if saved.colsum.len() != s.iters {
        return Err(Error::Shape(format!(
            "the EM forward saved {} iterations but shape {s} has T = {}",
            saved.colsum.len(),
            s.iters
        )));
    }
    let _scope = gpu.scope("backward");
    let d_z = gpu.alloc(s.z_len())?;
    let mut d_mu = gpu.alloc(s.mu_len())?;
    {
        let _scope = gpu.scope("recon");
        reconstruct_backward_with(gpu, &fwd.z, &fwd.mu, grads.recon, grads.z, grads.mu, s, &d_z, &d_mu, path)?;
    }
    let d_a = gpu.alloc(s.mu_len())?;
    let d_colsum = gpu.alloc(s.batch * s.bases)?;
    let d_logits = gpu.alloc(s.z_len())?;
    let d_z_scratch = if s.iters > 1 { Some(gpu.alloc(s.z_len())?) } else { None };
    // Every product into the gradient of u accumulates into this one buffer; the first writes it.
    let d_u = gpu.alloc(s.tokens_len())?;
    let mut d_u_written = false;
    for t in (1..=s.iters).rev() {
        let _scope = gpu.scope(format!("iter={t}"));
        let i = t - 1;
        let z_t = if t == s.iters { &fwd.z } else { &saved.z[i] };
        normalize_backward(gpu, &saved.mu_raw[i], &d_mu, &saved.colsum[i], s, &d_a, &d_colsum)?;
        // The gradient of Z_t without its per-basis bias d_colsum (softmax_backward adds that):
        // u d_a^T, plus dR mu_T^T (already in d_z) when t = T.
        let d_z_t = if t == s.iters { &d_z } else { d_z_scratch.as_ref().expect("T > 1") };
        {
            let _scope = gpu.scope("em_m_step_backward");
            product_xyt(gpu, u, &d_a, Bases::PerBatch, t == s.iters, s, d_z_t, path)?;
            product_zy(gpu, z_t, &d_a, Bases::PerBatch, d_u_written, s, &d_u, path)?;
            d_u_written = true;
        }
        let _scope = gpu.scope("em_e_step_backward");
        softmax_backward_biased(gpu, z_t, d_z_t, Some(&d_colsum), s, &d_logits)?;
        if t == 1 {
            product_zy(gpu, &d_logits, bases, Bases::Shared, true, s, &d_u, path)?;
        } else {
            product_zy(gpu, &d_logits, &saved.mu[i - 1], Bases::PerBatch, true, s, &d_u, path)?;
            let d_mu_prev = gpu.alloc(s.mu_len())?;
            product_ztx(gpu, "em_e_step_backward", &d_logits, u, None, None, s, &d_mu_prev, path)?;
            d_mu = d_mu_prev;
        }
    }
    Ok(d_u)
}

/// The unrolled gradient of `u` given only dLoss/dR (see [`backward`]).
pub fn backward_unrolled(
    gpu: &Gpu,
    u: &GpuBuffer,
    bases: &GpuBuffer,
    fwd: &EmForward,
    s: &EmShape,
    d_recon: &GpuBuffer,
) -> Result<GpuBuffer> {
    backward_unrolled_with(gpu, u, bases, fwd, s, d_recon, gpu.kernel_path())
}

/// [`backward_unrolled`] with the kernel path of its products chosen by the caller.
pub fn backward_unrolled_with(
    gpu: &Gpu,
    u: &GpuBuffer,
    bases: &GpuBuffer,
    fwd: &EmForward,
    s: &EmShape,
    d_recon: &GpuBuffer,
    path: KernelPath,
) -> Result<GpuBuffer> {
    backward_with(gpu, GradMode::Unrolled, u, bases, fwd, s, &EmOutputGrads { recon: d_recon, z: None, mu: None }, path)
}

/// Moving average of the bases (training, no gradient):
/// `l2norm_C(momentum bases + (1 - momentum) mean_B(mu_t))`, returned as a new [M,C] buffer.
pub fn update_bases(gpu: &Gpu, bases: &GpuBuffer, mu_t: &GpuBuffer, s: &EmShape, momentum: f32) -> Result<GpuBuffer> {
    check_len("the bases", bases, s.bases_len(), "[M,C]", s)?;
    s.validate()?;
    check_len("mu_T", mu_t, s.mu_len(), "[B,M,C]", s)?;
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::Shape(format!("the bases momentum is {momentum} but must lie in [0, 1]")));
    }
    let out = gpu.alloc(s.bases_len())?;
    let mut p = Params::new(s);
    p.momentum = momentum;
    let l = label("em_bases_update", s, (s.mu_len() + 6 * s.bases_len()) as u64, s.mu_len() + 3 * s.bases_len());
    launch(gpu, "bases_update", &p, &[bases, mu_t, bases, bases, &out], groups(s.bases), l)?;
    Ok(out)
}
