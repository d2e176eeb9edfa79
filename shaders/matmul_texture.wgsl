// The matmul's subgroup kernels with their operands read from textures: the same math, parameter
// block, storage bindings, blocks and epilogues as matmul_subgroup.wgsl (the block code is
// include/matmul_subgroup_blocks.wgsl, shared), only the loads of A and B, and of the old
// output an accumulating product adds onto, differ.
//
// Why: Mesa 22.3's lavapipe compiles a storage load whose address differs between lanes into a
// loop that builds the loaded vector one lane at a time through a stack slot, which some CPUs
// pay a store-forwarding stall for on every lane (12x the cost of a gather on an AMD EPYC of
// family 25 model 1), while a texel load is compiled as a gather (read-only storage textures:
// include/flat_texture.wgsl says why not sampled ones). The launcher
// (kernels/src/matmul.rs, `plan`; Gpu::texture_operands) copies each operand into an rgba32float texture
// whose rows are the operand's rows as stored (its contiguous axis, 4 floats per texel; batch
// elements stacked downwards), then runs these entry points. Texel (x, y) of A's texture is
// A's stored elements base_row + y, 4x .. 4x + 4, where base_row = base / (row length):
//   A, not transposed ([M, K]):  x = k / 4,    y = base / K + row
//   A, transposed     ([K, M]):  x = row / 4,  y = base / M + k
//   B, not transposed ([K, N]):  x = col / 4,  y = base / N + k
//   B, transposed     ([N, K]):  x = k / 4,    y = base / K + col
// (an operand with rows of other lengths in a flat texture instead: A_FLAT_ROW below).
// Every coordinate is clamped as the storage loads clamp their indices, so the values loaded,
// and so the products, are bit-identical to matmul_subgroup.wgsl's.

#include "matmul_core.wgsl"
#include "activation.wgsl"
#include "matmul_subgroup_blocks.wgsl"

#include "flat_texture.wgsl"

@group(0) @binding(10) var ta_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(11) var tb_tex: texture_storage_2d<rgba32float, read>;
// An accumulating product's output as it was before the launch, as a flat texture (texel
// flat(o) is out4[o]); a placeholder that is never read when the product does not accumulate.
@group(0) @binding(12) var old_out_tex: texture_storage_2d<rgba32float, read>;

// The old output that an accumulating product adds onto (matmul_core.wgsl's epilogue4). From
// a texture for the reason A and B are (include/flat_texture.wgsl): read from storage, the old
// output cost an accumulating product as much as its operands' loads where K is short (2048 x
// 512 x 128 with a bias: 11.3 ms accumulating against 8.7 ms plain; 8.9 ms with this texture,
// copy included; AMD EPYC family 25 model 1, 2026-12-04).
fn old_out4(o: u32) -> vec4<f32> {
    return textureLoad(old_out_tex, flat(o));
}

// An operand whose stored rows are not a multiple of 64 floats (a texture copy needs rows of
// 256 bytes: the EM's Z with 16 bases, [B, N, 16]) is copied as a flat texture instead
// (OperandTexture::flat: vec4 i at texel (i % 1024, i / 1024)), and the launcher sets its
// constant to the texels per stored row: texel (x, y) of the matrix is then vec4 y * row + x.
// 0 (the default): the operand's texture has its stored rows. Constants, so each pipeline
// compiles one of the two addressings.
override A_FLAT_ROW: u32 = 0u;
override B_FLAT_ROW: u32 = 0u;

fn a_texel(x: u32, y: u32) -> vec4<f32> {
    if (A_FLAT_ROW != 0u) {
        return textureLoad(ta_tex, flat(y * A_FLAT_ROW + x));
    }
    return textureLoad(ta_tex, vec2<u32>(x, y));
}

fn b_texel(x: u32, y: u32) -> vec4<f32> {
    if (B_FLAT_ROW != 0u) {
        return textureLoad(tb_tex, flat(y * B_FLAT_ROW + x));
    }
    return textureLoad(tb_tex, vec2<u32>(x, y));
}

// A[row, k..k+4] of a non-transposed A (row clamped at M - 1).
fn a_row4(y0: u32, row: u32, k: u32) -> vec4<f32> {
    return a_texel(k / 4u, y0 + min(row, p.m - 1u));
}

// A[k + u, row..row+4] of a transposed A, stored [K, M] (a_trow's clamps: rows at M - 4, zeros
// past K).
fn a_trow_tex(y0: u32, k: u32, row: u32) -> vec4<f32> {
    let v = a_texel(min(row, p.m - 4u) / 4u, y0 + min(k, p.k - 1u));
    return select(vec4<f32>(0.0), v, k < p.k);
}

