//! Launchers for `shaders/em.wgsl`: the EM Aggregation loop of docs/DESIGN.md step 8 (E-step,
//! column sums, M-step, L2 normalisation, reconstruction), its unrolled backward, and the
//! moving-average update of the bases.
//!
//! Shapes: `u` [B,N,C] tokens, `bases` [M,C] shared over the batch, `Z` [B,N,M], `mu` [B,M,C],
//! all row-major f32. [`Em`] holds one checked [`EmShape`] and a kernel path; its step launchers
//! are public so that each kernel can be tested and profiled alone, and [`Em::forward`],
//! [`Em::backward`] and [`Em::update_bases`] chain them. A [M,C] operand is [`Bases`]: per
//! batch element or shared; a product's destination is [`Out`]: a buffer, optionally added to
//! an accumulator. Everything is
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
//! the M-step's per-basis bias gs, which saves a pass over gZ). Where M and C are multiples of
//! 4 the forward ends each M-step in one pass instead ([`Em::m_step_fused`]: column sums, sum
//! of the splits, division and normalisation, the same additions in the same order), so a
//! CPU-path iteration is four dispatches: logits matmul, softmax, split matmul, that pass.
//! The Z^T X products have a small output [M,C] and a long sum over N, so they run split over
//! tokens (S <= 16 splits, one matmul of batch B*S, see `Em::splits`) and the pass after them
//! sums the S partials. Accumulating products (`out = acc + ...`) copy `acc` into `out` and
//! let the matmul accumulate; inside
//! [`Em::backward`] the gradient of u is one buffer every product accumulates into.
//!
//! No kernel here uses a workgroup barrier (on lavapipe one costs more than an extra dispatch).
//!
//! Kernel paths: the products are where the time goes (about 90 % of an iteration on lavapipe,
//! profiled), so [`Em::on_path`] chooses the [`KernelPath`] its matmuls run on
//! (subgroup-shared operands on lavapipe, register-blocked without subgroups, shared-memory
//! tiles on GPUs); [`Em::new`] takes the context's path. The fused kernels of em.wgsl are
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

use crate::context::{grid, Dispatch, Gpu, OperandTexture};
use crate::matmul::{matmul_with, Matmul};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, KernelPath, Result};

shader!(SHADER, "em.wgsl");
shader!(TEXTURE_SHADER, "em_texture.wgsl");
shader!(FUSED_SHADER, "em_fused.wgsl");

/// The epsilon of the M-step's division and of the L2 normalisation (EMANet's 1e-6).
pub const EPS: f32 = 1e-6;
/// Most bases M the EM loop supports (EMANet uses 64; the limit keeps Z and its per-row
/// softmax loops small).
pub const MAX_BASES: usize = 64;
/// Tokens per partial column sum of the E-step.
pub const TILE: usize = 256;
/// Tokens per workgroup of the two-pass iteration ([`Em::fused_iteration`]).
pub const FUSED_TILE: usize = 32;
/// What the two-pass iteration needs of the adapter: 256 invocations per workgroup and 8 KiB of
/// workgroup memory (Z of one tile).
const FUSED_INVOCATIONS: u32 = 256;
const FUSED_SHARED_BYTES: u32 = 8192;

const ACCUMULATE: u32 = 1;
const SCALE_BY_COLSUM: u32 = 2;
const ADD_BIAS: u32 = 4;
/// Most token splits of a Z^T X product, and the fewest tokens per split.
const MAX_SPLITS: usize = 16;
const MIN_SPLIT_TOKENS: usize = 32;
/// Workgroups a split Z^T X product aims for on the CPU paths (see `Em::splits`).
const CPU_SPLIT_WORKGROUPS: usize = 16;

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
    z_rows: u32,
    _pad: u32,
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
            z_rows: 0,
            _pad: 0,
        }
    }
}

/// The parameter block of shaders/em_fused.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FusedParams {
    batch: u32,
    tokens: u32,
    width: u32,
    bases: u32,
    lambda: f32,
    tiles: u32,
    flags: u32,
    _pad: u32,
}

/// em_fused.wgsl's flag: the E-step reads the shared bases [M,C].
const SHARED_MU: u32 = 1;

/// A [M,C] operand: one block per batch element ([B,M,C]) or the shared bases ([M,C]) that
/// every batch element reads (at t = 1).
#[derive(Debug, Clone, Copy)]
pub enum Bases<'a> {
    /// One [M,C] block per batch element, [B,M,C].
    PerBatch(&'a GpuBuffer),
    /// One [M,C] block for the whole batch.
    Shared(&'a GpuBuffer),
}

impl<'a> Bases<'a> {
    /// The buffer, whichever layout it has.
    pub fn buffer(&self) -> &'a GpuBuffer {
        match *self {
            Bases::PerBatch(b) | Bases::Shared(b) => b,
        }
    }
    fn is_shared(&self) -> bool {
        matches!(self, Bases::Shared(_))
    }
}

/// Where a product goes: `out = acc + product` with an accumulator, `out = product` without.
/// `acc` may be `out` itself.
#[derive(Debug, Clone, Copy)]
pub struct Out<'a> {
    /// The output buffer.
    pub out: &'a GpuBuffer,
    /// What the product is added to, if anything.
    pub acc: Option<&'a GpuBuffer>,
}

