//! Launchers for `shaders/matmul.wgsl`: the batched matrix product with transpose, broadcast,
//! accumulate and bias options, the engine's most important kernel.
//!
//! One implementation per [`KernelPath`] sits behind [`matmul`]: a register-blocked kernel
//! without workgroup memory (CPU adapters without subgroups), the same idea with the B operand
//! shared across an 8-lane subgroup by `subgroupBroadcast` (lavapipe), and shared-memory tiles
//! with split-K for long-K, small-output products (real GPUs). [`matmul_with`] picks one
//! explicitly, so tests exercise every path on whatever adapter is present, and [`plan`] says
//! which entry point a product runs. [`matmul_bias`] adds a per-column bias in the same
//! dispatch. Backward passes are the same kernel with transpose flags (dA = dC·Bᵀ,
//! dB = Aᵀ·dC); there is no separate backward entry point. [`matmul_row_sums`] also stores the
//! sums of A's rows: a Linear's bias gradient with its weight gradient.

use crate::context::{Dispatch, Gpu, OperandTexture};
use crate::elementwise::UnaryOp;
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, KernelPath, Result};

shader!(SHADER, "matmul.wgsl");
// The subgroup entry points: a module of their own, which adapters without subgroups never compile.
shader!(SUBGROUP_SHADER, "matmul_subgroup.wgsl");
// The same 64-column subgroup blocks reading A and B from textures (Gpu::texture_operands).
shader!(TEXTURE_SHADER, "matmul_texture.wgsl");

/// Output rows and columns one workgroup of the vec4 register kernels covers (matmul.wgsl:
/// LANE_ROWS x BLOCK_ROWS and LANE_COLS x BLOCK_COLS).
const REGISTER_ROWS: usize = 64;
const REGISTER_COLS: usize = 128;
/// The same for `registers_general` (LANE_ROWS x BLOCK and LANE_COLS x BLOCK).
const GENERAL_ROWS: usize = 32;
const GENERAL_COLS: usize = 64;
/// Output rows and columns one workgroup (one subgroup of 8 lanes) of the subgroup kernels
/// covers: 8 lanes x 8 rows, 32 columns.
const SUBGROUP_ROWS: usize = 64;
const SUBGROUP_COLS: usize = 32;
/// Columns of the 64-column subgroup kernels (`subgroup_wide_*`, 8 lanes x 8 rows, 64 columns):
/// fewer loads per multiply-add, used wherever they pad N no more than the 32-column ones.
const SUBGROUP_WIDE_COLS: usize = 64;
/// Output tiles of one workgroup of the tiled kernels (tiled_64 and tiled_general, tiled_128).
const TILE: usize = 64;
const TILE_LARGE: usize = 128;
/// tiled_128 only when the output has at least this many 128 x 128 tiles.
const LARGE_MIN_TILES: usize = 128;
/// What the tiled kernels need of the adapter: a 16 x 16 workgroup and 8 KiB of workgroup memory.
const TILED_INVOCATIONS: u32 = 256;
const TILED_SHARED_BYTES: u32 = 8192;
/// Split-K (tiled path): outputs of fewer 64 x 64 tiles than this with K at least SPLIT_MIN_K,
/// into at most SPLIT_MAX splits of at least SPLIT_MIN_CHUNK along K.
const SPLIT_MAX_TILES: usize = 64;
const SPLIT_MIN_K: usize = 2048;
const SPLIT_MAX: usize = 8;
const SPLIT_MIN_CHUNK: usize = 512;

/// One (batched) matrix product: out[b] = A[b] · B[b] (or out[b] += when accumulate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matmul {
    /// Number of products.
    pub batch: usize,
    /// Rows of A and of the output.
    pub m: usize,
    /// Columns of B and of the output.
    pub n: usize,
    /// Columns of A, rows of B: the summed axis.
    pub k: usize,
    /// A stored [K, M] per batch instead of [M, K].
    pub trans_a: bool,
    /// B stored [N, K] per batch instead of [K, N] (PyTorch Linear weight).
    pub trans_b: bool,
    /// A is one matrix shared by every batch (batch stride 0).
    pub broadcast_a: bool,
    /// B is one matrix shared by every batch.
    pub broadcast_b: bool,
    /// out += A·B instead of out = A·B.
    pub accumulate: bool,
}

