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
//    operand shared across one 8-lane subgroup by subgroupBroadcast (see that section).
//
// 3. `tiled_*`: for real GPUs. Shared-memory tiles with 2-D register blocking and vec4 loads,
//    transposed operands read directly, split-K with a deterministic reduction pass.
//
// Grid: x = column groups, y = row groups, z = batch (times splits for split-K tiled).

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
    has_bias: u32,    // add bias[j] to every output column j
    k_split: u32,     // tiled: K per split (split-K); splitk_reduce: the number of splits
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Scalar views (registers_general, subgroup_general, tiled_general, splitk_reduce, stores).
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// vec4 views of the same buffers (vec4 kernels); the launcher passes each buffer twice.
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;
// The per-column bias (every entry point; the launcher binds A there when there is none).
@group(0) @binding(7) var<storage, read> bias: array<f32>;

// The store epilogue shared by every kernel: the product v for out[o] (column j), plus the bias,
// plus the old output when accumulating.
fn epilogue(v: f32, o: u32, j: u32) -> f32 {
    var r = v;
    if (p.has_bias != 0u) {
        r += bias[j];
    }
    if (p.accumulate != 0u) {
        r += out[o];
    }
    return r;
}

// The same for four columns j..j+4 stored as out4[o] (vec4 kernels).
fn epilogue4(v: vec4<f32>, o: u32, j: u32) -> vec4<f32> {
    var r = v;
    if (p.has_bias != 0u) {
        r += vec4<f32>(bias[j], bias[j + 1u], bias[j + 2u], bias[j + 3u]);
    }
    if (p.accumulate != 0u) {
        r += out4[o];
    }
    return r;
}

// ----- registers path, vec4 kernels -----
//
// One invocation owns a 32 x 32 block of the output: rows row0..row0+32, columns col0..col0+32,
// held as 32 rows of eight vec4 accumulators (c0 .. c31). Per step of 4 along K it loads the
// block's A slice (32 rows x 4 k) and B slice (4 k x 32 columns) as vec4s, 64 vec4 loads for
// 4096 FMAs. On lavapipe every storage load is a loop over the 8 SIMD lanes with a bounds
// check per element, ~30 cycles per element, while an FMA on 8 lanes is one instruction; so
// the larger the block, the faster (measured: 16 x 16 per invocation 2.1, 32 x 32 3.6-4.1,
// 32 x 64 ~5 GFLOP/s per core). Everything is spelled out below with constant indices: the
// same kernel written with loops over rows runs 35% slower (lavapipe keeps the loops).
// The 8 invocations of a workgroup (one SIMD vector) cover LANE_ROWS x LANE_COLS blocks.

const BLOCK_ROWS: u32 = 32u;
const BLOCK_COLS: u32 = 32u;
const LANE_ROWS: u32 = 2u;  // blocks per workgroup along M (both register kernels)
const LANE_COLS: u32 = 4u;  // blocks per workgroup along N

alias Row = array<vec4<f32>, 8>;     // one output row of a block: columns col0 + 4q .. + 4
alias Slice = array<vec4<f32>, 32>;  // A slice: [r] = A[row0 + r, k..k+4]; B slice: [8u + q] = B[k + u, col0 + 4q..]

// c[q] += sum over u of a[u] * B[k + u, col0 + 4q .. + 4].
fn fma_row(c: ptr<function, Row>, a: vec4<f32>, b: ptr<function, Slice>) {
    (*c)[0] += a.x * (*b)[0] + a.y * (*b)[8] + a.z * (*b)[16] + a.w * (*b)[24];
    (*c)[1] += a.x * (*b)[1] + a.y * (*b)[9] + a.z * (*b)[17] + a.w * (*b)[25];
    (*c)[2] += a.x * (*b)[2] + a.y * (*b)[10] + a.z * (*b)[18] + a.w * (*b)[26];
    (*c)[3] += a.x * (*b)[3] + a.y * (*b)[11] + a.z * (*b)[19] + a.w * (*b)[27];
    (*c)[4] += a.x * (*b)[4] + a.y * (*b)[12] + a.z * (*b)[20] + a.w * (*b)[28];
    (*c)[5] += a.x * (*b)[5] + a.y * (*b)[13] + a.z * (*b)[21] + a.w * (*b)[29];
    (*c)[6] += a.x * (*b)[6] + a.y * (*b)[14] + a.z * (*b)[22] + a.w * (*b)[30];
    (*c)[7] += a.x * (*b)[7] + a.y * (*b)[15] + a.z * (*b)[23] + a.w * (*b)[31];
}

