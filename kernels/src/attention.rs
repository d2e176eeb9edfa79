//! Launchers for `shaders/attention.wgsl`: fused multi-head attention (self- and
//! cross-attention), forward and backward, with an optional causal mask and key-padding mask.
//!
//! Layouts are those of the q/k/v projections, heads interleaved per token:
//! q [B, Nq, H*dh], k and v [Bk, Nk, H*dh] with Bk = B or Bk = 1 (keys and values shared by
//! the whole batch, as the decoder's cross-attention over class text embeddings), out
//! [B, Nq, H*dh], lse [B, H, Nq], key mask u32 [Bk, Nk] (1 = attend, 0 = ignore).
//!
//! The forward never stores the Nq x Nk score matrix: it runs an online softmax per query row
//! and saves the row's log-sum-exp. The backward recomputes the probabilities from q, k and
//! that saved lse. A row that sees no key (fully masked) gets zeros, lse = -inf and zero
//! gradients. With Bk = 1 the key and value gradients sum over the batch in a fixed order
//! (no atomics), so results are bit-for-bit repeatable.

use crate::context::{grid, Dispatch, Gpu, OperandTexture};
use crate::matmul::{matmul_with, Matmul};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, KernelPath, Result};

shader!(SHADER, "attention.wgsl");
shader!(PRODUCTS_SHADER, "attention_products.wgsl");
// The `_blocked` kernels with their streamed rows shared by subgroupBroadcast: a module of its
// own, which adapters without subgroups never compile.
shader!(SUBGROUP_SHADER, "attention_subgroup.wgsl");
shader!(TEXTURE_SHADER, "attention_texture.wgsl");

/// Largest head dimension (the register-blocked kernels hold rows of up to 8 chunks of 16).
pub const MAX_HEAD_DIM: usize = 128;
/// Most keys the few-keys forward path takes.
pub const FEW_KEYS: usize = 16;
/// Rows (queries or vec4 elements) per workgroup of the one-row-per-invocation kernels
/// (few keys, backward prepare and reduce).
const WG: usize = 64;
/// Rows (queries or keys) per workgroup of the register-blocked kernels: 8 invocations of 4.
const TILE: usize = 32;
/// Query rows per backward partial at least, and the invocations the key-gradient pass aims
/// for before it splits the query rows (enough to fill a GPU and lavapipe's threads).
const MIN_SPLIT_ROWS: usize = 64;
const TARGET_KEY_INVOCATIONS: usize = 4096;
/// Most query rows per backward partial: lavapipe stops an invocation's loops after about
/// 65535 iterations, and the key-gradient pass takes 8 rows per iteration.
const MAX_SPLIT_ROWS: usize = 8 * 4096;
/// Most keys and most head dimension the few-keys backward ([`BackwardPath::FewKeys`]) takes:
/// it holds four key rows of up to 8 vec4 each, written out (attention_core.wgsl says why not
/// arrays). Then the invocations it aims for (one per query-row range, kv batch and head:
/// enough for lavapipe's threads), and the query rows per range at least and at most (one row
/// per loop iteration, within lavapipe's loop limit).
pub const FEW_BACKWARD_KEYS: usize = 4;
pub const FEW_BACKWARD_HEAD_DIM: usize = 32;
const FEW_BACKWARD_INVOCATIONS: usize = 128;
const FEW_BACKWARD_MIN_ROWS: usize = 16;
const FEW_BACKWARD_MAX_ROWS: usize = 16384;

/// The shape and options of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attention {
    /// B: batch of the queries (and of the output).
    pub batch: usize,
    /// Bk: batch of the keys and values, `batch` or 1 (shared by every batch element).
    pub kv_batch: usize,
    /// Nq: query tokens.
    pub q_len: usize,
    /// Nk: key/value tokens.
    pub kv_len: usize,
    /// H: heads.
    pub heads: usize,
    /// dh: width of one head; a multiple of 4 from 4 to 128.
    pub head_dim: usize,
    /// Multiplies q.k before the softmax; 1/sqrt(dh) by default.
    pub scale: f32,
    /// Query i sees key j only when j <= i (top-left aligned, as PyTorch's `is_causal`).
    pub causal: bool,
}

impl Attention {
    /// Self-attention shape with per-batch keys, scale 1/sqrt(dh) and no causal mask.
    pub fn new(batch: usize, q_len: usize, kv_len: usize, heads: usize, head_dim: usize) -> Self {
        Attention {
            batch,
            kv_batch: batch,
            q_len,
            kv_len,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            causal: false,
        }
    }

    /// The same with keys and values shared by the whole batch (Bk = 1).
    pub fn shared_kv(self) -> Self {
        Attention { kv_batch: 1, ..self }
    }

    /// The same with the causal mask on or off.
    pub fn with_causal(self, causal: bool) -> Self {
        Attention { causal, ..self }
    }

    /// Elements of q, out and d_out: B * Nq * H * dh.
    pub fn q_elements(&self) -> usize {
        self.batch * self.q_len * self.heads * self.head_dim
    }

    /// Elements of k, v, dk and dv: Bk * Nk * H * dh.
    pub fn kv_elements(&self) -> usize {
        self.kv_batch * self.kv_len * self.heads * self.head_dim
    }

    /// Elements of lse: B * H * Nq.
    pub fn lse_elements(&self) -> usize {
        self.batch * self.heads * self.q_len
    }

    /// Multiply-adds of the forward, counted as FLOPs: 4 * B * H * Nq * Nk * dh
    /// (q k^T and P v; the causal mask's skipped half is not subtracted).
    pub fn forward_flops(&self) -> u64 {
        4 * (self.batch * self.heads * self.q_len * self.kv_len * self.head_dim) as u64
    }

    /// FLOPs of the backward in the usual count, 2.5x the forward (q k^T recomputed, dP, dq,
    /// dk, dv). The fused kernels do 3.5x (dq and dk/dv passes each recompute q k^T and dP);
    /// the stored-scores backward 2.5x.
    pub fn backward_flops(&self) -> u64 {
        self.forward_flops() * 5 / 2
    }

    fn describe(&self) -> String {
        format!(
            "q [{}, {}, {}x{}], k/v [{}, {}, {}x{}]{}",
            self.batch,
            self.q_len,
            self.heads,
            self.head_dim,
            self.kv_batch,
            self.kv_len,
            self.heads,
            self.head_dim,
            if self.causal { ", causal" } else { "" }
        )
    }

