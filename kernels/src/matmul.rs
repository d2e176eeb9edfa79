//! Launchers for `shaders/matmul.wgsl`: the batched matrix product with transpose, broadcast
//! and accumulate flags, the engine's most important kernel.
//!
//! Two implementations sit behind [`matmul`]: a register-blocked kernel without workgroup
//! memory for CPU adapters (lavapipe, where barriers are expensive and every load is a scalar
//! loop), and a shared-memory tiled kernel for real GPUs. [`matmul_with`] picks one explicitly,
//! so tests exercise both on whatever adapter is present. Backward passes are the same kernel
//! with transpose flags (dA = dC·Bᵀ, dB = Aᵀ·dC); there is no separate backward entry point.

use crate::context::{Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, KernelPath, Result};

shader!(SHADER, "matmul.wgsl");

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
/// The subgroup kernels' workgroup is 8 invocations that must form one subgroup.
const SUBGROUP_LANES: u32 = 8;
/// Output tile of one workgroup of the tiled kernel.
const TILE: usize = 64;

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
    _pad: [u32; 3],
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
    if op.out_len() == 0 || (op.k == 0 && op.accumulate) {
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
        _pad: [0; 3],
    };
    // The subgroup kernels need all 8 invocations of a workgroup in one subgroup: on adapters
    // whose subgroups can be smaller, the subgroup path runs the register kernels.
    let info = gpu.info();
    let path = if path == KernelPath::Subgroup && !(info.subgroups && info.subgroup_size.0 >= SUBGROUP_LANES) {
        path.fallback()
    } else {
        path
    };
    let layout = (op.trans_a, op.trans_b);
    let (entry, rows, cols) = match path {
        KernelPath::Tiled => ("tiled", TILE, TILE),
        KernelPath::Subgroup if op.aligned() => {
            let entry = match layout {
                (false, false) => "subgroup_nn",
                (false, true) => "subgroup_nt",
                (true, false) => "subgroup_tn",
                (true, true) => "subgroup_tt",
            };
            (entry, SUBGROUP_ROWS, SUBGROUP_COLS)
        }
        KernelPath::Subgroup => ("subgroup_general", SUBGROUP_ROWS, SUBGROUP_COLS),
        KernelPath::Registers if op.aligned() => {
            let entry = match layout {
                (false, false) => "registers_nn",
                (false, true) => "registers_nt",
                (true, false) => "registers_tn",
                (true, true) => "registers_tt",
            };
            (entry, REGISTER_ROWS, REGISTER_COLS)
        }
        KernelPath::Registers => ("registers_general", GENERAL_ROWS, GENERAL_COLS),
    };
    let label = KernelLabel {
        kernel: "matmul",
        shape: op.describe(),
        flops: op.flops(),
        bytes: 4 * (op.a_len() + op.b_len() + op.out_len() * if op.accumulate { 2 } else { 1 }) as u64,
    };
    gpu.dispatch(Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(&params),
        // Bindings 1..3 are the scalar views, 4..6 the vec4 views of the same buffers; each
        // entry point binds only the ones it uses.
        buffers: &[a, b, out, a, b, out],
        workgroups: [op.n.div_ceil(cols) as u32, op.m.div_ceil(rows) as u32, op.batch as u32],
        label,
    })
}
