//! Reverse-mode automatic differentiation.
//!
//! Every recorded op is an [`Op`] variant that names the state its backward needs (the
//! `saved` tensors and sizes), kept with its inputs in a [`Node`] on the output tensor. The
//! backward rules of all ops are in one place: [`backward_rule`], one `match` over [`Op`].
//!
//! [`backward`] orders the graph under a loss topologically (the tape), walks it from the loss
//! back, and accumulates each parameter's gradient into [`Tensor::grad`] (adding to what is
//! already there, so several backward passes sum up until [`Tensor::zero_grad`]).
//!
//! [`no_grad`] runs a closure without recording: ops then make plain tensors, and the
//! backward state they would have saved is never kept alive.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::kernels::attention::{self, Attention, AttentionGrads, AttentionIo};
use crate::kernels::elementwise::{self, BinaryOp, UnaryOp};
use crate::kernels::l2norm::L2Mode;
use crate::kernels::matmul::Matmul;
use crate::kernels::upsample::{self, Resize};
use crate::kernels::Result;
use crate::kernels::{
    em, embedding, l2norm, layer_norm, loss, mask_head, patch_embed, permute, reduce, softmax, GpuBuffer,
};
use crate::tensor::{numel, Tensor};

/// How a tensor was made: the op (with its saved state) and its inputs.
pub struct Node {
    pub(crate) op: Op,
    pub(crate) inputs: Vec<Tensor>,
}

/// A recorded op and what its backward needs. Tensors named here are *saved*: kept alive
/// until the graph is dropped.
pub(crate) enum Op {
    /// a op b with broadcasting; saved operands for mul/div.
    Binary { op: BinaryOp, a: Tensor, b: Tensor },
    /// alpha * x + beta.
    Scale { alpha: f32 },
    /// x[rows, c] + bias[c].
    BiasAdd { rows: usize, c: usize },
    /// f(x) elementwise.
    Unary { op: UnaryOp, x: Tensor },
    /// Batched matmul of a and b; with `bias`, plus a Linear's bias (input 2) added in its
    /// epilogue; with `residual` as well, plus a residual (input 3) it accumulated onto; with
    /// `act` (and `bias`), the output is f(product + bias), and the bare product is saved (the
    /// pre-activation is recomputed from it).
    Matmul { a: Tensor, b: Tensor, spec: Matmul, bias: bool, residual: bool, act: Option<(UnaryOp, Arc<GpuBuffer>)> },
    /// Same data, new shape.
    Reshape { from: Vec<usize> },
    /// Axis permutation; `perm[i]` is the input axis of output axis i.
    Permute { input_shape: Vec<usize>, perm: Vec<usize> },
    /// Sum over one axis of a [outer, len, inner] view.
    SumAxis { outer: usize, len: usize, inner: usize },
    /// Softmax over the last axis; saved output.
    Softmax { y: Tensor, rows: usize, cols: usize },
    /// LayerNorm over the last axis; saved input, weight and statistics.
    LayerNorm { x: Tensor, weight: Tensor, mean: Arc<GpuBuffer>, rstd: Arc<GpuBuffer>, rows: usize, cols: usize },
    /// L2 normalisation over the last axis; saved input and norms.
    L2Norm { x: Tensor, norms: Arc<GpuBuffer>, rows: usize, cols: usize, mode: L2Mode },
    /// Row gather from a table; saved indices.
    Embedding { indices: Arc<GpuBuffer>, count: usize, dim: usize, vocab: usize },
    /// Attention; saved inputs, output, log-sum-exp and, when the products method ran, the
    /// probabilities (else the backward recomputes them).
    Attention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Arc<GpuBuffer>,
        lse: Arc<GpuBuffer>,
        probs: Option<Arc<GpuBuffer>>,
        mask: Option<Arc<GpuBuffer>>,
        spec: Attention,
    },
    /// The unrolled EM loop; saved input, bases and every iteration's Z and mu.
    Em { u: Tensor, bases: Tensor, fwd: Arc<em::EmForward>, spec: em::EmShape },
    /// Patch embedding; saved image and weight.
    PatchEmbed { image: Tensor, weight: Tensor, batch: usize, channels: usize, size: usize, patch: usize, dim: usize },
    /// Bilinear resize.
    Bilinear { spec: Resize },
    /// Concatenation along the middle axis of [outer, len_i, inner] views.
    Concat { outer: usize, lens: Vec<usize>, inner: usize },
    /// The slice [start, start + len) of the middle axis of an [outer, total, inner] view.
    Narrow { outer: usize, total: usize, start: usize, len: usize, inner: usize },
    /// Cosine mask head; saved features, text and scale.
    MaskHead { x: Tensor, text: Tensor, scale: Tensor, batch: usize, tokens: usize, width: usize, classes: usize },
    /// Mean pixel cross-entropy; saved logits and targets.
    CrossEntropy { logits: Tensor, target: Arc<GpuBuffer>, batch: usize, classes: usize, pixels: usize },
    /// Dice loss; saved logits, targets and the per-class sums.
    Dice { logits: Tensor, target: Arc<GpuBuffer>, stats: Arc<GpuBuffer>, batch: usize, classes: usize, pixels: usize },
}