    /// Checks the shape itself (not the buffers).
    pub fn validate(&self) -> Result<()> {
        let d = self.describe();
        if self.batch == 0 || self.heads == 0 || self.kv_len == 0 {
            return Err(Error::Shape(format!("attention with {d}: batch, heads and key length must be at least 1")));
        }
        if self.kv_batch != self.batch && self.kv_batch != 1 {
            return Err(Error::Shape(format!(
                "attention with {d}: the key/value batch {} must equal the query batch {} or be 1",
                self.kv_batch, self.batch
            )));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(4) || self.head_dim > MAX_HEAD_DIM {
            return Err(Error::Shape(format!(
                "attention with {d}: head dimension {} is not supported; it must be a multiple of 4 from 4 to {MAX_HEAD_DIM}",
                self.head_dim
            )));
        }
        if !self.scale.is_finite() {
            return Err(Error::Shape(format!("attention with {d}: scale {} is not finite", self.scale)));
        }
        let big =
            [self.q_elements(), self.kv_elements(), self.batch * self.q_len * self.heads, self.kv_batch * self.kv_len];
        if big.iter().any(|&n| n > u32::MAX as usize / 4) {
            return Err(Error::Shape(format!("attention with {d} is too large for 32-bit indexing")));
        }
        Ok(())
    }
}

/// The buffers of one attention call: q [B, Nq, H*dh], k and v [Bk, Nk, H*dh], the optional
/// key mask u32 [Bk, Nk] (1 = attend, 0 = ignore), and the forward's results: out
/// [B, Nq, H*dh] and lse [B, H, Nq] (written by the forward, read by the backward).
#[derive(Clone, Copy)]
pub struct AttentionIo<'a> {
    pub q: &'a GpuBuffer,
    pub k: &'a GpuBuffer,
    pub v: &'a GpuBuffer,
    pub key_mask: Option<&'a GpuBuffer>,
    pub out: &'a GpuBuffer,
    pub lse: &'a GpuBuffer,
    /// For the backward: the probabilities a products forward returned, which a products
    /// backward then reads instead of recomputing them (one product and one row pass fewer).
    /// Ignored by the forward and by the fused backward.
    pub probs: Option<&'a GpuBuffer>,
}

/// The gradients a backward writes: dq shaped like q, dk and dv like k and v.
#[derive(Clone, Copy)]
pub struct AttentionGrads<'a> {
    pub dq: &'a GpuBuffer,
    pub dk: &'a GpuBuffer,
    pub dv: &'a GpuBuffer,
}

/// Most elements (H * B * Nq * Nk rounded up to 4) of the score matrix the products method materialises
/// (256 MiB; the backward holds two such matrices). Larger calls run the fused kernels.
pub const MAX_PRODUCT_SCORES: usize = 1 << 26;
/// Most keys per row for the products method: its row kernels loop over a row's keys in one
/// invocation, and lavapipe stops an invocation's loops after about 65535 iterations.
const MAX_PRODUCT_KEYS: usize = 16384;

/// Which forward kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardPath {
    /// `FewKeys` when Nk <= 16; else `Products` on the registers kernel path when the score
    /// matrix fits [`MAX_PRODUCT_SCORES`]; else `Blocked` (on the subgroup path with the
    /// streamed rows shared by subgroupBroadcast).
    Auto,
    /// Online softmax over blocks of 8 keys (4 above head width 32), 4 query rows per invocation (on the tiled path,
    /// a row spread over lanes); any Nk.
    Blocked,
    /// Exact softmax with every score in registers; Nk <= 16 only. For 1 to
    /// [`FEW_BACKWARD_KEYS`] keys and heads of at most [`FEW_BACKWARD_HEAD_DIM`] on the CPU
    /// paths, `forward_few_keys_rows`: each invocation holds the keys and walks a range of
    /// query rows (as the few-keys backward does), else one invocation per query row.
    FewKeys,
    /// The score matrix materialised: two matmuls and a row softmax (module docs).
    Products,
}

/// Which backward method runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackwardPath {
    /// `FewKeys` where it can run; else `Products` on the registers kernel path when the
    /// score matrix fits [`MAX_PRODUCT_SCORES`], `Scores` on the subgroup path where it
    /// applies, else `Fused`.
    Auto,
    /// The fused kernels: dq by query rows, dk and dv by key rows, P recomputed in registers.
    Fused,
    /// P recomputed by a matmul, then dv = Pᵀ dout, dP = dout vᵀ, dq = dS k, dk = dSᵀ q.
    Products,
    /// The fused dk/dv kernel also stores the score gradient dS it computes (transposed,
    /// B·H·Nk·Nq floats), and dq is one product from it instead of three: five products in
    /// all instead of seven. Register-blocked kernels (registers and subgroup paths), keys
    /// per batch element (Bk = B), not causal, dS within [`MAX_PRODUCT_SCORES`].
    Scores,
    /// One pass for rows of at most [`FEW_BACKWARD_KEYS`] keys (`backward_few_keys`): per
    /// range of query rows, k and v held in the invocation, dq written row by row and dk, dv
    /// summed, then the ranges' sums added. The registers and subgroup paths, heads of at most
    /// [`FEW_BACKWARD_HEAD_DIM`]. `Auto` takes it wherever it can.
    FewKeys,
}

/// Whether the products method can take this call: the score matrix within
/// [`MAX_PRODUCT_SCORES`] and the adapter's binding size, rows within [`MAX_PRODUCT_KEYS`].
fn products_fit(gpu: &Gpu, s: &Attention) -> bool {
    let scores = s.heads * s.batch * s.q_len * s.kv_len.next_multiple_of(4);
    scores <= MAX_PRODUCT_SCORES
        && s.kv_len <= MAX_PRODUCT_KEYS
        && (4 * scores) as u64 <= gpu.limits().max_storage_buffer_binding_size
}

/// What `Auto` picks: products on the registers path (CPU adapters without subgroups, where
/// the fused kernels load every streamed row in every lane: 2.7-3.5x slower than products
/// there) when the score matrix fits. The forward keeps the few-keys kernel for rows of at
/// most [`FEW_KEYS`] keys (as fast there, one dispatch); the backward takes products at every
/// key count the few-keys backward does not take (`Auto` tries that first: products measured
/// 0.7x the fused time at the decoder's 3-key cross-attention, benches/compare_attention.py).
/// The subgroup path runs the fused kernels with the streamed rows shared by subgroupBroadcast
/// (attention_subgroup.wgsl), faster there than products in the forward and as fast in the
/// backward, with no score matrix and no head moves; an adapter that cannot run subgroup
/// kernels falls back to the registers path's choice.
fn products_by_default(gpu: &Gpu, s: &Attention, path: KernelPath, forward: bool) -> bool {
    let registers = match path {
        KernelPath::Registers => true,
        KernelPath::Subgroup => !gpu.info().runs_subgroup_kernels(),
        KernelPath::Tiled => false,
    };
    registers && (!forward || s.kv_len > FEW_KEYS) && s.q_len > 0 && products_fit(gpu, s)
}

/// The stored-scores backward's dS: B·H · (Nk rounded up to 32) · (Nq rounded up to 32) floats
/// (whole tiles of the key and query kernels; attention_core.wgsl's `scores_index` orders
/// them), or `None` where the method cannot take `s` on `path` (the tiled path's kernels,
/// shared keys, causal, too large, or nothing to compute).
fn scores_len(gpu: &Gpu, s: &Attention, path: KernelPath) -> Option<usize> {
    let len = s.batch * s.heads * s.kv_len.next_multiple_of(TILE) * s.q_len.next_multiple_of(TILE);
    // dk and dS^T share one binding.
    let fits = len <= MAX_PRODUCT_SCORES
        && (4 * (len + s.kv_elements())) as u64 <= gpu.limits().max_storage_buffer_binding_size;
    // One range of query rows per key invocation: within lavapipe's loop limit.
    let shape = s.kv_batch == s.batch && !s.causal && s.q_len > 0 && s.q_len <= MAX_SPLIT_ROWS && s.kv_len > 0;
    (path != KernelPath::Tiled && shape && fits).then_some(len)
}

