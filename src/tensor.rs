//! Tensors: an f32 array on the GPU with a shape, and the record of how it was made.
//!
//! A [`Tensor`] is a cheap shared handle. Its data lives in a pooled [`GpuBuffer`]; views made
//! by [`Tensor::reshape`] share that buffer. A tensor made by an op while gradients are being
//! recorded carries a [`Node`](crate::autograd::Node): the op, with the state its backward
//! needs, and the input tensors. Leaves that want gradients are parameters
//! ([`Tensor::param`]); their gradients accumulate in [`Tensor::grad`].
//!
//! The ops themselves (forward kernels plus their recording) live in `ops`; their backward
//! rules all live in `autograd`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::autograd::Node;
use crate::kernels::{Error, Result};
use crate::kernels::{Gpu, GpuBuffer};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct TensorInner {
    pub(crate) id: u64,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Arc<GpuBuffer>,
    pub(crate) gpu: Gpu,
    pub(crate) node: Option<Node>,
    pub(crate) requires_grad: bool,
    pub(crate) grad: Mutex<Option<Tensor>>,
}

/// An f32 tensor on the GPU (row-major), with autograd history when recorded.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub(crate) fn build(
        gpu: &Gpu,
        shape: Vec<usize>,
        data: Arc<GpuBuffer>,
        node: Option<Node>,
        requires_grad: bool,
    ) -> Tensor {
        debug_assert!(data.len() >= numel(&shape));
        Tensor(Arc::new(TensorInner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape,
            data,
            gpu: gpu.clone(),
            node,
            requires_grad,
            grad: Mutex::new(None),
        }))
    }

    /// Wraps a buffer as a constant tensor (no history, no gradient).
    pub fn from_buffer(gpu: &Gpu, buffer: GpuBuffer, shape: &[usize]) -> Result<Tensor> {
        if buffer.len() < numel(shape) {
            return Err(Error::Shape(format!("a buffer of {} elements cannot hold shape {shape:?}", buffer.len())));
        }
        Ok(Tensor::build(gpu, shape.to_vec(), Arc::new(buffer), None, false))
    }

    /// Uploads host data as a constant tensor.
    pub fn from_vec(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::Shape(format!(
                "{} values given for shape {shape:?} ({} elements)",
                data.len(),
                numel(shape)
            )));
        }
        Tensor::from_buffer(gpu, gpu.upload(data)?, shape)
    }

    /// Uploads host data as a parameter: a leaf that collects gradients.
    pub fn param(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::from_vec(gpu, data, shape)?;
        Ok(Tensor::build(gpu, t.0.shape.clone(), t.0.data.clone(), None, true))
    }

    /// A tensor of zeros.
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_buffer(gpu, gpu.zeros(numel(shape))?, shape)
    }

    /// A tensor with every element `value`.
    pub fn full(gpu: &Gpu, shape: &[usize], value: f32) -> Result<Tensor> {
        Tensor::from_vec(gpu, &vec![value; numel(shape)], shape)
    }

    /// Unique id (stable for the tensor's lifetime).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    /// The GPU buffer holding the data (may be larger than the tensor).
    pub fn buffer(&self) -> &GpuBuffer {
        &self.0.data
    }

    /// The GPU this tensor lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.0.gpu
    }

    /// Whether gradients flow to or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// Downloads the data (waits for pending GPU work).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let mut v = self.0.gpu.download(&self.0.data)?;
        v.truncate(self.numel());
        Ok(v)
    }

    /// The same data with no history: gradients stop here.
    pub fn detach(&self) -> Tensor {
        Tensor::build(&self.0.gpu, self.0.shape.clone(), self.0.data.clone(), None, false)
    }

    /// The accumulated gradient of a parameter, if any.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Clears the accumulated gradient.
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Replaces the accumulated gradient (used by the autograd engine).
    pub(crate) fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = g;
    }

    /// Overwrites the data of this tensor in place with `values` (same element count); used by
    /// optimisers and weight loading. Not recorded.
    pub fn assign(&self, values: &Tensor) -> Result<()> {
        if values.numel() != self.numel() {
            return Err(Error::Shape(format!(
                "cannot assign a tensor of shape {:?} to one of shape {:?}",
                values.shape(),
                self.shape()
            )));
        }
        self.0.gpu.copy(values.buffer(), &self.0.data)
    }

    /// Overwrites the data from host values.
    pub fn write(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.numel() {
            return Err(Error::Shape(format!(
                "{} values given for a tensor of shape {:?}",
                values.len(),
                self.shape()
            )));
        }
        self.0.gpu.write(&self.0.data, values)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(id {}, shape {:?}{})",
            self.0.id,
            self.0.shape,
            if self.0.requires_grad { ", grad" } else { "" }
        )
    }
}