impl<'a> Out<'a> {
    /// `out = product`.
    pub fn to(out: &'a GpuBuffer) -> Self {
        Out { out, acc: None }
    }
    /// `out = acc + product` when `acc` is given.
    pub fn plus(self, acc: Option<&'a GpuBuffer>) -> Self {
        Out { acc, ..self }
    }
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

fn check_mu(what: &str, mu: Bases<'_>, s: &EmShape) -> Result<()> {
    match mu {
        Bases::PerBatch(b) => check_len(what, b, s.mu_len(), "[B,M,C]", s),
        Bases::Shared(b) => check_len(what, b, s.bases_len(), "[M,C]", s),
    }
}

/// Checks an output and its optional accumulator against the same dims.
fn check_out(what: &str, o: Out<'_>, want: usize, dims: &str, s: &EmShape) -> Result<()> {
    check_len(what, o.out, want, dims, s)?;
    if let Some(a) = o.acc {
        check_len("the accumulator", a, want, dims, s)?;
    }
    Ok(())
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

/// The EM launchers for one shape, checked once, on one kernel path: every step of the loop
/// and of its backward as a method, so that each kernel can be tested and profiled alone, and
/// [`Em::forward`], [`Em::backward`] and [`Em::update_bases`] chaining them.
#[derive(Clone, Copy)]
pub struct Em<'a> {
    gpu: &'a Gpu,
    s: EmShape,
    path: KernelPath,
    iteration: Iteration,
}

/// How [`Em::forward`] runs one iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Iteration {
    /// The kernel path's choice: two passes on the GPU path (`tiled`), whose barriers are
    /// cheap; step by step on the CPU paths (a barrier costs more than a dispatch on lavapipe).
    #[default]
    Auto,
    /// Two passes ([`Em::fused_iteration`]), where the grid fits one dispatch.
    TwoPass,
    /// Step by step: four dispatches where M and C are multiples of 4 (E-step matmul and
    /// softmax, M-step split matmul and [`Em::m_step_fused`]'s one pass), else seven (E-step
    /// (3), column sums, M-step (2), normalisation).
    PerStep,
}

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

/// Outputs of [`Em::forward`].
pub struct EmForward {
    /// Z_T, the last responsibilities [B,N,M].
    pub z: GpuBuffer,
    /// mu_T, the last normalised bases [B,M,C].
    pub mu: GpuBuffer,
    /// R = Z_T mu_T [B,N,C].
    pub recon: GpuBuffer,
    /// Per-iteration state for [`Em::backward`]; `None` unless asked for.
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

/// Incoming gradients of the EM loop's outputs.
pub struct EmOutputGrads<'a> {
    /// dLoss/dR [B,N,C].
    pub recon: &'a GpuBuffer,
    /// dLoss/dZ_T [B,N,M], if Z_T is used elsewhere.
    pub z: Option<&'a GpuBuffer>,
    /// dLoss/dmu_T [B,M,C], if mu_T is used elsewhere.
    pub mu: Option<&'a GpuBuffer>,
}

impl<'a> Em<'a> {
    /// The launchers for shape `s` on the context's kernel path; a bad shape is an error
    /// naming it.
    pub fn new(gpu: &'a Gpu, s: EmShape) -> Result<Self> {
        s.validate()?;
        Ok(Em { gpu, s, path: gpu.kernel_path(), iteration: Iteration::Auto })
    }

    /// The same launchers with their products on kernel path `path`.
    pub fn on_path(self, path: KernelPath) -> Self {
        Em { path, ..self }
    }

    /// The same launchers running each forward iteration as `iteration` says.
    pub fn with_iteration(self, iteration: Iteration) -> Self {
        Em { iteration, ..self }
    }

    /// The shape these launchers run.
    pub fn shape(&self) -> &EmShape {
        &self.s
    }

    // ----- the three products, on the matmul launcher -----

    /// S, the token splits of the Z^T X products: a divisor of N, at most 16, that leaves at
    /// least 32 tokens per split (1 when N has none). The output [M,C] of these products is
    /// small and their K = N long; split, they are a batch of B*S matmuls with more workgroups,
    /// and a cheap pass sums the S partial products. On a GPU (the tiled path) S is the largest
    /// such divisor, to fill the device. On the CPU paths it is the smallest that gives the
    /// split product 16 workgroups (enough for a 16-thread lavapipe): there every split's
    /// partial output costs stores and a pass, and the threads fill with far fewer workgroups.
    /// Measured on lavapipe (Intel Xeon, family 6 model 167, 2026-12-03; `vlsa profile em`, six
    /// runs alternating with 16 splits as on GPUs): T=3 iterations and the reconstruction at
    /// N=4096 C=256 M=64 took 24.8 ms in median against 26.6 ms, the model's EM (B=8 N=256 C=128
    /// M=16) 8.0 ms against 10.7 ms.
    fn splits(&self) -> usize {
        let s = &self.s;
        let most = MAX_SPLITS.min(s.tokens / MIN_SPLIT_TOKENS).max(1);
        let mut divisors = (1..=most).filter(|sp| s.tokens.is_multiple_of(*sp));
        let plan =
            crate::matmul::plan(self.gpu, &Matmul::new(s.batch, s.bases, s.width, s.tokens).trans_a(true), self.path);
        if plan.path == KernelPath::Tiled {
            return divisors.next_back().unwrap_or(1);
        }
        let blocks = s.batch * s.bases.div_ceil(plan.rows) * s.width.div_ceil(plan.cols);
        let mut last = 1;
        for sp in divisors {
            last = sp;
            if blocks * sp >= CPU_SPLIT_WORKGROUPS {
                break;
            }
        }
        last
    }

    /// Token rows times basis rows: `out[b] (+)= x[b] y[b]^T`, x [B,N,C], y [B,M,C] or shared
    /// [M,C], out [B,N,M]. (E-step logits; gradient of Z from R and from the M-step.)
    fn product_xyt(&self, x: &GpuBuffer, y: Bases<'_>, accumulate: bool, out: &GpuBuffer) -> Result<()> {
        let s = &self.s;
        let op = Matmul::new(s.batch, s.tokens, s.bases, s.width)
            .trans_b(true)
            .broadcast_b(y.is_shared())
            .accumulate(accumulate);
        matmul_with(self.gpu, x, y.buffer(), out, &op, self.path)
    }