/// Whether the few-keys kernels that hold the keys in each invocation (`backward_few_keys`,
/// `forward_few_keys_rows`) can take `s` on `path`: queries present, 1 to
/// [`FEW_BACKWARD_KEYS`] keys, heads of at most [`FEW_BACKWARD_HEAD_DIM`], not the tiled path
/// (a GPU thread has no room for the rows it holds; the fused kernels serve it).
fn few_keys_held(s: &Attention, path: KernelPath) -> bool {
    path != KernelPath::Tiled
        && s.q_len > 0
        && (1..=FEW_BACKWARD_KEYS).contains(&s.kv_len)
        && s.head_dim <= FEW_BACKWARD_HEAD_DIM
}

fn check_products(gpu: &Gpu, s: &Attention) -> Result<()> {
    if !products_fit(gpu, s) {
        return Err(Error::Shape(format!(
            "attention with {}: the products method takes score matrices of at most {MAX_PRODUCT_SCORES} elements (and the adapter's binding size) and rows of at most {MAX_PRODUCT_KEYS} keys; use the fused kernels",
            s.describe()
        )));
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    kv_batch: u32,
    q_len: u32,
    kv_len: u32,
    heads: u32,
    head_dim: u32,
    causal: u32,
    has_mask: u32,
    scale: f32,
    tiles: u32,
    splits: u32,
    split_rows: u32,
    lanes: u32,
    scores_at: u32,
    q_pad: u32,
    k_pad: u32,
}

impl Params {
    fn new(s: &Attention, has_mask: bool) -> Self {
        Params {
            batch: s.batch as u32,
            kv_batch: s.kv_batch as u32,
            q_len: s.q_len as u32,
            kv_len: s.kv_len as u32,
            heads: s.heads as u32,
            head_dim: s.head_dim as u32,
            causal: s.causal as u32,
            has_mask: has_mask as u32,
            scale: s.scale,
            tiles: 0,
            splits: 1,
            split_rows: 0,
            lanes: lanes_per_row(s.head_dim) as u32,
            scores_at: 0,
            q_pad: s.q_len.next_multiple_of(TILE) as u32,
            k_pad: s.kv_len.next_multiple_of(TILE) as u32,
        }
    }
}

fn check_len(s: &Attention, what: &str, buf: &GpuBuffer, layout: &str, needed: usize) -> Result<()> {
    if buf.len() < needed {
        return Err(Error::Shape(format!(
            "attention with {}: {what} has {} elements but {layout} needs {needed}",
            s.describe(),
            buf.len()
        )));
    }
    Ok(())
}

fn check_common(
    s: &Attention,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    key_mask: Option<&GpuBuffer>,
) -> Result<()> {
    s.validate()?;
    let (qd, kd) = (
        format!("[{}, {}, {}]", s.batch, s.q_len, s.heads * s.head_dim),
        format!("[{}, {}, {}]", s.kv_batch, s.kv_len, s.heads * s.head_dim),
    );
    check_len(s, "q", q, &qd, s.q_elements())?;
    check_len(s, "k", k, &kd, s.kv_elements())?;
    check_len(s, "v", v, &kd, s.kv_elements())?;
    if let Some(m) = key_mask {
        check_len(s, "the key mask", m, &format!("[{}, {}]", s.kv_batch, s.kv_len), s.kv_batch * s.kv_len)?;
    }
    Ok(())
}

/// Widest head the register-blocked kernels (the registers and subgroup paths) run on adapters
/// other than CPU ones. Above 64 they compile with 8 row chunks (four rows of 128 floats per
/// invocation), which lost the device on NVIDIA's Vulkan driver (H200, driver 580.159,
/// measured). The tiled path, the default on GPUs, spreads a row over lanes instead and takes
/// every width up to [`MAX_HEAD_DIM`]; the few-keys cross-attention path takes any width.
pub const GPU_MAX_BLOCKED_HEAD_DIM: usize = 64;

fn check_blocked_head(gpu: &Gpu, s: &Attention, path: KernelPath) -> Result<()> {
    if path != KernelPath::Tiled && s.head_dim > GPU_MAX_BLOCKED_HEAD_DIM && gpu.info().device_type != "Cpu" {
        return Err(Error::Unsupported(format!(
            "attention with {} on {}: head widths above {GPU_MAX_BLOCKED_HEAD_DIM} run on the {path} kernel path only on CPU adapters (its kernel loses the device on NVIDIA's driver); use the tiled path (VLSA_KERNEL_PATH=tiled) or more heads",
            s.describe(),
            gpu.info().name
        )));
    }
    Ok(())
}

/// Lanes per head row of the `_lanes` kernels (the tiled path): the power of two that just
/// holds head_dim / 4 vec4, from 1 to 32.
fn lanes_per_row(head_dim: usize) -> usize {
    (head_dim / 4).max(1).next_power_of_two().min(32)
}

/// Rows (queries or keys) per 64-lane workgroup of the `_lanes` kernels.
fn lanes_rows(s: &Attention) -> usize {
    LANES_WG / lanes_per_row(s.head_dim)
}

/// Invocations per workgroup of the `_lanes` kernels.
const LANES_WG: usize = 64;

/// The entry point of `entries` whose chunks (16 elements each) just hold a head row.
/// The register-blocked (`_blocked`) entry points' pipeline constant: chunks of 16 floats per
/// head row (1, 2, 4 or 8, covering head rows of up to 16, 32, 64 or 128), one pipeline each.
fn row_chunks(s: &Attention) -> [(&'static str, f64); 1] {
    let chunks = match s.head_dim.div_ceil(16) {
        0 | 1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    };
    [("ROW_CHUNKS", chunks as f64)]
}

/// Whether `path` runs the subgroup modules' `_blocked` kernels on this adapter.
fn subgroup_kernels(gpu: &Gpu, path: KernelPath) -> bool {
    path == KernelPath::Subgroup && gpu.info().runs_subgroup_kernels()
}

/// One attention.wgsl entry point; `_blocked` ones get their row-chunk constant for `s`, and
/// on the subgroup path (where the adapter runs subgroup kernels) come from
/// attention_subgroup.wgsl, whose versions share the streamed rows by subgroupBroadcast. There,
/// with texture operands on, the kernels of [`operand_textures`] run from
/// attention_texture.wgsl, reading those operands from textures.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    gpu: &Gpu,
    entry: &'static str,
    path: KernelPath,
    s: &Attention,
    params: &Params,
    buffers: &[&GpuBuffer],
    workgroups: usize,
    label: KernelLabel,
) -> Result<()> {
    dispatch_tail_apart(gpu, entry, path, s, params, buffers, workgroups, label, false)
}

/// [`dispatch`], with the TAIL_APART constant set when `tail_apart` (a `_blocked` entry point:
/// forward_blocked and backward_dkdv_blocked then skip their last tile, which the caller
/// launches as `forward_tail_blocked` or `backward_dkdv_tail_blocked`).
#[allow(clippy::too_many_arguments)]
fn dispatch_tail_apart(
    gpu: &Gpu,
    entry: &'static str,
    path: KernelPath,
    s: &Attention,
    params: &Params,
    buffers: &[&GpuBuffer],
    workgroups: usize,
    label: KernelLabel,
    tail_apart: bool,
) -> Result<()> {
    let blocked = entry.ends_with("_blocked");
    let subgroup = subgroup_kernels(gpu, path);
    let textures = if subgroup { operand_textures(gpu, entry, s, buffers) } else { None };
    let d = Dispatch {
        shader: if blocked && subgroup { &SUBGROUP_SHADER } else { &SHADER },
        entry,
        params: bytemuck::bytes_of(params),
        buffers,
        workgroups: grid(workgroups as u32),
        label,
    };
    let mut constants = row_chunks(s).to_vec();
    if tail_apart {
        constants.push(("TAIL_APART", 1.0));
    }
    gpu.dispatch_textured(d, if blocked { &constants } else { &[] }, &TEXTURE_SHADER, textures.as_deref())
}

/// Rows of the last tile of `len` rows (queries of the forward, keys of dk/dv) when the
/// subgroup path runs it apart, one row per invocation (`forward_tail_blocked`,
/// `backward_dkdv_tail_blocked`): at most 8 (one per invocation). The ViT's 257 tokens leave
/// one row there, which the four rows per invocation of the `_blocked` kernels cost a full
/// tile for: 14 % of its forward (docs/performance-log.md, 2026-12-05 from 09:50).
fn tail_rows(gpu: &Gpu, len: usize, path: KernelPath) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let rest = len - (len.div_ceil(TILE) - 1) * TILE;
    (subgroup_kernels(gpu, path) && rest <= 8).then_some(rest)
}

