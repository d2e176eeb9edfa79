// The subgroup attention kernels of attention_subgroup.wgsl (same math, layouts, storage
// bindings, broadcasts and entry point names) with the streamed rows fetched from textures
// instead of loaded from storage.
//
// Why: Mesa 22.3's lavapipe compiles a storage load whose address differs between lanes into a
// loop that builds the vector one lane at a time through a stack slot; some CPUs pay a
// store-forwarding stall on every lane (an AMD EPYC of family 25 model 1: 12x the cost of a
// gather), while a texel fetch is a gather (see matmul_texture.wgsl, which does the same for
// the matmul's operands).
//
// The launcher (kernels/src/attention.rs; Gpu::texture_operands) copies each streamed buffer
// into a *flat* rgba32float texture (OperandTexture::flat): vec4 i of the buffer is texel
// (i % 1024, i / 1024). Which buffers are streamed depends on the kernel, and so does what the
// two textures hold:
//   forward_blocked, backward_dq_blocked:  tex_a = k, tex_b = v     (keys streamed)
//   backward_dkdv_blocked:                 tex_a = q, tex_b = d_out (queries streamed)
//   backward_dq_scores_blocked:            tex_a = k, tex_b = dk/dv's grad_a buffer (dk, then
//                                          the stored score gradient dS^T it reads per lane)
// No kernel streams q and k, or v and d_out, together, so two textures serve all four. The
// invocation's own rows (loaded once per tile) and the statistics stay in storage. Every index
// is the one the storage kernels load, so the results are bit-identical to theirs.

#include "attention_core.wgsl"
#include "attention_broadcast.wgsl"
#include "flat_texture.wgsl"

@group(0) @binding(13) var tex_a: texture_2d<f32>;
@group(0) @binding(14) var tex_b: texture_2d<f32>;

// This module's streamed rows: vec4 i of each buffer, from its texture.
fn load_q(i: u32) -> vec4<f32> {
    return textureLoad(tex_a, flat(i), 0);
}
fn load_k(i: u32) -> vec4<f32> {
    return textureLoad(tex_a, flat(i), 0);
}
fn load_v(i: u32) -> vec4<f32> {
    return textureLoad(tex_b, flat(i), 0);
}
fn load_d_out(i: u32) -> vec4<f32> {
    return textureLoad(tex_b, flat(i), 0);
}
// vec4 i of the dk/dv kernel's grad_a buffer: the stored score gradient dS^T.
fn load_scores(i: u32) -> vec4<f32> {
    return textureLoad(tex_b, flat(i), 0);
}