thread_local! {
    static NO_GRAD_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether ops record history on this thread right now.
pub fn is_recording() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// Runs `f` without recording history (inference, optimiser updates, EM bases updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
    let _guard = Guard;
    f()
}

/// Makes the output tensor of an op, recording a node when any input needs a gradient.
pub(crate) fn record(out: GpuBuffer, shape: Vec<usize>, op: impl FnOnce() -> Op, inputs: &[&Tensor]) -> Tensor {
    record_arc(Arc::new(out), shape, op, inputs)
}

/// Whether an op on `inputs` is recorded for a backward (recording is on and an input requires
/// a gradient): ops may skip what only their backward would read when it is not.
pub(crate) fn will_record(inputs: &[&Tensor]) -> bool {
    is_recording() && inputs.iter().any(|t| t.requires_grad())
}

/// [`record`] for an output buffer that is shared (e.g. also saved for backward).
pub(crate) fn record_arc(
    out: Arc<GpuBuffer>,
    shape: Vec<usize>,
    op: impl FnOnce() -> Op,
    inputs: &[&Tensor],
) -> Tensor {
    let gpu = inputs[0].gpu().clone();
    let needs = will_record(inputs);
    let node = needs.then(|| Node { op: op(), inputs: inputs.iter().map(|&t| t.clone()).collect() });
    Tensor::build(&gpu, shape, out, node, needs)
}

