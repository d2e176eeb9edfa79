// Resizing (include/upsample_core.wgsl: same math, parameter block, storage bindings and entry
// point names as upsample.wgsl) with the bilinear kernels' input, the image forward and the
// output gradient backward, fetched from a texture.
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe, a storage load a loop
// over the lanes, even where every lane reads one address, as the forward's taps are). The
// launcher (kernels/src/upsample.rs; Gpu::texture_operands) copies src into a flat rgba32float
// texture (OperandTexture::flat). Same indices as the storage loads, so the results are
// bit-identical.

#include "upsample_core.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(6) var src_tex: texture_storage_2d<rgba32float, read>;

fn load_src(j: u32) -> f32 {
    return textureLoad(src_tex, flat(j / 4u))[j % 4u];
}
