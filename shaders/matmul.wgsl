// Batched matrix multiply with transpose and broadcast flags.
//
// Math (for every batch b, row i < M, column j < N):
//   out[b, i, j] = sum over k < K of A[b, i, k] * B[b, k, j]      (+ out[b, i, j] when accumulating)
// Storage (row-major, per batch):
//   A: [M, K], or [K, M] when trans_a (A[b, i, k] = a[b * a_batch + k * M + i])
//   B: [K, N], or [N, K] when trans_b (B[b, k, j] = b[b * b_batch + j * K + k]; PyTorch Linear weight)
//   out: always [M, N];  a_batch / b_batch are 0 for a matrix shared by every batch (broadcast).
// With a bias (bias: [N], shared by every row and batch; the launcher's matmul_bias), every
// output gets bias[j] added in the store: out = A.B + bias, or out += A.B + bias. So a Linear
// layer is one dispatch.
// With an activation f (the launcher's matmul_bias_act; a bias, no accumulation), out keeps
// the bare product A.B and a second output act_out gets f(A.B + bias): a Linear, its bias and its
// activation in one dispatch, with what the backward needs (f'(A.B + bias)) kept.
// K = 0 gives zeros, or the bias (or leaves out unchanged, plus the bias, when accumulating).
//
// Three families of entry points, chosen by the launcher (kernels/src/matmul.rs):
//
// 1. `registers_*`: for CPU adapters (lavapipe). No workgroup memory and no barriers.
//    - `registers_nn/nt/tn/tt` (n = stored as written, t = transposed): each invocation owns a
//      32 x 32 block and reads A and B as vec4 through bindings 4..6; the launcher uses them
//      when every contiguous axis is a multiple of 4 (see `aligned` in matmul.rs). Row and
//      column edges are clamped on load and masked on store; a K tail (tn only) is zeroed.
//    - `registers_general` reads scalars through bindings 1..3, 16 x 16 per invocation, and
//      handles any shape.
//    The 8 invocations of a workgroup are one SIMD vector on lavapipe; they cover
//    LANE_ROWS x LANE_COLS blocks (64 x 128 outputs for the vec4 kernels, 32 x 64 general).
//
// 2. `subgroup_*`: for CPU adapters with subgroups (lavapipe): the register idea with the B
//    operand shared across one 8-lane subgroup by subgroupBroadcast. They live in
//    matmul_subgroup.wgsl: a module that uses subgroup operations cannot even be compiled on an
//    adapter without them (llvmpipe GL), so they stay out of this one.
//
// 3. `tiled_*`: for real GPUs. Shared-memory tiles with 2-D register blocking and vec4 loads,
//    transposed operands read directly, split-K with a deterministic reduction pass.
//
// Grid: x = column groups, y = row groups, z = batch (times splits for split-K tiled).

#include "matmul_core.wgsl"
#include "activation.wgsl"

// The old output that an accumulating product adds onto (matmul_core.wgsl's epilogue4).
fn old_out4(o: u32) -> vec4<f32> {
    return out4[o];
}

// The register kernels apply a training product's activation in act_rows4 / act_rows1.
const ACT_IN_STORE: bool = false;

// ----- registers path: the block drivers and entry points (helpers in include/matmul_core.wgsl) -----