/// Tensors under `root` in an order where every tensor comes after all tensors it was made from.
fn tape(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // Iterative DFS (graphs of a deep model must not overflow the stack).
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(node) = &t.0.node {
            for input in &node.inputs {
                if input.requires_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}

/// Back-propagates from `loss` (any shape; its gradient is seeded with ones) and accumulates
/// gradients into every parameter it depends on.
pub fn backward(loss: &Tensor) -> Result<()> {
    backward_with(loss, &Tensor::full(loss.gpu(), loss.shape(), 1.0)?)
}

/// Back-propagates with an explicit gradient of `output`.
pub fn backward_with(output: &Tensor, grad_output: &Tensor) -> Result<()> {
    if !output.requires_grad() {
        return Ok(());
    }
    let mut grads: HashMap<u64, Tensor> = HashMap::new();
    grads.insert(output.id(), grad_output.clone());
    for t in tape(output).iter().rev() {
        let Some(g) = grads.remove(&t.id()) else { continue };
        match &t.0.node {
            None => {
                // A parameter: accumulate.
                let total = match t.grad() {
                    Some(prev) => add_raw(&prev, &g)?,
                    None => g,
                };
                t.set_grad(Some(total));
            }
            Some(node) => {
                // The gradient already gathered for each input: a rule may fold it into its
                // own kernel (and take it), saving the separate add below.
                let mut earlier: Vec<Option<Tensor>> = node
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(i, input)| {
                        let first = node.inputs[..i].iter().all(|o| o.id() != input.id());
                        if first && input.requires_grad() {
                            grads.remove(&input.id())
                        } else {
                            None
                        }
                    })
                    .collect();
                let input_grads = backward_rule(&node.op, &node.inputs, t, &g, &mut earlier)?;
                for ((input, ig), prev) in node.inputs.iter().zip(input_grads).zip(earlier) {
                    if let Some(prev) = prev {
                        grads.insert(input.id(), prev);
                    }
                    let Some(ig) = ig else { continue };
                    if !input.requires_grad() {
                        continue;
                    }
                    let total = match grads.remove(&input.id()) {
                        Some(prev) => add_raw(&prev, &ig)?,
                        None => ig,
                    };
                    grads.insert(input.id(), total);
                }
            }
        }
    }
    Ok(())
}

// ----- plain (unrecorded) helpers used by backward rules -----

fn constant(like: &Tensor, buf: GpuBuffer, shape: &[usize]) -> Tensor {
    Tensor::build(like.gpu(), shape.to_vec(), Arc::new(buf), None, false)
}

fn add_raw(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let gpu = a.gpu();
    let out = gpu.alloc(a.numel())?;
    elementwise::binary(gpu, BinaryOp::Add, a.buffer(), a.shape(), b.buffer(), b.shape(), &out)?;
    Ok(constant(a, out, a.shape()))
}

fn binary_raw(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let gpu = a.gpu();
    let shape = elementwise::broadcast_shape(a.shape(), b.shape())?;
    let out = gpu.alloc(numel(&shape))?;
    elementwise::binary(gpu, op, a.buffer(), a.shape(), b.buffer(), b.shape(), &out)?;
    Ok(constant(a, out, &shape))
}

fn scale_raw(x: &Tensor, alpha: f32) -> Result<Tensor> {
    let out = x.gpu().alloc(x.numel())?;
    elementwise::scale(x.gpu(), x.buffer(), alpha, 0.0, &out, x.numel())?;
    Ok(constant(x, out, x.shape()))
}

/// Sums a broadcast gradient back down to `shape`.
fn reduce_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let out = g.gpu().alloc(numel(shape))?;
    reduce::sum_to_shape(g.gpu(), g.buffer(), g.shape(), shape, &out)?;
    Ok(constant(g, out, shape))
}

fn matmul_raw(a: &Tensor, b: &Tensor, spec: Matmul, out_shape: &[usize]) -> Result<Tensor> {
    let out = a.gpu().alloc(numel(out_shape))?;
    crate::kernels::matmul::matmul(a.gpu(), a.buffer(), b.buffer(), &out, &spec)?;
    Ok(constant(a, out, out_shape))
}

/// Whether `t` is the only handle on its buffer, so a kernel may add into it in place.
fn sole_owner(t: &Tensor) -> bool {
    Arc::strong_count(&t.0) == 1 && Arc::strong_count(&t.0.data) == 1
}