// A[base][k + u, row] for 4 consecutive rows (trans_a storage), zero when k + u >= K (K tail).
fn a_trow(base: u32, k: u32, row: u32) -> vec4<f32> {
    let v = a4[(base + min(k, p.k - 1u) * p.m + min(row, p.m - 4u)) / 4u];
    return select(vec4<f32>(0.0), v, k < p.k);
}

// The A slice of rows row0..row0+32 at k..k+4: rows past M are clamped (never stored).
fn load_a(s: ptr<function, Slice>, ta: bool, base: u32, row0: u32, k: u32) {
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
        (*s)[8] = a4[(base + min(row0 + 8u, last) * p.k + k) / 4u];
        (*s)[9] = a4[(base + min(row0 + 9u, last) * p.k + k) / 4u];
        (*s)[10] = a4[(base + min(row0 + 10u, last) * p.k + k) / 4u];
        (*s)[11] = a4[(base + min(row0 + 11u, last) * p.k + k) / 4u];
        (*s)[12] = a4[(base + min(row0 + 12u, last) * p.k + k) / 4u];
        (*s)[13] = a4[(base + min(row0 + 13u, last) * p.k + k) / 4u];
        (*s)[14] = a4[(base + min(row0 + 14u, last) * p.k + k) / 4u];
        (*s)[15] = a4[(base + min(row0 + 15u, last) * p.k + k) / 4u];
        (*s)[16] = a4[(base + min(row0 + 16u, last) * p.k + k) / 4u];
        (*s)[17] = a4[(base + min(row0 + 17u, last) * p.k + k) / 4u];
        (*s)[18] = a4[(base + min(row0 + 18u, last) * p.k + k) / 4u];
        (*s)[19] = a4[(base + min(row0 + 19u, last) * p.k + k) / 4u];
        (*s)[20] = a4[(base + min(row0 + 20u, last) * p.k + k) / 4u];
        (*s)[21] = a4[(base + min(row0 + 21u, last) * p.k + k) / 4u];
        (*s)[22] = a4[(base + min(row0 + 22u, last) * p.k + k) / 4u];
        (*s)[23] = a4[(base + min(row0 + 23u, last) * p.k + k) / 4u];
        (*s)[24] = a4[(base + min(row0 + 24u, last) * p.k + k) / 4u];
        (*s)[25] = a4[(base + min(row0 + 25u, last) * p.k + k) / 4u];
        (*s)[26] = a4[(base + min(row0 + 26u, last) * p.k + k) / 4u];
        (*s)[27] = a4[(base + min(row0 + 27u, last) * p.k + k) / 4u];
        (*s)[28] = a4[(base + min(row0 + 28u, last) * p.k + k) / 4u];
        (*s)[29] = a4[(base + min(row0 + 29u, last) * p.k + k) / 4u];
        (*s)[30] = a4[(base + min(row0 + 30u, last) * p.k + k) / 4u];
        (*s)[31] = a4[(base + min(row0 + 31u, last) * p.k + k) / 4u];
        return;
    }
    // Stored [K, M]: one vec4 holds 4 rows at one k; transpose each 4 x 4 group.
    { let v0 = a_trow(base, k, row0 + 0u); let v1 = a_trow(base, k + 1u, row0 + 0u); let v2 = a_trow(base, k + 2u, row0 + 0u); let v3 = a_trow(base, k + 3u, row0 + 0u);
      (*s)[0] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[1] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[2] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[3] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 4u); let v1 = a_trow(base, k + 1u, row0 + 4u); let v2 = a_trow(base, k + 2u, row0 + 4u); let v3 = a_trow(base, k + 3u, row0 + 4u);
      (*s)[4] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[5] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[6] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[7] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 8u); let v1 = a_trow(base, k + 1u, row0 + 8u); let v2 = a_trow(base, k + 2u, row0 + 8u); let v3 = a_trow(base, k + 3u, row0 + 8u);
      (*s)[8] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[9] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[10] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[11] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 12u); let v1 = a_trow(base, k + 1u, row0 + 12u); let v2 = a_trow(base, k + 2u, row0 + 12u); let v3 = a_trow(base, k + 3u, row0 + 12u);
      (*s)[12] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[13] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[14] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[15] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 16u); let v1 = a_trow(base, k + 1u, row0 + 16u); let v2 = a_trow(base, k + 2u, row0 + 16u); let v3 = a_trow(base, k + 3u, row0 + 16u);
      (*s)[16] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[17] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[18] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[19] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 20u); let v1 = a_trow(base, k + 1u, row0 + 20u); let v2 = a_trow(base, k + 2u, row0 + 20u); let v3 = a_trow(base, k + 3u, row0 + 20u);
      (*s)[20] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[21] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[22] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[23] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 24u); let v1 = a_trow(base, k + 1u, row0 + 24u); let v2 = a_trow(base, k + 2u, row0 + 24u); let v3 = a_trow(base, k + 3u, row0 + 24u);
      (*s)[24] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[25] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[26] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[27] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 28u); let v1 = a_trow(base, k + 1u, row0 + 28u); let v2 = a_trow(base, k + 2u, row0 + 28u); let v3 = a_trow(base, k + 3u, row0 + 28u);
      (*s)[28] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[29] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[30] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[31] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
}

