// Sums over one axis of a tensor viewed as [outer, len, inner], read from storage. The math,
// chunking and grid are described at the top of include/reduce_core.wgsl, which holds the
// kernels; reduce_texture.wgsl runs sum_axis4 with its input fetched from a texture.

#include "reduce_core.wgsl"

// This module's input: vec4 i of x, from storage.
fn load_x4(i: u32) -> vec4<f32> {
    return x4[i];
}