/// The backward rule of every op: given the op's saved state, its inputs, its output and the
/// gradient of the output, returns the gradient of each input (None where none flows).
///
/// `earlier[i]` is the gradient that already reached input i by other paths. A rule whose
/// kernel can add it in the same pass takes it (`earlier[i].take()`) and returns the sum;
/// otherwise the caller adds the two. LayerNorm does so (a pre-norm block's residual stream)
/// and so do matmuls whose earlier gradient they can accumulate into (q, k and v projections
/// of one input).
fn backward_rule(
    op: &Op,
    inputs: &[Tensor],
    out: &Tensor,
    g: &Tensor,
    earlier: &mut [Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let gpu = g.gpu();
    let wants = |i: usize| inputs[i].requires_grad();
    Ok(match op {
        Op::Binary { op, a, b } => {
            // d(a+b) = g, g;  d(a-b) = g, -g;  d(a*b) = g b, g a;  d(a/b) = g / b, -g a / b^2
            let (ga, gb) = match op {
                BinaryOp::Add => (g.clone(), g.clone()),
                BinaryOp::Sub => (g.clone(), scale_raw(g, -1.0)?),
                BinaryOp::Mul => (binary_raw(BinaryOp::Mul, g, b)?, binary_raw(BinaryOp::Mul, g, a)?),
                BinaryOp::Div => {
                    let ga = binary_raw(BinaryOp::Div, g, b)?;
                    // -g a / b^2 = -(g / b) * (a / b) = -ga * out
                    let gb = scale_raw(&binary_raw(BinaryOp::Mul, &ga, out)?, -1.0)?;
                    (ga, gb)
                }
            };
            vec![
                if wants(0) { Some(reduce_to(&ga, a.shape())?) } else { None },
                if wants(1) { Some(reduce_to(&gb, b.shape())?) } else { None },
            ]
        }
        Op::Scale { alpha } => vec![Some(scale_raw(g, *alpha)?)],
        Op::BiasAdd { rows, c } => {
            // d x = g;  d bias = sum over rows of g
            let db = if wants(1) { Some(sum_rows(g, *rows, *c)?) } else { None };
            vec![Some(g.clone()), db]
        }
        Op::Unary { op, x } => {
            let dx = gpu.alloc(x.numel())?;
            elementwise::unary_backward(gpu, *op, x.buffer(), g.buffer(), &dx, x.numel())?;
            vec![Some(constant(g, dx, x.shape()))]
        }
        Op::Matmul { a, b, spec, bias, residual, act } => {
            // With an activation, y = f(z) with z = product + bias: first dz = g f'(z) (z
            // recomputed from the saved product), then everything below as for a Linear whose
            // output gradient is dz, the bias's gradient (the sum of dz over the rows) included.
            let dz;
            let g = match act {
                Some((f, product)) => {
                    let out = gpu.alloc(g.numel())?;
                    let shape = elementwise::BiasAct { op: *f, rows: spec.batch * spec.m, c: spec.n };
                    elementwise::bias_act_backward(gpu, product, inputs[2].buffer(), g.buffer(), &out, &shape)?;
                    dz = constant(g, out, g.shape());
                    &dz
                }
                None => g,
            };
            // C = A B  =>  dA = dC B^T,  dB = A^T dC  (with the stored transposes folded in).
            let da = if wants(0) {
                // A stored [M,K] (or [K,M] when trans_a): dA = dC B^T (or its transpose B dC^T).
                let s = if spec.trans_a {
                    Matmul {
                        batch: spec.batch,
                        m: spec.k,
                        n: spec.m,
                        k: spec.n,
                        trans_a: spec.trans_b,
                        trans_b: true,
                        broadcast_a: spec.broadcast_b,
                        broadcast_b: false,
                        accumulate: false,
                    }
                } else {
                    Matmul {
                        batch: spec.batch,
                        m: spec.m,
                        n: spec.k,
                        k: spec.n,
                        trans_a: false,
                        trans_b: !spec.trans_b,
                        broadcast_a: false,
                        broadcast_b: spec.broadcast_b,
                        accumulate: false,
                    }
                };
                let (l, r) = if spec.trans_a { (b, g) } else { (g, b) };
                let per = spec.m * spec.k;
                let mut folded = None;
                if !spec.broadcast_a {
                    if let Some(prev) = earlier[0].take_if(|p| sole_owner(p)) {
                        // Accumulate into the gradient that already reached A (one pass, no add).
                        crate::kernels::matmul::matmul(
                            gpu,
                            l.buffer(),
                            r.buffer(),
                            prev.buffer(),
                            &Matmul { accumulate: true, ..s },
                        )?;
                        folded = Some(prev);
                    }
                }
                let d = match folded {
                    Some(sum) => sum,
                    None => matmul_raw(l, r, s, &[spec.batch, per])?,
                };
                // A shared over the batch: its gradient is the sum over the batch.
                Some(if spec.broadcast_a {
                    sum_batches(&d, spec.batch, per, a.shape())?
                } else {
                    reshape_raw(&d, a.shape())
                })
            } else {
                None
            };
            // A Linear's bias gradient where the weight gradient's product computes it.
            let mut dbias = None;
            let db = if wants(1) {
                let s = if spec.trans_b {
                    // B stored [N,K]: dB = dC^T A  ([N,M] x [M,K])
                    Matmul {
                        batch: spec.batch,
                        m: spec.n,
                        n: spec.k,
                        k: spec.m,
                        trans_a: true,
                        trans_b: spec.trans_a,
                        broadcast_a: false,
                        broadcast_b: spec.broadcast_a,
                        accumulate: false,
                    }
                } else {
                    // B stored [K,N]: dB = A^T dC  ([K,M] x [M,N])
                    Matmul {
                        batch: spec.batch,
                        m: spec.k,
                        n: spec.n,
                        k: spec.m,
                        trans_a: !spec.trans_a,
                        trans_b: false,
                        broadcast_a: spec.broadcast_a,
                        broadcast_b: false,
                        accumulate: false,
                    }
                };
                let (l, r) = if spec.trans_b { (g, a) } else { (a, g) };
                let per = spec.k * spec.n;
                // The product, and for a Linear (a bias in the epilogue, the weight stored
                // [N, K], one product) the bias gradient with it: the sum of g over the rows is
                // the row sums of this product's A operand, gᵀ (matmul_row_sums: no reduction
                // launch of its own on the subgroup path).
                if *bias && wants(2) && spec.trans_b && spec.batch == 1 {
                    dbias = Some(gpu.alloc(spec.n)?);
                }
                let product = |out: &GpuBuffer, s: &Matmul| match &dbias {
                    Some(sums) => crate::kernels::matmul::matmul_row_sums(gpu, l.buffer(), r.buffer(), out, sums, s),
                    None => crate::kernels::matmul::matmul(gpu, l.buffer(), r.buffer(), out, s),
                };
                let mut folded = None;
                if !spec.broadcast_b {
                    if let Some(prev) = earlier[1].take_if(|p| sole_owner(p)) {
                        product(prev.buffer(), &Matmul { accumulate: true, ..s })?;
                        folded = Some(prev);
                    }
                }
                let d = match folded {
                    Some(sum) => sum,
                    None => {
                        let out = gpu.alloc(spec.batch * per)?;
                        product(&out, &s)?;
                        constant(l, out, &[spec.batch, per])
                    }
                };
                Some(if spec.broadcast_b {
                    sum_batches(&d, spec.batch, per, b.shape())?
                } else {
                    reshape_raw(&d, b.shape())
                })
            } else {
                None
            };
            if *bias {
                // A Linear's bias added in the product's epilogue: its gradient is the sum of
                // g over the rows (the product is a single [M, N] matrix then).
                let dbias = match dbias {
                    Some(sums) => Some(constant(g, sums, &[spec.n])),
                    None if wants(2) => Some(sum_rows(g, spec.batch * spec.m, spec.n)?),
                    None => None,
                };
                if *residual {
                    // out = residual + product + bias: the residual's gradient is g itself.
                    return Ok(vec![da, db, dbias, Some(reshape_raw(g, inputs[3].shape()))]);
                }
                return Ok(vec![da, db, dbias]);
            }
            vec![da, db]
        }
        Op::Reshape { from } => vec![Some(reshape_raw(g, from))],
        Op::Permute { input_shape, perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            let dx = gpu.alloc(g.numel())?;
            permute::permute(gpu, g.buffer(), g.shape(), &inverse, &dx)?;
            vec![Some(constant(g, dx, input_shape))]
        }
        Op::SumAxis { outer, len, inner } => {
            // Broadcast g [outer, 1, inner] back over the summed axis.
            let zeros = Tensor::zeros(gpu, &[*outer, *len, *inner])?;
            let dx = binary_raw(BinaryOp::Add, &zeros, &reshape_raw(g, &[*outer, 1, *inner]))?;
            vec![Some(reshape_raw(&dx, inputs[0].shape()))]
        }
        Op::Softmax { y, rows, cols } => {
            let dx = gpu.alloc(y.numel())?;
            softmax::backward(gpu, y.buffer(), g.buffer(), &dx, *rows, *cols)?;
            vec![Some(constant(g, dx, y.shape()))]
        }
        Op::LayerNorm { x, weight, mean, rstd, rows, cols } => {
            let dx = gpu.alloc(x.numel())?;
            let dw = gpu.alloc(*cols)?;
            let db = gpu.alloc(*cols)?;
            let saved = layer_norm::LayerNormSaved { x: x.buffer(), weight: weight.buffer(), mean, rstd };
            // The residual stream's gradient, if any, joins dx in the same pass.
            let prev = earlier[0].take();
            let grads = layer_norm::LayerNormGrads {
                dx: &dx,
                dweight: &dw,
                dbias: &db,
                dx_in: prev.as_ref().map(|p| p.buffer()),
            };
            layer_norm::backward(gpu, &saved, g.buffer(), &grads, *rows, *cols)?;
            vec![Some(constant(g, dx, x.shape())), Some(constant(g, dw, &[*cols])), Some(constant(g, db, &[*cols]))]
        }
        Op::L2Norm { x, norms, rows, cols, mode } => {
            let dx = gpu.alloc(x.numel())?;
            let shape = l2norm::L2Norm { rows: *rows, cols: *cols, mode: *mode };
            l2norm::backward(gpu, x.buffer(), norms, g.buffer(), &dx, &shape)?;
            vec![Some(constant(g, dx, x.shape()))]
        }
        Op::Embedding { indices, count, dim, vocab } => {
            let dt = gpu.alloc(vocab * dim)?;
            embedding::scatter_add_backward(gpu, indices, g.buffer(), &dt, *count, *dim, *vocab)?;
            vec![Some(constant(g, dt, &[*vocab, *dim]))]
        }
        Op::Attention { q, k, v, out, lse, probs, mask, spec } => {
            let (dq, dk, dv) = (gpu.alloc(q.numel())?, gpu.alloc(k.numel())?, gpu.alloc(v.numel())?);
            let io = AttentionIo {
                q: q.buffer(),
                k: k.buffer(),
                v: v.buffer(),
                key_mask: mask.as_deref(),
                out,
                lse,
                probs: probs.as_deref(),
            };
            attention::backward(gpu, &io, g.buffer(), &AttentionGrads { dq: &dq, dk: &dk, dv: &dv }, spec)?;
            vec![Some(constant(g, dq, q.shape())), Some(constant(g, dk, k.shape())), Some(constant(g, dv, v.shape()))]
        }
        Op::Em { u, bases, fwd, spec } => {
            let grads = em::EmOutputGrads { recon: g.buffer(), z: None, mu: None };
            let du =
                em::Em::new(gpu, *spec)?.backward(em::GradMode::Unrolled, u.buffer(), bases.buffer(), fwd, &grads)?;
            vec![Some(constant(g, du, u.shape()))]
        }
        Op::PatchEmbed { image, weight, batch, channels, size, patch, dim } => {
            let dw = gpu.alloc(weight.numel())?;
            let di = if wants(0) { Some(gpu.alloc(image.numel())?) } else { None };
            let shape =
                patch_embed::PatchEmbed { batch: *batch, channels: *channels, size: *size, patch: *patch, dim: *dim };
            let inputs = patch_embed::PatchEmbedInputs { image: image.buffer(), weight: weight.buffer() };
            let grads = patch_embed::PatchEmbedGrads { d_weight: &dw, d_image: di.as_ref() };
            patch_embed::backward(gpu, &inputs, g.buffer(), &grads, &shape)?;
            vec![di.map(|d| constant(g, d, image.shape())), Some(constant(g, dw, weight.shape()))]
        }
        Op::Concat { outer, lens, inner } => {
            let total: usize = lens.iter().sum();
            let mut start = 0;
            let mut grads = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                grads.push(if wants(i) {
                    Some(constant(
                        g,
                        narrow_buffer(gpu, g.buffer(), *outer, total, start, len, *inner)?,
                        inputs[i].shape(),
                    ))
                } else {
                    None
                });
                start += len;
            }
            grads
        }
        Op::Narrow { outer, total, start, len, inner } => {
            let dx = gpu.zeros(outer * total * inner)?;
            for o in 0..*outer {
                gpu.copy_region(g.buffer(), o * len * inner, &dx, (o * total + start) * inner, len * inner)?;
            }
            vec![Some(constant(g, dx, inputs[0].shape()))]
        }
        Op::Bilinear { spec } => {
            let dx = gpu.alloc(inputs[0].numel())?;
            upsample::bilinear_backward(gpu, g.buffer(), &dx, spec)?;
            vec![Some(constant(g, dx, inputs[0].shape()))]
        }
        Op::MaskHead { x, text, scale, batch, tokens, width, classes } => {
            let (dx, dt, ds) = (gpu.alloc(x.numel())?, gpu.alloc(text.numel())?, gpu.alloc(1)?);
            let inputs = mask_head::MaskHeadInputs { x: x.buffer(), text: text.buffer(), logit_scale: scale.buffer() };
            let grads = mask_head::MaskHeadGrads { d_x: &dx, d_text: &dt, d_logit_scale: &ds };
            let shape = mask_head::MaskHead { batch: *batch, tokens: *tokens, width: *width, classes: *classes };
            mask_head::backward(gpu, &inputs, g.buffer(), &grads, &shape)?;
            vec![
                Some(constant(g, dx, x.shape())),
                Some(constant(g, dt, text.shape())),
                Some(constant(g, ds, scale.shape())),
            ]
        }
        Op::CrossEntropy { logits, target, batch, classes, pixels } => {
            let dl = gpu.alloc(logits.numel())?;
            let shape = loss::LossShape { batch: *batch, classes: *classes, pixels: *pixels };
            loss::cross_entropy_backward(gpu, logits.buffer(), target, g.buffer(), &dl, &shape)?;
            vec![Some(constant(g, dl, logits.shape()))]
        }
        Op::Dice { logits, target, stats, batch, classes, pixels } => {
            let dl = gpu.alloc(logits.numel())?;
            let shape = loss::LossShape { batch: *batch, classes: *classes, pixels: *pixels };
            loss::dice_backward(gpu, logits.buffer(), target, stats, g.buffer(), &dl, &shape)?;
            vec![Some(constant(g, dl, logits.shape()))]
        }
    })
}