impl Matmul {
    /// `batch` products of [m, k] · [k, n], no transposes, broadcasts or accumulation.
    pub fn new(batch: usize, m: usize, n: usize, k: usize) -> Self {
        Matmul {
            batch,
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            broadcast_a: false,
            broadcast_b: false,
            accumulate: false,
        }
    }

    /// Sets whether A is stored [K, M].
    pub fn trans_a(mut self, on: bool) -> Self {
        self.trans_a = on;
        self
    }

    /// Sets whether B is stored [N, K].
    pub fn trans_b(mut self, on: bool) -> Self {
        self.trans_b = on;
        self
    }

    /// Sets whether A is shared by every batch.
    pub fn broadcast_a(mut self, on: bool) -> Self {
        self.broadcast_a = on;
        self
    }

    /// Sets whether B is shared by every batch.
    pub fn broadcast_b(mut self, on: bool) -> Self {
        self.broadcast_b = on;
        self
    }

    /// Sets whether the product is added to the output instead of overwriting it.
    pub fn accumulate(mut self, on: bool) -> Self {
        self.accumulate = on;
        self
    }

    /// Floating-point operations: 2·batch·M·N·K.
    pub fn flops(&self) -> u64 {
        2 * (self.batch as u64) * (self.m as u64) * (self.n as u64) * (self.k as u64)
    }

    /// Elements A must hold.
    pub fn a_len(&self) -> usize {
        if self.broadcast_a { 1 } else { self.batch }.saturating_mul(self.m * self.k)
    }

    /// Elements B must hold.
    pub fn b_len(&self) -> usize {
        if self.broadcast_b { 1 } else { self.batch }.saturating_mul(self.k * self.n)
    }

    /// Elements the output must hold: batch·M·N.
    pub fn out_len(&self) -> usize {
        self.batch * self.m * self.n
    }

    /// A's stored shape, e.g. `[8, 192, 257]` for trans_a or `[192, 257]` when broadcast.
    fn a_shape(&self) -> String {
        let (r, c) = if self.trans_a { (self.k, self.m) } else { (self.m, self.k) };
        if self.broadcast_a {
            format!("[{r}, {c}]")
        } else {
            format!("[{}, {r}, {c}]", self.batch)
        }
    }

    fn b_shape(&self) -> String {
        let (r, c) = if self.trans_b { (self.n, self.k) } else { (self.k, self.n) };
        if self.broadcast_b {
            format!("[{r}, {c}]")
        } else {
            format!("[{}, {r}, {c}]", self.batch)
        }
    }

    /// Human-readable description for errors and profiles, e.g.
    /// `[8, 257, 192] x [576, 192]^T -> [8, 257, 576]`.
    pub fn describe(&self) -> String {
        format!(
            "A {}{} x B {}{} -> [{}, {}, {}]{}",
            self.a_shape(),
            if self.trans_a { "^T" } else { "" },
            self.b_shape(),
            if self.trans_b { "^T" } else { "" },
            self.batch,
            self.m,
            self.n,
            if self.accumulate { " (accumulate)" } else { "" }
        )
    }

    /// The texture each operand is copied into for the texture kernels: (floats per row, rows)
    /// of A and of B as stored, batch elements stacked (one when broadcast).
    fn operand_textures(&self) -> [(usize, usize); 2] {
        let a_batches = if self.broadcast_a { 1 } else { self.batch };
        let b_batches = if self.broadcast_b { 1 } else { self.batch };
        [
            if self.trans_a { (self.m, a_batches * self.k) } else { (self.k, a_batches * self.m) },
            if self.trans_b { (self.k, b_batches * self.n) } else { (self.n, b_batches * self.k) },
        ]
    }

