// EM Aggregation's kernels (include/em_core.wgsl: same math, parameter block, storage bindings
// and entry point names as em.wgsl) with Z fetched from a texture in softmax4 (the logits) and
// tile_colsum4 (the responsibilities), and Z and the split products Q in m_step_finish4.
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe). The launcher
// (kernels/src/em.rs; Gpu::texture_operands) copies Z into a flat rgba32float texture
// (OperandTexture::flat: vec4 i is texel (i % 1024, i / 1024)) before each of the two kernels.
// m_step_finish4 reads Z from a texture with a row per token where p.z_rows is 1 (the M-step
// matmul's texture of Z, where it made one, so no second copy; texel (m4, n), no index
// division: an integer division per lane is a scalar loop on a CPU), else from a flat one, and
// Q from a flat one. Same indices as the
// storage loads, so the results are bit-identical.

#include "em_core.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(7) var z_tex: texture_storage_2d<rgba32float, read>;

fn load_z4(i: u32) -> vec4<f32> {
    return textureLoad(z_tex, flat(i));
}

@group(0) @binding(11) var q_tex: texture_storage_2d<rgba32float, read>;

fn load_zr4(n: u32, m4: u32) -> vec4<f32> {
    if (p.z_rows == 1u) {
        return textureLoad(z_tex, vec2<u32>(m4, n));
    }
    return textureLoad(z_tex, flat(n * (p.bases / 4u) + m4));
}
fn load_q4(i: u32) -> vec4<f32> {
    return textureLoad(q_tex, flat(i));
}
