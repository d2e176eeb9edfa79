// Batched matrix multiply with transpose and broadcast flags.
//
// Math (for every batch b, row i < M, column j < N):
//   out[b, i, j] = sum over k < K of A[b, i, k] * B[b, k, j]      (+ out[b, i, j] when accumulating)
// Storage (row-major, per batch):
//   A: [M, K], or [K, M] when trans_a (A[b, i, k] = a[b * a_batch + k * M + i])
//   B: [K, N], or [N, K] when trans_b (B[b, k, j] = b[b * b_batch + j * K + k]; PyTorch Linear weight)
//   out: always [M, N];  a_batch / b_batch are 0 for a matrix shared by every batch (broadcast).
// K = 0 gives zeros (or leaves out unchanged when accumulating).
//
// Two families of entry points, chosen by the launcher (kernels/src/matmul.rs):
//
// 1. `registers_*`: for CPU adapters (lavapipe). No workgroup memory and no barriers. Every
//    invocation owns a 16 x 16 block of the output held in sixteen 4 x 4 matrices, and walks K
//    four at a time: per step it loads a 16 x 4 slice of A and a 4 x 16 slice of B as 4 x 4
//    tiles and does 16 tile products (1024 FMAs for 32 loads). On lavapipe every storage load
//    that differs between invocations is a per-lane scalar loop, so loads, not FMAs, set the
//    speed: large blocks and vec4 loads are what make this kernel fast there.
//    - `registers_nn/nt/tn/tt` (n = stored as written, t = transposed) read A and B as vec4
//      through bindings 4..6; the launcher uses them when every contiguous axis is a multiple
//      of 4 (see `aligned` in matmul.rs). Row and column edges are clamped on load and masked
//      on store; a K tail (possible only for tn) is zeroed on load.
//    - `registers_general` reads scalars through bindings 1..3 and handles any shape.
//    A 4 x 4 tile is a mat4x4 whose column r holds row r of the block (4 consecutive columns):
//      C_tile += B_tile * A_tile,  where A_tile column r = A[i + r, k..k+4]
//                                  and   B_tile column q = B[k + q, j..j+4],
//    since (B_tile * A_tile)[r] = sum over q of A[i + r, k + q] * B[k + q, j..j+4].
//    The 8 invocations of a workgroup are one SIMD vector on lavapipe; they cover
//    LANE_COLS x LANE_ROWS blocks (64 columns x 32 rows).
//
// 2. `tiled`: for real GPUs. Classic shared-memory tiling: a 16 x 16 workgroup computes a
//    64 x 64 output tile, 4 x 4 per invocation, staging 64 x 16 slices of A and B in workgroup
//    memory (8 KiB) between barriers. Any shape, transposes by runtime flags.
//
// Grid: x = column groups, y = row groups, z = batch.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch: u32,     // elements between batches of A; 0 when broadcast
    b_batch: u32,     // elements between batches of B; 0 when broadcast
    trans_a: u32,
    trans_b: u32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Scalar views (registers_general, tiled).
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// vec4 views of the same buffers (registers_nn/nt/tn/tt); the launcher passes each buffer twice.
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;

const LANE_COLS: u32 = 4u;  // blocks per workgroup along N
const LANE_ROWS: u32 = 2u;  // blocks per workgroup along M
const BLOCK: u32 = 16u;     // rows and columns of one invocation's block

// ----- registers path: tile loads -----

// A[base][k + q, row..row+4] as a vec4 over rows (trans_a storage), zero when k + q >= K.
fn a4_krow(base: u32, kq: u32, row: u32) -> vec4<f32> {
    let v = a4[(base + min(kq, p.k - 1u) * p.m + row) / 4u];
    return select(vec4<f32>(0.0), v, kq < p.k);
}

// B[base][k + q, col..col+4] as a vec4 over columns (B stored [K, N]), zero when k + q >= K.
fn b4_krow(base: u32, kq: u32, col: u32) -> vec4<f32> {
    let v = b4[(base + min(kq, p.k - 1u) * p.n + col) / 4u];
    return select(vec4<f32>(0.0), v, kq < p.k);
}

