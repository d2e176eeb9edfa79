// EM Aggregation's kernels (include/em_core.wgsl: same math, parameter block, storage bindings
// and entry point names as em.wgsl) with Z fetched from a texture in softmax4 (the logits) and
// tile_colsum4 (the responsibilities).
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe). The launcher
// (kernels/src/em.rs; Gpu::texture_operands) copies Z into a flat rgba32float texture
// (OperandTexture::flat: vec4 i is texel (i % 1024, i / 1024)) before each of the two kernels.
// Same indices as the storage loads, so the results are bit-identical.

#include "em_core.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(7) var z_tex: texture_storage_2d<rgba32float, read>;

fn load_z4(i: u32) -> vec4<f32> {
    return textureLoad(z_tex, flat(i));
}
