//! Differentiable ops on [`Tensor`]s: each checks shapes, launches its forward kernel and
//! records a node with the state its backward needs (rules in `autograd`). The ops of the
//! model's own kernels (attention, EM, patch embedding, resize, losses, mask head) are in
//! `model`.

mod model;

pub use model::EmOutput;

use std::sync::Arc;

use crate::autograd::{record, Op};
use crate::kernels::elementwise::{self, BinaryOp, UnaryOp};
use crate::kernels::l2norm::{self, L2Mode};
use crate::kernels::matmul::{self, Matmul};
use crate::kernels::{embedding, layer_norm, permute, reduce, softmax, GpuBuffer};
use crate::kernels::{Error, Result};
use crate::tensor::{numel, Tensor};

/// Splits a shape into (rows, last axis).
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let cols = shape.last().copied().unwrap_or(1);
    (numel(shape) / cols.max(1), cols)
}

/// A bias must be `[C]` for a tensor whose last axis is C.
fn check_bias(bias: &Tensor, shape: &[usize]) -> Result<()> {
    let (_, c) = rows_cols(shape);
    if bias.shape() != [c] {
        return Err(Error::Shape(format!(
            "bias of shape {:?} does not match the last axis of {shape:?}",
            bias.shape()
        )));
    }
    Ok(())
}

impl Tensor {
    fn binary(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        let gpu = self.gpu();
        let shape = elementwise::broadcast_shape(self.shape(), other.shape())?;
        let out = gpu.alloc(numel(&shape))?;
        elementwise::binary(gpu, op, self.buffer(), self.shape(), other.buffer(), other.shape(), &out)?;
        Ok(record(out, shape, || Op::Binary { op, a: self.clone(), b: other.clone() }, &[self, other]))
    }