// The A tile of rows row..row+4 and k..k+4 (column r = A[row + r, k..k+4]), vec4 loads.
// Rows past M are clamped to valid memory; their results are never stored.
fn a_tile4(trans: bool, base: u32, row: u32, k: u32) -> mat4x4<f32> {
    if (!trans) {
        let last = p.m - 1u;
        return mat4x4<f32>(
            a4[(base + min(row, last) * p.k + k) / 4u],
            a4[(base + min(row + 1u, last) * p.k + k) / 4u],
            a4[(base + min(row + 2u, last) * p.k + k) / 4u],
            a4[(base + min(row + 3u, last) * p.k + k) / 4u]);
    }
    let r = min(row, p.m - 4u);
    return transpose(mat4x4<f32>(a4_krow(base, k, r), a4_krow(base, k + 1u, r), a4_krow(base, k + 2u, r), a4_krow(base, k + 3u, r)));
}

// The B tile of k..k+4 and columns col..col+4 (column q = B[k + q, col..col+4]), vec4 loads.
fn b_tile4(trans: bool, base: u32, k: u32, col: u32) -> mat4x4<f32> {
    if (!trans) {
        let c = min(col, p.n - 4u);
        return mat4x4<f32>(b4_krow(base, k, c), b4_krow(base, k + 1u, c), b4_krow(base, k + 2u, c), b4_krow(base, k + 3u, c));
    }
    let last = p.n - 1u;
    return transpose(mat4x4<f32>(
        b4[(base + min(col, last) * p.k + k) / 4u],
        b4[(base + min(col + 1u, last) * p.k + k) / 4u],
        b4[(base + min(col + 2u, last) * p.k + k) / 4u],
        b4[(base + min(col + 3u, last) * p.k + k) / 4u]));
}

// A[base][i, kk] and B[base][kk, j] for any layout; zero outside the matrix.
fn a_at(base: u32, i: u32, kk: u32) -> f32 {
    let ic = min(i, p.m - 1u);
    let kc = min(kk, p.k - 1u);
    let idx = select(base + ic * p.k + kc, base + kc * p.m + ic, p.trans_a != 0u);
    return select(0.0, a[idx], i < p.m && kk < p.k);
}

fn b_at(base: u32, kk: u32, j: u32) -> f32 {
    let jc = min(j, p.n - 1u);
    let kc = min(kk, p.k - 1u);
    let idx = select(base + kc * p.n + jc, base + jc * p.k + kc, p.trans_b != 0u);
    return select(0.0, b[idx], j < p.n && kk < p.k);
}

// The same tiles from scalar loads (registers_general).
fn a_tile1(base: u32, row: u32, k: u32) -> mat4x4<f32> {
    var t: mat4x4<f32>;
    for (var r = 0u; r < 4u; r++) {
        t[r] = vec4<f32>(a_at(base, row + r, k), a_at(base, row + r, k + 1u), a_at(base, row + r, k + 2u), a_at(base, row + r, k + 3u));
    }
    return t;
}

fn b_tile1(base: u32, k: u32, col: u32) -> mat4x4<f32> {
    var t: mat4x4<f32>;
    for (var q = 0u; q < 4u; q++) {
        t[q] = vec4<f32>(b_at(base, k + q, col), b_at(base, k + q, col + 1u), b_at(base, k + q, col + 2u), b_at(base, k + q, col + 3u));
    }
    return t;
}

// Writes rows row..row+4, columns col..col+4 of the output (column r of t = row r); vec4 stores.
fn store_tile4(base: u32, row: u32, col: u32, t: mat4x4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = row + r;
        if (i < p.m && col < p.n) {
            let o = (base + i * p.n + col) / 4u;
            var v = t[r];
            if (p.accumulate != 0u) {
                v += out4[o];
            }
            out4[o] = v;
        }
    }
}

// The same with scalar stores (registers_general).
fn store_tile1(base: u32, row: u32, col: u32, t: mat4x4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = row + r;
        for (var c = 0u; c < 4u; c++) {
            if (i < p.m && col + c < p.n) {
                let o = base + i * p.n + col + c;
                var v = t[r][c];
                if (p.accumulate != 0u) {
                    v += out[o];
                }
                out[o] = v;
            }
        }
    }
}

