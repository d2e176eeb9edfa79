//! Embedding gather and its scatter-add backward (shaders/embedding.wgsl).
//!
//! (Not yet implemented.)
