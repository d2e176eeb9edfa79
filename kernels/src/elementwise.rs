//! Launchers for `shaders/elementwise.wgsl`: broadcast binary ops, scale, bias add, and
//! activations with their backward, and the fused epilogues of a Linear layer (bias with
//! activation, bias with residual add), one pass over memory each.

use crate::buffer::check_len;
use crate::context::{grid, Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "elementwise.wgsl");
shader!(TEXTURE_SHADER, "elementwise_texture.wgsl");

/// Most axes a broadcast shape may have.
pub const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    rank: u32,
    c: u32,
    _pad0: u32,
    alpha: f32,
    beta: f32,
    _pad: [u32; 2],
    shape: [u32; MAX_RANK],
    a_strides: [u32; MAX_RANK],
    b_strides: [u32; MAX_RANK],
}

impl Params {
    fn flat(n: usize) -> Self {
        Params {
            n: n as u32,
            rank: 0,
            c: 0,
            _pad0: 0,
            alpha: 0.0,
            beta: 0.0,
            _pad: [0; 2],
            shape: [0; MAX_RANK],
            a_strides: [0; MAX_RANK],
            b_strides: [0; MAX_RANK],
        }
    }
}

/// A binary operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add = 0,
    /// a - b
    Sub = 1,
    /// a * b
    Mul = 2,
    /// a / b
    Div = 3,
}

/// A unary activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// max(x, 0)
    Relu = 0,
    /// x Φ(x), exact erf
    Gelu = 1,
    /// x sigmoid(1.702 x)
    QuickGelu = 2,
    /// 1 / (1 + e^-x)
    Sigmoid = 3,
    /// e^x
    Exp = 4,
    /// -x
    Neg = 5,
}

impl UnaryOp {
    /// The activation's name, as profiles show it.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::QuickGelu => "quick_gelu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Exp => "exp",
            UnaryOp::Neg => "neg",
        }
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The NumPy broadcast of two shapes, or an error naming both.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for k in 0..rank {
        let da = if k + a.len() >= rank { a[k + a.len() - rank] } else { 1 };
        let db = if k + b.len() >= rank { b[k + b.len() - rank] } else { 1 };
        out[k] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::Shape(format!(
                    "shapes {a:?} and {b:?} cannot be broadcast together (axis {k}: {da} vs {db})"
                )))
            }
        };
    }
    Ok(out)
}

/// Element strides of `shape` seen through the broadcast `out` shape (0 on broadcast axes).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut s = 1;
    for k in (0..shape.len()).rev() {
        let ko = k + out.len() - shape.len();
        strides[ko] = if shape[k] == 1 && out[ko] != 1 { 0 } else { s };
        s *= shape[k];
    }
    strides
}

/// Launches one of the fused bias kernels on `[a, bias, out, c3]`: by vec4 (entry `ENTRY4`,
/// each buffer bound a second time as a vec4 view) when the bias length is a multiple of 4,
/// else by element.
fn launch_fused(
    gpu: &Gpu,
    entries: (&'static str, &'static str),
    op: u32,
    params: &Params,
    buffers: [&GpuBuffer; 4],
    label: KernelLabel,
) -> Result<()> {
    if params.c.is_multiple_of(4) {
        let mut p = *params;
        p.n /= 4;
        let [a, b, _, c] = buffers;
        // Where texture operands are on: a, the bias and (for the entry points with a third
        // operand) c fetched from textures (elementwise_texture.wgsl).
        let (n, bias) = (params.n as usize, params.c as usize);
        let operands: &[(&GpuBuffer, usize)] =
            if entries.1 == "bias_act4" { &[(a, n), (b, bias)] } else { &[(a, n), (b, bias), (c, n)] };
        launch4(gpu, (entries.1, op), &p, buffers, operands, label)
    } else {
        launch(gpu, entries.0, op, params, &buffers, label)
    }
}

/// Dispatches `entry` over `params.n` invocations with the shader's `OP` constant set to `op`
/// (the operation code of the binary and activation entry points; the others ignore it): one
/// pipeline per entry point and code, so that no element's arithmetic branches on it.
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    op: u32,
    params: &Params,
    buffers: &[&GpuBuffer],
    label: KernelLabel,
) -> Result<()> {
    let d = Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(params),
        buffers,
        workgroups: grid((params.n as usize).div_ceil(256) as u32),
        label,
    };
    gpu.dispatch_specialized(d, &[("OP", op as f64)])
}