    /// How the texture kernels read A and B, or `None` when they cannot: each operand from a
    /// texture of its stored rows where those fit an [`OperandTexture`] (rows of a multiple of
    /// 64 floats, both sides within the adapter's largest 2-D texture; `None` in the slot),
    /// else from a flat texture, with its row length in texels in the slot (matmul_texture.wgsl's
    /// `A_FLAT_ROW` / `B_FLAT_ROW`). An accumulating product's output must fit a flat texture
    /// too (the texture kernels read the old output from one).
    fn texture_layout(&self, gpu: &Gpu) -> Option<[Option<u32>; 2]> {
        let limits = gpu.limits();
        let flat_rows = |len: usize| len.div_ceil(OperandTexture::FLAT_ROW_FLOATS);
        let fits_flat = |len: usize| OperandTexture::fits(OperandTexture::FLAT_ROW_FLOATS, flat_rows(len), limits);
        if self.accumulate && !fits_flat(self.out_len()) {
            return None;
        }
        let layout = |(row, rows): (usize, usize)| {
            if OperandTexture::fits(row, rows, limits) {
                Some(None)
            } else if row.is_multiple_of(4) && fits_flat(row * rows) {
                Some(Some(u32::try_from(row / 4).ok()?))
            } else {
                None
            }
        };
        let [a, b] = self.operand_textures();
        Some([layout(a)?, layout(b)?])
    }

    /// True when the vec4 register kernel applies: every axis read or written four at a time
    /// is a multiple of 4 (so are batch offsets), and K > 0.
    fn aligned(&self) -> bool {
        let a_ok = if self.trans_a { self.m.is_multiple_of(4) } else { self.k.is_multiple_of(4) };
        let b_ok = if self.trans_b { self.k.is_multiple_of(4) } else { true };
        self.k > 0 && self.n.is_multiple_of(4) && a_ok && b_ok
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch: u32,
    b_batch: u32,
    trans_a: u32,
    trans_b: u32,
    accumulate: u32,
    has_bias: u32,
    k_split: u32,
    keep_product: u32,
}

/// out[b] = A[b] · B[b] (or += when `op.accumulate`), out stored [batch, M, N] row-major, on the
/// path that suits the adapter.
pub fn matmul(gpu: &Gpu, a: &GpuBuffer, b: &GpuBuffer, out: &GpuBuffer, op: &Matmul) -> Result<()> {
    matmul_with(gpu, a, b, out, op, gpu.kernel_path())
}

/// [`matmul`] on an explicitly chosen implementation.
pub fn matmul_with(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    out: &GpuBuffer,
    op: &Matmul,
    path: KernelPath,
) -> Result<()> {
    launch(gpu, a, b, out, op, Epilogue::default(), path)
}

/// A product with a per-column bias in the same dispatch, so a Linear layer
/// (y = x·Wᵀ + bias, W stored [N, K] as in PyTorch: `op.trans_b(true)`) is one launch:
/// out[b, i, j] = Σₖ A[b, i, k]·B[b, k, j] + bias[j], or with `op.accumulate`
/// out[b, i, j] += Σₖ A[b, i, k]·B[b, k, j] + bias[j]. `bias` holds N elements (at least), shared
/// by every row and batch. Runs on the adapter's path; every path supports it.
pub fn matmul_bias(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    bias: &GpuBuffer,
    out: &GpuBuffer,
    op: &Matmul,
) -> Result<()> {
    matmul_bias_with(gpu, a, b, bias, out, op, gpu.kernel_path())
}

/// [`matmul_bias`] on an explicitly chosen implementation.
pub fn matmul_bias_with(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    bias: &GpuBuffer,
    out: &GpuBuffer,
    op: &Matmul,
    path: KernelPath,
) -> Result<()> {
    launch(gpu, a, b, out, op, Epilogue { bias: Some(bias), ..Epilogue::default() }, path)
}

/// The activation epilogue of [`matmul_bias_act`]: the per-column bias, the activation f and
/// the buffer that receives f(A·B + bias) ([batch, M, N]).
#[derive(Clone, Copy, Debug)]
pub struct BiasActOut<'a> {
    /// N elements (at least), shared by every row and batch.
    pub bias: &'a GpuBuffer,
    /// The activation f.
    pub act: UnaryOp,
    /// f(A·B + bias); a different buffer from the product's.
    pub act_out: &'a GpuBuffer,
}

