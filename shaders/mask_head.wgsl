// The cosine-similarity mask head's kernels (include/mask_head_core.wgsl: the math, parameter
// block, bindings and entry points) with the vec4 kernels' operands read from storage: the
// module for adapters without texture operands (Gpu::texture_operands), and for shapes whose
// operands do not fit a flat texture.

#include "mask_head_core.wgsl"

fn load_x4(i: u32) -> vec4<f32> {
    return x4[i];
}
fn load_text4(i: u32) -> vec4<f32> {
    return text4[i];
}
fn load_text_hat4(i: u32) -> vec4<f32> {
    return text_hat4[i];
}
fn load_d_out(i: u32) -> f32 {
    return d_out[i];
}
fn load_row_inv(row: u32) -> f32 {
    return row_stats[row];
}
