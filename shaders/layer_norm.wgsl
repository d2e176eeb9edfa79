// LayerNorm over the last axis of [rows, cols], forward and backward: every kernel, with the
// rows read from storage. The math, schedules and bindings are described at the top of
// include/layer_norm_core.wgsl, which holds the kernels; layer_norm_texture.wgsl runs the same
// kernels with the rows of the vec4 kernels fetched from textures.

#include "layer_norm_core.wgsl"
#include "workgroup_reduce.wgsl"

// This module's rows: vec4 i of x, dy and dx_in, from storage.
fn load_x4(i: u32) -> vec4<f32> {
    return x4[i];
}
fn load_dy4(i: u32) -> vec4<f32> {
    return dy4[i];
}
fn load_dx_in4(i: u32) -> vec4<f32> {
    return dx_in4[i];
}
fn load_weight4(j: u32) -> vec4<f32> {
    return weight4[j];
}
fn load_bias4(j: u32) -> vec4<f32> {
    return bias4[j];
}