/// The last tile of a `_blocked` launch, run as a launch of its own: its entry point, its
/// `rows` of the `len` rows the launch tiles, what those rows are (`which`: "query", "key")
/// and its workgroups.
struct LastTile {
    entry: &'static str,
    rows: usize,
    len: usize,
    which: &'static str,
    workgroups: usize,
}

/// Launches `entry` over `workgroups` of `tiles` tiles each; with `last`, that tile first as
/// its own launch, then the other tiles (if any) compiled with TAIL_APART, which skips it. The
/// label's FLOPs and bytes are shared in proportion to the rows.
#[allow(clippy::too_many_arguments)]
fn dispatch_with_last_tile(
    gpu: &Gpu,
    entry: &'static str,
    path: KernelPath,
    s: &Attention,
    p: &Params,
    buffers: &[&GpuBuffer],
    (workgroups, tiles): (usize, usize),
    label: KernelLabel,
    last: Option<LastTile>,
) -> Result<()> {
    let Some(t) = last else {
        return dispatch(gpu, entry, path, s, p, buffers, workgroups, label);
    };
    let share = |x: u64| x * t.rows as u64 / t.len as u64;
    let tail = KernelLabel {
        kernel: label.kernel,
        shape: format!("{} (last {} tile)", label.shape, t.which),
        flops: share(label.flops),
        bytes: share(label.bytes),
    };
    let main = KernelLabel { flops: label.flops - tail.flops, bytes: label.bytes - tail.bytes, ..label };
    dispatch(gpu, t.entry, path, s, p, buffers, t.workgroups, tail)?;
    if tiles > 1 {
        dispatch_tail_apart(gpu, entry, path, s, p, buffers, workgroups, main, true)?;
    }
    Ok(())
}

/// dk/dv's launch over `p.tiles` key tiles and `p.splits` query-row ranges; where the subgroup
/// path runs it apart, the last key tile as a launch of its own (`backward_dkdv_tail_blocked`,
/// one key per invocation).
fn dispatch_dkdv(
    gpu: &Gpu,
    entry: &'static str,
    path: KernelPath,
    s: &Attention,
    p: &Params,
    buffers: &[&GpuBuffer],
    label: KernelLabel,
) -> Result<()> {
    let (tiles, splits) = (p.tiles as usize, p.splits as usize);
    let rows = if entry == "backward_dkdv_blocked" { tail_rows(gpu, s.kv_len, path) } else { None };
    let last = rows.map(|rows| LastTile {
        entry: "backward_dkdv_tail_blocked",
        rows,
        len: s.kv_len,
        which: "key",
        workgroups: s.kv_batch * s.heads * splits,
    });
    let workgroups = s.kv_batch * s.heads * splits * tiles;
    dispatch_with_last_tile(gpu, entry, path, s, p, buffers, (workgroups, tiles), label, last)
}

/// The buffers an attention kernel loads per lane, as flat operand textures in the order of
/// attention_texture.wgsl's texture bindings (q, k, v, d_out, grad_a, out), from `buffers` as
/// the launchers pass them (q, k, v, mask, out, lse, d_out, stats, grad_a, ...): the streamed
/// rows of the blocked kernels (k and v, or q and d_out), keys and the stored score gradient
/// (the whole grad_a buffer: dk, then dS^T) for dq from stored scores, q, k and v for the
/// few-keys forward, d_out and out for the backward's preparation. None for the other kernels,
/// where texture operands are off, or where one does not fit a texture.
fn operand_textures<'a>(
    gpu: &Gpu,
    entry: &str,
    s: &Attention,
    buffers: &[&'a GpuBuffer],
) -> Option<Vec<OperandTexture<'a>>> {
    let (q, k, v) = (buffers[0], buffers[1], buffers[2]);
    let (qe, ke) = (s.q_elements(), s.kv_elements());
    match entry {
        "forward_blocked" | "forward_tail_blocked" | "backward_dq_blocked" => gpu.flat_operands(&[(k, ke), (v, ke)]),
        "backward_dkdv_blocked" | "backward_dkdv_tail_blocked" => gpu.flat_operands(&[(q, qe), (buffers.get(6)?, qe)]),
        "backward_dq_scores_blocked" => {
            let scores = buffers.get(8)?;
            gpu.flat_operands(&[(k, ke), (scores, scores.len())])
        }
        "forward_few_keys" | "forward_few_keys_rows" => gpu.flat_operands(&[(q, qe), (k, ke), (v, ke)]),
        "backward_prepare" => gpu.flat_operands(&[(buffers.get(6)?, qe), (buffers.get(4)?, qe)]),
        "backward_few_keys" => gpu.flat_operands(&[(q, qe), (k, ke), (v, ke), (buffers.get(6)?, qe)]),
        _ => None,
    }
}

/// Attention forward: `io.out = softmax(scale q k^T + masks) v` per head, and `io.lse`
/// [B, H, Nq], the log-sum-exp of each row's scores, for [`backward`]. When the products
/// method ran, it returns the probabilities P [H, B, Nq, Nk rounded up to 4], which a caller
/// that will run the backward may keep and pass as [`AttentionIo::probs`].
pub fn forward(gpu: &Gpu, io: &AttentionIo, shape: &Attention) -> Result<Option<GpuBuffer>> {
    forward_path(gpu, io, shape, ForwardPath::Auto, gpu.kernel_path())
}

/// [`forward`] on the kernel path chosen by the caller.
pub fn forward_with(gpu: &Gpu, io: &AttentionIo, shape: &Attention, path: KernelPath) -> Result<Option<GpuBuffer>> {
    forward_path(gpu, io, shape, ForwardPath::Auto, path)
}

