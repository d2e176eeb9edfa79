// The elementwise kernels (include/elementwise_core.wgsl: same math, parameter block, storage
// bindings and entry point names as elementwise.wgsl) with the operands of the vec4 kernels
// (bias_act4, bias_act_backward4, bias_residual4, binary_same4, binary_suffix4, unary4,
// unary_backward4) fetched from textures.
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe). The launcher
// (kernels/src/elementwise.rs; Gpu::texture_operands) copies a, the bias and the third operand
// into flat rgba32float textures (OperandTexture::flat: vec4 i is texel (i % 1024, i / 1024))
// and binds the ones the entry point reads, in binding order. Same indices as the storage
// loads, so the results are bit-identical.

#include "elementwise_core.wgsl"
#include "activation.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(9) var a_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(10) var b_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(11) var c3_tex: texture_storage_2d<rgba32float, read>;

fn load_a4(i: u32) -> vec4<f32> {
    return textureLoad(a_tex, flat(i));
}
fn load_b4(i: u32) -> vec4<f32> {
    return textureLoad(b_tex, flat(i));
}
fn load_c34(i: u32) -> vec4<f32> {
    return textureLoad(c3_tex, flat(i));
}