/// A Linear layer and its activation in one dispatch: `out` = A·B (the bare product, which the
/// activation's backward needs: `elementwise::bias_act_backward` recomputes f'(out + bias) from
/// it) and `epi.act_out` = f(A·B + bias), both [batch, M, N]. `op.accumulate` must be off. The
/// same as [`matmul`] followed by `elementwise::bias_act`, without the second pass over the
/// output.
pub fn matmul_bias_act(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    out: &GpuBuffer,
    op: &Matmul,
    epi: &BiasActOut,
) -> Result<()> {
    matmul_bias_act_with(gpu, a, b, out, op, epi, gpu.kernel_path())
}

/// [`matmul_bias_act`] on an explicitly chosen implementation.
pub fn matmul_bias_act_with(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    out: &GpuBuffer,
    op: &Matmul,
    epi: &BiasActOut,
    path: KernelPath,
) -> Result<()> {
    refuse_accumulating_activation(op)?;
    if std::ptr::eq(out, epi.act_out) {
        return Err(Error::Shape(format!(
            "matmul {}: the product and its activation need two different buffers",
            op.describe()
        )));
    }
    let epilogue =
        Epilogue { bias: Some(epi.bias), act: Some((epi.act_out, epi.act)), keep_product: true, row_sums: None };
    launch(gpu, a, b, out, op, epilogue, path)
}

/// An activation epilogue stores f(product + bias); it cannot also add onto the old output.
fn refuse_accumulating_activation(op: &Matmul) -> Result<()> {
    if op.accumulate {
        return Err(Error::Shape(format!(
            "matmul {}: an activation epilogue cannot accumulate into its output",
            op.describe()
        )));
    }
    Ok(())
}

/// [`matmul_bias_act`] when no backward will run (inference): only `epi.act_out` =
/// f(A·B + bias) is written; the bare product, which only the activation's backward reads, is
/// not stored at all (one store pass fewer over the output, the costly part of a short-K
/// product's store on lavapipe).
pub fn matmul_act_only(gpu: &Gpu, a: &GpuBuffer, b: &GpuBuffer, op: &Matmul, epi: &BiasActOut) -> Result<()> {
    matmul_act_only_with(gpu, a, b, op, epi, gpu.kernel_path())
}

/// [`matmul_act_only`] on an explicitly chosen implementation.
pub fn matmul_act_only_with(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    op: &Matmul,
    epi: &BiasActOut,
    path: KernelPath,
) -> Result<()> {
    refuse_accumulating_activation(op)?;
    // The activation's buffer stands in for the product's (never written: keep_product is off).
    let epilogue =
        Epilogue { bias: Some(epi.bias), act: Some((epi.act_out, epi.act)), keep_product: false, row_sums: None };
    launch(gpu, a, b, epi.act_out, op, epilogue, path)
}

/// A product and the sums of its A operand's rows in one launch: `out` = A·B exactly as
/// [`matmul`] (accumulating when `op.accumulate`), and `sums[b·M + i]` = Σₖ A[b, i, k] for every
/// batch b and row i, A read as the product reads it ([M, K], whatever its storage); `sums` is
/// overwritten, never added onto. A Linear's weight gradient dW = dYᵀ·X reads dYᵀ as A, so the
/// sums are its bias gradient, the sum of dY over its rows, without a reduction launch of its
/// own. The subgroup path's blocks compute them in the product's launch where M is a multiple
/// of 4 (ROW_SUMS in shaders/include/matmul_subgroup_blocks.wgsl, which stores them by vec4);
/// on the other paths, for other M and for shapes only the general kernels take, the product is
/// followed by a `reduce::sum_axis` over A. The two ways sum in different orders, so they agree
/// to rounding, not bit for bit.
pub fn matmul_row_sums(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    out: &GpuBuffer,
    sums: &GpuBuffer,
    op: &Matmul,
) -> Result<()> {
    matmul_row_sums_with(gpu, a, b, out, sums, op, gpu.kernel_path())
}

