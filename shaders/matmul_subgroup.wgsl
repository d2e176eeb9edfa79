// The matmul's subgroup path: the batched product of matmul.wgsl (same math, storage, parameter
// block and bindings; see the top of that file) with the B operand shared across one subgroup by
// subgroupBroadcast. A module of its own because an adapter without subgroup operations
// (llvmpipe GL) cannot compile a module that uses them, even where no entry point runs.

#include "matmul_core.wgsl"
#include "activation.wgsl"

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

alias LaneA = array<vec4<f32>, 8>;   // [r] = A[row0 + r, k..k+4]
alias Share = array<vec4<f32>, 4>;   // this lane's quarter of the B slice (see sg_share_*)

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

// The whole B slice (Slice layout: [8u + q] = B[k + u, col0 + 4q ..]) from every lane's share:
// entry s lives in lane s / 4, share index s % 4.
fn sg_share_n(b: ptr<function, Slice>, s: ptr<function, Share>) {
    (*b)[0] = subgroupBroadcast((*s)[0], 0u);
    (*b)[1] = subgroupBroadcast((*s)[1], 0u);
    (*b)[2] = subgroupBroadcast((*s)[2], 0u);
    (*b)[3] = subgroupBroadcast((*s)[3], 0u);
    (*b)[4] = subgroupBroadcast((*s)[0], 1u);
    (*b)[5] = subgroupBroadcast((*s)[1], 1u);
    (*b)[6] = subgroupBroadcast((*s)[2], 1u);
    (*b)[7] = subgroupBroadcast((*s)[3], 1u);
    (*b)[8] = subgroupBroadcast((*s)[0], 2u);
    (*b)[9] = subgroupBroadcast((*s)[1], 2u);
    (*b)[10] = subgroupBroadcast((*s)[2], 2u);
    (*b)[11] = subgroupBroadcast((*s)[3], 2u);
    (*b)[12] = subgroupBroadcast((*s)[0], 3u);
    (*b)[13] = subgroupBroadcast((*s)[1], 3u);
    (*b)[14] = subgroupBroadcast((*s)[2], 3u);
    (*b)[15] = subgroupBroadcast((*s)[3], 3u);
    (*b)[16] = subgroupBroadcast((*s)[0], 4u);
    (*b)[17] = subgroupBroadcast((*s)[1], 4u);
    (*b)[18] = subgroupBroadcast((*s)[2], 4u);
    (*b)[19] = subgroupBroadcast((*s)[3], 4u);
    (*b)[20] = subgroupBroadcast((*s)[0], 5u);
    (*b)[21] = subgroupBroadcast((*s)[1], 5u);
    (*b)[22] = subgroupBroadcast((*s)[2], 5u);
    (*b)[23] = subgroupBroadcast((*s)[3], 5u);
    (*b)[24] = subgroupBroadcast((*s)[0], 6u);
    (*b)[25] = subgroupBroadcast((*s)[1], 6u);
    (*b)[26] = subgroupBroadcast((*s)[2], 6u);
    (*b)[27] = subgroupBroadcast((*s)[3], 6u);
    (*b)[28] = subgroupBroadcast((*s)[0], 7u);
    (*b)[29] = subgroupBroadcast((*s)[1], 7u);
    (*b)[30] = subgroupBroadcast((*s)[2], 7u);
    (*b)[31] = subgroupBroadcast((*s)[3], 7u);
}

// The same when each lane loaded a column group: entry s lives in lane s % 8, share index s / 8.
fn sg_share_t(b: ptr<function, Slice>, s: ptr<function, Share>) {
    (*b)[0] = subgroupBroadcast((*s)[0], 0u);
    (*b)[1] = subgroupBroadcast((*s)[0], 1u);
    (*b)[2] = subgroupBroadcast((*s)[0], 2u);
    (*b)[3] = subgroupBroadcast((*s)[0], 3u);
    (*b)[4] = subgroupBroadcast((*s)[0], 4u);
    (*b)[5] = subgroupBroadcast((*s)[0], 5u);
    (*b)[6] = subgroupBroadcast((*s)[0], 6u);
    (*b)[7] = subgroupBroadcast((*s)[0], 7u);
    (*b)[8] = subgroupBroadcast((*s)[1], 0u);
    (*b)[9] = subgroupBroadcast((*s)[1], 1u);
    (*b)[10] = subgroupBroadcast((*s)[1], 2u);
    (*b)[11] = subgroupBroadcast((*s)[1], 3u);
    (*b)[12] = subgroupBroadcast((*s)[1], 4u);
    (*b)[13] = subgroupBroadcast((*s)[1], 5u);
    (*b)[14] = subgroupBroadcast((*s)[1], 6u);
    (*b)[15] = subgroupBroadcast((*s)[1], 7u);
    (*b)[16] = subgroupBroadcast((*s)[2], 0u);
    (*b)[17] = subgroupBroadcast((*s)[2], 1u);
    (*b)[18] = subgroupBroadcast((*s)[2], 2u);
    (*b)[19] = subgroupBroadcast((*s)[2], 3u);
    (*b)[20] = subgroupBroadcast((*s)[2], 4u);
    (*b)[21] = subgroupBroadcast((*s)[2], 5u);
    (*b)[22] = subgroupBroadcast((*s)[2], 6u);
    (*b)[23] = subgroupBroadcast((*s)[2], 7u);
    (*b)[24] = subgroupBroadcast((*s)[3], 0u);
    (*b)[25] = subgroupBroadcast((*s)[3], 1u);
    (*b)[26] = subgroupBroadcast((*s)[3], 2u);
    (*b)[27] = subgroupBroadcast((*s)[3], 3u);
    (*b)[28] = subgroupBroadcast((*s)[3], 4u);
    (*b)[29] = subgroupBroadcast((*s)[3], 5u);
    (*b)[30] = subgroupBroadcast((*s)[3], 6u);
    (*b)[31] = subgroupBroadcast((*s)[3], 7u);
}