fn register_block(wid: vec3<u32>, lane: u32, ta: bool, tb: bool) {
    let col0 = (wid.x * LANE_COLS + lane % LANE_COLS) * BLOCK_COLS;
    let row0 = (wid.y * LANE_ROWS + lane / LANE_COLS) * BLOCK_ROWS;
    let abase = wid.z * p.a_batch;
    let bbase = wid.z * p.b_batch;
    let obase = wid.z * p.m * p.n;

    var c0: Row; var c1: Row; var c2: Row; var c3: Row; var c4: Row; var c5: Row; var c6: Row; var c7: Row;
    var c8: Row; var c9: Row; var c10: Row; var c11: Row; var c12: Row; var c13: Row; var c14: Row; var c15: Row;
    var c16: Row; var c17: Row; var c18: Row; var c19: Row; var c20: Row; var c21: Row; var c22: Row; var c23: Row;
    var c24: Row; var c25: Row; var c26: Row; var c27: Row; var c28: Row; var c29: Row; var c30: Row; var c31: Row;
    var a: Slice;
    var b: Slice;
    for (var k = 0u; k < p.k; k += 4u) {
        load_a(&a, ta, abase, row0, k);
        load_b(&b, tb, bbase, k, col0);
        fma_row(&c0, a[0], &b); fma_row(&c1, a[1], &b); fma_row(&c2, a[2], &b); fma_row(&c3, a[3], &b);
        fma_row(&c4, a[4], &b); fma_row(&c5, a[5], &b); fma_row(&c6, a[6], &b); fma_row(&c7, a[7], &b);
        fma_row(&c8, a[8], &b); fma_row(&c9, a[9], &b); fma_row(&c10, a[10], &b); fma_row(&c11, a[11], &b);
        fma_row(&c12, a[12], &b); fma_row(&c13, a[13], &b); fma_row(&c14, a[14], &b); fma_row(&c15, a[15], &b);
        fma_row(&c16, a[16], &b); fma_row(&c17, a[17], &b); fma_row(&c18, a[18], &b); fma_row(&c19, a[19], &b);
        fma_row(&c20, a[20], &b); fma_row(&c21, a[21], &b); fma_row(&c22, a[22], &b); fma_row(&c23, a[23], &b);
        fma_row(&c24, a[24], &b); fma_row(&c25, a[25], &b); fma_row(&c26, a[26], &b); fma_row(&c27, a[27], &b);
        fma_row(&c28, a[28], &b); fma_row(&c29, a[29], &b); fma_row(&c30, a[30], &b); fma_row(&c31, a[31], &b);
    }
    var bv = bias_row(col0);
    store_row(&c0, &bv, obase, row0 + 0u, col0); store_row(&c1, &bv, obase, row0 + 1u, col0); store_row(&c2, &bv, obase, row0 + 2u, col0); store_row(&c3, &bv, obase, row0 + 3u, col0);
    store_row(&c4, &bv, obase, row0 + 4u, col0); store_row(&c5, &bv, obase, row0 + 5u, col0); store_row(&c6, &bv, obase, row0 + 6u, col0); store_row(&c7, &bv, obase, row0 + 7u, col0);
    store_row(&c8, &bv, obase, row0 + 8u, col0); store_row(&c9, &bv, obase, row0 + 9u, col0); store_row(&c10, &bv, obase, row0 + 10u, col0); store_row(&c11, &bv, obase, row0 + 11u, col0);
    store_row(&c12, &bv, obase, row0 + 12u, col0); store_row(&c13, &bv, obase, row0 + 13u, col0); store_row(&c14, &bv, obase, row0 + 14u, col0); store_row(&c15, &bv, obase, row0 + 15u, col0);
    store_row(&c16, &bv, obase, row0 + 16u, col0); store_row(&c17, &bv, obase, row0 + 17u, col0); store_row(&c18, &bv, obase, row0 + 18u, col0); store_row(&c19, &bv, obase, row0 + 19u, col0);
    store_row(&c20, &bv, obase, row0 + 20u, col0); store_row(&c21, &bv, obase, row0 + 21u, col0); store_row(&c22, &bv, obase, row0 + 22u, col0); store_row(&c23, &bv, obase, row0 + 23u, col0);
    store_row(&c24, &bv, obase, row0 + 24u, col0); store_row(&c25, &bv, obase, row0 + 25u, col0); store_row(&c26, &bv, obase, row0 + 26u, col0); store_row(&c27, &bv, obase, row0 + 27u, col0);
    store_row(&c28, &bv, obase, row0 + 28u, col0); store_row(&c29, &bv, obase, row0 + 29u, col0); store_row(&c30, &bv, obase, row0 + 30u, col0); store_row(&c31, &bv, obase, row0 + 31u, col0);
    act_rows4(obase, row0, 32u, col0);
}

@compute @workgroup_size(8)
fn registers_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    p = params;
    register_block(wid, lane, false, false);
}

@compute @workgroup_size(8)
fn registers_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    p = params;
    register_block(wid, lane, false, true);
}

@compute @workgroup_size(8)
fn registers_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    p = params;
    register_block(wid, lane, true, false);
}