// The B slice of k..k+4 and columns col0..col0+32; columns past N are clamped (never stored).
// A K tail (tn only) reads a clamped row: A's zeros make it harmless.
fn load_b(s: ptr<function, Slice>, tb: bool, base: u32, k: u32, col0: u32) {
    if (!tb) {
        let last = p.k - 1u;
        (*s)[0] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 0u, p.n - 4u)) / 4u];
        (*s)[1] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 4u, p.n - 4u)) / 4u];
        (*s)[2] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 8u, p.n - 4u)) / 4u];
        (*s)[3] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 12u, p.n - 4u)) / 4u];
        (*s)[4] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 16u, p.n - 4u)) / 4u];
        (*s)[5] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 20u, p.n - 4u)) / 4u];
        (*s)[6] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 24u, p.n - 4u)) / 4u];
        (*s)[7] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 28u, p.n - 4u)) / 4u];
        (*s)[8] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 0u, p.n - 4u)) / 4u];
        (*s)[9] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 4u, p.n - 4u)) / 4u];
        (*s)[10] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 8u, p.n - 4u)) / 4u];
        (*s)[11] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 12u, p.n - 4u)) / 4u];
        (*s)[12] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 16u, p.n - 4u)) / 4u];
        (*s)[13] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 20u, p.n - 4u)) / 4u];
        (*s)[14] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 24u, p.n - 4u)) / 4u];
        (*s)[15] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 28u, p.n - 4u)) / 4u];
        (*s)[16] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 0u, p.n - 4u)) / 4u];
        (*s)[17] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 4u, p.n - 4u)) / 4u];
        (*s)[18] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 8u, p.n - 4u)) / 4u];
        (*s)[19] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 12u, p.n - 4u)) / 4u];
        (*s)[20] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 16u, p.n - 4u)) / 4u];
        (*s)[21] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 20u, p.n - 4u)) / 4u];
        (*s)[22] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 24u, p.n - 4u)) / 4u];
        (*s)[23] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 28u, p.n - 4u)) / 4u];
        (*s)[24] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 0u, p.n - 4u)) / 4u];
        (*s)[25] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 4u, p.n - 4u)) / 4u];
        (*s)[26] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 8u, p.n - 4u)) / 4u];
        (*s)[27] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 12u, p.n - 4u)) / 4u];
        (*s)[28] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 16u, p.n - 4u)) / 4u];
        (*s)[29] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 20u, p.n - 4u)) / 4u];
        (*s)[30] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 24u, p.n - 4u)) / 4u];
        (*s)[31] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 28u, p.n - 4u)) / 4u];
        return;
    }
    // Stored [N, K]: one vec4 holds 4 k of one column; transpose each 4 x 4 group.
    let last = p.n - 1u;
    { let v0 = b4[(base + min(col0 + 0u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 1u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 2u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 3u, last) * p.k + k) / 4u];
      (*s)[0] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[8] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[16] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[24] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 4u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 5u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 6u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 7u, last) * p.k + k) / 4u];
      (*s)[1] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[9] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[17] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[25] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 8u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 9u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 10u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 11u, last) * p.k + k) / 4u];
      (*s)[2] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[10] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[18] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[26] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 12u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 13u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 14u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 15u, last) * p.k + k) / 4u];
      (*s)[3] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[11] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[19] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[27] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 16u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 17u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 18u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 19u, last) * p.k + k) / 4u];
      (*s)[4] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[12] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[20] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[28] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 20u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 21u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 22u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 23u, last) * p.k + k) / 4u];
      (*s)[5] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[13] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[21] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[29] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 24u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 25u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 26u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 27u, last) * p.k + k) / 4u];
      (*s)[6] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[14] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[22] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[30] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 28u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 29u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 30u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 31u, last) * p.k + k) / 4u];
      (*s)[7] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[15] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[23] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[31] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
}

