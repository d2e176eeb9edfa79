//! vlsa-kernels: the GPU layer of vlsa.
//!
//! It holds the GPU context ([`Gpu`]: adapter choice, device, error capture, batching of
//! dispatches), the buffer pool ([`BufferPool`]), the pipeline cache (each WGSL entry point
//! compiled once per process), the profiler ([`Profile`]) and one typed launcher per shader
//! entry point, in a module named after its WGSL file under `shaders/`. A launcher knows
//! shapes and buffers; it checks that they fit together and returns an [`Error`] naming both
//! when they do not. There are no tensors, no autograd and no model here: this crate can be
//! embedded on its own.

pub mod buffer;
pub mod context;
mod cpu_threads;
pub mod error;
pub mod path;
pub mod pipeline;
pub mod profiler;

pub mod adamw;
pub mod attention;
pub mod elementwise;
pub mod em;
pub mod embedding;
pub mod l2norm;
pub mod layer_norm;
pub mod loss;
pub mod mask_head;
pub mod matmul;
pub mod patch_embed;
pub mod permute;
pub mod reduce;
pub mod softmax;
pub mod upsample;

pub use buffer::{BufferPool, GpuBuffer, PoolStats};
pub use context::{grid, Dispatch, Gpu, GpuInfo, OperandTexture, PreparedPipelines, ProfileScope, WorkerThreads};
pub use error::{Error, Result};
pub use path::KernelPath;
pub use profiler::{DispatchRecord, KernelLabel, KernelSummary, Profile, Timing};
