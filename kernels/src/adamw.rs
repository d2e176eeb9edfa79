//! AdamW parameter update with decoupled weight decay (shaders/adamw.wgsl).
//!
//! (Not yet implemented.)