    /// Responsibilities transposed times tokens, per token split: `out[b,sp] = z[b,sp]^T x[b,sp]`
    /// for `sp` splits of N/sp tokens (`self.splits()`), z [B,N,M], x [B,N,C], out [B,sp,M,C]
    /// (M-step; gradients of mu). Consecutive token splits are consecutive in both operands, so
    /// this is one matmul of batch B*sp.
    fn product_ztx_split(&self, sp: usize, z: &GpuBuffer, x: &GpuBuffer, out: &GpuBuffer) -> Result<()> {
        let s = &self.s;
        let op = Matmul::new(s.batch * sp, s.bases, s.width, s.tokens / sp).trans_a(true);
        matmul_with(self.gpu, z, x, out, &op, self.path)
    }

    /// `out = (acc +) (z^T x) (/ (1e-6 + colsum))`, [B,M,C]: the split product, then one pass
    /// that sums the splits and applies the options. With one split and no division, the
    /// matmul alone (accumulating onto a copy of `acc`).
    fn product_ztx(
        &self,
        kernel: &'static str,
        z: &GpuBuffer,
        x: &GpuBuffer,
        colsum: Option<&GpuBuffer>,
        o: Out<'_>,
    ) -> Result<()> {
        let (gpu, s) = (self.gpu, &self.s);
        let sp = self.splits();
        if sp == 1 && colsum.is_none() {
            if let Some(a) = o.acc {
                self.init_from(a, s.mu_len(), o.out)?;
            }
            let op = Matmul::new(s.batch, s.bases, s.width, s.tokens).trans_a(true).accumulate(o.acc.is_some());
            return matmul_with(gpu, z, x, o.out, &op, self.path);
        }
        let partial = gpu.alloc(s.mu_len() * sp)?;
        self.product_ztx_split(sp, z, x, &partial)?;
        let mut p = Params::new(s);
        p.splits = sp as u32;
        if colsum.is_some() {
            p.flags |= SCALE_BY_COLSUM;
        }
        if o.acc.is_some() {
            p.flags |= ACCUMULATE;
        }
        let l = label(kernel, s, (sp + 1) as u64 * s.mu_len() as u64, (sp + 2) * s.mu_len());
        launch(
            gpu,
            "reduce_splits",
            &p,
            &[&partial, o.acc.unwrap_or(&partial), colsum.unwrap_or(&partial), &partial, o.out],
            groups(s.mu_len()),
            l,
        )
    }

    /// Responsibilities times basis rows: `out[b] (+)= z[b] y[b]`, z [B,N,M], y [B,M,C] or
    /// shared [M,C], out [B,N,C]. (Reconstruction; gradients of u.)
    fn product_zy(&self, z: &GpuBuffer, y: Bases<'_>, accumulate: bool, out: &GpuBuffer) -> Result<()> {
        let s = &self.s;
        let op = Matmul::new(s.batch, s.tokens, s.width, s.bases).broadcast_b(y.is_shared()).accumulate(accumulate);
        matmul_with(self.gpu, z, y.buffer(), out, &op, self.path)
    }

    /// Starts `out` as a copy of the first `len` elements of `acc` (nothing when they are the
    /// same buffer), so that an accumulating matmul gives `out = acc + product`.
    fn init_from(&self, acc: &GpuBuffer, len: usize, out: &GpuBuffer) -> Result<()> {
        if std::ptr::eq(acc, out) || std::ptr::eq(acc.raw(), out.raw()) {
            return Ok(());
        }
        if acc.len() <= out.len() {
            return self.gpu.copy(acc, out);
        }
        let mut p = Params::new(&self.s);
        p.count = len as u32;
        let l = label("em_copy", &self.s, 0, 2 * len);
        launch(self.gpu, "copy_prefix", &p, &[acc, acc, acc, acc, out], groups(len), l)
    }

    // ----- forward steps -----

    /// Whether [`Em::forward`] runs each iteration as [`Em::fused_iteration`]'s two passes
    /// ([`Iteration`]: by default on the GPU path, `tiled`), which needs the grid to fit one
    /// dispatch and the adapter to offer 256 invocations and 8 KiB of workgroup memory.
    pub fn fuses_iterations(&self) -> bool {
        self.two_pass_unfit().is_none()
            && match self.iteration {
                Iteration::Auto => self.path == KernelPath::Tiled,
                Iteration::TwoPass => true,
                Iteration::PerStep => false,
            }
    }

    /// Why this shape and adapter cannot run the two-pass iteration, if they cannot: its grid
    /// must fit one dispatch and its workgroups the adapter's limits.
    fn two_pass_unfit(&self) -> Option<String> {
        let (s, limits) = (&self.s, self.gpu.limits());
        let tiles = s.tokens.div_ceil(FUSED_TILE);
        if tiles > 65535 || s.batch > 65535 {
            return Some(format!(
                "EM shape {s} needs {tiles} x {} workgroups for the two-pass iteration, more than one dispatch holds (65535 each way)",
                s.batch
            ));
        }
        if limits.max_compute_invocations_per_workgroup < FUSED_INVOCATIONS
            || limits.max_compute_workgroup_storage_size < FUSED_SHARED_BYTES
        {
            return Some(format!(
                "the two-pass EM iteration needs {FUSED_INVOCATIONS} invocations and {FUSED_SHARED_BYTES} bytes of workgroup memory, and this adapter offers {} and {}",
                limits.max_compute_invocations_per_workgroup, limits.max_compute_workgroup_storage_size
            ));
        }
        None
    }

