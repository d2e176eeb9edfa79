//! Cosine-similarity mask head, forward and backward (shaders/mask_head.wgsl).
//!
//! (Not yet implemented.)
