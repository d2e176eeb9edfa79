// The cosine-similarity mask head's kernels (include/mask_head_core.wgsl: same math, parameter
// block, storage bindings and entry point names as mask_head.wgsl) with the vec4 kernels'
// per-lane operands fetched from textures: x, t, t^, d_out and the rows' 1/a.
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe, a storage load a loop
// over the lanes, even where every lane reads one address, as the class rows here are). The
// launcher (kernels/src/mask_head.rs; Gpu::texture_operands) copies each into a flat
// rgba32float texture (OperandTexture::flat: vec4 i is texel (i % 1024, i / 1024)) and binds
// the ones the entry point reads, in binding order:
//   forward4:        x, text
//   backward_x4:     x, text_hat, d_out
//   backward_text4:  x, d_out, row_inv (the first half of backward_x4's row statistics)
// Same indices as the storage loads, so the results are bit-identical to mask_head.wgsl's.

#include "mask_head_core.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(11) var x_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(12) var text_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(13) var text_hat_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(14) var d_out_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(15) var row_inv_tex: texture_storage_2d<rgba32float, read>;

fn load_x4(i: u32) -> vec4<f32> {
    return textureLoad(x_tex, flat(i));
}
fn load_text4(i: u32) -> vec4<f32> {
    return textureLoad(text_tex, flat(i));
}
fn load_text_hat4(i: u32) -> vec4<f32> {
    return textureLoad(text_hat_tex, flat(i));
}
fn load_d_out(i: u32) -> f32 {
    return textureLoad(d_out_tex, flat(i / 4u))[i % 4u];
}
fn load_row_inv(row: u32) -> f32 {
    return textureLoad(row_inv_tex, flat(row / 4u))[row % 4u];
}