@compute @workgroup_size(8)
fn registers_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    p = params;
    register_block(wid, lane, true, true);
}

// registers_general: the same block from scalar loads, any shape and layout (transposes are
// runtime flags read in a_at / b_at). It uses only bindings 1..3 and 7: the vec4 views cannot be
// bound when an operand is shorter than one vec4.
fn register_block_general(wid: vec3<u32>, lane: u32) {
    let col = (wid.x * LANE_COLS + lane % LANE_COLS) * BLOCK;
    let row = (wid.y * LANE_ROWS + lane / LANE_COLS) * BLOCK;
    let batch = wid.z;
    let abase = batch * p.a_batch;
    let bbase = batch * p.b_batch;
    let obase = batch * p.m * p.n;

    // c<r><c>: the 4 x 4 tile at rows row + 4r, columns col + 4c.
    var c00 = mat4x4<f32>(); var c01 = mat4x4<f32>(); var c02 = mat4x4<f32>(); var c03 = mat4x4<f32>();
    var c10 = mat4x4<f32>(); var c11 = mat4x4<f32>(); var c12 = mat4x4<f32>(); var c13 = mat4x4<f32>();
    var c20 = mat4x4<f32>(); var c21 = mat4x4<f32>(); var c22 = mat4x4<f32>(); var c23 = mat4x4<f32>();
    var c30 = mat4x4<f32>(); var c31 = mat4x4<f32>(); var c32 = mat4x4<f32>(); var c33 = mat4x4<f32>();
    for (var k = 0u; k < p.k; k += 4u) {
        let a0 = a_tile1(abase, row, k);
        let a1 = a_tile1(abase, row + 4u, k);
        let a2 = a_tile1(abase, row + 8u, k);
        let a3 = a_tile1(abase, row + 12u, k);
        let b0 = b_tile1(bbase, k, col);
        let b1 = b_tile1(bbase, k, col + 4u);
        let b2 = b_tile1(bbase, k, col + 8u);
        let b3 = b_tile1(bbase, k, col + 12u);
        c00 += b0 * a0; c01 += b1 * a0; c02 += b2 * a0; c03 += b3 * a0;
        c10 += b0 * a1; c11 += b1 * a1; c12 += b2 * a1; c13 += b3 * a1;
        c20 += b0 * a2; c21 += b1 * a2; c22 += b2 * a2; c23 += b3 * a2;
        c30 += b0 * a3; c31 += b1 * a3; c32 += b2 * a3; c33 += b3 * a3;
    }
    store_tile1(obase, row, col, c00); store_tile1(obase, row, col + 4u, c01);
    store_tile1(obase, row, col + 8u, c02); store_tile1(obase, row, col + 12u, c03);
    store_tile1(obase, row + 4u, col, c10); store_tile1(obase, row + 4u, col + 4u, c11);
    store_tile1(obase, row + 4u, col + 8u, c12); store_tile1(obase, row + 4u, col + 12u, c13);
    store_tile1(obase, row + 8u, col, c20); store_tile1(obase, row + 8u, col + 4u, c21);
    store_tile1(obase, row + 8u, col + 8u, c22); store_tile1(obase, row + 8u, col + 12u, c23);
    store_tile1(obase, row + 12u, col, c30); store_tile1(obase, row + 12u, col + 4u, c31);
    store_tile1(obase, row + 12u, col + 8u, c32); store_tile1(obase, row + 12u, col + 12u, c33);
    act_rows1(obase, row, BLOCK, col, BLOCK);
}

@compute @workgroup_size(8)
fn registers_general(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    p = params;
    register_block_general(wid, lane);
}

