//! LayerNorm over the last axis, forward and backward (shaders/layer_norm.wgsl).
//!
//! (Not yet implemented.)