/// The slice [start, start + len) of the middle axis of `buf` viewed as [outer, total, inner].
pub(crate) fn narrow_buffer(
    gpu: &crate::kernels::Gpu,
    buf: &GpuBuffer,
    outer: usize,
    total: usize,
    start: usize,
    len: usize,
    inner: usize,
) -> Result<GpuBuffer> {
    let out = gpu.alloc(outer * len * inner)?;
    for o in 0..outer {
        gpu.copy_region(buf, (o * total + start) * inner, &out, o * len * inner, len * inner)?;
    }
    Ok(out)
}

fn reshape_raw(t: &Tensor, shape: &[usize]) -> Tensor {
    Tensor::build(t.gpu(), shape.to_vec(), t.0.data.clone(), None, false)
}

/// Sums a `[rows, c]` gradient over its rows: a bias's gradient.
fn sum_rows(g: &Tensor, rows: usize, c: usize) -> Result<Tensor> {
    let out = g.gpu().alloc(c)?;
    reduce::sum_axis(g.gpu(), g.buffer(), 1, rows, c, &out)?;
    Ok(constant(g, out, &[c]))
}

/// Sums `[batch, per]` over the batch into `shape` (numel = per).
fn sum_batches(d: &Tensor, batch: usize, per: usize, shape: &[usize]) -> Result<Tensor> {
    let out = d.gpu().alloc(per)?;
    reduce::sum_axis(d.gpu(), d.buffer(), 1, batch, per, &out)?;
    Ok(constant(d, out, shape))
}