/// `out = a op b` with NumPy broadcasting; `out` must hold the broadcast shape.
pub fn binary(
    gpu: &Gpu,
    op: BinaryOp,
    a: &GpuBuffer,
    a_shape: &[usize],
    b: &GpuBuffer,
    b_shape: &[usize],
    out: &GpuBuffer,
) -> Result<Vec<usize>> {
    let shape = broadcast_shape(a_shape, b_shape)?;
    if shape.len() > MAX_RANK {
        return Err(Error::Shape(format!("broadcast shape {shape:?} has more than {MAX_RANK} axes")));
    }
    check_len("first operand", a, a_shape)?;
    check_len("second operand", b, b_shape)?;
    check_len("output", out, &shape)?;
    let n = numel(&shape);
    let mut p = Params::flat(n);
    p.rank = shape.len() as u32;
    let (sa, sb) = (broadcast_strides(a_shape, &shape), broadcast_strides(b_shape, &shape));
    for k in 0..shape.len() {
        p.shape[k] = shape[k] as u32;
        p.a_strides[k] = sa[k] as u32;
        p.b_strides[k] = sb[k] as u32;
    }
    let name = match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
    };
    let label =
        KernelLabel { kernel: name, shape: format!("{a_shape:?}{b_shape:?}"), flops: n as u64, bytes: 12 * n as u64 };
    let b_len = numel(b_shape);
    let code = op as u32;
    if a_shape == b_shape && n.is_multiple_of(4) {
        // No broadcasting: the vec4 kernel, on the buffers' vec4 views (bindings 5..7), or a
        // and b from textures where texture operands are on.
        p.n = (n / 4) as u32;
        launch4(gpu, ("binary_same4", code), &p, [a, b, out, a], &[(a, n), (b, b_len)], label)?;
    } else if a_shape == shape.as_slice() && is_trailing(b_shape, &shape) && b_len > 0 && b_len.is_multiple_of(4) {
        // b repeats over a's leading axes: by vec4, b's index the output's modulo its length.
        p.n = (n / 4) as u32;
        p.c = (b_len / 4) as u32;
        launch4(gpu, ("binary_suffix4", code), &p, [a, b, out, a], &[(a, n), (b, b_len)], label)?;
    } else {
        launch(gpu, "binary", code, &p, &[a, b, out], label)?;
    }
    Ok(shape)
}

/// Launches the vec4 entry point `entry` with operation code `op` over `params.n` vec4s, on
/// `[a, b, out, c]` (bindings 1..=4, each bound a second time as a vec4 view at 5..=8). Where
/// texture operands are on, the entry point of the same name in elementwise_texture.wgsl reads
/// `operands` (buffer and elements, in texture-binding order: a, b, c, those it reads) from
/// flat textures instead.
fn launch4(
    gpu: &Gpu,
    (entry, op): (&'static str, u32),
    params: &Params,
    [a, b, out, c]: [&GpuBuffer; 4],
    operands: &[(&GpuBuffer, usize)],
    label: KernelLabel,
) -> Result<()> {
    let textures = gpu.flat_operands(operands);
    let d = Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(params),
        buffers: &[a, b, out, c, a, b, out, c],
        workgroups: grid((params.n as usize).div_ceil(256) as u32),
        label,
    };
    gpu.dispatch_textured(d, &[("OP", op as f64)], &TEXTURE_SHADER, textures.as_deref())
}

/// Whether `b`, without its leading size-1 axes, is the trailing axes of `shape`: then `b`'s
/// element for output element i is i mod len(b).
fn is_trailing(b: &[usize], shape: &[usize]) -> bool {
    let lead = b.iter().take_while(|&&d| d == 1).count();
    let b = &b[lead..];
    b.len() <= shape.len() && shape.ends_with(b)
}

/// `out = alpha * a + beta` over the first `n` elements.
pub fn scale(gpu: &Gpu, a: &GpuBuffer, alpha: f32, beta: f32, out: &GpuBuffer, n: usize) -> Result<()> {
    check_len("input", a, &[n])?;
    check_len("output", out, &[n])?;
    let mut p = Params::flat(n);
    p.alpha = alpha;
    p.beta = beta;
    let label = KernelLabel { kernel: "scale", shape: format!("[{n}]"), flops: 2 * n as u64, bytes: 8 * n as u64 };
    launch(gpu, "scale", 0, &p, &[a, a, out], label)
}

/// `out[r, c] = a[r, c] + bias[c]` for `rows x c` elements.
pub fn bias_add(gpu: &Gpu, a: &GpuBuffer, bias: &GpuBuffer, out: &GpuBuffer, rows: usize, c: usize) -> Result<()> {
    check_len("input", a, &[rows, c])?;
    check_len("bias", bias, &[c])?;
    check_len("output", out, &[rows, c])?;
    if c == 0 {
        return Ok(());
    }
    let n = rows * c;
    let mut p = Params::flat(n);
    p.c = c as u32;
    let label = KernelLabel {
        kernel: "bias_add",
        shape: format!("[{rows},{c}]"),
        flops: n as u64,
        bytes: 8 * n as u64 + 4 * c as u64,
    };
    launch(gpu, "bias_add", 0, &p, &[a, bias, out], label)
}

