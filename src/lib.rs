//! vlsa: vision-language semantic aggregation for medical image segmentation, on
//! hand-written WGSL kernels (see the `vlsa-kernels` crate for the GPU layer).

pub use vlsa_kernels as kernels;

pub mod autograd;
pub mod average;
pub mod clip;
pub mod compression;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod font;
pub mod image_io;
pub mod infer;
pub mod io;
pub mod model;
pub mod ops;
pub mod profile;
pub mod random;
pub mod synth;
pub mod tensor;
pub mod text;
pub mod train;
pub mod weights;

pub use autograd::{backward, no_grad};
pub use error::{Error, Result};
pub use kernels::Gpu;
pub use tensor::Tensor;