    /// One whole iteration (E-step, column sums, M-step, normalisation) in two passes
    /// (shaders/em_fused.wgsl): per tile of 32 tokens, Z in workgroup memory between the E-step
    /// softmax and the partial column sums and M-step product; then per basis, the sums over
    /// tiles, the division and the L2 normalisation. Writes `z` [B,N,M], `colsum` [B,M],
    /// `mu_raw` and `mu` [B,M,C] as [`Em::e_step`], [`Em::colsum`], [`Em::m_step`] and
    /// [`Em::normalize`] do. Any kernel path can run it (the tests force each); both
    /// dispatches sit in the profiling scope `em_fused`.
    pub fn fused_iteration(
        &self,
        u: &GpuBuffer,
        mu_in: Bases<'_>,
        z: &GpuBuffer,
        colsum: &GpuBuffer,
        mu_raw: &GpuBuffer,
        mu: &GpuBuffer,
    ) -> Result<()> {
        let (gpu, s) = (self.gpu, &self.s);
        check_len("u", u, s.tokens_len(), "[B,N,C]", s)?;
        check_mu("mu", mu_in, s)?;
        check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
        check_len("the column sums", colsum, s.batch * s.bases, "[B,M]", s)?;
        check_len("mu_raw", mu_raw, s.mu_len(), "[B,M,C]", s)?;
        check_len("mu", mu, s.mu_len(), "[B,M,C]", s)?;
        if let Some(why) = self.two_pass_unfit() {
            return Err(Error::Shape(why));
        }
        let tiles = s.tokens.div_ceil(FUSED_TILE);
        let partial = gpu.alloc(s.batch * tiles * s.bases * (s.width + 1))?;
        let p = FusedParams {
            batch: s.batch as u32,
            tokens: s.tokens as u32,
            width: s.width as u32,
            bases: s.bases as u32,
            lambda: s.lambda,
            tiles: tiles as u32,
            flags: if mu_in.is_shared() { SHARED_MU } else { 0 },
            _pad: 0,
        };
        let _scope = gpu.scope("em_fused");
        let parts = s.batch * tiles * s.bases * (s.width + 1);
        let l = label("em_fused", s, 2 * s.product_flops() + 4 * s.z_len() as u64, s.tokens_len() + s.z_len() + parts);
        gpu.dispatch(Dispatch {
            shader: &FUSED_SHADER,
            entry: "e_m_tile",
            params: bytemuck::bytes_of(&p),
            buffers: &[u, mu_in.buffer(), z, &partial],
            workgroups: [tiles as u32, s.batch as u32, 1],
            label: l,
        })?;
        let l = label("em_fused", s, (parts + 3 * s.mu_len()) as u64, parts + 2 * s.mu_len() + s.batch * s.bases);
        gpu.dispatch(Dispatch {
            shader: &FUSED_SHADER,
            entry: "e_m_reduce",
            params: bytemuck::bytes_of(&p),
            buffers: &[u, u, mu_raw, mu, &partial, colsum],
            workgroups: [s.bases as u32, s.batch as u32, 1],
            label: l,
        })
    }

