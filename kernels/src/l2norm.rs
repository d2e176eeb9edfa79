//! L2 normalization over the last axis, forward and backward (shaders/l2norm.wgsl).
//!
//! (Not yet implemented.)