/// [`matmul_row_sums`] on an explicitly chosen implementation.
pub fn matmul_row_sums_with(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    out: &GpuBuffer,
    sums: &GpuBuffer,
    op: &Matmul,
    path: KernelPath,
) -> Result<()> {
    let need = op.batch * op.m;
    if sums.len() < need {
        return Err(Error::Shape(format!(
            "matmul {}: the row sums have {} elements but [{}, {}] needs {need}",
            op.describe(),
            sums.len(),
            op.batch,
            op.m
        )));
    }
    if std::ptr::eq(sums, out) || std::ptr::eq(sums, a) || std::ptr::eq(sums, b) {
        return Err(Error::Shape(format!(
            "matmul {}: the row sums need a buffer of their own, not an operand's or the output's",
            op.describe()
        )));
    }
    if row_sums_in_launch(&plan(gpu, op, path)) && op.k > 0 && op.m.is_multiple_of(4) {
        return launch(gpu, a, b, out, op, Epilogue { row_sums: Some(sums), ..Epilogue::default() }, path);
    }
    launch(gpu, a, b, out, op, Epilogue::default(), path)?;
    if need == 0 {
        return Ok(());
    }
    if op.k == 0 {
        return gpu.copy_region(&gpu.zeros(need)?, 0, sums, 0, need);
    }
    // A stored [M, K] per batch: each row's K elements are contiguous; stored [K, M]: sum the K
    // rows of each batch.
    let sum_a = |batches: usize, into: &GpuBuffer| match op.trans_a {
        true => crate::reduce::sum_axis(gpu, a, batches, op.k, op.m, into),
        false => crate::reduce::sum_axis(gpu, a, batches * op.m, op.k, 1, into),
    };
    if !op.broadcast_a {
        return sum_a(op.batch, sums);
    }
    // A shared by every batch: one set of sums, copied to each.
    let one = gpu.alloc(op.m)?;
    sum_a(1, &one)?;
    (0..op.batch).try_for_each(|z| gpu.copy_region(&one, 0, sums, z * op.m, op.m))
}

/// Whether a plan's entry point computes [`matmul_row_sums`]'s sums in its own launch: the
/// subgroup blocks (include/matmul_subgroup_blocks.wgsl), not `subgroup_general`.
fn row_sums_in_launch(plan: &MatmulPlan) -> bool {
    plan.splits <= 1
        && (plan.entry.starts_with("texture_") || plan.entry.starts_with("subgroup_"))
        && plan.entry != "subgroup_general"
}

/// What a launch adds in its store: a per-column bias, and an activation with its output.
#[derive(Clone, Copy, Default)]
struct Epilogue<'a> {
    bias: Option<&'a GpuBuffer>,
    act: Option<(&'a GpuBuffer, UnaryOp)>,
    /// With `act`: also store the bare product in `out` (what a backward needs). Without it
    /// only f(product + bias) is stored, and `out` may be the activation's buffer.
    keep_product: bool,
    /// [`matmul_row_sums`]'s sums, stored by the subgroup blocks in the activation's bindings
    /// (never with an activation).
    row_sums: Option<&'a GpuBuffer>,
}

