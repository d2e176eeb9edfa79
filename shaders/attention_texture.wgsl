// The attention kernels of attention_subgroup.wgsl (same math, layouts, storage bindings,
// broadcasts and entry point names) with what each loads per lane fetched from textures
// instead of storage: the streamed rows, the stored score gradient, and the rows of the
// few-keys forward and of the backward's preparation.
//
// Why: include/flat_texture.wgsl (a texel load is a gather on lavapipe; matmul_texture.wgsl
// does the same for the matmul's operands).
//
// The launcher (kernels/src/attention.rs; Gpu::texture_operands) copies each buffer a kernel
// reads per lane into a *flat* rgba32float texture (OperandTexture::flat): vec4 i of the
// buffer is texel (i % 1024, i / 1024). One texture binding per buffer; each kernel binds the
// ones it reads, in binding order:
//   forward_blocked, backward_dq_blocked:  k, v           (the streamed key rows)
//   backward_dkdv_blocked:                 q, d_out       (the streamed query rows)
//   backward_dq_scores_blocked:            k, grad_a      (keys, and the stored score gradient
//                                                          dS^T after dk in the dk/dv kernel's
//                                                          grad_a buffer)
//   forward_few_keys, forward_few_keys_rows: q, k, v
//   backward_few_keys:                     q, k, v, d_out
//   backward_prepare:                      d_out, out
// The blocked kernels' own rows (loaded once per tile) and the statistics stay in storage.
// Every index is the one the storage kernels load, so the results are bit-identical to theirs.

#include "attention_core.wgsl"
#include "attention_broadcast.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(13) var tex_q: texture_storage_2d<rgba32float, read>;
@group(0) @binding(14) var tex_k: texture_storage_2d<rgba32float, read>;
@group(0) @binding(15) var tex_v: texture_storage_2d<rgba32float, read>;
@group(0) @binding(16) var tex_d_out: texture_storage_2d<rgba32float, read>;
@group(0) @binding(17) var tex_scores: texture_storage_2d<rgba32float, read>;
@group(0) @binding(18) var tex_out: texture_storage_2d<rgba32float, read>;

fn load_q(i: u32) -> vec4<f32> {
    return textureLoad(tex_q, flat(i));
}
fn load_k(i: u32) -> vec4<f32> {
    return textureLoad(tex_k, flat(i));
}
fn load_v(i: u32) -> vec4<f32> {
    return textureLoad(tex_v, flat(i));
}
fn load_d_out(i: u32) -> vec4<f32> {
    return textureLoad(tex_d_out, flat(i));
}
fn load_scores(i: u32) -> vec4<f32> {
    return textureLoad(tex_scores, flat(i));
}
fn load_out(i: u32) -> vec4<f32> {
    return textureLoad(tex_out, flat(i));
}
