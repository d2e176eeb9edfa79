// The matmul's subgroup path: the batched product of matmul.wgsl (same math, storage, parameter
// block and bindings; see the top of that file) with the B operand shared across one subgroup by
// subgroupBroadcast. A module of its own because an adapter without subgroup operations
// (llvmpipe GL) cannot compile a module that uses them, even where no entry point runs.

#include "matmul_core.wgsl"
#include "activation.wgsl"

// The old output that an accumulating product adds onto (matmul_core.wgsl's epilogue4).
fn old_out4(o: u32) -> vec4<f32> {
    return out4[o];
}
#include "matmul_subgroup_blocks.wgsl"

// ----- subgroup path (CPU adapters with subgroups: lavapipe) -----
//
// A workgroup is exactly one subgroup of 8 invocations ("lanes") and owns a 64 x 32 block of the
// output; lane l owns rows row0 + 8l .. + 8 and all 32 columns, as 8 rows of eight vec4
// accumulators. Per step of 4 along K each lane loads its own 8 A rows (8 vec4) and a quarter
// of the 4 x 32 B slice (4 vec4), then `subgroupBroadcast(value, constant_lane)` hands every
// B vec4 to every lane: 12 loads per lane per step for 1024 multiply-adds, against 64 for the
// register kernel's 4096. On lavapipe a storage load costs a loop over the 8 SIMD lanes while a
// broadcast is a register shuffle, so fewer loads per multiply-add is what speeds it up.
// Accumulation is k-inner (fma_row: a.x * B[k] + a.y * B[k+1] + ... per output vec4).
//
// Lane identity is the subgroup invocation id, the index subgroupBroadcast names. The launcher
// uses these kernels only when the adapter's smallest subgroup has at least 8 invocations, so
// the 8 invocations of a workgroup always share one subgroup (ids 0..7); otherwise it falls
// back to the register kernels. The loop over K is uniform (its bound is a uniform), so every
// broadcast runs with all 8 lanes active.
//
// `subgroup_nn/nt/tn/tt` read vec4 (same alignment rule as registers_*); `subgroup_general`
// reads scalars (any shape; runtime transpose flags) with the same sharing. The
// `subgroup_wide_*` kernels at the end of this file are the same with 64 columns per lane.
// The blocks themselves (sharing, 32- and 64-column blocks, the thin tail block) are in
// include/matmul_subgroup_blocks.wgsl, shared with matmul_texture.wgsl, which reads the same
// operands from textures; this file supplies their storage loads (sg_load_a, sg_load_a1,
// sg_load_b).


// This lane's 8 rows of A at k..k+4 (vec4 views); rows past M are clamped (never stored).
fn sg_load_a(s: ptr<function, LaneA>, ta: bool, base: u32, row0: u32, k: u32) {
    if (!ta) {
        let last = p.m - 1u;
        (*s)[0] = a4[(base + min(row0 + 0u, last) * p.k + k) / 4u];
        (*s)[1] = a4[(base + min(row0 + 1u, last) * p.k + k) / 4u];
        (*s)[2] = a4[(base + min(row0 + 2u, last) * p.k + k) / 4u];
        (*s)[3] = a4[(base + min(row0 + 3u, last) * p.k + k) / 4u];
        (*s)[4] = a4[(base + min(row0 + 4u, last) * p.k + k) / 4u];
        (*s)[5] = a4[(base + min(row0 + 5u, last) * p.k + k) / 4u];
        (*s)[6] = a4[(base + min(row0 + 6u, last) * p.k + k) / 4u];
        (*s)[7] = a4[(base + min(row0 + 7u, last) * p.k + k) / 4u];
        return;
    }
    // Stored [K, M]: one vec4 holds 4 rows at one k; transpose each 4 x 4 group (K tail: zeros).
    { let v0 = a_trow(base, k, row0 + 0u); let v1 = a_trow(base, k + 1u, row0 + 0u); let v2 = a_trow(base, k + 2u, row0 + 0u); let v3 = a_trow(base, k + 3u, row0 + 0u);
      (*s)[0] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[1] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[2] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[3] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 4u); let v1 = a_trow(base, k + 1u, row0 + 4u); let v2 = a_trow(base, k + 2u, row0 + 4u); let v3 = a_trow(base, k + 3u, row0 + 4u);
      (*s)[4] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[5] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[6] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[7] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
}

