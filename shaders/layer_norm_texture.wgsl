// LayerNorm's kernels (include/layer_norm_core.wgsl: same math, parameter block, storage
// bindings and entry point names as layer_norm.wgsl) with the rows of the vec4 kernels
// (forward_rows4, backward_rows4, backward_params4) fetched from textures.
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe). The launcher
// (kernels/src/layer_norm.rs; Gpu::texture_operands) copies x, dy, dx_in, weight and bias
// into flat rgba32float textures (OperandTexture::flat: vec4 i is texel (i % 1024, i / 1024)) and binds
// the ones the entry point reads, in binding order. Same indices as the storage loads, so the
// results are bit-identical.

#include "layer_norm_core.wgsl"
#include "workgroup_reduce.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(8) var x_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(9) var dy_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(10) var dx_in_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(11) var weight_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(12) var bias_tex: texture_storage_2d<rgba32float, read>;

fn load_x4(i: u32) -> vec4<f32> {
    return textureLoad(x_tex, flat(i));
}
fn load_dy4(i: u32) -> vec4<f32> {
    return textureLoad(dy_tex, flat(i));
}
fn load_dx_in4(i: u32) -> vec4<f32> {
    return textureLoad(dx_in_tex, flat(i));
}
// The weight and bias too: read from storage, their one vec4 per step cost the forward about
// as much as the four rows' texel loads beside it (a storage load is a per-lane loop on
// lavapipe whether or not the lanes share the address; docs/performance-log.md).
fn load_weight4(j: u32) -> vec4<f32> {
    return textureLoad(weight_tex, flat(j));
}
fn load_bias4(j: u32) -> vec4<f32> {
    return textureLoad(bias_tex, flat(j));
}