fn launch(
    gpu: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    out: &GpuBuffer,
    op: &Matmul,
    epilogue: Epilogue,
    path: KernelPath,
) -> Result<()> {
    let Epilogue { bias, act, keep_product, row_sums } = epilogue;
    if let Some(bias) = bias {
        if bias.len() < op.n {
            return Err(Error::Shape(format!(
                "matmul {}: the bias has {} elements but the output's {} columns need {}",
                op.describe(),
                bias.len(),
                op.n,
                op.n
            )));
        }
    }
    if let Some((act_out, _)) = act {
        if act_out.len() < op.out_len() {
            return Err(Error::Shape(format!(
                "matmul {}: the activation output has {} elements but [{}, {}, {}] needs {}",
                op.describe(),
                act_out.len(),
                op.batch,
                op.m,
                op.n,
                op.out_len()
            )));
        }
    }
    for (what, buf, need, shape) in [
        ("A", a, op.a_len(), op.a_shape()),
        ("B", b, op.b_len(), op.b_shape()),
        ("the output", out, op.out_len(), format!("[{}, {}, {}]", op.batch, op.m, op.n)),
    ] {
        if buf.len() < need {
            return Err(Error::Shape(format!(
                "matmul {}: {what} has {} elements but its shape {shape} needs {need}",
                op.describe(),
                buf.len()
            )));
        }
    }
    if op.out_len() == 0 || (op.k == 0 && op.accumulate && bias.is_none()) {
        return Ok(());
    }
    let u32_of = |v: usize, what: &str| {
        u32::try_from(v)
            .map_err(|_| Error::Shape(format!("matmul {}: {what} = {v} does not fit in 32 bits", op.describe())))
    };
    // Every element index must fit the shader's u32 arithmetic.
    u32_of(op.a_len().max(op.b_len()).max(op.out_len()), "the largest operand")?;
    let params = Params {
        m: op.m as u32,
        n: op.n as u32,
        k: op.k as u32,
        batch: op.batch as u32,
        a_batch: if op.broadcast_a { 0 } else { (op.m * op.k) as u32 },
        b_batch: if op.broadcast_b { 0 } else { (op.k * op.n) as u32 },
        trans_a: op.trans_a as u32,
        trans_b: op.trans_b as u32,
        accumulate: op.accumulate as u32,
        has_bias: bias.is_some() as u32,
        k_split: op.k as u32,
        keep_product: keep_product as u32,
    };
    // The activation is a pipeline constant (ACT in matmul_core.wgsl): 1 + its code, or none;
    // so are the row sums (ROW_SUMS in matmul_subgroup_blocks.wgsl).
    let act_constant = act.map(|(_, f)| ("ACT", f64::from(1 + f as u32)));
    let sums_constant = row_sums.map(|_| ("ROW_SUMS", 1.0));
    let constants: Vec<(&'static str, f64)> = act_constant.into_iter().chain(sums_constant).collect();
    // Bindings 8 and 9: the activation output or the row sums, else `out` standing in (never
    // written then).
    let act_out = act.map(|(buf, _)| buf).or(row_sums).unwrap_or(out);
    let plan = plan(gpu, op, path);
    let label = KernelLabel {
        kernel: "matmul",
        shape: match (bias.is_some(), act) {
            (_, Some((_, f))) => format!("{} + bias, {}", op.describe(), f.name()),
            (true, None) => format!("{} + bias", op.describe()),
            (false, None) if row_sums.is_some() => format!("{} + A's row sums", op.describe()),
            (false, None) => op.describe(),
        },
        flops: op.flops(),
        bytes: 4 * (op.a_len() + op.b_len() + op.out_len() * if op.accumulate { 2 } else { 1 }) as u64,
    };
    let grid = |z: usize| [op.n.div_ceil(plan.cols) as u32, op.m.div_ceil(plan.rows) as u32, z as u32];
    let textured = plan.entry.starts_with("texture_");
    let shader = match plan.entry {
        _ if textured => &TEXTURE_SHADER,
        e if e.starts_with("subgroup_") => &SUBGROUP_SHADER,
        _ => &SHADER,
    };
    if plan.splits <= 1 {
        // The texture kernels read A and B from textures (slots 0 and 1), an accumulating
        // product's old output from a flat one (slot 2; unread otherwise), and bind the rest as
        // the storage kernels do.
        let layout = if textured { op.texture_layout(gpu) } else { None };
        let mut constants = constants;
        let mut operands = Vec::new();
        if let Some(flat_rows) = layout {
            for ((src, (row, rows)), (flat_row, name)) in [a, b]
                .into_iter()
                .zip(op.operand_textures())
                .zip(flat_rows.into_iter().zip(["A_FLAT_ROW", "B_FLAT_ROW"]))
            {
                operands.push(Some(match flat_row {
                    None => OperandTexture::matrix(src, row, rows),
                    Some(texels) => {
                        constants.push((name, f64::from(texels)));
                        OperandTexture::flat(src, row * rows)
                    }
                }));
            }
            operands.push(op.accumulate.then(|| OperandTexture::flat(out, op.out_len())));
        }
        let d = Dispatch {
            shader,
            entry: plan.entry,
            params: bytemuck::bytes_of(&params),
            // Bindings 1..3 are the scalar views, 4..6 the vec4 views of the same buffers, 7 the
            // bias (A stands in when there is none: read-only, never read), 8 and 9 the
            // activation output's views; each entry point binds only the ones it uses.
            buffers: &[a, b, out, a, b, out, bias.unwrap_or(a), act_out, act_out],
            workgroups: grid(op.batch),
            label,
        };
        return gpu.dispatch_with_operand_textures(d, &constants, &operands);
    }
    // Split-K: partial products of each K range into scratch [splits, batch, M, N] without the
    // epilogue, then one pass sums them in split order and applies bias and accumulate.
    let k_split = op.k.div_ceil(plan.splits);
    let partial = gpu.alloc(plan.splits * op.out_len())?;
    let split_params = Params { k_split: k_split as u32, accumulate: 0, has_bias: 0, ..params };
    gpu.dispatch(Dispatch {
        shader,
        entry: plan.entry,
        params: bytemuck::bytes_of(&split_params),
        buffers: &[a, b, &partial, a, b, &partial, a, &partial, &partial],
        workgroups: grid(op.batch * plan.splits),
        label,
    })?;
    let reduce_params = Params { k_split: plan.splits as u32, ..params };
    let d = Dispatch {
        shader: &SHADER,
        entry: "splitk_reduce",
        params: bytemuck::bytes_of(&reduce_params),
        buffers: &[&partial, b, out, a, b, out, bias.unwrap_or(a), act_out, act_out],
        workgroups: [op.out_len().div_ceil(256) as u32, 1, 1],
        label: KernelLabel {
            kernel: "matmul_splitk_reduce",
            shape: format!("{} splits of {}", plan.splits, op.describe()),
            flops: (plan.splits * op.out_len()) as u64,
            bytes: 4 * ((plan.splits + 1 + op.accumulate as usize) * op.out_len()) as u64,
        },
    };
    gpu.dispatch_specialized(d, &constants)
}

/// Which kernel a product runs: the entry point, the output block one workgroup covers, and
/// the number of K splits (tiled path only; 1 = no split).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulPlan {
    /// The path that actually runs (after falling back where the adapter cannot run `path`).
    pub path: KernelPath,
    /// The entry point in shaders/matmul.wgsl.
    pub entry: &'static str,
    /// Output rows one workgroup covers.
    pub rows: usize,
    /// Output columns one workgroup covers.
    pub cols: usize,
    /// K splits summed by `splitk_reduce` afterwards; 1 when the product is not split.
    pub splits: usize,
}