// ----- tiled path (discrete and integrated GPUs) -----
//
// Classic shared-memory tiling with 2-D register blocking. A 16 x 16 workgroup computes a
// BM x BN output tile, TM x TN per invocation (rows ty + 16r, columns tx + 16c, so neighbouring
// invocations read neighbouring shared words and write neighbouring outputs). Per stage of BK
// along K it stages the A tile k-major (a_sh[k][row]) and the B tile (b_sh[k][col]) in
// workgroup memory between barriers, one vec4 (or four scalars) per invocation and operand.
// Transposed operands read their tile directly: Aᵀ stored [K, M] is already k-major (a vec4
// holds 4 rows at one k) and so is B stored [K, N]; A stored [M, K] and B stored [N, K] load a
// vec4 along k and scatter it. No transpose pass, so nt and tn cost what nn costs.
//
// Entry points (the launcher picks one from a small table, see matmul.rs):
//   tiled_128: 128 x 128 tile, 8 x 8 per invocation, BK = 8, vec4 loads (large aligned outputs)
//   tiled_64: 64 x 64 tile, 4 x 4 per invocation, BK = 16, vec4 loads (aligned shapes)
//   tiled_general: 64 x 64 tile from scalar loads (any shape)
// Each uses 8 KiB of workgroup memory and 256 invocations. tiled_128 and tiled_64 stay two
// entry points rather than one with an `override` tile size: their per-invocation accumulators
// (8 x 8 and 4 x 4) would need a function-scope array sized by an override, which WGSL allows
// only in workgroup memory, and a shared 8 x 8 array would change tiled_64's register use on
// GPUs, which needs a GPU to measure.
//
// Split-K: grid z runs over batch x splits (z = split * batch + b); split s sums
// k in [s * k_split, min(K, (s + 1) * k_split)). With one split the tile is written through the
// epilogue; with several the launcher points `out` at a scratch buffer [splits, batch, M, N],
// turns the epilogue off, and splitk_reduce sums the partials in split order (deterministic)
// and applies the epilogue.

// A[base][i, kk] and B[base][kk, j] for any layout, zero outside the matrix or past k_end
// (the end of this split's K range).
fn tiled_a_at(base: u32, i: u32, kk: u32, k_end: u32) -> f32 {
    let ic = min(i, p.m - 1u);
    let kc = min(kk, p.k - 1u);
    let idx = select(base + ic * p.k + kc, base + kc * p.m + ic, p.trans_a != 0u);
    return select(0.0, a[idx], i < p.m && kk < k_end);
}

fn tiled_b_at(base: u32, kk: u32, j: u32, k_end: u32) -> f32 {
    let jc = min(j, p.n - 1u);
    let kc = min(kk, p.k - 1u);
    let idx = select(base + kc * p.n + jc, base + jc * p.k + kc, p.trans_b != 0u);
    return select(0.0, b[idx], j < p.n && kk < k_end);
}

var<workgroup> a_sh_tiled_128: array<array<f32, 128>, 8>;   // [k][row]
var<workgroup> b_sh_tiled_128: array<array<f32, 128>, 8>;   // [k][col]

