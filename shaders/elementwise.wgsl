// Elementwise kernels: broadcast binary ops, scale, bias add, activations and their backward,
// every operand read from storage. The math, bindings and grid are described at the top of
// include/elementwise_core.wgsl, which holds the kernels; elementwise_texture.wgsl runs the
// fused vec4 kernels with their operands fetched from textures.

#include "elementwise_core.wgsl"
#include "activation.wgsl"

// This module's operands of the vec4 kernels: vec4 i of a, of b (the bias) and of the third
// operand, from storage.
fn load_a4(i: u32) -> vec4<f32> {
    return a4[i];
}
fn load_b4(i: u32) -> vec4<f32> {
    return b4[i];
}
fn load_c34(i: u32) -> vec4<f32> {
    return c34[i];
}