// One invocation's 16 x 16 block from vec4 loads. The transposes are constants at every call
// site, so each entry point compiles to straight-line code without those branches.
fn register_block(wid: vec3<u32>, lane: u32, ta: bool, tb: bool) {
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
        let a0 = a_tile4(ta, abase, row, k);
        let a1 = a_tile4(ta, abase, row + 4u, k);
        let a2 = a_tile4(ta, abase, row + 8u, k);
        let a3 = a_tile4(ta, abase, row + 12u, k);
        let b0 = b_tile4(tb, bbase, k, col);
        let b1 = b_tile4(tb, bbase, k, col + 4u);
        let b2 = b_tile4(tb, bbase, k, col + 8u);
        let b3 = b_tile4(tb, bbase, k, col + 12u);
        c00 += b0 * a0; c01 += b1 * a0; c02 += b2 * a0; c03 += b3 * a0;
        c10 += b0 * a1; c11 += b1 * a1; c12 += b2 * a1; c13 += b3 * a1;
        c20 += b0 * a2; c21 += b1 * a2; c22 += b2 * a2; c23 += b3 * a2;
        c30 += b0 * a3; c31 += b1 * a3; c32 += b2 * a3; c33 += b3 * a3;
    }
    store_tile4(obase, row, col, c00); store_tile4(obase, row, col + 4u, c01);
    store_tile4(obase, row, col + 8u, c02); store_tile4(obase, row, col + 12u, c03);
    store_tile4(obase, row + 4u, col, c10); store_tile4(obase, row + 4u, col + 4u, c11);
    store_tile4(obase, row + 4u, col + 8u, c12); store_tile4(obase, row + 4u, col + 12u, c13);
    store_tile4(obase, row + 8u, col, c20); store_tile4(obase, row + 8u, col + 4u, c21);
    store_tile4(obase, row + 8u, col + 8u, c22); store_tile4(obase, row + 8u, col + 12u, c23);
    store_tile4(obase, row + 12u, col, c30); store_tile4(obase, row + 12u, col + 4u, c31);
    store_tile4(obase, row + 12u, col + 8u, c32); store_tile4(obase, row + 12u, col + 12u, c33);
}

@compute @workgroup_size(8)
fn registers_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    register_block(wid, lane, false, false);
}

@compute @workgroup_size(8)
fn registers_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    register_block(wid, lane, false, true);
}

@compute @workgroup_size(8)
fn registers_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    register_block(wid, lane, true, false);
}

@compute @workgroup_size(8)
fn registers_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    register_block(wid, lane, true, true);
}


// registers_general: the same block from scalar loads, any shape and layout (transposes are
// runtime flags read in a_at / b_at). It uses only bindings 1..3: the vec4 views cannot be
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
}

@compute @workgroup_size(8)
fn registers_general(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    register_block_general(wid, lane);
}

// ----- tiled path (discrete and integrated GPUs) -----

const TILE: u32 = 64u;      // output rows and columns per workgroup
const TILE_K: u32 = 16u;    // K per stage
var<workgroup> a_shared: array<array<f32, 64>, 16>;   // [k][row]
var<workgroup> b_shared: array<array<f32, 64>, 16>;   // [k][col]

@compute @workgroup_size(16, 16)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let abase = wid.z * p.a_batch;
    let bbase = wid.z * p.b_batch;
    let obase = wid.z * p.m * p.n;

    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        // 256 invocations stage 16 x 64 elements of A and of B, 4 each.
        for (var e = 0u; e < 4u; e++) {
            let idx = li + e * 256u;
            let kk = idx / TILE;
            let x = idx % TILE;
            a_shared[kk][x] = a_at(abase, row0 + x, k0 + kk);
            b_shared[kk][x] = b_at(bbase, k0 + kk, col0 + x);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                av[r] = a_shared[kk][lid.y + 16u * r];
                bv[r] = b_shared[kk][lid.x + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[r][c] = fma(av[r], bv[c], acc[r][c]);
                }
            }
        }
        workgroupBarrier();
    }
    // Invocation (x, y) owns rows y + 16r and columns x + 16c: neighbours write neighbours.
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + lid.y + 16u * r;
        for (var c = 0u; c < 4u; c++) {
            let j = col0 + lid.x + 16u * c;
            if (i < p.m && j < p.n) {
                var v = acc[r][c];
                if (p.accumulate != 0u) {
                    v += out[obase + i * p.n + j];
                }
                out[obase + i * p.n + j] = v;
            }
        }
    }
}