impl MatmulPlan {
    /// The entry points that run, e.g. `tiled_64 + splitk_reduce (4 splits)`.
    pub fn describe(&self) -> String {
        if self.splits > 1 {
            format!("{} + splitk_reduce ({} splits)", self.entry, self.splits)
        } else {
            self.entry.to_string()
        }
    }
}

/// The kernel [`matmul_with`] runs for `op` on `path` on this adapter.
///
/// - subgroup: needs subgroups whose smallest size is at least 8 (the workgroup of 8 must be
///   one subgroup), else the register kernels run. With texture operands (lavapipe's default)
///   and operands whose stored rows fit a texture, 64 x 32 blocks reading textures
///   (`texture_*`, shaders/matmul_texture.wgsl says why 32 columns); otherwise 64 x 64 blocks
///   (`subgroup_wide_*`) where 64-column blocks pad N no more than 32-column ones (N = 64, 192,
///   768), else 64 x 32.
/// - tiled: needs 256 invocations and 8 KiB of workgroup memory, else the register kernels run.
///   Tile table: 128 x 128 for aligned outputs of at least 128 tiles of that size (enough
///   workgroups to fill a large GPU), 64 x 64 for other aligned shapes, the scalar 64 x 64
///   kernel otherwise. Split-K when the output has fewer than 64 tiles and K >= 2048 (the weight
///   gradients: K = batch x tokens): up to 8 splits of at least 512 along K.
/// - vec4 kernels need every contiguous axis a multiple of 4; other shapes run the general ones.
pub fn plan(gpu: &Gpu, op: &Matmul, path: KernelPath) -> MatmulPlan {
    let info = gpu.info();
    let limits = gpu.limits();
    let path = match path {
        KernelPath::Subgroup if !info.runs_subgroup_kernels() => path.fallback(),
        KernelPath::Tiled
            if limits.max_compute_invocations_per_workgroup < TILED_INVOCATIONS
                || limits.max_compute_workgroup_storage_size < TILED_SHARED_BYTES =>
        {
            KernelPath::Registers
        }
        other => other,
    };
    let layout = match (op.trans_a, op.trans_b) {
        (false, false) => 0,
        (false, true) => 1,
        (true, false) => 2,
        (true, true) => 3,
    };
    let aligned = op.aligned();
    // 64-column subgroup blocks where they pad N no more than 32-column ones.
    let wide = op.n.div_ceil(SUBGROUP_WIDE_COLS) * SUBGROUP_WIDE_COLS == op.n.div_ceil(SUBGROUP_COLS) * SUBGROUP_COLS;
    let one = |entry: &'static str, rows: usize, cols: usize| MatmulPlan { path, entry, rows, cols, splits: 1 };
    match path {
        KernelPath::Subgroup if aligned && gpu.texture_operands() && op.texture_layout(gpu).is_some() => {
            one(["texture_nn", "texture_nt", "texture_tn", "texture_tt"][layout], SUBGROUP_ROWS, SUBGROUP_COLS)
        }
        KernelPath::Subgroup if aligned && wide => one(
            ["subgroup_wide_nn", "subgroup_wide_nt", "subgroup_wide_tn", "subgroup_wide_tt"][layout],
            SUBGROUP_ROWS,
            SUBGROUP_WIDE_COLS,
        ),
        KernelPath::Subgroup if aligned => {
            one(["subgroup_nn", "subgroup_nt", "subgroup_tn", "subgroup_tt"][layout], SUBGROUP_ROWS, SUBGROUP_COLS)
        }
        KernelPath::Subgroup => one("subgroup_general", SUBGROUP_ROWS, SUBGROUP_COLS),
        KernelPath::Registers if aligned => {
            one(["registers_nn", "registers_nt", "registers_tn", "registers_tt"][layout], REGISTER_ROWS, REGISTER_COLS)
        }
        KernelPath::Registers => one("registers_general", GENERAL_ROWS, GENERAL_COLS),
        KernelPath::Tiled => {
            let tiles = |t: usize| op.m.div_ceil(t) * op.n.div_ceil(t) * op.batch;
            let entry = if aligned { "tiled_64" } else { "tiled_general" };
            if tiles(TILE) < SPLIT_MAX_TILES && op.k >= SPLIT_MIN_K {
                // K per split: a multiple of the 64-tile kernels' stage (16), at least 512.
                let k_split = op.k.div_ceil(SPLIT_MAX).max(SPLIT_MIN_CHUNK).next_multiple_of(16);
                let splits = op.k.div_ceil(k_split);
                let fits = op.batch * splits <= u16::MAX as usize
                    && (splits * op.out_len()).div_ceil(256) <= u16::MAX as usize
                    && u32::try_from(splits * op.out_len()).is_ok();
                if splits > 1 && fits {
                    return MatmulPlan { path, entry, rows: TILE, cols: TILE, splits };
                }
            }
            if aligned && tiles(TILE_LARGE) >= LARGE_MIN_TILES {
                one("tiled_128", TILE_LARGE, TILE_LARGE)
            } else {
                one(entry, TILE, TILE)
            }
        }
    }
}