// Writes one accumulated row (masked to the matrix; N is a multiple of 4 here).
fn store_row(c: ptr<function, Row>, base: u32, row: u32, col0: u32) {
    if (row >= p.m) {
        return;
    }
    let o = (base + row * p.n + col0) / 4u;
    if (col0 + 0u < p.n) { out4[o + 0u] = epilogue4((*c)[0], o + 0u, col0 + 0u); }
    if (col0 + 4u < p.n) { out4[o + 1u] = epilogue4((*c)[1], o + 1u, col0 + 4u); }
    if (col0 + 8u < p.n) { out4[o + 2u] = epilogue4((*c)[2], o + 2u, col0 + 8u); }
    if (col0 + 12u < p.n) { out4[o + 3u] = epilogue4((*c)[3], o + 3u, col0 + 12u); }
    if (col0 + 16u < p.n) { out4[o + 4u] = epilogue4((*c)[4], o + 4u, col0 + 16u); }
    if (col0 + 20u < p.n) { out4[o + 5u] = epilogue4((*c)[5], o + 5u, col0 + 20u); }
    if (col0 + 24u < p.n) { out4[o + 6u] = epilogue4((*c)[6], o + 6u, col0 + 24u); }
    if (col0 + 28u < p.n) { out4[o + 7u] = epilogue4((*c)[7], o + 7u, col0 + 28u); }
}

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
    store_row(&c0, obase, row0 + 0u, col0); store_row(&c1, obase, row0 + 1u, col0); store_row(&c2, obase, row0 + 2u, col0); store_row(&c3, obase, row0 + 3u, col0);
    store_row(&c4, obase, row0 + 4u, col0); store_row(&c5, obase, row0 + 5u, col0); store_row(&c6, obase, row0 + 6u, col0); store_row(&c7, obase, row0 + 7u, col0);
    store_row(&c8, obase, row0 + 8u, col0); store_row(&c9, obase, row0 + 9u, col0); store_row(&c10, obase, row0 + 10u, col0); store_row(&c11, obase, row0 + 11u, col0);
    store_row(&c12, obase, row0 + 12u, col0); store_row(&c13, obase, row0 + 13u, col0); store_row(&c14, obase, row0 + 14u, col0); store_row(&c15, obase, row0 + 15u, col0);
    store_row(&c16, obase, row0 + 16u, col0); store_row(&c17, obase, row0 + 17u, col0); store_row(&c18, obase, row0 + 18u, col0); store_row(&c19, obase, row0 + 19u, col0);
    store_row(&c20, obase, row0 + 20u, col0); store_row(&c21, obase, row0 + 21u, col0); store_row(&c22, obase, row0 + 22u, col0); store_row(&c23, obase, row0 + 23u, col0);
    store_row(&c24, obase, row0 + 24u, col0); store_row(&c25, obase, row0 + 25u, col0); store_row(&c26, obase, row0 + 26u, col0); store_row(&c27, obase, row0 + 27u, col0);
    store_row(&c28, obase, row0 + 28u, col0); store_row(&c29, obase, row0 + 29u, col0); store_row(&c30, obase, row0 + 30u, col0); store_row(&c31, obase, row0 + 31u, col0);
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