// A row block with at most 8 rows left (M's tail: 257 = 4 x 64 + 1, 2056 = 32 x 64 + 8) runs
// with one row per lane instead of eight: the same B loads and broadcasts, an eighth of the A
// loads and multiply-adds. Otherwise that block costs a full one for a few rows (a fifth of
// every 257-row product). The branch is uniform: it depends on the workgroup and M only.
fn rows_left(wid: vec3<u32>) -> u32 {
    return p.m - wid.y * 64u;
}

// `halves` 32-column halves from column wid.x * 32 * halves: 1 for the 32-column kernels, 2 for
// the 64-column ones (a loop, so the block's code is compiled once).
fn subgroup_thin(wid: vec3<u32>, halves: u32, lane: u32, ta: bool, tb: bool) {
    let row = wid.y * 64u + lane;
    let abase = wid.z * p.a_batch;
    let bbase = wid.z * p.b_batch;
    let obase = wid.z * p.m * p.n;
    for (var h = 0u; h < halves; h++) {
        let col0 = (wid.x * halves + h) * 32u;
        var c: Row;
        var share: Share;
        var b: Slice;
        for (var k = 0u; k < p.k; k += 4u) {
            let a = sg_load_a1(ta, abase, row, k);
            sg_load_b(&share, tb, bbase, k, col0, lane);
            if (tb) { sg_share_t(&b, &share); } else { sg_share_n(&b, &share); }
            fma_row(&c, a, &b);
        }
        var bv = bias_row(col0);
        store_row(&c, &bv, obase, row, col0);
        act_rows4(obase, row, 1u, col0);
    }
}

fn subgroup_block(wid: vec3<u32>, lane: u32, ta: bool, tb: bool) {
    if (rows_left(wid) <= 8u) {
        subgroup_thin(wid, 1u, lane, ta, tb);
        return;
    }
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
        sg_load_a(&a, ta, abase, row0, k);
        sg_load_b(&share, tb, bbase, k, col0, lane);
        if (tb) { sg_share_t(&b, &share); } else { sg_share_n(&b, &share); }
        fma_row(&c0, a[0], &b); fma_row(&c1, a[1], &b); fma_row(&c2, a[2], &b); fma_row(&c3, a[3], &b); fma_row(&c4, a[4], &b); fma_row(&c5, a[5], &b); fma_row(&c6, a[6], &b); fma_row(&c7, a[7], &b);
    }
    var bv = bias_row(col0);
    store_row(&c0, &bv, obase, row0 + 0u, col0);
    store_row(&c1, &bv, obase, row0 + 1u, col0);
    store_row(&c2, &bv, obase, row0 + 2u, col0);
    store_row(&c3, &bv, obase, row0 + 3u, col0);
    store_row(&c4, &bv, obase, row0 + 4u, col0);
    store_row(&c5, &bv, obase, row0 + 5u, col0);
    store_row(&c6, &bv, obase, row0 + 6u, col0);
    store_row(&c7, &bv, obase, row0 + 7u, col0);
    act_rows4(obase, row0, 8u, col0);
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

