// EM Aggregation's element-wise and reduction kernels around the loop's matrix products, with
// every operand read from storage. The math, shapes and bindings are described at the top of
// include/em_core.wgsl, which holds the kernels; em_texture.wgsl runs softmax4 and
// tile_colsum4 with Z fetched from a texture.

#include "em_core.wgsl"

// This module's Z for softmax4 and tile_colsum4: vec4 i of out4, from storage.
fn load_z4(i: u32) -> vec4<f32> {
    return out4[i];
}