    /// E-step: `z = softmax_M(lambda u mu^T)` [B,N,M] and the per-tile partial column sums
    /// `partial` [B, ceil(N/256), M]. `mu` is [B,M,C], or the shared bases [M,C]. Three
    /// dispatches in the profiling scope `em_e_step`: the logits matmul (written into `z`), the
    /// softmax in place and the per-tile column sums.
    pub fn e_step(&self, u: &GpuBuffer, mu: Bases<'_>, z: &GpuBuffer, partial: &GpuBuffer) -> Result<()> {
        let (gpu, s) = (self.gpu, &self.s);
        self.check_e_step(u, mu, z)?;
        check_len("the partial column sums", partial, s.batch * s.tiles() * s.bases, "[B,ceil(N/256),M]", s)?;
        let _scope = gpu.scope("em_e_step");
        self.logits_softmax(u, mu, z)?;
        let vec4 = s.bases.is_multiple_of(4);
        let p = Params::new(s);
        let parts = s.batch * s.tiles() * s.bases;
        let l = label("em_e_step", s, s.z_len() as u64, s.z_len() + parts);
        let (entry, invocations) = if vec4 { ("tile_colsum4", parts / 4) } else { ("tile_colsum", parts) };
        let d = Dispatch {
            shader: &SHADER,
            entry,
            params: bytemuck::bytes_of(&p),
            buffers: &[z, z, z, z, z, partial],
            workgroups: groups(invocations),
            label: l,
        };
        let z_texture = if vec4 { gpu.flat_operands(&[(z, s.z_len())]) } else { None };
        gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, z_texture.as_deref())
    }

    /// The E-step without the column sums (they come from [`Em::m_step_fused`]):
    /// `z = softmax_M(lambda u mu^T)` [B,N,M], two dispatches in the profiling scope
    /// `em_e_step` (the logits matmul and the softmax in place).
    pub fn e_step_softmax(&self, u: &GpuBuffer, mu: Bases<'_>, z: &GpuBuffer) -> Result<()> {
        self.check_e_step(u, mu, z)?;
        let _scope = self.gpu.scope("em_e_step");
        self.logits_softmax(u, mu, z)
    }

    fn check_e_step(&self, u: &GpuBuffer, mu: Bases<'_>, z: &GpuBuffer) -> Result<()> {
        let s = &self.s;
        check_len("u", u, s.tokens_len(), "[B,N,C]", s)?;
        check_mu("mu", mu, s)?;
        check_len("Z", z, s.z_len(), "[B,N,M]", s)
    }

    /// The logits matmul into `z` and the softmax over M in place.
    fn logits_softmax(&self, u: &GpuBuffer, mu: Bases<'_>, z: &GpuBuffer) -> Result<()> {
        let (gpu, s) = (self.gpu, &self.s);
        self.product_xyt(u, mu, false, z)?;
        // The vec4 form needs M % 4 == 0 (row starts then stay vec4-aligned in every batch).
        let vec4 = s.bases.is_multiple_of(4);
        let p = Params::new(s);
        let l = label("em_e_step", s, 3 * s.z_len() as u64, 2 * s.z_len());
        let d = Dispatch {
            shader: &SHADER,
            entry: if vec4 { "softmax4" } else { "softmax" },
            params: bytemuck::bytes_of(&p),
            buffers: &[z, z, z, z, z],
            workgroups: groups(s.batch * s.tokens),
            label: l,
        };
        // The vec4 form reads the logits from a texture where texture operands are on
        // (em_texture.wgsl).
        let z_texture = if vec4 { gpu.flat_operands(&[(z, s.z_len())]) } else { None };
        gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, z_texture.as_deref())
    }

    /// Finishes the column sums: `colsum[b,m] = sum over tiles of partial[b,tile,m]` [B,M].
    pub fn colsum(&self, partial: &GpuBuffer, colsum: &GpuBuffer) -> Result<()> {
        let s = &self.s;
        let parts = s.batch * s.tiles() * s.bases;
        check_len("the partial column sums", partial, parts, "[B,ceil(N/256),M]", s)?;
        check_len("the column sums", colsum, s.batch * s.bases, "[B,M]", s)?;
        let l = label("em_colsum", s, parts as u64, parts + s.batch * s.bases);
        let buffers = [partial, partial, partial, partial, colsum];
        launch(self.gpu, "colsum", &Params::new(s), &buffers, groups(s.batch * s.bases), l)
    }

    /// The M-step product and its transposed uses in the backward:
    /// `out[b,m,:] = acc[b,m,:] + (sum_n z[b,n,m] x[b,n,:]) / (1e-6 + colsum[b,m])`, where the
    /// accumulator and the division are each optional. `z` [B,N,M], `x` [B,N,C], `colsum`
    /// [B,M], `acc` and `out` [B,M,C]. `kernel` names the profiling scope of this use.
    pub fn m_step_product(
        &self,
        kernel: &'static str,
        z: &GpuBuffer,
        x: &GpuBuffer,
        colsum: Option<&GpuBuffer>,
        o: Out<'_>,
    ) -> Result<()> {
        let s = &self.s;
        check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
        check_len("the token operand", x, s.tokens_len(), "[B,N,C]", s)?;
        check_out("the M-step output", o, s.mu_len(), "[B,M,C]", s)?;
        if let Some(cs) = colsum {
            check_len("the column sums", cs, s.batch * s.bases, "[B,M]", s)?;
        }
        let _scope = self.gpu.scope(kernel);
        self.product_ztx(kernel, z, x, colsum, o)
    }

    /// M-step: `mu_raw = (z^T u) / (1e-6 + colsum)` [B,M,C].
    pub fn m_step(&self, z: &GpuBuffer, u: &GpuBuffer, colsum: &GpuBuffer, mu_raw: &GpuBuffer) -> Result<()> {
        self.m_step_product("em_m_step", z, u, Some(colsum), Out::to(mu_raw))
    }

    /// True when the M-step can end in one pass ([`Em::m_step_fused`]): M and C multiples of 4.
    pub fn fuses_m_step(&self) -> bool {
        self.s.bases.is_multiple_of(4) && self.s.width.is_multiple_of(4)
    }

    /// The M-step from the responsibilities alone: the column sums `colsum = sum_n z` [B,M],
    /// `mu_raw = (z^T u) / (1e-6 + colsum)` and `mu = mu_raw / (1e-6 + ||mu_raw||)` [B,M,C],
    /// the same values as [`Em::e_step`]'s column sums, [`Em::colsum`], [`Em::m_step`] and
    /// [`Em::normalize`]. Two dispatches in the profiling scope `em_m_step`: the split matmul
    /// and `m_step_finish4`, which adds the column sums, the splits, divides and normalises
    /// (where texture operands are on it reads Z and the split products from textures; Z's is
    /// the one the matmul read, when it made one). Needs [`Em::fuses_m_step`].
    pub fn m_step_fused(
        &self,
        z: &GpuBuffer,
        u: &GpuBuffer,
        colsum: &GpuBuffer,
        mu_raw: &GpuBuffer,
        mu: &GpuBuffer,
    ) -> Result<()> {
        let (gpu, s) = (self.gpu, &self.s);
        if !self.fuses_m_step() {
            return Err(Error::Shape(format!(
                "the one-pass M-step needs M and C to be multiples of 4, but EM shape {s} has M = {} and C = {}",
                s.bases, s.width
            )));
        }
        check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
        check_len("u", u, s.tokens_len(), "[B,N,C]", s)?;
        check_len("the column sums", colsum, s.batch * s.bases, "[B,M]", s)?;
        check_len("mu_raw", mu_raw, s.mu_len(), "[B,M,C]", s)?;
        check_len("mu", mu, s.mu_len(), "[B,M,C]", s)?;
        let _scope = gpu.scope("em_m_step");
        let sp = self.splits();
        let q = gpu.alloc(s.mu_len() * sp)?;
        self.product_ztx_split(sp, z, u, &q)?;
        let mut p = Params::new(s);
        p.splits = sp as u32;
        // Z's texture: the matmul's layout (a row per token) where it is a valid texture, so the
        // copy the matmul made is found again; else flat.
        let rows = OperandTexture::matrix(z, s.bases, s.batch * s.tokens);
        let z_texture = if rows.valid(gpu.limits()) { rows } else { OperandTexture::flat(z, s.z_len()) };
        p.z_rows = u32::from(rows.valid(gpu.limits()));
        let textures = gpu
            .flat_operands(&[(&q, s.mu_len() * sp)])
            .filter(|_| z_texture.valid(gpu.limits()))
            .map(|q_texture| vec![z_texture, q_texture[0]]);
        let flops = s.z_len() + (sp + 1) * s.mu_len() + 4 * s.mu_len();
        let floats = s.z_len() + sp * s.mu_len() + s.batch * s.bases + 2 * s.mu_len();
        let d = Dispatch {
            shader: &SHADER,
            entry: "m_step_finish4",
            params: bytemuck::bytes_of(&p),
            buffers: &[z, z, z, z, colsum, mu_raw, z, z, &q, mu],
            workgroups: grid((s.batch * s.bases / 4).div_ceil(8) as u32),
            label: label("em_m_step", s, flops as u64, floats),
        };
        gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, textures.as_deref())
    }

    /// L2 normalisation over C: `mu = mu_raw / (1e-6 + ||mu_raw||)`, both [B,M,C].
    pub fn normalize(&self, mu_raw: &GpuBuffer, mu: &GpuBuffer) -> Result<()> {
        let s = &self.s;
        check_len("mu_raw", mu_raw, s.mu_len(), "[B,M,C]", s)?;
        check_len("mu", mu, s.mu_len(), "[B,M,C]", s)?;
        let l = label("em_normalize", s, 3 * s.mu_len() as u64, 3 * s.mu_len());
        let buffers = [mu_raw, mu_raw, mu_raw, mu_raw, mu];
        launch(self.gpu, "normalize", &Params::new(s), &buffers, groups(s.batch * s.bases), l)
    }

    /// The reconstruction product and its uses in the backward:
    /// `out[b,n,:] = acc[b,n,:] + sum_m z[b,n,m] mu[b,m,:]`, the accumulator optional.
    /// `z` [B,N,M], `mu` [B,M,C] or shared [M,C], `acc` and `out` [B,N,C]. `kernel` names the
    /// profiling scope of this use.
    pub fn reconstruct_product(&self, kernel: &'static str, z: &GpuBuffer, mu: Bases<'_>, o: Out<'_>) -> Result<()> {
        let s = &self.s;
        check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
        check_mu("mu", mu, s)?;
        check_out("the reconstruction output", o, s.tokens_len(), "[B,N,C]", s)?;
        let _scope = self.gpu.scope(kernel);
        if let Some(a) = o.acc {
            self.init_from(a, s.tokens_len(), o.out)?;
        }
        self.product_zy(z, mu, o.acc.is_some(), o.out)
    }

    /// Reconstruction: `recon = z mu` [B,N,C].
    pub fn reconstruct(&self, z: &GpuBuffer, mu: &GpuBuffer, recon: &GpuBuffer) -> Result<()> {
        self.reconstruct_product("em_recon", z, Bases::PerBatch(mu), Out::to(recon))
    }

    // ----- backward steps -----

    /// Token-by-basis products: `out[b,n,m] = acc[b,n,m] + x[b,n,:] . y[b,m,:] + bias[b,m]`,
    /// accumulator and bias optional. `x` [B,N,C], `y` [B,M,C] or shared [M,C], `bias` [B,M],
    /// `acc` and `out` [B,N,M]. `kernel` names the profiling scope of this use.
    pub fn token_dots(
        &self,
        kernel: &'static str,
        x: &GpuBuffer,
        y: Bases<'_>,
        bias: Option<&GpuBuffer>,
        o: Out<'_>,
    ) -> Result<()> {
        let s = &self.s;
        check_len("the token operand", x, s.tokens_len(), "[B,N,C]", s)?;
        check_mu("the basis operand", y, s)?;
        check_out("the output", o, s.z_len(), "[B,N,M]", s)?;
        if let Some(b) = bias {
            check_len("the bias", b, s.batch * s.bases, "[B,M]", s)?;
        }
        let _scope = self.gpu.scope(kernel);
        if let Some(a) = o.acc {
            self.init_from(a, s.z_len(), o.out)?;
        }
        self.product_xyt(x, y, o.acc.is_some(), o.out)?;
        if let Some(b) = bias {
            let l = label(kernel, s, s.z_len() as u64, 2 * s.z_len());
            launch(self.gpu, "add_bias", &Params::new(s), &[b, b, b, b, o.out], groups(s.z_len()), l)?;
        }
        Ok(())
    }

    /// Reconstruction backward: `d_z = d_recon mu^T (+ acc)` [B,N,M] and
    /// `d_mu = z^T d_recon (+ acc)` [B,M,C].
    pub fn reconstruct_backward(
        &self,
        z: &GpuBuffer,
        mu: &GpuBuffer,
        d_recon: &GpuBuffer,
        d_z: Out<'_>,
        d_mu: Out<'_>,
    ) -> Result<()> {
        self.token_dots("em_recon_backward", d_recon, Bases::PerBatch(mu), None, d_z)?;
        self.m_step_product("em_recon_backward", z, d_recon, None, d_mu)
    }

    /// Backward of the L2 normalisation and of the M-step's division by (1e-6 + colsum), per
    /// basis: from `d_mu` (gradient of the normalised mu) gives `d_a` = gradient of A = Z^T u
    /// [B,M,C] and `d_colsum` [B,M].
    pub fn normalize_backward(
        &self,
        mu_raw: &GpuBuffer,
        d_mu: &GpuBuffer,
        colsum: &GpuBuffer,
        d_a: &GpuBuffer,
        d_colsum: &GpuBuffer,
    ) -> Result<()> {
        let s = &self.s;
        check_len("mu_raw", mu_raw, s.mu_len(), "[B,M,C]", s)?;
        check_len("d_mu", d_mu, s.mu_len(), "[B,M,C]", s)?;
        check_len("the column sums", colsum, s.batch * s.bases, "[B,M]", s)?;
        check_len("d_a", d_a, s.mu_len(), "[B,M,C]", s)?;
        check_len("d_colsum", d_colsum, s.batch * s.bases, "[B,M]", s)?;
        let l = label("em_normalize_backward", s, 8 * s.mu_len() as u64, 3 * s.mu_len());
        let buffers = [mu_raw, d_mu, colsum, mu_raw, d_a, d_colsum];
        launch(self.gpu, "normalize_backward", &Params::new(s), &buffers, groups(s.batch * s.bases), l)
    }

    /// M-step backward, given `d_a` and `d_colsum` from [`Em::normalize_backward`]:
    /// `d_z = u d_a^T + d_colsum (+ acc)` [B,N,M] and `d_u = z d_a (+ acc)` [B,N,C].
    pub fn m_step_backward(
        &self,
        u: &GpuBuffer,
        z: &GpuBuffer,
        d_a: &GpuBuffer,
        d_colsum: &GpuBuffer,
        d_z: Out<'_>,
        d_u: Out<'_>,
    ) -> Result<()> {
        self.token_dots("em_m_step_backward", u, Bases::PerBatch(d_a), Some(d_colsum), d_z)?;
        self.reconstruct_product("em_m_step_backward", z, Bases::PerBatch(d_a), d_u)
    }

    fn softmax_backward_biased(
        &self,
        z: &GpuBuffer,
        d_z: &GpuBuffer,
        bias: Option<&GpuBuffer>,
        d_logits: &GpuBuffer,
    ) -> Result<()> {
        let s = &self.s;
        let mut p = Params::new(s);
        if bias.is_some() {
            p.flags |= ADD_BIAS;
        }
        let l = label("em_e_step_backward", s, 5 * s.z_len() as u64, 3 * s.z_len());
        let buffers = [z, d_z, bias.unwrap_or(z), z, d_logits];
        launch(self.gpu, "softmax_backward", &p, &buffers, groups(s.batch * s.tokens), l)
    }

    /// Softmax backward of the E-step with lambda folded in:
    /// `d_logits = lambda z (d_z - sum_m z d_z)` [B,N,M], the gradient of the product u mu^T.
    pub fn e_step_backward_softmax(&self, z: &GpuBuffer, d_z: &GpuBuffer, d_logits: &GpuBuffer) -> Result<()> {
        let s = &self.s;
        check_len("Z", z, s.z_len(), "[B,N,M]", s)?;
        check_len("d_z", d_z, s.z_len(), "[B,N,M]", s)?;
        check_len("d_logits", d_logits, s.z_len(), "[B,N,M]", s)?;
        self.softmax_backward_biased(z, d_z, None, d_logits)
    }

    /// E-step backward, given `d_logits` from [`Em::e_step_backward_softmax`]:
    /// `d_u = d_logits mu (+ acc)` [B,N,C] and, when `d_mu` is given, `d_mu = d_logits^T u`
    /// [B,M,C] (the gradient of mu_{t-1} per batch element, also when mu_{t-1} is the shared
    /// bases).
    pub fn e_step_backward(
        &self,
        u: &GpuBuffer,
        mu: Bases<'_>,
        d_logits: &GpuBuffer,
        d_u: Out<'_>,
        d_mu: Option<&GpuBuffer>,
    ) -> Result<()> {
        self.reconstruct_product("em_e_step_backward", d_logits, mu, d_u)?;
        if let Some(d_mu) = d_mu {
            self.m_step_product("em_e_step_backward", d_logits, u, None, Out::to(d_mu))?;
        }
        Ok(())
    }

    // ----- the loop -----

    fn check_loop_inputs(&self, u: &GpuBuffer, bases: &GpuBuffer) -> Result<()> {
        let s = &self.s;
        check_len("u", u, s.tokens_len(), "[B,N,C]", s)?;
        check_len("the bases", bases, s.bases_len(), "[M,C]", s)
    }

    /// Runs the T EM iterations from the shared `bases` [M,C] on `u` [B,N,C] and the
    /// reconstruction, recorded back to back (no readback). Each iteration's dispatches sit in
    /// the profiling scope `iter=t` (on the CPU paths, with M and C multiples of 4: E-step
    /// logits matmul and softmax, M-step split matmul and the one pass of
    /// [`Em::m_step_fused`]; otherwise E-step: logits matmul, softmax, tile column sums; column
    /// sums; M-step: split matmul, sum of the splits with the division by 1e-6 + colsum;
    /// normalisation; on the GPU path the two passes of [`Em::fused_iteration`]); the
    /// reconstruction in `recon`.
    pub fn forward(&self, u: &GpuBuffer, bases: &GpuBuffer, save_for_backward: bool) -> Result<EmForward> {
        let (gpu, s) = (self.gpu, &self.s);
        self.check_loop_inputs(u, bases)?;
        let mut saved = EmSaved { z: Vec::new(), colsum: Vec::new(), mu_raw: Vec::new(), mu: Vec::new() };
        // The per-step E-step's partial column sums (the two-pass iteration keeps its own, the
        // one-pass M-step needs none).
        let two_pass = self.fuses_iterations();
        let partial =
            if two_pass || self.fuses_m_step() { None } else { Some(gpu.alloc(s.batch * s.tiles() * s.bases)?) };
        let mut mu_prev: Option<GpuBuffer> = None;
        let mut z_last = None;
        for t in 1..=s.iters {
            let _scope = gpu.scope(format!("iter={t}"));
            let z = gpu.alloc(s.z_len())?;
            let colsum_t = gpu.alloc(s.batch * s.bases)?;
            let mu_raw = gpu.alloc(s.mu_len())?;
            let mu = gpu.alloc(s.mu_len())?;
            let mu_in = match &mu_prev {
                None => Bases::Shared(bases),
                Some(m) => Bases::PerBatch(m),
            };
            if two_pass {
                self.fused_iteration(u, mu_in, &z, &colsum_t, &mu_raw, &mu)?;
            } else if let Some(partial) = &partial {
                self.e_step(u, mu_in, &z, partial)?;
                self.colsum(partial, &colsum_t)?;
                self.m_step(&z, u, &colsum_t, &mu_raw)?;
                self.normalize(&mu_raw, &mu)?;
            } else {
                self.e_step_softmax(u, mu_in, &z)?;
                self.m_step_fused(&z, u, &colsum_t, &mu_raw, &mu)?;
            }
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
            self.reconstruct(&z, &mu, &recon)?;
        }
        Ok(EmForward { z, mu, recon, saved: save_for_backward.then_some(saved) })
    }

    /// The gradient of the loss with respect to `u` [B,N,C]. `Detached` returns zeros (Z and
    /// mu are constants); `Unrolled` backpropagates through all T iterations and needs a
    /// forward run with `save_for_backward`. Dispatches sit in the profiling scopes
    /// `backward` / `iter=t`.
    pub fn backward(
        &self,
        mode: GradMode,
        u: &GpuBuffer,
        bases: &GpuBuffer,
        fwd: &EmForward,
        grads: &EmOutputGrads<'_>,
    ) -> Result<GpuBuffer> {
        let (gpu, s) = (self.gpu, &self.s);
        self.check_loop_inputs(u, bases)?;
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
            self.reconstruct_backward(
                &fwd.z,
                &fwd.mu,
                grads.recon,
                Out::to(&d_z).plus(grads.z),
                Out::to(&d_mu).plus(grads.mu),
            )?;
        }
        let d_a = gpu.alloc(s.mu_len())?;
        let d_colsum = gpu.alloc(s.batch * s.bases)?;
        let d_logits = gpu.alloc(s.z_len())?;
        let d_z_scratch = if s.iters > 1 { Some(gpu.alloc(s.z_len())?) } else { None };
        // Every product into the gradient of u accumulates into this one buffer; the first
        // writes it.
        let d_u = gpu.alloc(s.tokens_len())?;
        let mut d_u_written = false;
        for t in (1..=s.iters).rev() {
            let _scope = gpu.scope(format!("iter={t}"));
            let i = t - 1;
            let z_t = if t == s.iters { &fwd.z } else { &saved.z[i] };
            self.normalize_backward(&saved.mu_raw[i], &d_mu, &saved.colsum[i], &d_a, &d_colsum)?;
            // The gradient of Z_t without its per-basis bias d_colsum (softmax_backward adds
            // that): u d_a^T, plus dR mu_T^T (already in d_z) when t = T.
            let d_z_t = if t == s.iters { &d_z } else { d_z_scratch.as_ref().expect("T > 1") };
            {
                let _scope = gpu.scope("em_m_step_backward");
                self.product_xyt(u, Bases::PerBatch(&d_a), t == s.iters, d_z_t)?;
                self.product_zy(z_t, Bases::PerBatch(&d_a), d_u_written, &d_u)?;
                d_u_written = true;
            }
            let _scope = gpu.scope("em_e_step_backward");
            self.softmax_backward_biased(z_t, d_z_t, Some(&d_colsum), &d_logits)?;
            if t == 1 {
                self.product_zy(&d_logits, Bases::Shared(bases), true, &d_u)?;
            } else {
                self.product_zy(&d_logits, Bases::PerBatch(&saved.mu[i - 1]), true, &d_u)?;
                let d_mu_prev = gpu.alloc(s.mu_len())?;
                self.product_ztx("em_e_step_backward", &d_logits, u, None, Out::to(&d_mu_prev))?;
                d_mu = d_mu_prev;
            }
        }
        Ok(d_u)
    }

    /// The unrolled gradient of `u` given only dLoss/dR (see [`Em::backward`]).
    pub fn backward_unrolled(
        &self,
        u: &GpuBuffer,
        bases: &GpuBuffer,
        fwd: &EmForward,
        d_recon: &GpuBuffer,
    ) -> Result<GpuBuffer> {
        self.backward(GradMode::Unrolled, u, bases, fwd, &EmOutputGrads { recon: d_recon, z: None, mu: None })
    }

    /// Moving average of the bases (training, no gradient):
    /// `l2norm_C(momentum bases + (1 - momentum) mean_B(mu_t))`, returned as a new [M,C] buffer.
    pub fn update_bases(&self, bases: &GpuBuffer, mu_t: &GpuBuffer, momentum: f32) -> Result<GpuBuffer> {
        let s = &self.s;
        check_len("the bases", bases, s.bases_len(), "[M,C]", s)?;
        check_len("mu_T", mu_t, s.mu_len(), "[B,M,C]", s)?;
        if !(0.0..=1.0).contains(&momentum) {
            return Err(Error::Shape(format!("the bases momentum is {momentum} but must lie in [0, 1]")));
        }
        let out = self.gpu.alloc(s.bases_len())?;
        let mut p = Params::new(s);
        p.momentum = momentum;
        let l = label("em_bases_update", s, (s.mu_len() + 6 * s.bases_len()) as u64, s.mu_len() + 3 * s.bases_len());
        launch(self.gpu, "bases_update", &p, &[bases, mu_t, bases, bases, &out], groups(s.bases), l)?;
        Ok(out)
    }
}
