//! Bilinear upsampling with align_corners = false, forward and backward (shaders/upsample.wgsl).
//!
//! (Not yet implemented.)
