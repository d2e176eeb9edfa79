//! Softmax over the last axis, forward and backward (shaders/softmax.wgsl).
//!
//! (Not yet implemented.)
