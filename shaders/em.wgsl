// EM Aggregation's element-wise and reduction kernels around the loop's matrix products, with
// every operand read from storage. The math, shapes and bindings are described at the top of
// include/em_core.wgsl, which holds the kernels; em_texture.wgsl runs softmax4 and
// tile_colsum4 with Z fetched from a texture, and m_step_finish4 with Z and Q.

#include "em_core.wgsl"

// This module's Z for softmax4 and tile_colsum4: vec4 i of out4, from storage.
fn load_z4(i: u32) -> vec4<f32> {
    return out4[i];
}

// m_step_finish4's Z (vec4 m4 of token row n, from z4) and split products Q (vec4 i of q4).
fn load_zr4(n: u32, m4: u32) -> vec4<f32> {
    return z4[n * (p.bases / 4u) + m4];
}
fn load_q4(i: u32) -> vec4<f32> {
    return q4[i];
}
