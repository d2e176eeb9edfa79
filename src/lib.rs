//! vlsa: vision-language semantic aggregation for medical image segmentation, on
//! hand-written WGSL kernels (see the `vlsa-kernels` crate for the GPU layer).

pub use vlsa_kernels as kernels;

pub mod clip;
pub mod data;
pub mod font;
pub mod infer;
pub mod image_io;
pub mod io;
pub mod model;
pub mod profile;
pub mod synth;
pub mod eval;
pub mod autograd;
pub mod config;
pub mod error;
pub mod weights;
pub mod ops;
pub mod tensor;
pub mod train;
pub mod text;

pub use autograd::{backward, no_grad};
pub use error::{Error, Result};
pub use kernels::Gpu;
pub use tensor::Tensor;
