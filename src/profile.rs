//! Profiling of the EM Aggregation loop (`vlsa profile em`).
//!
//! (Not yet implemented.)
