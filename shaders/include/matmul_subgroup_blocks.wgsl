// The subgroup matmul's blocks (shaders/matmul_subgroup.wgsl explains the sharing): the B
// slice broadcast across the subgroup, and the 32- and 64-column blocks and the thin tail
// block built on it. Shared by the two operand sources: matmul_subgroup.wgsl (storage buffers)
// and matmul_texture.wgsl (textures); each defines sg_load_a, sg_load_a1 and sg_load_b for
// its source before including this file.

// A training product's activation is applied as each row is stored, from the accumulators
// (put4 in include/matmul_core.wgsl): no act_rows4 pass reading the stored product back.
const ACT_IN_STORE: bool = true;

alias LaneA = array<vec4<f32>, 8>;   // [r] = A[row0 + r, k..k+4]
alias Share = array<vec4<f32>, 4>;   // this lane's quarter of the B slice (see sg_share_*)

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

// ----- row sums: a Linear's bias gradient in its weight gradient's launch -----
//
// With ROW_SUMS (a pipeline constant; kernels/src/matmul.rs, `matmul_row_sums`) the workgroups
// of the first column block also store
//     sums[b * M + i] = sum over k of A[b, i, k]      (A as the product reads it, [M, K])
// for their rows, into the activation's vec4 binding (no activation's output then; the vec4
// view, because a scalar one would be one storage binding more than Metal's 7). The launcher
// asks for them only when M is a multiple of 4, so each group of four rows is whole or wholly
// past M and starts a vec4. A Linear's weight gradient dW = dYᵀ · X reads dYᵀ as A, so these
// sums are its bias gradient, the sum of dY over its rows: no reduction launch of its own
// (there were 91 bias-gradient launches in a default-model training step). The sums walk this
// lane's A rows a second time, after the product's loop, rather than inside it: the loop's
// accumulators already spill on lavapipe, and eight more live vectors there would cost every
// workgroup, where the second walk costs only the first column block's (A's loads without B's,
// broadcasts or multiply-adds). Summation order: four running sums by k mod 4, then their
// components; the same on every run.
override ROW_SUMS: bool = false;

// This lane's 8 rows (row0 .., a multiple of 8) of a 64-row block.
fn row_sums8(wid: vec3<u32>, ta: bool, row0: u32) {
    if (!ROW_SUMS || wid.x != 0u) {
        return;
    }
    let abase = wid.z * p.a_batch;
    var a: LaneA;
    var s: LaneA;
    for (var k = 0u; k < p.k; k += 4u) {
        sg_load_a(&a, ta, abase, row0, k);
        s[0] += a[0]; s[1] += a[1]; s[2] += a[2]; s[3] += a[3];
        s[4] += a[4]; s[5] += a[5]; s[6] += a[6]; s[7] += a[7];
    }
    let one = vec4<f32>(1.0);
    let o = (wid.z * p.m + row0) / 4u;
    if (row0 < p.m) {
        act_out4[o] = vec4<f32>(dot(s[0], one), dot(s[1], one), dot(s[2], one), dot(s[3], one));
    }
    if (row0 + 4u < p.m) {
        act_out4[o + 1u] = vec4<f32>(dot(s[4], one), dot(s[5], one), dot(s[6], one), dot(s[7], one));
    }
}

// A thin block's rows (subgroup_thin: one per lane, `row` = the block's first row + lane):
// lanes 0 and 1 store the eight sums, gathered by broadcasts.
fn row_sums1(wid: vec3<u32>, ta: bool, row: u32, lane: u32) {
    if (!ROW_SUMS || wid.x != 0u) {
        return;
    }
    let abase = wid.z * p.a_batch;
    var s = vec4<f32>(0.0);
    for (var k = 0u; k < p.k; k += 4u) {
        s += sg_load_a1(ta, abase, row, k);
    }
    let t = dot(s, vec4<f32>(1.0));
    let lo = vec4<f32>(subgroupBroadcast(t, 0u), subgroupBroadcast(t, 1u), subgroupBroadcast(t, 2u), subgroupBroadcast(t, 3u));
    let hi = vec4<f32>(subgroupBroadcast(t, 4u), subgroupBroadcast(t, 5u), subgroupBroadcast(t, 6u), subgroupBroadcast(t, 7u));
    let first = row - lane;
    let o = (wid.z * p.m + first) / 4u;
    if (lane == 0u && first < p.m) {
        act_out4[o] = lo;
    }
    if (lane == 1u && first + 4u < p.m) {
        act_out4[o + 1u] = hi;
    }
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
    }
    row_sums1(wid, ta, row, lane);
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
    row_sums8(wid, ta, row0);
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
    row_sums8(wid, ta, row0);
}