@compute @workgroup_size(16, 16)
fn tiled_128(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    p = params;
    let row0 = wid.y * 128u;
    let col0 = wid.x * 128u;
    let bi = wid.z % p.batch;
    let split = wid.z / p.batch;
    let abase = bi * p.a_batch;
    let bbase = bi * p.b_batch;
    let obase = wid.z * p.m * p.n;
    let k_begin = split * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);

    var acc: array<array<f32, 8>, 8>;
    for (var k0 = k_begin; k0 < k_end; k0 += 8u) {
        // One vec4 of each operand per invocation (128 x 8 = 256 vec4). Aligned shapes only, so
        // a vec4 is wholly inside or wholly outside the matrix and this split's K range.
        {
            // A along k (stored [M, K]): row li / 2, k 4 (li % 2); Aᵀ ([K, M]) along rows: k li / 32, rows 4 (li % 32).
            if (p.trans_a == 0u) {
                let r = li / 2u;
                let kq = 4u * (li % 2u);
                let i = row0 + r;
                let kk = k0 + kq;
                var v = vec4<f32>(0.0);
                if (i < p.m && kk < k_end) {
                    v = a4[(abase + i * p.k + kk) / 4u];
                }
                a_sh_tiled_128[kq][r] = v.x; a_sh_tiled_128[kq + 1u][r] = v.y; a_sh_tiled_128[kq + 2u][r] = v.z; a_sh_tiled_128[kq + 3u][r] = v.w;
            } else {
                let kq = li / 32u;
                let r = 4u * (li % 32u);
                let i = row0 + r;
                let kk = k0 + kq;
                var v = vec4<f32>(0.0);
                if (i < p.m && kk < k_end) {
                    v = a4[(abase + kk * p.m + i) / 4u];
                }
                a_sh_tiled_128[kq][r] = v.x; a_sh_tiled_128[kq][r + 1u] = v.y; a_sh_tiled_128[kq][r + 2u] = v.z; a_sh_tiled_128[kq][r + 3u] = v.w;
            }
            // B along columns (stored [K, N]); Bᵀ ([N, K]) along k.
            if (p.trans_b == 0u) {
                let kq = li / 32u;
                let c = 4u * (li % 32u);
                let j = col0 + c;
                let kk = k0 + kq;
                var v = vec4<f32>(0.0);
                if (j < p.n && kk < k_end) {
                    v = b4[(bbase + kk * p.n + j) / 4u];
                }
                b_sh_tiled_128[kq][c] = v.x; b_sh_tiled_128[kq][c + 1u] = v.y; b_sh_tiled_128[kq][c + 2u] = v.z; b_sh_tiled_128[kq][c + 3u] = v.w;
            } else {
                let c = li / 2u;
                let kq = 4u * (li % 2u);
                let j = col0 + c;
                let kk = k0 + kq;
                var v = vec4<f32>(0.0);
                if (j < p.n && kk < k_end) {
                    v = b4[(bbase + j * p.k + kk) / 4u];
                }
                b_sh_tiled_128[kq][c] = v.x; b_sh_tiled_128[kq + 1u][c] = v.y; b_sh_tiled_128[kq + 2u][c] = v.z; b_sh_tiled_128[kq + 3u][c] = v.w;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 8u; kk++) {
            var av: array<f32, 8>;
            var bv: array<f32, 8>;
            for (var r = 0u; r < 8u; r++) {
                av[r] = a_sh_tiled_128[kk][lid.y + 16u * r];
                bv[r] = b_sh_tiled_128[kk][lid.x + 16u * r];
            }
            for (var r = 0u; r < 8u; r++) {
                for (var c = 0u; c < 8u; c++) {
                    acc[r][c] = fma(av[r], bv[c], acc[r][c]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 8u; r++) {
        let i = row0 + lid.y + 16u * r;
        for (var c = 0u; c < 8u; c++) {
            let j = col0 + lid.x + 16u * c;
            if (i < p.m && j < p.n) {
                let o = obase + i * p.n + j;
                store1(o, j, acc[r][c]);
            }
        }
    }
}

var<workgroup> a_sh_tiled_64: array<array<f32, 64>, 16>;   // [k][row]
var<workgroup> b_sh_tiled_64: array<array<f32, 64>, 16>;   // [k][col]

@compute @workgroup_size(16, 16)
fn tiled_64(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    p = params;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let bi = wid.z % p.batch;
    let split = wid.z / p.batch;
    let abase = bi * p.a_batch;
    let bbase = bi * p.b_batch;
    let obase = wid.z * p.m * p.n;
    let k_begin = split * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);

    var acc: array<array<f32, 4>, 4>;
    for (var k0 = k_begin; k0 < k_end; k0 += 16u) {
        // One vec4 of each operand per invocation (64 x 16 = 256 vec4). Aligned shapes only, so
        // a vec4 is wholly inside or wholly outside the matrix and this split's K range.
        {
            // A along k (stored [M, K]): row li / 4, k 4 (li % 4); Aᵀ ([K, M]) along rows: k li / 16, rows 4 (li % 16).
            if (p.trans_a == 0u) {
                let r = li / 4u;
                let kq = 4u * (li % 4u);
                let i = row0 + r;
                let kk = k0 + kq;
                var v = vec4<f32>(0.0);
                if (i < p.m && kk < k_end) {
                    v = a4[(abase + i * p.k + kk) / 4u];
                }
                a_sh_tiled_64[kq][r] = v.x; a_sh_tiled_64[kq + 1u][r] = v.y; a_sh_tiled_64[kq + 2u][r] = v.z; a_sh_tiled_64[kq + 3u][r] = v.w;
            } else {
                let kq = li / 16u;
                let r = 4u * (li % 16u);
                let i = row0 + r;
                let kk = k0 + kq;
                var v = vec4<f32>(0.0);
                if (i < p.m && kk < k_end) {
                    v = a4[(abase + kk * p.m + i) / 4u];
                }
                a_sh_tiled_64[kq][r] = v.x; a_sh_tiled_64[kq][r + 1u] = v.y; a_sh_tiled_64[kq][r + 2u] = v.z; a_sh_tiled_64[kq][r + 3u] = v.w;
            }
            // B along columns (stored [K, N]); Bᵀ ([N, K]) along k.
            if (p.trans_b == 0u) {
                let kq = li / 16u;
                let c = 4u * (li % 16u);
                let j = col0 + c;
                let kk = k0 + kq;
                var v = vec4<f32>(0.0);
                if (j < p.n && kk < k_end) {
                    v = b4[(bbase + kk * p.n + j) / 4u];
                }
                b_sh_tiled_64[kq][c] = v.x; b_sh_tiled_64[kq][c + 1u] = v.y; b_sh_tiled_64[kq][c + 2u] = v.z; b_sh_tiled_64[kq][c + 3u] = v.w;
            } else {
                let c = li / 4u;
                let kq = 4u * (li % 4u);
                let j = col0 + c;
                let kk = k0 + kq;
                var v = vec4<f32>(0.0);
                if (j < p.n && kk < k_end) {
                    v = b4[(bbase + j * p.k + kk) / 4u];
                }
                b_sh_tiled_64[kq][c] = v.x; b_sh_tiled_64[kq + 1u][c] = v.y; b_sh_tiled_64[kq + 2u][c] = v.z; b_sh_tiled_64[kq + 3u][c] = v.w;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                av[r] = a_sh_tiled_64[kk][lid.y + 16u * r];
                bv[r] = b_sh_tiled_64[kk][lid.x + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[r][c] = fma(av[r], bv[c], acc[r][c]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + lid.y + 16u * r;
        for (var c = 0u; c < 4u; c++) {
            let j = col0 + lid.x + 16u * c;
            if (i < p.m && j < p.n) {
                let o = obase + i * p.n + j;
                store1(o, j, acc[r][c]);
            }
        }
    }
}

var<workgroup> a_sh_tiled_general: array<array<f32, 64>, 16>;   // [k][row]
var<workgroup> b_sh_tiled_general: array<array<f32, 64>, 16>;   // [k][col]

@compute @workgroup_size(16, 16)
fn tiled_general(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    p = params;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let bi = wid.z % p.batch;
    let split = wid.z / p.batch;
    let abase = bi * p.a_batch;
    let bbase = bi * p.b_batch;
    let obase = wid.z * p.m * p.n;
    let k_begin = split * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);

    var acc: array<array<f32, 4>, 4>;
    for (var k0 = k_begin; k0 < k_end; k0 += 16u) {
        // Four scalars of each operand per invocation (64 x 16 = 1024 elements).
        for (var e = 0u; e < 4u; e++) {
            let idx = li + e * 256u;
            let kk = idx / 64u;
            let x = idx % 64u;
            a_sh_tiled_general[kk][x] = tiled_a_at(abase, row0 + x, k0 + kk, k_end);
            b_sh_tiled_general[kk][x] = tiled_b_at(bbase, k0 + kk, col0 + x, k_end);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                av[r] = a_sh_tiled_general[kk][lid.y + 16u * r];
                bv[r] = b_sh_tiled_general[kk][lid.x + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[r][c] = fma(av[r], bv[c], acc[r][c]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + lid.y + 16u * r;
        for (var c = 0u; c < 4u; c++) {
            let j = col0 + lid.x + 16u * c;
            if (i < p.m && j < p.n) {
                let o = obase + i * p.n + j;
                store1(o, j, acc[r][c]);
            }
        }
    }
}

// The split-K reduction: out[idx] = epilogue(sum over s < splits of partial[s][idx]), summed in
// split order so the result does not depend on scheduling. Binding 1 holds the partials
// [splits, batch, M, N]; p.k_split is the number of splits here. One invocation per output.
@compute @workgroup_size(256)
fn splitk_reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
    p = params;
    let total = p.batch * p.m * p.n;
    let idx = gid.x;
    if (idx >= total) {
        return;
    }
    var s = 0.0;
    for (var split = 0u; split < p.k_split; split++) {
        s += a[split * total + idx];
    }
    store1(idx, idx % p.n, s);
}
