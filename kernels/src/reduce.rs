//! Sums over an axis and broadcast-gradient reductions (shaders/reduce.wgsl).
//!
//! (Not yet implemented.)
