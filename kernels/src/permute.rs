//! Axis permutation (transpose) of a tensor (shaders/permute.wgsl).
//!
//! (Not yet implemented.)
