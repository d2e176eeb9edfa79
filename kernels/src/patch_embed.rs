//! Patch embedding (stride-p convolution without bias), forward and backward (shaders/patch_embed.wgsl).
//!
//! (Not yet implemented.)