/// [`forward`] with the forward kernel and the kernel path chosen by the caller (tests and
/// benches compare them). The registers and subgroup paths run the register-blocked kernels
/// (four rows per invocation, eight rows of the other side streamed per step: loaded by every
/// invocation on the registers path, by one each and shared by subgroupBroadcast on the
/// subgroup path); the tiled path spreads each row over lanes.
pub fn forward_path(
    gpu: &Gpu,
    io: &AttentionIo,
    shape: &Attention,
    forward: ForwardPath,
    path: KernelPath,
) -> Result<Option<GpuBuffer>> {
    let AttentionIo { q, k, v, key_mask, out, lse, .. } = *io;
    let s = shape;
    check_common(s, q, k, v, key_mask)?;
    check_len(s, "out", out, &format!("[{}, {}, {}]", s.batch, s.q_len, s.heads * s.head_dim), s.q_elements())?;
    check_len(s, "lse", lse, &format!("[{}, {}, {}]", s.batch, s.heads, s.q_len), s.lse_elements())?;
    let few = match forward {
        ForwardPath::Auto if products_by_default(gpu, s, path, true) => {
            return forward_products(gpu, io, s, path).map(Some);
        }
        ForwardPath::Products => {
            check_products(gpu, s)?;
            if s.q_len == 0 {
                return Ok(None);
            }
            return forward_products(gpu, io, s, path).map(Some);
        }
        ForwardPath::Auto => s.kv_len <= FEW_KEYS,
        ForwardPath::Blocked => false,
        ForwardPath::FewKeys if s.kv_len <= FEW_KEYS => true,
        ForwardPath::FewKeys => {
            return Err(Error::Shape(format!(
                "attention with {}: the few-keys path takes at most {FEW_KEYS} keys",
                s.describe()
            )));
        }
    };
    if s.q_len == 0 {
        return Ok(None);
    }
    // Few enough keys to hold in each invocation: the kernel that walks ranges of rows.
    if few && few_keys_held(s, path) {
        let mut p = Params::new(s, key_mask.is_some());
        let (units, splits) = few_key_ranges(s, &mut p);
        let label = KernelLabel {
            kernel: "attention_few_keys",
            shape: s.describe(),
            flops: s.forward_flops(),
            bytes: 4 * (2 * s.q_elements() + 2 * s.kv_elements() + s.lse_elements()) as u64,
        };
        let mask = key_mask.unwrap_or(k);
        let buffers = [q, k, v, mask, out, lse];
        dispatch(gpu, "forward_few_keys_rows", path, s, &p, &buffers, (units * splits).div_ceil(8), label)?;
        return Ok(None);
    }
    let lanes = !few && path == KernelPath::Tiled;
    if !few {
        check_blocked_head(gpu, s, path)?;
    }
    let tiles = s.q_len.div_ceil(if few {
        WG
    } else if lanes {
        lanes_rows(s)
    } else {
        TILE
    });
    let mut p = Params::new(s, key_mask.is_some());
    p.tiles = tiles as u32;
    let mask = key_mask.unwrap_or(k);
    let bytes = 4 * (2 * s.q_elements() + 2 * s.kv_elements() + s.lse_elements()) as u64;
    let entry = if few {
        "forward_few_keys"
    } else if lanes {
        "forward_lanes"
    } else {
        "forward_blocked"
    };
    let label = KernelLabel {
        kernel: if few { "attention_few_keys" } else { "attention" },
        shape: s.describe(),
        flops: s.forward_flops(),
        bytes,
    };
    let buffers = [q, k, v, mask, out, lse];
    // The last query tile apart at head widths above 32 (forward_tail_blocked walks four keys
    // per step, as forward_blocked does at those widths).
    let rows = if entry == "forward_blocked" && s.head_dim > 32 { tail_rows(gpu, s.q_len, path) } else { None };
    let last = rows.map(|rows| LastTile {
        entry: "forward_tail_blocked",
        rows,
        len: s.q_len,
        which: "query",
        workgroups: s.batch * s.heads,
    });
    let workgroups = s.batch * s.heads * tiles;
    dispatch_with_last_tile(gpu, entry, path, s, &p, &buffers, (workgroups, tiles), label, last)?;
    Ok(None)
}

/// Attention backward: `grads` (dq, dk, dv) from the forward's inputs, its `out` and `lse`
/// (in `io`), and `d_out`. The probabilities are recomputed from q, k and the saved lse, or,
/// for the products method, read from `io.probs` when the caller kept them. With Bk = 1, dk and dv are summed over the batch
/// deterministically.
pub fn backward(
    gpu: &Gpu,
    io: &AttentionIo,
    d_out: &GpuBuffer,
    grads: &AttentionGrads,
    shape: &Attention,
) -> Result<()> {
    backward_path(gpu, io, d_out, grads, shape, BackwardPath::Auto, gpu.kernel_path())
}

/// [`backward`] on the kernel path chosen by the caller.
pub fn backward_with(
    gpu: &Gpu,
    io: &AttentionIo,
    d_out: &GpuBuffer,
    grads: &AttentionGrads,
    shape: &Attention,
    path: KernelPath,
) -> Result<()> {
    backward_path(gpu, io, d_out, grads, shape, BackwardPath::Auto, path)
}