/// `out = f(a)` over `n` elements.
pub fn unary(gpu: &Gpu, op: UnaryOp, a: &GpuBuffer, out: &GpuBuffer, n: usize) -> Result<()> {
    check_len("input", a, &[n])?;
    check_len("output", out, &[n])?;
    let mut p = Params::flat(n);
    let label = KernelLabel { kernel: op.name(), shape: format!("[{n}]"), flops: 8 * n as u64, bytes: 8 * n as u64 };
    if n.is_multiple_of(4) {
        p.n = (n / 4) as u32;
        return launch4(gpu, ("unary4", op as u32), &p, [a, a, out, a], &[(a, n)], label);
    }
    launch(gpu, "unary", op as u32, &p, &[a, a, out], label)
}

/// `dx = dy * f'(x)` over `n` elements.
pub fn unary_backward(gpu: &Gpu, op: UnaryOp, x: &GpuBuffer, dy: &GpuBuffer, dx: &GpuBuffer, n: usize) -> Result<()> {
    check_len("input", x, &[n])?;
    check_len("output gradient", dy, &[n])?;
    check_len("input gradient", dx, &[n])?;
    let mut p = Params::flat(n);
    let label = KernelLabel {
        kernel: "unary_backward",
        shape: format!("{}[{n}]", op.name()),
        flops: 10 * n as u64,
        bytes: 12 * n as u64,
    };
    if n.is_multiple_of(4) {
        p.n = (n / 4) as u32;
        return launch4(gpu, ("unary_backward4", op as u32), &p, [x, dy, dx, x], &[(x, n), (dy, n)], label);
    }
    launch(gpu, "unary_backward", op as u32, &p, &[x, dy, dx], label)
}

fn check_bias(what: &str, a: &GpuBuffer, bias: &GpuBuffer, out: &GpuBuffer, rows: usize, c: usize) -> Result<()> {
    check_len(what, a, &[rows, c])?;
    check_len("bias", bias, &[c])?;
    check_len("output", out, &[rows, c])
}

/// One fused bias and activation, `f(a[r, c] + bias[c])`: the activation and the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BiasAct {
    /// The activation f.
    pub op: UnaryOp,
    /// Rows of the input, the output and their gradients ([rows, c] each).
    pub rows: usize,
    /// Columns: the bias's length.
    pub c: usize,
}

/// `out[r, c] = f(a[r, c] + bias[c])`: a Linear's bias and activation in one pass.
pub fn bias_act(gpu: &Gpu, a: &GpuBuffer, bias: &GpuBuffer, out: &GpuBuffer, shape: &BiasAct) -> Result<()> {
    let BiasAct { op, rows, c } = *shape;
    check_bias("input", a, bias, out, rows, c)?;
    if c == 0 {
        return Ok(());
    }
    let n = rows * c;
    let mut p = Params::flat(n);
    p.c = c as u32;
    let label = KernelLabel {
        kernel: "bias_act",
        shape: format!("{}[{rows},{c}]", op.name()),
        flops: 9 * n as u64,
        bytes: 8 * n as u64 + 4 * c as u64,
    };
    launch_fused(gpu, ("bias_act", "bias_act4"), op as u32, &p, [a, bias, out, a], label)
}

/// `dz[r, c] = dy[r, c] * f'(a[r, c] + bias[c])`: the gradient of [`bias_act`] with respect to
/// `a` (the bias's gradient is the sum of `dz` over rows).
pub fn bias_act_backward(
    gpu: &Gpu,
    a: &GpuBuffer,
    bias: &GpuBuffer,
    dy: &GpuBuffer,
    dz: &GpuBuffer,
    shape: &BiasAct,
) -> Result<()> {
    let BiasAct { op, rows, c } = *shape;
    check_bias("input", a, bias, dz, rows, c)?;
    check_len("output gradient", dy, &[rows, c])?;
    if c == 0 {
        return Ok(());
    }
    let n = rows * c;
    let mut p = Params::flat(n);
    p.c = c as u32;
    let label = KernelLabel {
        kernel: "bias_act_backward",
        shape: format!("{}[{rows},{c}]", op.name()),
        flops: 11 * n as u64,
        bytes: 12 * n as u64 + 4 * c as u64,
    };
    launch_fused(gpu, ("bias_act_backward", "bias_act_backward4"), op as u32, &p, [a, bias, dz, dy], label)
}

/// `out[r, c] = a[r, c] + bias[c] + residual[r, c]`: a Linear's bias and the residual add after
/// it in one pass.
pub fn bias_residual(
    gpu: &Gpu,
    a: &GpuBuffer,
    bias: &GpuBuffer,
    residual: &GpuBuffer,
    out: &GpuBuffer,
    rows: usize,
    c: usize,
) -> Result<()> {
    check_bias("input", a, bias, out, rows, c)?;
    check_len("residual", residual, &[rows, c])?;
    if c == 0 {
        return Ok(());
    }
    let n = rows * c;
    let mut p = Params::flat(n);
    p.c = c as u32;
    let label = KernelLabel {
        kernel: "bias_residual",
        shape: format!("[{rows},{c}]"),
        flops: 2 * n as u64,
        bytes: 12 * n as u64 + 4 * c as u64,
    };
    launch_fused(gpu, ("bias_residual", "bias_residual4"), 0, &p, [a, bias, out, residual], label)
}