// ----- registers path, any shape -----

const BLOCK: u32 = 16u;     // rows and columns of one registers_general invocation's block

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

// The same with scalar stores (registers_general).
fn store_tile1(base: u32, row: u32, col: u32, t: mat4x4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = row + r;
        for (var c = 0u; c < 4u; c++) {
            if (i < p.m && col + c < p.n) {
                let o = base + i * p.n + col + c;
                out[o] = epilogue(t[r][c], o, col + c);
            }
        }
    }
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
}

@compute @workgroup_size(8)
fn registers_general(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    register_block_general(wid, lane);
}

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
// reads scalars (any shape; runtime transpose flags) with the same sharing.

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

fn subgroup_block(wid: vec3<u32>, lane: u32, ta: bool, tb: bool) {
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
    store_row(&c0, obase, row0 + 0u, col0);
    store_row(&c1, obase, row0 + 1u, col0);
    store_row(&c2, obase, row0 + 2u, col0);
    store_row(&c3, obase, row0 + 3u, col0);
    store_row(&c4, obase, row0 + 4u, col0);
    store_row(&c5, obase, row0 + 5u, col0);
    store_row(&c6, obase, row0 + 6u, col0);
    store_row(&c7, obase, row0 + 7u, col0);
}

@compute @workgroup_size(8)
fn subgroup_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    subgroup_block(wid, lane, false, false);
}

@compute @workgroup_size(8)
fn subgroup_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    subgroup_block(wid, lane, false, true);
}

@compute @workgroup_size(8)
fn subgroup_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    subgroup_block(wid, lane, true, false);
}

@compute @workgroup_size(8)
fn subgroup_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
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
                out[o] = epilogue(v[e], o, j);
            }
        }
    }
}

@compute @workgroup_size(8)
fn subgroup_general(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
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
// Each uses 8 KiB of workgroup memory and 256 invocations.
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
                out[o] = epilogue(acc[r][c], o, j);
            }
        }
    }
}

var<workgroup> a_sh_tiled_64: array<array<f32, 64>, 16>;   // [k][row]
var<workgroup> b_sh_tiled_64: array<array<f32, 64>, 16>;   // [k][col]

@compute @workgroup_size(16, 16)
fn tiled_64(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
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
                out[o] = epilogue(acc[r][c], o, j);
            }
        }
    }
}

var<workgroup> a_sh_tiled_general: array<array<f32, 64>, 16>;   // [k][row]
var<workgroup> b_sh_tiled_general: array<array<f32, 64>, 16>;   // [k][col]

@compute @workgroup_size(16, 16)
fn tiled_general(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
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
                out[o] = epilogue(acc[r][c], o, j);
            }
        }
    }
}

// The split-K reduction: out[idx] = epilogue(sum over s < splits of partial[s][idx]), summed in
// split order so the result does not depend on scheduling. Binding 1 holds the partials
// [splits, batch, M, N]; p.k_split is the number of splits here. One invocation per output.
@compute @workgroup_size(256)
fn splitk_reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let total = p.batch * p.m * p.n;
    let idx = gid.x;
    if (idx >= total) {
        return;
    }
    var s = 0.0;
    for (var split = 0u; split < p.k_split; split++) {
        s += a[split * total + idx];
    }
    out[idx] = epilogue(s, idx, idx % p.n);
}
