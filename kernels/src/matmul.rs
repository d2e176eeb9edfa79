//! Batched matrix multiply with transpose flags (shaders/matmul.wgsl).
//!
//! (Not yet implemented.)