// One row of A at k..k+4 for a thin block (below): clamped past M; trans_a storage reads four
// scalars down the column through a_at (zeros in a K tail).
fn sg_load_a1(ta: bool, base: u32, row: u32, k: u32) -> vec4<f32> {
    if (!ta) {
        return a4[(base + min(row, p.m - 1u) * p.k + k) / 4u];
    }
    return vec4<f32>(a_at(base, row, k), a_at(base, row, k + 1u), a_at(base, row, k + 2u), a_at(base, row, k + 3u));
}

// This lane's quarter of the B slice (k..k+4, columns col0..col0+32), vec4 views.
// Not transposed: lane l loads B[k + l/2, col0 + 16(l%2) + 4i ..+4] for i < 4 (row-contiguous),
// i.e. slice entries 4l + i (see sg_share_n). Transposed ([N, K]): lane l loads columns
// col0 + 4l .. + 4 as vec4 along k and transposes them, giving entries 8u + l (sg_share_t).
// Columns past N are clamped; a K tail (tn) reads a clamped row that A's zeros cancel.
fn sg_load_b(s: ptr<function, Share>, tb: bool, base: u32, k: u32, col0: u32, lane: u32) {
    if (!tb) {
        let row = (base + min(k + lane / 2u, p.k - 1u) * p.n);
        let c = col0 + 16u * (lane % 2u);
        (*s)[0] = b4[(row + min(c + 0u, p.n - 4u)) / 4u];
        (*s)[1] = b4[(row + min(c + 4u, p.n - 4u)) / 4u];
        (*s)[2] = b4[(row + min(c + 8u, p.n - 4u)) / 4u];
        (*s)[3] = b4[(row + min(c + 12u, p.n - 4u)) / 4u];
        return;
    }
    let last = p.n - 1u;
    let c = col0 + 4u * lane;
    let v0 = b4[(base + min(c, last) * p.k + k) / 4u]; let v1 = b4[(base + min(c + 1u, last) * p.k + k) / 4u];
    let v2 = b4[(base + min(c + 2u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(c + 3u, last) * p.k + k) / 4u];
    (*s)[0] = vec4<f32>(v0.x, v1.x, v2.x, v3.x);
    (*s)[1] = vec4<f32>(v0.y, v1.y, v2.y, v3.y);
    (*s)[2] = vec4<f32>(v0.z, v1.z, v2.z, v3.z);
    (*s)[3] = vec4<f32>(v0.w, v1.w, v2.w, v3.w);
}

@compute @workgroup_size(8)
fn subgroup_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_block(wid, lane, false, false);
}

@compute @workgroup_size(8)
fn subgroup_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_block(wid, lane, false, true);
}

@compute @workgroup_size(8)
fn subgroup_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_block(wid, lane, true, false);
}

@compute @workgroup_size(8)
fn subgroup_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_block(wid, lane, true, true);
}

// subgroup_general: the same block and sharing from scalar loads through bindings 1..3 (any
// shape, runtime transpose flags; zeros outside the matrix, so K tails and edges need no care).
fn sg_load_a_general(s: ptr<function, LaneA>, base: u32, row0: u32, k: u32) {
    (*s)[0] = vec4<f32>(a_at(base, row0 + 0u, k), a_at(base, row0 + 0u, k + 1u), a_at(base, row0 + 0u, k + 2u), a_at(base, row0 + 0u, k + 3u));
    (*s)[1] = vec4<f32>(a_at(base, row0 + 1u, k), a_at(base, row0 + 1u, k + 1u), a_at(base, row0 + 1u, k + 2u), a_at(base, row0 + 1u, k + 3u));
    (*s)[2] = vec4<f32>(a_at(base, row0 + 2u, k), a_at(base, row0 + 2u, k + 1u), a_at(base, row0 + 2u, k + 2u), a_at(base, row0 + 2u, k + 3u));
    (*s)[3] = vec4<f32>(a_at(base, row0 + 3u, k), a_at(base, row0 + 3u, k + 1u), a_at(base, row0 + 3u, k + 2u), a_at(base, row0 + 3u, k + 3u));
    (*s)[4] = vec4<f32>(a_at(base, row0 + 4u, k), a_at(base, row0 + 4u, k + 1u), a_at(base, row0 + 4u, k + 2u), a_at(base, row0 + 4u, k + 3u));
    (*s)[5] = vec4<f32>(a_at(base, row0 + 5u, k), a_at(base, row0 + 5u, k + 1u), a_at(base, row0 + 5u, k + 2u), a_at(base, row0 + 5u, k + 3u));
    (*s)[6] = vec4<f32>(a_at(base, row0 + 6u, k), a_at(base, row0 + 6u, k + 1u), a_at(base, row0 + 6u, k + 2u), a_at(base, row0 + 6u, k + 3u));
    (*s)[7] = vec4<f32>(a_at(base, row0 + 7u, k), a_at(base, row0 + 7u, k + 1u), a_at(base, row0 + 7u, k + 2u), a_at(base, row0 + 7u, k + 3u));
}

