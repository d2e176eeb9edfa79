//! Fused multi-head attention and cross-attention, forward and backward (shaders/attention.wgsl).
//!
//! (Not yet implemented.)