// ----- subgroup path, 64-column blocks -----
//
// `subgroup_wide_nn/nt/tn/tt`: the same sharing with 8 rows x 64 columns per lane, a 64 x 64
// output block per workgroup. Per step of 4 along K each lane loads its 8 A rows (8 vec4) and an
// eighth of the 4 x 64 B slice (8 vec4), then 64 broadcasts give every lane the whole slice: 16
// loads per lane for 2048 multiply-adds, against 12 for 1024 in the 32-column kernels. Twice
// the accumulators (spilled to the stack either way on lavapipe: 512 floats per lane) for 1.5x
// fewer loads per multiply-add: 1.06-1.3x faster at the model's shapes and at 1024^3 (Intel Xeon,
// family 6 model 167, 2026-12-03; docs/performance-log.md, "Matmul paths"). The launcher
// takes them when 64-column blocks cover N with no more padding than 32-column ones (N = 64,
// 192, 768, ...; not N = 32 or the 260 keys of the ViT's attention scores), see
// kernels/src/matmul.rs. Tried on the same machine and slower: 16 rows x 64 columns per lane,
// eight k per accumulator update, and a 32-column last block inside these entry points
// (docs/performance-log.md, "Matmul paths").

// The 64 columns are two 32-column halves (left: col0 .. col0 + 32, right: col0 + 32 ..
// col0 + 64), each loaded, shared and accumulated with the 32-column kernels' sg_load_b,
// sg_share_n/t, fma_row and store_row; only the A rows are loaded once for both.

fn subgroup_wide_block(wid: vec3<u32>, lane: u32, ta: bool, tb: bool) {
    if (rows_left(wid) <= 8u) {
        subgroup_thin(wid, 2u, lane, ta, tb);
        return;
    }
    let col0 = wid.x * 64u;
    let row0 = wid.y * 64u + lane * 8u;
    let abase = wid.z * p.a_batch;
    let bbase = wid.z * p.b_batch;
    let obase = wid.z * p.m * p.n;
    // Row r's left and right halves.
    var l0: Row; var l1: Row; var l2: Row; var l3: Row; var l4: Row; var l5: Row; var l6: Row; var l7: Row;
    var r0: Row; var r1: Row; var r2: Row; var r3: Row; var r4: Row; var r5: Row; var r6: Row; var r7: Row;
    var a: LaneA;
    var sl: Share; var sr: Share;
    var bl: Slice; var br: Slice;
    for (var k = 0u; k < p.k; k += 4u) {
        sg_load_a(&a, ta, abase, row0, k);
        sg_load_b(&sl, tb, bbase, k, col0, lane);
        sg_load_b(&sr, tb, bbase, k, col0 + 32u, lane);
        if (tb) { sg_share_t(&bl, &sl); sg_share_t(&br, &sr); } else { sg_share_n(&bl, &sl); sg_share_n(&br, &sr); }
        fma_row(&l0, a[0], &bl); fma_row(&l1, a[1], &bl); fma_row(&l2, a[2], &bl); fma_row(&l3, a[3], &bl); fma_row(&l4, a[4], &bl); fma_row(&l5, a[5], &bl); fma_row(&l6, a[6], &bl); fma_row(&l7, a[7], &bl);
        fma_row(&r0, a[0], &br); fma_row(&r1, a[1], &br); fma_row(&r2, a[2], &br); fma_row(&r3, a[3], &br); fma_row(&r4, a[4], &br); fma_row(&r5, a[5], &br); fma_row(&r6, a[6], &br); fma_row(&r7, a[7], &br);
    }
    var bl_bias = bias_row(col0);
    var br_bias = bias_row(col0 + 32u);
    store_row(&l0, &bl_bias, obase, row0 + 0u, col0); store_row(&r0, &br_bias, obase, row0 + 0u, col0 + 32u);
    store_row(&l1, &bl_bias, obase, row0 + 1u, col0); store_row(&r1, &br_bias, obase, row0 + 1u, col0 + 32u);
    store_row(&l2, &bl_bias, obase, row0 + 2u, col0); store_row(&r2, &br_bias, obase, row0 + 2u, col0 + 32u);
    store_row(&l3, &bl_bias, obase, row0 + 3u, col0); store_row(&r3, &br_bias, obase, row0 + 3u, col0 + 32u);
    store_row(&l4, &bl_bias, obase, row0 + 4u, col0); store_row(&r4, &br_bias, obase, row0 + 4u, col0 + 32u);
    store_row(&l5, &bl_bias, obase, row0 + 5u, col0); store_row(&r5, &br_bias, obase, row0 + 5u, col0 + 32u);
    store_row(&l6, &bl_bias, obase, row0 + 6u, col0); store_row(&r6, &br_bias, obase, row0 + 6u, col0 + 32u);
    store_row(&l7, &bl_bias, obase, row0 + 7u, col0); store_row(&r7, &br_bias, obase, row0 + 7u, col0 + 32u);
    act_rows4(obase, row0, 8u, col0);
    act_rows4(obase, row0, 8u, col0 + 32u);
}

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