// Lane l loads slice entries 4l .. 4l + 4 (row k + l/2, columns col0 + 16(l%2) + 4i), as sg_load_b.
fn sg_load_b_general(s: ptr<function, Share>, base: u32, k: u32, col0: u32, lane: u32) {
    let kk = k + lane / 2u;
    let c = col0 + 16u * (lane % 2u);
    (*s)[0] = vec4<f32>(b_at(base, kk, c + 0u), b_at(base, kk, c + 1u), b_at(base, kk, c + 2u), b_at(base, kk, c + 3u));
    (*s)[1] = vec4<f32>(b_at(base, kk, c + 4u), b_at(base, kk, c + 5u), b_at(base, kk, c + 6u), b_at(base, kk, c + 7u));
    (*s)[2] = vec4<f32>(b_at(base, kk, c + 8u), b_at(base, kk, c + 9u), b_at(base, kk, c + 10u), b_at(base, kk, c + 11u));
    (*s)[3] = vec4<f32>(b_at(base, kk, c + 12u), b_at(base, kk, c + 13u), b_at(base, kk, c + 14u), b_at(base, kk, c + 15u));
}

// One accumulated row with scalar stores, masked to the matrix (any N).
fn store_row_general(c: ptr<function, Row>, base: u32, row: u32, col0: u32) {
    if (row >= p.m) {
        return;
    }
    for (var q = 0u; q < 8u; q++) {
        let v = (*c)[q];
        for (var e = 0u; e < 4u; e++) {
            let j = col0 + 4u * q + e;
            if (j < p.n) {
                let o = base + row * p.n + j;
                put1(o, j, v[e]);
            }
        }
    }
}

@compute @workgroup_size(8)
fn subgroup_general(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    let col0 = wid.x * 32u;
    let row0 = wid.y * 64u + lane * 8u;
    let abase = wid.z * p.a_batch;
    let bbase = wid.z * p.b_batch;
    let obase = wid.z * p.m * p.n;
    var c0: Row; var c1: Row; var c2: Row; var c3: Row; var c4: Row; var c5: Row; var c6: Row; var c7: Row;
    var a: LaneA;
    var share: Share;
    var b: Slice;
    for (var k = 0u; k < p.k; k += 4u) {
        sg_load_a_general(&a, abase, row0, k);
        sg_load_b_general(&share, bbase, k, col0, lane);
        sg_share_n(&b, &share);
        fma_row(&c0, a[0], &b); fma_row(&c1, a[1], &b); fma_row(&c2, a[2], &b); fma_row(&c3, a[3], &b); fma_row(&c4, a[4], &b); fma_row(&c5, a[5], &b); fma_row(&c6, a[6], &b); fma_row(&c7, a[7], &b);
    }
    store_row_general(&c0, obase, row0 + 0u, col0);
    store_row_general(&c1, obase, row0 + 1u, col0);
    store_row_general(&c2, obase, row0 + 2u, col0);
    store_row_general(&c3, obase, row0 + 3u, col0);
    store_row_general(&c4, obase, row0 + 4u, col0);
    store_row_general(&c5, obase, row0 + 5u, col0);
    store_row_general(&c6, obase, row0 + 6u, col0);
    store_row_general(&c7, obase, row0 + 7u, col0);
    act_rows1(obase, row0, 8u, col0, 32u);
}

// The 64-column entry points (subgroup_wide_block, in the include).

@compute @workgroup_size(8)
fn subgroup_wide_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_wide_block(wid, lane, false, false);
}

@compute @workgroup_size(8)
fn subgroup_wide_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_wide_block(wid, lane, false, true);
}

@compute @workgroup_size(8)
fn subgroup_wide_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_wide_block(wid, lane, true, false);
}

@compute @workgroup_size(8)
fn subgroup_wide_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    p = params;
    subgroup_wide_block(wid, lane, true, true);
}