/// [`backward`] with the method and the kernel path chosen by the caller (tests and benches
/// compare them).
pub fn backward_path(
    gpu: &Gpu,
    io: &AttentionIo,
    d_out: &GpuBuffer,
    grads: &AttentionGrads,
    shape: &Attention,
    backward: BackwardPath,
    path: KernelPath,
) -> Result<()> {
    let AttentionIo { q, k, v, key_mask, out, lse, .. } = *io;
    let AttentionGrads { dq, dk, dv } = *grads;
    let s = shape;
    check_common(s, q, k, v, key_mask)?;
    let qd = format!("[{}, {}, {}]", s.batch, s.q_len, s.heads * s.head_dim);
    let kd = format!("[{}, {}, {}]", s.kv_batch, s.kv_len, s.heads * s.head_dim);
    check_len(s, "out", out, &qd, s.q_elements())?;
    check_len(s, "lse", lse, &format!("[{}, {}, {}]", s.batch, s.heads, s.q_len), s.lse_elements())?;
    check_len(s, "d_out", d_out, &qd, s.q_elements())?;
    check_len(s, "dq", dq, &qd, s.q_elements())?;
    check_len(s, "dk", dk, &kd, s.kv_elements())?;
    check_len(s, "dv", dv, &kd, s.kv_elements())?;
    let few = match backward {
        BackwardPath::Auto => few_keys_held(s, path),
        BackwardPath::FewKeys if few_keys_held(s, path) => true,
        BackwardPath::FewKeys => {
            return Err(Error::Shape(format!(
                "attention with {}: the few-keys backward takes queries, 1 to {FEW_BACKWARD_KEYS} keys and a head dimension of at most {FEW_BACKWARD_HEAD_DIM}, on the registers or subgroup path ({path} here); use the fused kernels",
                s.describe()
            )));
        }
        _ => false,
    };
    let products = match backward {
        _ if few => false,
        BackwardPath::Auto => products_by_default(gpu, s, path, false),
        BackwardPath::Fused | BackwardPath::Scores | BackwardPath::FewKeys => false,
        BackwardPath::Products => {
            check_products(gpu, s)?;
            // With no query rows the gradients are zeros, which the fused kernels write.
            s.q_len > 0
        }
    };
    if products {
        return backward_products(gpu, io, d_out, grads, s, path);
    }
    check_blocked_head(gpu, s, path)?;
    let lanes = path == KernelPath::Tiled;
    let rows_per_group = if lanes { lanes_rows(s) } else { TILE };

    // dk, dv: one key row per invocation, over `splits` ranges of the query rows.
    let total_rows = if s.kv_batch == 1 { s.batch * s.q_len } else { s.q_len };
    let invocations = s.kv_batch * s.heads * s.kv_len;
    let splits = TARGET_KEY_INVOCATIONS
        .div_ceil(invocations.max(1))
        .clamp(1, total_rows.div_ceil(MIN_SPLIT_ROWS).max(1))
        .max(total_rows.div_ceil(MAX_SPLIT_ROWS));
    let scores = match backward {
        // Nothing to store: the fused kernels write the zero gradients.
        BackwardPath::Scores if s.q_len == 0 || s.kv_len == 0 => None,
        BackwardPath::Scores => Some(scores_len(gpu, s, path).ok_or_else(|| {
            Error::Shape(format!(
                "attention with {}: the stored-scores backward takes the register-blocked kernels, keys per batch element, no causal mask, at most {MAX_SPLIT_ROWS} query rows and at most {MAX_PRODUCT_SCORES} score elements; use the fused kernels",
                s.describe()
            ))
        })?),
        // Where it is the faster method (README, "Attention and patch embedding"): the
        // subgroup kernels, and only when the key pass would not split the query rows.
        BackwardPath::Auto if subgroup_kernels(gpu, path) && splits == 1 => {
            scores_len(gpu, s, path)
        }
        _ => None,
    };
    // The stored dS^T is written per eight query rows from the first: one range only.
    let splits = if scores.is_some() { 1 } else { splits };
    let split_rows = total_rows.div_ceil(splits).max(1);
    let splits = total_rows.div_ceil(split_rows).max(1);

    let rows = s.lse_elements();
    let keys = s.kv_batch * s.kv_len;
    let mut p = Params::new(s, key_mask.is_some());
    let mask = key_mask.unwrap_or(k);
    let stats = gpu.alloc(2 * rows + keys)?;
    let f = s.forward_flops();
    let qe = 4 * s.q_elements() as u64;
    let ke = 4 * s.kv_elements() as u64;

    // 1. Per-row lse and delta = dout . out, and the key mask as floats.
    let label = KernelLabel {
        kernel: "attention_backward_prepare",
        shape: s.describe(),
        flops: 2 * s.q_elements() as u64,
        bytes: 2 * qe + 8 * rows as u64,
    };
    dispatch(
        gpu,
        "backward_prepare",
        path,
        s,
        &p,
        &[q, k, v, mask, out, lse, d_out, &stats],
        rows.max(keys).div_ceil(WG),
        label,
    )?;

    if few {
        return backward_few_keys(gpu, path, s, p, [q, k, v, mask, out, lse, d_out, &stats], grads);
    }

    // 2. dq, by query rows, recomputing P and dP (not when the scores are stored: step 4).
    if s.q_len > 0 && scores.is_none() {
        let tiles = s.q_len.div_ceil(rows_per_group);
        p.tiles = tiles as u32;
        let label = KernelLabel {
            kernel: "attention_backward_dq",
            shape: s.describe(),
            flops: f * 3 / 2,
            bytes: 3 * qe + 2 * ke,
        };
        dispatch(
            gpu,
            if lanes { "backward_dq_lanes" } else { "backward_dq_blocked" },
            path,
            s,
            &p,
            &[q, k, v, mask, out, lse, d_out, &stats, dq],
            s.batch * s.heads * tiles,
            label,
        )?;
    }

    // 3. dk, dv (and the stored dS^T), by key rows.
    let tiles = s.kv_len.div_ceil(rows_per_group);
    p.tiles = tiles as u32;
    p.splits = splits as u32;
    p.split_rows = split_rows as u32;
    let label = KernelLabel {
        kernel: "attention_backward_dkdv",
        shape: s.describe(),
        flops: f * 2,
        bytes: 2 * qe + 4 * ke * splits as u64 + 4 * scores.unwrap_or(0) as u64,
    };
    let dkdv_entry = if lanes { "backward_dkdv_lanes" } else { "backward_dkdv_blocked" };
    if let Some(len) = scores {
        // grad_a holds dk, then dS^T from vec4 scores_at; dk is copied out after the pass.
        let ke_n = s.kv_elements();
        let dk_scores = gpu.alloc(ke_n + len)?;
        p.scores_at = (ke_n / 4) as u32;
        let buffers = [q, k, v, mask, out, lse, d_out, &stats, &dk_scores, dv];
        dispatch_dkdv(gpu, dkdv_entry, path, s, &p, &buffers, label)?;
        gpu.copy_region(&dk_scores, 0, dk, 0, ke_n)?;

        // 4. dq = scale * dS k from the stored dS^T, into grad_b.
        let tiles = s.q_len.div_ceil(TILE);
        p.tiles = tiles as u32;
        let label = KernelLabel {
            kernel: "attention_backward_dq_scores",
            shape: s.describe(),
            flops: f / 2,
            bytes: qe + ke + 4 * len as u64,
        };
        let buffers = [q, k, v, mask, out, lse, d_out, &stats, &dk_scores, dq];
        return dispatch(gpu, "backward_dq_scores_blocked", path, s, &p, &buffers, s.batch * s.heads * tiles, label);
    }
    if splits == 1 {
        return dispatch_dkdv(gpu, dkdv_entry, path, s, &p, &[q, k, v, mask, out, lse, d_out, &stats, dk, dv], label);
    }
    let part_k = gpu.alloc(splits * s.kv_elements())?;
    let part_v = gpu.alloc(splits * s.kv_elements())?;
    let buffers = [q, k, v, mask, out, lse, d_out, &stats, &part_k, &part_v];
    dispatch_dkdv(gpu, dkdv_entry, path, s, &p, &buffers, label)?;
    let inputs = [q, k, v, mask, out, lse, d_out, &stats];
    reduce_partials(gpu, path, s, &p, splits, inputs, [&part_k, &part_v], [dk, dv])
}

/// Steps 2 and 3 of [`backward_path`] for few keys: `backward_few_keys` writes dq and the
/// ranges' dk, dv sums, and `backward_reduce_pairs` adds them.
/// `inputs` are the backward's first eight bindings (q, k, v, mask, out, lse, d_out, stats).
fn backward_few_keys(
    gpu: &Gpu,
    path: KernelPath,
    s: &Attention,
    mut p: Params,
    inputs: [&GpuBuffer; 8],
    grads: &AttentionGrads,
) -> Result<()> {
    let AttentionGrads { dq, dk, dv } = *grads;
    let (units, splits) = few_key_ranges(s, &mut p);
    // dk and dv partials in one buffer (dk then dv per range): the kernel binds seven storage
    // buffers at most.
    let pairs = gpu.alloc(2 * splits * s.kv_elements())?;
    let (qe, ke) = (4 * s.q_elements() as u64, 4 * s.kv_elements() as u64);
    let label = KernelLabel {
        kernel: "attention_backward_few_keys",
        shape: s.describe(),
        flops: s.forward_flops() * 2,
        bytes: 3 * qe + 2 * ke * (splits as u64 + 1),
    };
    let [q, k, v, mask, out, lse, d_out, stats] = inputs;
    let buffers = [q, k, v, mask, out, lse, d_out, stats, dq, &pairs, dk, dv];
    dispatch(gpu, "backward_few_keys", path, s, &p, &buffers, (units * splits).div_ceil(8), label)?;
    let label = KernelLabel {
        kernel: "attention_backward_reduce",
        shape: format!("{} splits of {}", splits, s.describe()),
        flops: 2 * (splits * s.kv_elements()) as u64,
        bytes: 2 * ke * (splits as u64 + 1),
    };
    let n4 = s.kv_elements() / 4;
    dispatch(gpu, "backward_reduce_pairs", path, s, &p, &buffers, n4.div_ceil(WG), label)
}

