//! The EM Aggregation loop: E-step, M-step, normalization, reconstruction, backward and bases update (shaders/em.wgsl).
//!
//! (Not yet implemented.)
