//! Pixel cross-entropy and Dice losses, forward and backward, and argmax (shaders/loss.wgsl).
//!
//! (Not yet implemented.)