// sg_load_a of matmul_subgroup.wgsl: this lane's 8 rows of A at k..k+4.
fn sg_load_a(s: ptr<function, LaneA>, ta: bool, base: u32, row0: u32, k: u32) {
    if (!ta) {
        let y0 = base / p.k;
        (*s)[0] = a_row4(y0, row0 + 0u, k);
        (*s)[1] = a_row4(y0, row0 + 1u, k);
        (*s)[2] = a_row4(y0, row0 + 2u, k);
        (*s)[3] = a_row4(y0, row0 + 3u, k);
        (*s)[4] = a_row4(y0, row0 + 4u, k);
        (*s)[5] = a_row4(y0, row0 + 5u, k);
        (*s)[6] = a_row4(y0, row0 + 6u, k);
        (*s)[7] = a_row4(y0, row0 + 7u, k);
        return;
    }
    let y0 = base / p.m;
    { let v0 = a_trow_tex(y0, k, row0 + 0u); let v1 = a_trow_tex(y0, k + 1u, row0 + 0u); let v2 = a_trow_tex(y0, k + 2u, row0 + 0u); let v3 = a_trow_tex(y0, k + 3u, row0 + 0u);
      (*s)[0] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[1] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[2] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[3] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow_tex(y0, k, row0 + 4u); let v1 = a_trow_tex(y0, k + 1u, row0 + 4u); let v2 = a_trow_tex(y0, k + 2u, row0 + 4u); let v3 = a_trow_tex(y0, k + 3u, row0 + 4u);
      (*s)[4] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[5] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[6] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[7] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
}

// A[row, kk] of a transposed A, zero outside the matrix (a_at's rule).
fn a_t_at(y0: u32, row: u32, kk: u32) -> f32 {
    let rc = min(row, p.m - 1u);
    let v = a_texel(rc / 4u, y0 + min(kk, p.k - 1u))[rc % 4u];
    return select(0.0, v, row < p.m && kk < p.k);
}

// sg_load_a1 of matmul_subgroup.wgsl: one row of A at k..k+4 for a thin block.
fn sg_load_a1(ta: bool, base: u32, row: u32, k: u32) -> vec4<f32> {
    if (!ta) {
        return a_row4(base / p.k, row, k);
    }
    let y0 = base / p.m;
    return vec4<f32>(a_t_at(y0, row, k), a_t_at(y0, row, k + 1u), a_t_at(y0, row, k + 2u), a_t_at(y0, row, k + 3u));
}

// sg_load_b of matmul_subgroup.wgsl: this lane's quarter of the B slice (k..k+4, columns
// col0..col0+32), with the same entries and clamps.
fn sg_load_b(s: ptr<function, Share>, tb: bool, base: u32, k: u32, col0: u32, lane: u32) {
    if (!tb) {
        let y = base / p.n + min(k + lane / 2u, p.k - 1u);
        let c = col0 + 16u * (lane % 2u);
        (*s)[0] = b_texel(min(c + 0u, p.n - 4u) / 4u, y);
        (*s)[1] = b_texel(min(c + 4u, p.n - 4u) / 4u, y);
        (*s)[2] = b_texel(min(c + 8u, p.n - 4u) / 4u, y);
        (*s)[3] = b_texel(min(c + 12u, p.n - 4u) / 4u, y);
        return;
    }
    let y0 = base / p.k;
    let last = p.n - 1u;
    let c = col0 + 4u * lane;
    let v0 = b_texel(k / 4u, y0 + min(c, last)); let v1 = b_texel(k / 4u, y0 + min(c + 1u, last));
    let v2 = b_texel(k / 4u, y0 + min(c + 2u, last)); let v3 = b_texel(k / 4u, y0 + min(c + 3u, last));
    (*s)[0] = vec4<f32>(v0.x, v1.x, v2.x, v3.x);
    (*s)[1] = vec4<f32>(v0.y, v1.y, v2.y, v3.y);
    (*s)[2] = vec4<f32>(v0.z, v1.z, v2.z, v3.z);
    (*s)[3] = vec4<f32>(v0.w, v1.w, v2.w, v3.w);
}

// 32-column blocks (subgroup_block: 8 lanes x 8 rows x 32 columns), where the storage kernels
// take 64 columns for most N. Once the loads are texel loads, what limits the block is the size
// of its loop: the 64-column step is about 50 KB of lavapipe's machine code, beyond the 32 KiB
// first-level instruction cache of most x86 cores (AMD Zen 2-5, recent Intel), the 32-column
// step about half. Measured on an AMD EPYC of family 25 model 1 (32 KiB L1i), 2026-12-05,
// fastest of 25 products each: 2056 x 192 x 192 3.20 against 3.48 ms, 2056 x 768 x 192 13.0
// against 14.1 ms, 2056 x 192 x 768 12.1 against 12.9 ms, 2048 x 128 x 128 1.53 against 1.66
// ms; the default model's matmul time per training step 665-675 against 685-923 ms (vlsa
// profile model, three runs alternating). A core with a 64 KiB L1i (the Xeon of family 6 model
// 167 of docs/performance-log.md) may favour 64 columns; that is not measured.
@compute @workgroup_size(8)
fn texture_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_block(wid, lane, false, false);
}

@compute @workgroup_size(8)
fn texture_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_block(wid, lane, false, true);
}

@compute @workgroup_size(8)
fn texture_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_block(wid, lane, true, false);
}

@compute @workgroup_size(8)
fn texture_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_block(wid, lane, true, true);
}
