// The axis sums (include/reduce_core.wgsl: same math, parameter block, storage bindings and
// entry point names as reduce.wgsl) with sum_axis4's input fetched from a texture.
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe). The launcher
// (kernels/src/reduce.rs; Gpu::texture_operands) copies large inputs into a flat rgba32float
// texture (OperandTexture::flat: vec4 i is texel (i % 1024, i / 1024)). Same indices and order
// of additions as the storage kernel, so the sums are bit-identical.

#include "reduce_core.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(3) var x_tex: texture_storage_2d<rgba32float, read>;

fn load_x4(i: u32) -> vec4<f32> {
    return textureLoad(x_tex, flat(i));
}
