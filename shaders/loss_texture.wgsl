// The segmentation losses and argmax (include/loss_core.wgsl: same math, parameter block,
// storage bindings and entry point names as loss.wgsl) with the logits, and dice_backward's
// statistics, fetched from textures.
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe, a storage load a loop
// over the lanes, even where every lane reads one address, as the statistics here are). The
// launcher (kernels/src/loss.rs; Gpu::texture_operands) copies the logits, and for
// dice_backward the statistics (rounded up to whole texels: OperandTexture::flat), into
// flat rgba32float textures (OperandTexture::flat) and binds the ones the entry point reads, in
// binding order. Same indices as the storage loads, so the results are bit-identical.

#include "loss_core.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(9) var logits_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(10) var stats_tex: texture_storage_2d<rgba32float, read>;

fn load_logit(j: u32) -> f32 {
    return textureLoad(logits_tex, flat(j / 4u))[j % 4u];
}
fn load_stat(i: u32) -> f32 {
    return textureLoad(stats_tex, flat(i / 4u))[i % 4u];
}