/// The query-row ranges of the few-keys kernels that hold the keys (`backward_few_keys`,
/// `forward_few_keys_rows`): sets `p.splits` and `p.split_rows` and returns the (kv batch,
/// head) pairs and the ranges per pair. Rows are flattened over the batch when Bk = 1.
fn few_key_ranges(s: &Attention, p: &mut Params) -> (usize, usize) {
    let total_rows = if s.kv_batch == 1 { s.batch * s.q_len } else { s.q_len };
    let units = s.kv_batch * s.heads;
    let splits = FEW_BACKWARD_INVOCATIONS
        .div_ceil(units)
        .clamp(1, total_rows.div_ceil(FEW_BACKWARD_MIN_ROWS).max(1))
        .max(total_rows.div_ceil(FEW_BACKWARD_MAX_ROWS));
    let split_rows = total_rows.div_ceil(splits).max(1);
    let splits = total_rows.div_ceil(split_rows).max(1);
    p.splits = splits as u32;
    p.split_rows = split_rows as u32;
    (units, splits)
}

/// `backward_reduce`: dk and dv as the sums, in split order, of `splits` partials.
#[allow(clippy::too_many_arguments)]
fn reduce_partials(
    gpu: &Gpu,
    path: KernelPath,
    s: &Attention,
    p: &Params,
    splits: usize,
    inputs: [&GpuBuffer; 8],
    [part_k, part_v]: [&GpuBuffer; 2],
    [dk, dv]: [&GpuBuffer; 2],
) -> Result<()> {
    let ke = 4 * s.kv_elements() as u64;
    let n4 = s.kv_elements() / 4;
    let label = KernelLabel {
        kernel: "attention_backward_reduce",
        shape: format!("{} splits of {}", splits, s.describe()),
        flops: 2 * (splits * s.kv_elements()) as u64,
        bytes: 2 * ke * (splits as u64 + 1),
    };
    let [q, k, v, mask, out, lse, d_out, stats] = inputs;
    let buffers = [q, k, v, mask, out, lse, d_out, stats, part_k, part_v, dk, dv];
    dispatch(gpu, "backward_reduce", path, s, p, &buffers, n4.div_ceil(WG), label)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ProductParams {
    rows: u32,
    batch: u32,
    q_len: u32,
    kv_len: u32,
    heads: u32,
    kv_batch: u32,
    causal: u32,
    has_mask: u32,
    scale: f32,
    kv_stride: u32,
    head_vec4: u32,
    n1: u32,
}

impl ProductParams {
    fn new(s: &Attention, rows: usize, has_mask: bool) -> Self {
        ProductParams {
            rows: rows as u32,
            batch: s.batch as u32,
            q_len: s.q_len as u32,
            kv_len: s.kv_len as u32,
            heads: s.heads as u32,
            kv_batch: s.kv_batch as u32,
            causal: s.causal as u32,
            has_mask: has_mask as u32,
            scale: s.scale,
            kv_stride: s.kv_len.next_multiple_of(4) as u32,
            head_vec4: (s.head_dim / 4) as u32,
            n1: 0,
        }
    }
}

/// The products method's shapes: with heads outermost, q is [H, B, Nq, dh] and k, v are
/// [H, Bk, Nk4, dh] (Nk4: Nk rounded up to 4, zero rows after Nk), so the products are `batch`
/// products of `rows` query rows: H * B of Nq when every batch element has its own keys, H of
/// B * Nq when the keys are shared. The score matrix is [batch, rows, Nk4].
struct ProductShape {
    batch: usize,
    rows: usize,
    keys: usize,
    scores: usize,
}

impl ProductShape {
    fn of(s: &Attention) -> Self {
        let (batch, rows) = if s.kv_batch == 1 { (s.heads, s.batch * s.q_len) } else { (s.heads * s.batch, s.q_len) };
        let keys = s.kv_len.next_multiple_of(4);
        ProductShape { batch, rows, keys, scores: batch * rows * keys }
    }
}

/// Copies `x` [N0, N1, H, dh] (heads interleaved per token) to `out` [H, N0, N1p, dh] with
/// zero rows from N1 to N1p (`entry` "heads_outer"), or back ("heads_inner"); `rows` is
/// [N0, N1, N1p].
fn move_heads(
    gpu: &Gpu,
    entry: &'static str,
    x: &GpuBuffer,
    rows: [usize; 3],
    s: &Attention,
    out: &GpuBuffer,
) -> Result<()> {
    let [n0, n1, n1p] = rows;
    let mut p = ProductParams::new(s, 0, false);
    p.batch = n0 as u32;
    p.n1 = n1 as u32;
    p.kv_stride = n1p as u32;
    let head_rows = s.heads * n0 * if entry == "heads_outer" { n1p } else { n1 };
    let n = head_rows * s.head_dim;
    let label = KernelLabel {
        kernel: if entry == "heads_outer" { "attention_heads_outer" } else { "attention_heads_inner" },
        shape: format!("[{n0}, {n1}, {}, {}]", s.heads, s.head_dim),
        flops: 0,
        bytes: 8 * n as u64,
    };
    // Bindings 1..4 are unused here; `x` stands in for them (read-only, never read).
    gpu.dispatch(Dispatch {
        shader: &PRODUCTS_SHADER,
        entry,
        params: bytemuck::bytes_of(&p),
        buffers: &[x, x, x, x, x, out],
        workgroups: grid(head_rows.div_ceil(WG) as u32),
        label,
    })
}

/// `x` [N0, N1, H, dh] as [H, N0, N1p, dh] (zero rows after N1). With one head and no padding
/// the layouts agree and `x` is used as it is.
fn heads_outer(gpu: &Gpu, x: &GpuBuffer, n0: usize, n1: usize, n1p: usize, s: &Attention) -> Result<Option<GpuBuffer>> {
    if s.heads == 1 && n1 == n1p {
        return Ok(None);
    }
    let out = gpu.alloc(s.heads * n0 * n1p * s.head_dim)?;
    move_heads(gpu, "heads_outer", x, [n0, n1, n1p], s, &out)?;
    Ok(Some(out))
}

/// Scratch for a heads-outermost result [H, N0, N1p, dh] that [`heads_inner`] then moves to
/// its destination; none with one head and no padding, where the result is written there.
fn heads_outer_scratch(gpu: &Gpu, n0: usize, n1: usize, n1p: usize, s: &Attention) -> Result<Option<GpuBuffer>> {
    if s.heads == 1 && n1 == n1p {
        return Ok(None);
    }
    Ok(Some(gpu.alloc(s.heads * n0 * n1p * s.head_dim)?))
}

/// Moves a heads-outermost [H, N0, N1p, dh] result into `dest` [N0, N1, H, dh].
fn heads_inner(
    gpu: &Gpu,
    x: Option<GpuBuffer>,
    n0: usize,
    n1: usize,
    n1p: usize,
    s: &Attention,
    dest: &GpuBuffer,
) -> Result<()> {
    match x {
        Some(x) => move_heads(gpu, "heads_inner", &x, [n0, n1, n1p], s, dest),
        None => Ok(()),
    }
}

fn product_rows(
    gpu: &Gpu,
    entry: &'static str,
    s: &Attention,
    ps: &ProductShape,
    buffers: &[&GpuBuffer],
    has_mask: bool,
    flops_per_score: u64,
) -> Result<()> {
    let rows = ps.batch * ps.rows;
    let p = ProductParams::new(s, rows, has_mask);
    let n = ps.scores as u64;
    let label = KernelLabel {
        kernel: match entry {
            "softmax_rows" => "attention_softmax",
            "probs_rows" => "attention_probs",
            _ => "attention_softmax_backward",
        },
        shape: s.describe(),
        flops: flops_per_score * n,
        bytes: 4 * n * if entry == "softmax_rows" { 3 } else { 2 },
    };
    gpu.dispatch(Dispatch {
        shader: &PRODUCTS_SHADER,
        entry,
        params: bytemuck::bytes_of(&p),
        buffers,
        workgroups: grid(rows.div_ceil(WG) as u32),
        label,
    })
}

/// The forward as products: S = q kᵀ, P = softmax(scale S) with lse, out = P v. Returns P.
fn forward_products(gpu: &Gpu, io: &AttentionIo, s: &Attention, path: KernelPath) -> Result<GpuBuffer> {
    let AttentionIo { q, k, v, key_mask, out, lse, .. } = *io;
    let ps = ProductShape::of(s);
    let (nq, nk, nk4, dh) = (s.q_len, s.kv_len, ps.keys, s.head_dim);
    let qh = heads_outer(gpu, q, s.batch, nq, nq, s)?;
    let kh = heads_outer(gpu, k, s.kv_batch, nk, nk4, s)?;
    let vh = heads_outer(gpu, v, s.kv_batch, nk, nk4, s)?;
    let scores = gpu.alloc(ps.scores)?;
    let qk = Matmul::new(ps.batch, ps.rows, nk4, dh).trans_b(true);
    matmul_with(gpu, qh.as_ref().unwrap_or(q), kh.as_ref().unwrap_or(k), &scores, &qk, path)?;
    // Without a mask, q stands in at the mask's binding (read-only there, never read).
    let mask = key_mask.unwrap_or(q);
    product_rows(gpu, "softmax_rows", s, &ps, &[&scores, lse, mask], key_mask.is_some(), 4)?;
    let oh = heads_outer_scratch(gpu, s.batch, nq, nq, s)?;
    let pv = Matmul::new(ps.batch, ps.rows, dh, nk4);
    matmul_with(gpu, &scores, vh.as_ref().unwrap_or(v), oh.as_ref().unwrap_or(out), &pv, path)?;
    heads_inner(gpu, oh, s.batch, nq, nq, s, out)?;
    Ok(scores)
}

/// The backward as products: P recomputed from S = q kᵀ and lse, then dv = Pᵀ dout,
/// dP = dout vᵀ, dS = scale P (dP - rowsum(P dP)), dq = dS k, dk = dSᵀ q. With shared keys
/// the products' sums over B * Nq rows are the sums over the batch.
fn backward_products(
    gpu: &Gpu,
    io: &AttentionIo,
    d_out: &GpuBuffer,
    grads: &AttentionGrads,
    s: &Attention,
    path: KernelPath,
) -> Result<()> {
    let AttentionIo { q, k, v, key_mask, out, lse, probs: saved } = *io;
    let AttentionGrads { dq, dk, dv } = *grads;
    let ps = ProductShape::of(s);
    let (nq, nk, nk4, dh, m) = (s.q_len, s.kv_len, ps.keys, s.head_dim, ps.rows);
    let qh = heads_outer(gpu, q, s.batch, nq, nq, s)?;
    let kh = heads_outer(gpu, k, s.kv_batch, nk, nk4, s)?;
    let vh = heads_outer(gpu, v, s.kv_batch, nk, nk4, s)?;
    let doh = heads_outer(gpu, d_out, s.batch, nq, nq, s)?;
    let (qh, kh, vh, doh) =
        (qh.as_ref().unwrap_or(q), kh.as_ref().unwrap_or(k), vh.as_ref().unwrap_or(v), doh.as_ref().unwrap_or(d_out));
    let mask = key_mask.unwrap_or(q);

    let recomputed;
    let probs = match saved {
        Some(p) => {
            let shape = format!("[{}, {}, {}]", ps.batch, m, nk4);
            check_len(s, "the saved probabilities", p, &shape, ps.scores)?;
            p
        }
        None => {
            recomputed = gpu.alloc(ps.scores)?;
            matmul_with(gpu, qh, kh, &recomputed, &Matmul::new(ps.batch, m, nk4, dh).trans_b(true), path)?;
            product_rows(gpu, "probs_rows", s, &ps, &[&recomputed, lse, mask], key_mask.is_some(), 2)?;
            &recomputed
        }
    };

    let dvh = heads_outer_scratch(gpu, s.kv_batch, nk, nk4, s)?;
    matmul_with(gpu, probs, doh, dvh.as_ref().unwrap_or(dv), &Matmul::new(ps.batch, nk4, dh, m).trans_a(true), path)?;

    let grad = gpu.alloc(ps.scores)?;
    matmul_with(gpu, doh, vh, &grad, &Matmul::new(ps.batch, m, nk4, dh).trans_b(true), path)?;
    // delta = rowsum(dout * out) per (b, h, i), in the projections' layout.
    let delta = gpu.alloc(s.lse_elements())?;
    let p = ProductParams::new(s, s.lse_elements(), false);
    let label = KernelLabel {
        kernel: "attention_delta",
        shape: s.describe(),
        flops: 2 * s.q_elements() as u64,
        bytes: 8 * s.q_elements() as u64,
    };
    // Bindings 1..4 and 6 are unused by this entry point; d_out stands in (read-only there).
    gpu.dispatch(Dispatch {
        shader: &PRODUCTS_SHADER,
        entry: "delta_rows",
        params: bytemuck::bytes_of(&p),
        buffers: &[d_out, d_out, d_out, d_out, out, d_out, d_out, &delta],
        workgroups: grid(s.lse_elements().div_ceil(WG) as u32),
        label,
    })?;
    // Only bindings 1, 4 and 8 are used; q stands in for the others.
    let buffers = [probs, q, q, &grad, q, q, q, &delta];
    product_rows(gpu, "backward_rows", s, &ps, &buffers, false, 3)?;

    let dqh = heads_outer_scratch(gpu, s.batch, nq, nq, s)?;
    matmul_with(gpu, &grad, kh, dqh.as_ref().unwrap_or(dq), &Matmul::new(ps.batch, m, dh, nk4), path)?;
    let dkh = heads_outer_scratch(gpu, s.kv_batch, nk, nk4, s)?;
    matmul_with(gpu, &grad, qh, dkh.as_ref().unwrap_or(dk), &Matmul::new(ps.batch, nk4, dh, m).trans_a(true), path)?;

    heads_inner(gpu, dqh, s.batch, nq, nq, s, dq)?;
    heads_inner(gpu, dkh, s.kv_batch, nk, nk4, s, dk)?;
    heads_inner(gpu, dvh, s.kv_batch, nk, nk4, s, dv)
}