    /// Elementwise sum with NumPy broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, other)
    }

    /// Elementwise difference with broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, other)
    }

    /// Elementwise product with broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, other)
    }

    /// Elementwise quotient with broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, other)
    }

    /// `alpha * self + beta`.
    pub fn affine(&self, alpha: f32, beta: f32) -> Result<Tensor> {
        let out = self.gpu().alloc(self.numel())?;
        elementwise::scale(self.gpu(), self.buffer(), alpha, beta, &out, self.numel())?;
        Ok(record(out, self.shape().to_vec(), || Op::Scale { alpha }, &[self]))
    }

    /// `alpha * self`.
    pub fn scale(&self, alpha: f32) -> Result<Tensor> {
        self.affine(alpha, 0.0)
    }

    /// Adds `bias` (shape `[C]`) along the last axis (of size C).
    pub fn bias_add(&self, bias: &Tensor) -> Result<Tensor> {
        let (rows, c) = rows_cols(self.shape());
        check_bias(bias, self.shape())?;
        let out = self.gpu().alloc(self.numel())?;
        elementwise::bias_add(self.gpu(), self.buffer(), bias.buffer(), &out, rows, c)?;
        Ok(record(out, self.shape().to_vec(), || Op::BiasAdd { rows, c }, &[self, bias]))
    }

    /// Applies an elementwise activation.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let out = self.gpu().alloc(self.numel())?;
        elementwise::unary(self.gpu(), op, self.buffer(), &out, self.numel())?;
        Ok(record(out, self.shape().to_vec(), || Op::Unary { op, x: self.clone() }, &[self]))
    }

    /// max(x, 0).
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }

    /// Exact (erf) GELU.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }

    /// x * sigmoid(1.702 x), CLIP's activation.
    pub fn quick_gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::QuickGelu)
    }

    /// Batched matrix product `self · other` of `[..., M, K]` and `[..., K, N]`. Batch axes
    /// must match, or one side may be a plain matrix shared by every batch.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_with(other, false, false)
    }

    /// `self · otherᵀ` where `other` is `[..., N, K]`.
    pub fn matmul_t(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_with(other, false, true)
    }

    /// Batched matmul with transpose flags (`trans_a`: self is stored `[..., K, M]`;
    /// `trans_b`: other is stored `[..., N, K]`).
    pub fn matmul_with(&self, other: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        let (sa, sb) = (self.shape(), other.shape());
        let bad = || {
            Error::Shape(format!(
                "cannot multiply matrices of shapes {sa:?} and {sb:?}{}{}",
                if trans_a { " (first transposed)" } else { "" },
                if trans_b { " (second transposed)" } else { "" }
            ))
        };
        if sa.len() < 2 || sb.len() < 2 {
            return Err(bad());
        }
        let (ra, rb) = (&sa[sa.len() - 2..], &sb[sb.len() - 2..]);
        let (m, ka) = if trans_a { (ra[1], ra[0]) } else { (ra[0], ra[1]) };
        let (kb, n) = if trans_b { (rb[1], rb[0]) } else { (rb[0], rb[1]) };
        if ka != kb {
            return Err(bad());
        }
        let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
        let (batch_shape, broadcast_a, broadcast_b) = if ba == bb {
            (ba.to_vec(), false, false)
        } else if ba.is_empty() {
            (bb.to_vec(), true, false)
        } else if bb.is_empty() {
            (ba.to_vec(), false, true)
        } else {
            return Err(bad());
        };
        let batch = numel(&batch_shape);
        let spec = Matmul { batch, m, n, k: ka, trans_a, trans_b, broadcast_a, broadcast_b, accumulate: false };
        let mut shape = batch_shape;
        shape.extend([m, n]);
        let out = self.gpu().alloc(numel(&shape))?;
        matmul::matmul(self.gpu(), self.buffer(), other.buffer(), &out, &spec)?;
        Ok(record(
            out,
            shape,
            || Op::Matmul { a: self.clone(), b: other.clone(), spec, bias: false, residual: false, act: None },
            &[self, other],
        ))
    }

    /// A PyTorch `Linear`: `self · weightᵀ + bias` with weight `[out, in]`, over the last axis;
    /// the bias is added in the product's epilogue (no separate pass).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (y, shape) = self.linear_product(weight, bias)?;
        y.reshape(&shape)
    }

    /// `act(self · weightᵀ + bias)`: a Linear and its activation (a transformer's first MLP
    /// layer) in one dispatch: the product's epilogue adds the bias, applies the activation and
    /// also keeps the bare product, from which the backward recomputes the activation's slope.
    pub fn linear_act(&self, weight: &Tensor, bias: &Tensor, act: UnaryOp) -> Result<Tensor> {
        let (spec, shape) = self.linear_spec(weight)?;
        let (rows, c) = (spec.m, spec.n);
        check_bias(bias, &[rows, c])?;
        if !crate::autograd::will_record(&[self, weight, bias]) {
            // No backward will read the bare product: store only the activation.
            let out = self.gpu().alloc(spec.out_len())?;
            let epi = matmul::BiasActOut { bias: bias.buffer(), act, act_out: &out };
            matmul::matmul_act_only(self.gpu(), self.buffer(), weight.buffer(), &spec, &epi)?;
            return Tensor::from_buffer(self.gpu(), out, &shape);
        }
        let (product, out) = (self.gpu().alloc(spec.out_len())?, self.gpu().alloc(spec.out_len())?);
        let epi = matmul::BiasActOut { bias: bias.buffer(), act, act_out: &out };
        matmul::matmul_bias_act(self.gpu(), self.buffer(), weight.buffer(), &product, &spec, &epi)?;
        // One node for the product, its bias and its activation, recorded on `self` itself (see
        // record_product): its backward takes the bias's gradient with the weight's.
        let product = Some((act, Arc::new(product)));
        let op = || Op::Matmul { a: self.clone(), b: weight.clone(), spec, bias: true, residual: false, act: product };
        Ok(record(out, shape, op, &[self, weight, bias]))
    }

    /// `residual + self · weightᵀ + bias`: a Linear and the residual add after it (a
    /// transformer block's output projections) in one pass over the output: the residual is
    /// copied into the output buffer and the product's epilogue adds the bias and accumulates
    /// onto it, so no pass reads the product back.
    pub fn linear_residual(&self, weight: &Tensor, bias: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (spec, shape) = self.linear_spec(weight)?;
        check_bias(bias, &[spec.m, spec.n])?;
        if residual.shape() != shape.as_slice() {
            return Err(Error::Shape(format!(
                "a residual of shape {:?} cannot be added to a linear layer's output of shape {shape:?}",
                residual.shape()
            )));
        }
        let gpu = self.gpu();
        let out = gpu.alloc(spec.out_len())?;
        gpu.copy_region(residual.buffer(), 0, &out, 0, spec.out_len())?;
        let acc = Matmul { accumulate: true, ..spec };
        matmul::matmul_bias(gpu, self.buffer(), weight.buffer(), bias.buffer(), &out, &acc)?;
        let op = || Op::Matmul { a: self.clone(), b: weight.clone(), spec, bias: true, residual: true, act: None };
        Ok(record(out, shape, op, &[self, weight, bias, residual]))
    }

    /// The product of a Linear, `[rows, out]` (with `bias` added in its epilogue when given),
    /// and the shape of its output.
    fn linear_product(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, Vec<usize>)> {
        let (spec, shape) = self.linear_spec(weight)?;
        let out = self.gpu().alloc(spec.out_len())?;
        match bias {
            Some(b) => {
                check_bias(b, &[spec.m, spec.n])?;
                matmul::matmul_bias(self.gpu(), self.buffer(), weight.buffer(), b.buffer(), &out, &spec)?;
            }
            None => matmul::matmul(self.gpu(), self.buffer(), weight.buffer(), &out, &spec)?,
        }
        Ok((self.record_product(weight, bias, out, spec), shape))
    }

    /// The product `self · weightᵀ` of a Linear as a matrix product over `[rows, in]` (the input
    /// with its leading axes folded into rows), and the shape of the Linear's output.
    fn linear_spec(&self, weight: &Tensor) -> Result<(Matmul, Vec<usize>)> {
        let (rows, cols) = rows_cols(self.shape());
        if weight.shape().len() != 2 || weight.shape()[1] != cols {
            return Err(Error::Shape(format!(
                "a linear layer with weight {:?} cannot take input of shape {:?}",
                weight.shape(),
                self.shape()
            )));
        }
        let out_features = weight.shape()[0];
        let spec = Matmul {
            batch: 1,
            m: rows,
            n: out_features,
            k: cols,
            trans_a: false,
            trans_b: true,
            broadcast_a: false,
            broadcast_b: false,
            accumulate: false,
        };
        let mut shape = self.shape().to_vec();
        *shape.last_mut().expect("rows_cols checked") = out_features;
        Ok((spec, shape))
    }

    /// Records `out` (`[rows, out]`, computed by `spec`) as the product of `self` and `weight`,
    /// plus `bias` when the product's epilogue added one. Recorded on `self` itself (its buffer
    /// is the [rows, cols] matrix), not on a reshaped view: then every consumer of `self` sends
    /// its gradient to one tensor, and the backward can fold them together (see
    /// `autograd::backward_rule`).
    fn record_product(&self, weight: &Tensor, bias: Option<&Tensor>, out: GpuBuffer, spec: Matmul) -> Tensor {
        let shape = vec![spec.m, spec.n];
        match bias {
            Some(b) => record(
                out,
                shape,
                || Op::Matmul { a: self.clone(), b: weight.clone(), spec, bias: true, residual: false, act: None },
                &[self, weight, b],
            ),
            None => record(
                out,
                shape,
                || Op::Matmul { a: self.clone(), b: weight.clone(), spec, bias: false, residual: false, act: None },
                &[self, weight],
            ),
        }
    }

    /// The same data with another shape of the same size (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape(format!(
                "cannot reshape {:?} ({} elements) to {shape:?} ({} elements)",
                self.shape(),
                self.numel(),
                numel(shape)
            )));
        }
        let node = crate::autograd::is_recording() && self.requires_grad();
        let t = Tensor::build(
            self.gpu(),
            shape.to_vec(),
            self.0.data.clone(),
            node.then(|| crate::autograd::Node {
                op: Op::Reshape { from: self.shape().to_vec() },
                inputs: vec![self.clone()],
            }),
            node,
        );
        Ok(t)
    }

    /// Reorders axes: output axis i is input axis `perm[i]` (copies the data).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.shape().len()];
        if perm.len() != seen.len() || perm.iter().any(|&p| p >= seen.len() || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::Shape(format!("{perm:?} is not a permutation of the axes of {:?}", self.shape())));
        }
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape()[p]).collect();
        let out = self.gpu().alloc(self.numel())?;
        permute::permute(self.gpu(), self.buffer(), self.shape(), perm, &out)?;
        Ok(record(out, shape, || Op::Permute { input_shape: self.shape().to_vec(), perm: perm.to_vec() }, &[self]))
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let rank = self.shape().len();
        if a >= rank || b >= rank {
            return Err(Error::Shape(format!("cannot swap axes {a} and {b} of a tensor of shape {:?}", self.shape())));
        }
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Sums over `axis`, removing it.
    pub fn sum_axis(&self, axis: usize) -> Result<Tensor> {
        let s = self.shape();
        if axis >= s.len() {
            return Err(Error::Shape(format!("axis {axis} is out of range for shape {s:?}")));
        }
        let (outer, len, inner) = (numel(&s[..axis]), s[axis], numel(&s[axis + 1..]));
        let out = self.gpu().alloc(outer * inner)?;
        reduce::sum_axis(self.gpu(), self.buffer(), outer, len, inner, &out)?;
        let mut shape = s.to_vec();
        shape.remove(axis);
        Ok(record(out, shape, || Op::SumAxis { outer, len, inner }, &[self]))
    }

    /// Sum of all elements, shape `[1]`.
    pub fn sum(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])?.sum_axis(0)?.reshape(&[1])
    }

    /// Mean of all elements, shape `[1]`.
    pub fn mean(&self) -> Result<Tensor> {
        self.sum()?.scale(1.0 / self.numel().max(1) as f32)
    }

    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Tensor> {
        let (rows, cols) = rows_cols(self.shape());
        let out = self.gpu().alloc(self.numel())?;
        softmax::forward(self.gpu(), self.buffer(), &out, rows, cols)?;
        let out = Arc::new(out);
        let y = Tensor::build(self.gpu(), self.shape().to_vec(), out.clone(), None, false);
        let needs = crate::autograd::is_recording() && self.requires_grad();
        Ok(Tensor::build(
            self.gpu(),
            self.shape().to_vec(),
            out,
            needs.then(|| crate::autograd::Node { op: Op::Softmax { y, rows, cols }, inputs: vec![self.clone()] }),
            needs,
        ))
    }

    /// LayerNorm over the last axis with `weight` and `bias` of that axis's size.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        let (rows, cols) = rows_cols(self.shape());
        if weight.shape() != [cols] || bias.shape() != [cols] {
            return Err(Error::Shape(format!(
                "layer norm weight {:?} and bias {:?} do not match the last axis of {:?}",
                weight.shape(),
                bias.shape(),
                self.shape()
            )));
        }
        let gpu = self.gpu();
        let out = gpu.alloc(self.numel())?;
        let mean = Arc::new(gpu.alloc(rows)?);
        let rstd = Arc::new(gpu.alloc(rows)?);
        let io = layer_norm::LayerNormIo {
            x: self.buffer(),
            weight: weight.buffer(),
            bias: bias.buffer(),
            out: &out,
            mean: &mean,
            rstd: &rstd,
        };
        layer_norm::forward(gpu, &io, rows, cols, eps)?;
        Ok(record(
            out,
            self.shape().to_vec(),
            || Op::LayerNorm { x: self.clone(), weight: weight.clone(), mean, rstd, rows, cols },
            &[self, weight, bias],
        ))
    }

    /// L2 normalisation over the last axis.
    pub fn l2_normalize(&self, mode: L2Mode) -> Result<Tensor> {
        let (rows, cols) = rows_cols(self.shape());
        let out = self.gpu().alloc(self.numel())?;
        let norms = Arc::new(self.gpu().alloc(rows)?);
        l2norm::forward(self.gpu(), self.buffer(), &out, &norms, &l2norm::L2Norm { rows, cols, mode })?;
        Ok(record(out, self.shape().to_vec(), || Op::L2Norm { x: self.clone(), norms, rows, cols, mode }, &[self]))
    }

    /// Gathers rows of `self` (a `[vocab, dim]` table) at `indices`; output `[indices.len(), dim]`.
    /// Indices past the table are an error.
    pub fn embedding(&self, indices: &[u32]) -> Result<Tensor> {
        let s = self.shape();
        if s.len() != 2 {
            return Err(Error::Shape(format!("an embedding table must be [vocab, dim], not {s:?}")));
        }
        let (vocab, dim) = (s[0], s[1]);
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::Shape(format!("index {bad} is out of range for an embedding table of {vocab} rows")));
        }
        let count = indices.len();
        let idx: Arc<GpuBuffer> = Arc::new(self.gpu().upload(indices)?);
        let out = self.gpu().alloc(count * dim)?;
        embedding::gather(self.gpu(), self.buffer(), &idx, &out, count, dim, vocab)?;
        Ok(record(out, vec![count, dim], || Op::Embedding { indices: idx, count, dim, vocab }, &[self]))
    }

    /// Concatenates tensors along `axis` (all other axes equal).
    pub fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| Error::Shape("nothing to concatenate".into()))?;
        let s0 = first.shape();
        if axis >= s0.len() {
            return Err(Error::Shape(format!("axis {axis} is out of range for shape {s0:?}")));
        }
        for p in parts {
            let s = p.shape();
            if s.len() != s0.len() || s.iter().zip(s0).enumerate().any(|(i, (a, b))| i != axis && a != b) {
                return Err(Error::Shape(format!("cannot concatenate shapes {s0:?} and {s:?} along axis {axis}")));
            }
        }
        let (outer, inner) = (numel(&s0[..axis]), numel(&s0[axis + 1..]));
        let lens: Vec<usize> = parts.iter().map(|p| p.shape()[axis]).collect();
        let total: usize = lens.iter().sum();
        let gpu = first.gpu();
        let out = gpu.alloc(outer * total * inner)?;
        let mut start = 0;
        for (p, &len) in parts.iter().zip(&lens) {
            for o in 0..outer {
                gpu.copy_region(p.buffer(), o * len * inner, &out, (o * total + start) * inner, len * inner)?;
            }
            start += len;
        }
        let mut shape = s0.to_vec();
        shape[axis] = total;
        Ok(record(out, shape, || Op::Concat { outer, lens, inner }, parts))
    }

    /// The slice `[start, start + len)` of `axis`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let s = self.shape();
        if axis >= s.len() || start + len > s[axis] {
            return Err(Error::Shape(format!("cannot take [{start}, {}) of axis {axis} of shape {s:?}", start + len)));
        }
        let (outer, total, inner) = (numel(&s[..axis]), s[axis], numel(&s[axis + 1..]));
        let mut shape = s.to_vec();
        shape[axis] = len;
        let out = crate::autograd::narrow_buffer(self.gpu(), self.buffer(), outer, total, start, len, inner)?;
        Ok(record(out, shape, || Op::Narrow { outer, total, start, len, inner }, &[self]))
    }
}
