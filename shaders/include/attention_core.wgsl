// Fused attention, the part shared by the two modules that compile it: attention.wgsl (any
// adapter) and attention_subgroup.wgsl (adapters with subgroup operations). The math, layouts
// and kernels are described at the top of attention.wgsl; each module adds its own loads of
// the streamed rows (q8, k8, v8, d_out8, and stats8 for per-row statistics) and its own
// `_blocked` entry points; and each defines load_q, load_k, load_v, load_d_out, load_out and
// load_scores (vec4 i of q, k, v, d_out, out and grad_a), which the few-keys forward, the
// backward's preparation, dq from stored scores and the subgroup modules' streamed rows read
// through: from storage (include/attention_storage_loads.wgsl) or from textures
// (attention_texture.wgsl).
struct Params {
    batch: u32,       // B
    kv_batch: u32,    // Bk: B or 1
    q_len: u32,       // Nq
    kv_len: u32,      // Nk
    heads: u32,       // H
    head_dim: u32,    // dh
    causal: u32,      // 1: key j is visible to query i only when j <= i
    has_mask: u32,    // 1: key_mask is bound and used
    scale: f32,
    tiles: u32,       // row tiles along the invocation axis (32 or 64 queries, keys or elements)
    splits: u32,      // backward_dkdv: query-row ranges, each written as one partial
    split_rows: u32,  // backward_dkdv: query rows per range
    lanes: u32,       // the *_lanes kernels: lanes per head row (a power of two, 1 to 32)
    scores_at: u32,   // stored-scores backward: vec4 index of dS^T in grad_a (0: not stored)
    q_pad: u32,       //   dS^T's rows: Nq rounded up to 32
    k_pad: u32,       //   and its rows per head: Nk rounded up to 32
}

// Chunks of 16 floats in each register-blocked head row (1, 2, 4 or 8), set per pipeline by the
// launcher; the `if (ch > n)` tests on it fold away when the pipeline is compiled.
override ROW_CHUNKS: u32 = 8u;

// 1: the forward's last query tile holds at most eight rows and runs apart, one row per
// invocation (`forward_tail_blocked`, forward_tail below), so the four-rows kernel skips it.
// Set by the launcher, with the tail's launch, on the subgroup path at head widths above 32.
override TAIL_APART: u32 = 0u;
// (The same for dk/dv's last key tile: `backward_dkdv_tail_blocked`, dkdv_tail.)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> key_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
@group(0) @binding(7) var<storage, read> d_out: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> stats: array<f32>;
@group(0) @binding(9) var<storage, read_write> grad_a: array<vec4<f32>>;   // dq, or dk (partials)
@group(0) @binding(10) var<storage, read_write> grad_b: array<vec4<f32>>;  // dv (partials)
@group(0) @binding(11) var<storage, read_write> dk_sum: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> dv_sum: array<vec4<f32>>;

const WG: u32 = 64u;
// Below every real score: the running maximum before any key was seen.
const NEG: f32 = -3.0e38;
// Rows whose lse is below this saw no key.
const NO_KEY: f32 = -1.0e38;
// Most keys `forward_few_keys` takes.
const FEW_KEYS: u32 = 16u;

fn workgroup_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn kv_batch_of(b: u32) -> u32 {
    return select(b, 0u, p.kv_batch == 1u);
}

// Index (in vec4) of the first element of head h of row `row` of a [rows, H*dh] tensor.
fn row_base(row: u32, h: u32) -> u32 {
    return (row * p.heads * p.head_dim + h * p.head_dim) / 4u;
}

// Whether key j of kv batch kb is visible to query i (range, causal and padding mask).
fn key_visible(kb: u32, j: u32, i: u32, end: u32) -> bool {
    var ok = j < end;
    if (p.causal == 1u) { ok = ok && j <= i; }
    if (p.has_mask == 1u) { ok = ok && key_mask[kb * p.kv_len + min(j, p.kv_len - 1u)] != 0u; }
    return ok;
}

fn negative_infinity() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// ---------------------------------------------------------------------------------------
// Register-blocked building blocks.
//
// On lavapipe an invocation's private array indexed by a runtime counter lives in memory and
// every access is a per-lane gather, so the kernels below hold rows in named mat4x4 values
// instead: a *chunk* is 16 consecutive elements of a head row (column t = elements 4t..4t+4
// of the chunk). Each entry point is compiled for a fixed number of chunks `ch` (1, 2, 4 or 8:
// head_dim up to 16, 32, 64 or 128); `ch` is a constant at every call of a body function, so
// after inlining the unused chunks and their branches disappear and every index is constant.
// Elements past head_dim are zero in the chunks loaded per invocation; reads of the other
// operand past head_dim are clamped to the row's last vec4 (finite data times zero), and
// results past head_dim are never stored.
//
// The eight rows streamed per step (keys in the forward and dq, queries in dk/dv) are the
// same for every invocation of a workgroup. How they reach the invocations is the one thing
// the two modules do differently: q8, k8, v8 and d_out8 (the vec4 at one offset of each of the
// eight rows), and stats8 (one float of each of eight rows' statistics), are defined in attention.wgsl, where every invocation loads all eight rows, and
// in attention_subgroup.wgsl, where invocation l loads row l and subgroupBroadcast hands it to
// the others (an eighth of the loads: on lavapipe a storage load is a loop over the SIMD lanes
// even when every lane reads the same address, and a broadcast is a register shuffle).

// Vec4 indices of the first element of eight rows of one head: rows 0..4 and 4..8.
struct Rows8 {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

// The vec4 at offset o of each of eight rows: column r of `lo` is row r, of `hi` row 4 + r.
struct Block8 {
    lo: mat4x4<f32>,
    hi: mat4x4<f32>,
}

fn row_base4(row: vec4<u32>, h: u32) -> vec4<u32> {
    return (row * (p.heads * p.head_dim) + vec4<u32>(h * p.head_dim)) / 4u;
}


// Dot products of one chunk x with the chunk at vec4 offset c of eight rows, from the four
// blocks b0..b3 at offsets c..c+4: column 0 = rows 0..4, column 1 = rows 4..8.
fn dots8(x: mat4x4<f32>, b0: Block8, b1: Block8, b2: Block8, b3: Block8) -> mat2x4<f32> {
    return mat2x4<f32>(x[0] * b0.lo + x[1] * b1.lo + x[2] * b2.lo + x[3] * b3.lo,
                       x[0] * b0.hi + x[1] * b1.hi + x[2] * b2.hi + x[3] * b3.hi);
}

// alpha * a + sum over the eight rows r of w_r * (their chunk), w = mat2x4 as from dots8.
fn mix8(a: mat4x4<f32>, alpha: f32, w: mat2x4<f32>, b0: Block8, b1: Block8, b2: Block8, b3: Block8) -> mat4x4<f32> {
    return mat4x4<f32>(a[0] * alpha + b0.lo * w[0] + b0.hi * w[1],
                       a[1] * alpha + b1.lo * w[0] + b1.hi * w[1],
                       a[2] * alpha + b2.lo * w[0] + b2.hi * w[1],
                       a[3] * alpha + b3.lo * w[0] + b3.hi * w[1]);
}

// The chunk at vec4 offset c of one row (base = its first vec4), zero past `last`.
fn chunk_q(base: u32, c: u32, last: u32) -> mat4x4<f32> {
    return mat4x4<f32>(select(vec4<f32>(0.0), q[base + min(c, last)], c <= last),
                       select(vec4<f32>(0.0), q[base + min(c + 1u, last)], c + 1u <= last),
                       select(vec4<f32>(0.0), q[base + min(c + 2u, last)], c + 2u <= last),
                       select(vec4<f32>(0.0), q[base + min(c + 3u, last)], c + 3u <= last));
}
fn chunk_k(base: u32, c: u32, last: u32) -> mat4x4<f32> {
    return mat4x4<f32>(select(vec4<f32>(0.0), k[base + min(c, last)], c <= last),
                       select(vec4<f32>(0.0), k[base + min(c + 1u, last)], c + 1u <= last),
                       select(vec4<f32>(0.0), k[base + min(c + 2u, last)], c + 2u <= last),
                       select(vec4<f32>(0.0), k[base + min(c + 3u, last)], c + 3u <= last));
}
fn chunk_v(base: u32, c: u32, last: u32) -> mat4x4<f32> {
    return mat4x4<f32>(select(vec4<f32>(0.0), v[base + min(c, last)], c <= last),
                       select(vec4<f32>(0.0), v[base + min(c + 1u, last)], c + 1u <= last),
                       select(vec4<f32>(0.0), v[base + min(c + 2u, last)], c + 2u <= last),
                       select(vec4<f32>(0.0), v[base + min(c + 3u, last)], c + 3u <= last));
}
fn chunk_d_out(base: u32, c: u32, last: u32) -> mat4x4<f32> {
    return mat4x4<f32>(select(vec4<f32>(0.0), d_out[base + min(c, last)], c <= last),
                       select(vec4<f32>(0.0), d_out[base + min(c + 1u, last)], c + 1u <= last),
                       select(vec4<f32>(0.0), d_out[base + min(c + 2u, last)], c + 2u <= last),
                       select(vec4<f32>(0.0), d_out[base + min(c + 3u, last)], c + 3u <= last));
}

// Stores of one chunk (scaled by f) at vec4 offset c, elements past `last` skipped.
fn store_out(base: u32, c: u32, last: u32, x: mat4x4<f32>, f: f32) {
    if (c <= last) { out[base + c] = x[0] * f; }
    if (c + 1u <= last) { out[base + c + 1u] = x[1] * f; }
    if (c + 2u <= last) { out[base + c + 2u] = x[2] * f; }
    if (c + 3u <= last) { out[base + c + 3u] = x[3] * f; }
}
fn store_grad_a(base: u32, c: u32, last: u32, x: mat4x4<f32>, f: f32) {
    if (c <= last) { grad_a[base + c] = x[0] * f; }
    if (c + 1u <= last) { grad_a[base + c + 1u] = x[1] * f; }
    if (c + 2u <= last) { grad_a[base + c + 2u] = x[2] * f; }
    if (c + 3u <= last) { grad_a[base + c + 3u] = x[3] * f; }
}
fn store_grad_b(base: u32, c: u32, last: u32, x: mat4x4<f32>, f: f32) {
    if (c <= last) { grad_b[base + c] = x[0] * f; }
    if (c + 1u <= last) { grad_b[base + c + 1u] = x[1] * f; }
    if (c + 2u <= last) { grad_b[base + c + 2u] = x[2] * f; }
    if (c + 3u <= last) { grad_b[base + c + 3u] = x[3] * f; }
}

// The eight key rows j0..j0+8 of kv batch kb, head h; rows past `end` clamped to end - 1.
fn key_rows(kb: u32, j0: u32, end: u32, h: u32) -> Rows8 {
    let last = vec4<u32>(end - 1u);
    let first = vec4<u32>(kb * p.kv_len);
    return Rows8(row_base4(first + min(vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u), last), h),
                 row_base4(first + min(vec4<u32>(j0) + vec4<u32>(4u, 5u, 6u, 7u), last), h));
}

// The four query rows `rows_i` an invocation of head (b, h) = bh owns (forward, dq): its head
// h and kv batch, which rows are in range, their indices clamped to the last row, and their
// first vec4 in q (and in out, d_out and dq, which share q's layout).
struct QueryRows {
    h: u32,
    kb: u32,
    last: u32,              // the last vec4 of a head row
    in_range: vec4<bool>,
    i4: vec4<u32>,
    qb: vec4<u32>,
}

fn query_rows(bh: u32, rows_i: vec4<u32>) -> QueryRows {
    let b = bh / p.heads;
    let h = bh % p.heads;
    let i4 = min(rows_i, vec4<u32>(p.q_len - 1u));
    return QueryRows(h, kv_batch_of(b), p.head_dim / 4u - 1u, rows_i < vec4<u32>(p.q_len), i4,
                     row_base4(vec4<u32>(b * p.q_len) + i4, h));
}

// ---------------------------------------------------------------------------------------
// Four rows per invocation.
//
// Every row streamed per step is loaded once and used by four rows of the invocation (four
// queries in the forward and dq, four keys in dk/dv): on lavapipe storage loads, not FMAs,
// set the speed, so this reuse is what makes the kernels fast there. A workgroup is 8
// invocations (one SIMD vector on lavapipe) and covers TILE = 32 rows: invocation `lid`
// owns rows tile * 32 + lid + 8t for t = 0..4. Rows past the end are clamped (computed, not
// stored) so that control flow stays uniform across the workgroup.

const LANES: u32 = 8u;
const TILE: u32 = 32u;

// One chunk of four rows: field t is row t of the invocation.
struct Chunk4 {
    r0: mat4x4<f32>,
    r1: mat4x4<f32>,
    r2: mat4x4<f32>,
    r3: mat4x4<f32>,
}

// Scores (or weights) of four rows against the eight streamed rows (see dots8).
struct Scores4 {
    r0: mat2x4<f32>,
    r1: mat2x4<f32>,
    r2: mat2x4<f32>,
    r3: mat2x4<f32>,
}

fn add_scores(a: Scores4, b: Scores4) -> Scores4 {
    return Scores4(a.r0 + b.r0, a.r1 + b.r1, a.r2 + b.r2, a.r3 + b.r3);
}

fn dots4(x: Chunk4, b0: Block8, b1: Block8, b2: Block8, b3: Block8) -> Scores4 {
    return Scores4(dots8(x.r0, b0, b1, b2, b3), dots8(x.r1, b0, b1, b2, b3), dots8(x.r2, b0, b1, b2, b3), dots8(x.r3, b0, b1, b2, b3));
}

fn mix4(a: Chunk4, alpha: vec4<f32>, w: Scores4, b0: Block8, b1: Block8, b2: Block8, b3: Block8) -> Chunk4 {
    return Chunk4(mix8(a.r0, alpha.x, w.r0, b0, b1, b2, b3), mix8(a.r1, alpha.y, w.r1, b0, b1, b2, b3),
                  mix8(a.r2, alpha.z, w.r2, b0, b1, b2, b3), mix8(a.r3, alpha.w, w.r3, b0, b1, b2, b3));
}

// Chunk c of the eight streamed rows of each buffer (offsets clamped to `last`), against or
// into four rows.
fn dots4_k(x: Chunk4, r: Rows8, c: u32, last: u32) -> Scores4 {
    return dots4(x, k8(r, min(c, last)), k8(r, min(c + 1u, last)), k8(r, min(c + 2u, last)), k8(r, min(c + 3u, last)));
}
fn dots4_v(x: Chunk4, r: Rows8, c: u32, last: u32) -> Scores4 {
    return dots4(x, v8(r, min(c, last)), v8(r, min(c + 1u, last)), v8(r, min(c + 2u, last)), v8(r, min(c + 3u, last)));
}
fn dots4_q(x: Chunk4, r: Rows8, c: u32, last: u32) -> Scores4 {
    return dots4(x, q8(r, min(c, last)), q8(r, min(c + 1u, last)), q8(r, min(c + 2u, last)), q8(r, min(c + 3u, last)));
}
fn dots4_d_out(x: Chunk4, r: Rows8, c: u32, last: u32) -> Scores4 {
    return dots4(x, d_out8(r, min(c, last)), d_out8(r, min(c + 1u, last)), d_out8(r, min(c + 2u, last)), d_out8(r, min(c + 3u, last)));
}
fn mix4_k(a: Chunk4, w: Scores4, r: Rows8, c: u32, last: u32) -> Chunk4 {
    return mix4(a, vec4<f32>(1.0), w, k8(r, min(c, last)), k8(r, min(c + 1u, last)), k8(r, min(c + 2u, last)), k8(r, min(c + 3u, last)));
}
fn mix4_v(a: Chunk4, alpha: vec4<f32>, w: Scores4, r: Rows8, c: u32, last: u32) -> Chunk4 {
    return mix4(a, alpha, w, v8(r, min(c, last)), v8(r, min(c + 1u, last)), v8(r, min(c + 2u, last)), v8(r, min(c + 3u, last)));
}
fn mix4_q(a: Chunk4, w: Scores4, r: Rows8, c: u32, last: u32) -> Chunk4 {
    return mix4(a, vec4<f32>(1.0), w, q8(r, min(c, last)), q8(r, min(c + 1u, last)), q8(r, min(c + 2u, last)), q8(r, min(c + 3u, last)));
}
fn mix4_d_out(a: Chunk4, w: Scores4, r: Rows8, c: u32, last: u32) -> Chunk4 {
    return mix4(a, vec4<f32>(1.0), w, d_out8(r, min(c, last)), d_out8(r, min(c + 1u, last)), d_out8(r, min(c + 2u, last)), d_out8(r, min(c + 3u, last)));
}

// Chunk c of the invocation's four rows (bases = their first vec4), times f; zero past `last`.
fn chunk4_q(base: vec4<u32>, c: u32, last: u32, f: f32) -> Chunk4 {
    return Chunk4(chunk_q(base.x, c, last) * f, chunk_q(base.y, c, last) * f, chunk_q(base.z, c, last) * f, chunk_q(base.w, c, last) * f);
}
fn chunk4_k(base: vec4<u32>, c: u32, last: u32, f: f32) -> Chunk4 {
    return Chunk4(chunk_k(base.x, c, last) * f, chunk_k(base.y, c, last) * f, chunk_k(base.z, c, last) * f, chunk_k(base.w, c, last) * f);
}
fn chunk4_v(base: vec4<u32>, c: u32, last: u32) -> Chunk4 {
    return Chunk4(chunk_v(base.x, c, last), chunk_v(base.y, c, last), chunk_v(base.z, c, last), chunk_v(base.w, c, last));
}
fn chunk4_d_out(base: vec4<u32>, c: u32, last: u32) -> Chunk4 {
    return Chunk4(chunk_d_out(base.x, c, last), chunk_d_out(base.y, c, last), chunk_d_out(base.z, c, last), chunk_d_out(base.w, c, last));
}

// Stores of chunk c of the rows whose `ok` is set, row t scaled by f[t].
fn store4_out(base: vec4<u32>, ok: vec4<bool>, c: u32, last: u32, x: Chunk4, f: vec4<f32>) {
    if (ok.x) { store_out(base.x, c, last, x.r0, f.x); }
    if (ok.y) { store_out(base.y, c, last, x.r1, f.y); }
    if (ok.z) { store_out(base.z, c, last, x.r2, f.z); }
    if (ok.w) { store_out(base.w, c, last, x.r3, f.w); }
}
fn store4_grad_a(base: vec4<u32>, ok: vec4<bool>, c: u32, last: u32, x: Chunk4, f: f32) {
    if (ok.x) { store_grad_a(base.x, c, last, x.r0, f); }
    if (ok.y) { store_grad_a(base.y, c, last, x.r1, f); }
    if (ok.z) { store_grad_a(base.z, c, last, x.r2, f); }
    if (ok.w) { store_grad_a(base.w, c, last, x.r3, f); }
}
fn store4_grad_b(base: vec4<u32>, ok: vec4<bool>, c: u32, last: u32, x: Chunk4, f: f32) {
    if (ok.x) { store_grad_b(base.x, c, last, x.r0, f); }
    if (ok.y) { store_grad_b(base.y, c, last, x.r1, f); }
    if (ok.z) { store_grad_b(base.z, c, last, x.r2, f); }
    if (ok.w) { store_grad_b(base.w, c, last, x.r3, f); }
}

// Keys j (four of them) of kv batch kb in range and not masked out.
fn keys_ok(kb: u32, j: vec4<u32>, end: u32) -> vec4<bool> {
    var ok = j < vec4<u32>(end);
    if (p.has_mask == 1u) {
        let jc = kb * p.kv_len + min(j, vec4<u32>(p.kv_len - 1u));
        ok = ok & (vec4<u32>(key_mask[jc.x], key_mask[jc.y], key_mask[jc.z], key_mask[jc.w]) != vec4<u32>(0u));
    }
    return ok;
}
// The mask copy in stats (1 or 0) of the eight keys j0..j0+8 of kv batch kb (the backward
// kernels; clamped to the last key, which the caller's range test covers).
fn keys_valid8(kb: u32, j0: u32, mask_base: u32) -> mat2x4<f32> {
    let last = vec4<u32>(p.kv_len - 1u);
    let first = vec4<u32>(mask_base + kb * p.kv_len);
    return stats8(Rows8(first + min(vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u), last),
                        first + min(vec4<u32>(j0) + vec4<u32>(4u, 5u, 6u, 7u), last)));
}

// Keys j visible to query i under the causal mask (all of them without it).
fn causal_ok(ok: vec4<bool>, j: vec4<u32>, i: u32) -> vec4<bool> {
    if (p.causal == 1u) { return ok & (j <= vec4<u32>(i)); }
    return ok;
}

// One online-softmax step of one query row over eight scores s (visible where ok_lo/ok_hi):
// the new running maximum, the factor exp(m_old - m_new) for the old sums, and the weights.
struct Online {
    w: mat2x4<f32>,
    m: f32,
    alpha: f32,
}

fn online_step(s: mat2x4<f32>, ok_lo: vec4<bool>, ok_hi: vec4<bool>, m: f32) -> Online {
    let t = max(select(vec4<f32>(NEG), s[0], ok_lo), select(vec4<f32>(NEG), s[1], ok_hi));
    let m_new = max(m, max(max(t.x, t.y), max(t.z, t.w)));
    // exp(NEG - finite) underflows to 0: the first visible key resets the sums cleanly.
    let w = mat2x4<f32>(select(vec4<f32>(0.0), exp(s[0] - m_new), ok_lo), select(vec4<f32>(0.0), exp(s[1] - m_new), ok_hi));
    return Online(w, m_new, exp(m - m_new));
}

fn weight_sum(w: mat2x4<f32>) -> f32 {
    return dot(w[0] + w[1], vec4<f32>(1.0));
}

// ---------------------------------------------------------------------------------------
// Four keys per step (the forward at head rows of more than 32 elements).
//
// Lavapipe compiles a loop body into straight-line code that grows with chunks x streamed
// rows per step. At eight keys and four chunks (head width 64) the forward's body is about
// 16,000 instructions (104 KB), more than the 64 KB L1 instruction cache of the CPUs measured,
// and it ran 1.45x slower per FLOP than the two-chunk body (57 KB). Four keys per step halve
// the body and keep the loads per multiply-add: a Pair4 holds two vec4 offsets of four rows,
// so one load per invocation (or one per row and offset without subgroups) still feeds the
// same number of multiply-adds as a Block8 does.

// The vec4 at offsets o and o + 1 of four rows: column t of `lo` is row t at o, of `hi` row t
// at o + 1.
alias Pair4 = Block8;

// Scores of one chunk x (vec4 offsets c..c+4) against four rows, from the pairs at c and c + 2.
fn dots_pair(x: mat4x4<f32>, p0: Pair4, p1: Pair4) -> vec4<f32> {
    return x[0] * p0.lo + x[1] * p0.hi + x[2] * p1.lo + x[3] * p1.hi;
}

// alpha * a + sum over the four rows t of w[t] * (their chunk at c..c+4).
fn mix_pair(a: mat4x4<f32>, alpha: f32, w: vec4<f32>, p0: Pair4, p1: Pair4) -> mat4x4<f32> {
    return mat4x4<f32>(a[0] * alpha + p0.lo * w, a[1] * alpha + p0.hi * w, a[2] * alpha + p1.lo * w, a[3] * alpha + p1.hi * w);
}

// Scores of the invocation's four query rows (column t: row t) against the four key rows r,
// over chunk c.
fn dots4x4_k(x: Chunk4, r: vec4<u32>, c: u32, last: u32) -> mat4x4<f32> {
    let p0 = k4(r, c, last);
    let p1 = k4(r, c + 2u, last);
    return mat4x4<f32>(dots_pair(x.r0, p0, p1), dots_pair(x.r1, p0, p1), dots_pair(x.r2, p0, p1), dots_pair(x.r3, p0, p1));
}

// Chunk c of four accumulator rows, row t scaled by alpha[t] plus the value rows r weighted
// by w's column t.
fn mix4x4_v(a: Chunk4, alpha: vec4<f32>, w: mat4x4<f32>, r: vec4<u32>, c: u32, last: u32) -> Chunk4 {
    let p0 = v4(r, c, last);
    let p1 = v4(r, c + 2u, last);
    return Chunk4(mix_pair(a.r0, alpha.x, w[0], p0, p1), mix_pair(a.r1, alpha.y, w[1], p0, p1),
                  mix_pair(a.r2, alpha.z, w[2], p0, p1), mix_pair(a.r3, alpha.w, w[3], p0, p1));
}

// The four key rows j0..j0+4 of kv batch kb, head h; rows past `end` clamped to end - 1.
fn key_rows4(kb: u32, j0: u32, end: u32, h: u32) -> vec4<u32> {
    return row_base4(vec4<u32>(kb * p.kv_len) + min(vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(end - 1u)), h);
}

// online_step over four scores.
struct Online4 {
    w: vec4<f32>,
    m: f32,
    alpha: f32,
}

fn online_step4(s: vec4<f32>, ok: vec4<bool>, m: f32) -> Online4 {
    let t = select(vec4<f32>(NEG), s, ok);
    let m_new = max(m, max(max(t.x, t.y), max(t.z, t.w)));
    return Online4(select(vec4<f32>(0.0), exp(s - m_new), ok), m_new, exp(m - m_new));
}

// ---------------------------------------------------------------------------------------
// Forward: four query rows of one head per invocation; the 32 rows of a workgroup share (b, h)
// and walk the same keys, eight per step (four at head widths above 32).

fn forward_body(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, ch: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let bh = wg / p.tiles;
    if (bh >= p.batch * p.heads) { return; }
    if (TAIL_APART != 0u && tile + 1u == p.tiles) { return; }
    let qr = query_rows(bh, vec4<u32>(tile * TILE + lid) + vec4<u32>(0u, 1u, 2u, 3u) * LANES);
    let h = qr.h; let kb = qr.kb; let last = qr.last;
    let in_range = qr.in_range; let i4 = qr.i4; let qb = qr.qb;

    // The scale is folded into q once.
    let q0 = chunk4_q(qb, 0u, last, p.scale);
    var q1 = Chunk4(); var q2 = Chunk4(); var q3 = Chunk4();
    var q4 = Chunk4(); var q5 = Chunk4(); var q6 = Chunk4(); var q7 = Chunk4();
    if (ch > 1u) { q1 = chunk4_q(qb, 4u, last, p.scale); }
    if (ch > 2u) { q2 = chunk4_q(qb, 8u, last, p.scale); q3 = chunk4_q(qb, 12u, last, p.scale); }
    if (ch > 4u) {
        q4 = chunk4_q(qb, 16u, last, p.scale); q5 = chunk4_q(qb, 20u, last, p.scale);
        q6 = chunk4_q(qb, 24u, last, p.scale); q7 = chunk4_q(qb, 28u, last, p.scale);
    }
    var a0 = Chunk4(); var a1 = Chunk4(); var a2 = Chunk4(); var a3 = Chunk4();
    var a4 = Chunk4(); var a5 = Chunk4(); var a6 = Chunk4(); var a7 = Chunk4();

    // Keys past the workgroup's last query are hidden from all its rows when causal.
    var end = p.kv_len;
    if (p.causal == 1u) { end = min(end, tile * TILE + TILE); }
    var m = vec4<f32>(NEG);
    var l = vec4<f32>(0.0);
    // Head rows of more than 32 elements walk four keys per step (see "Four keys per step"
    // above), narrower ones eight.
    if (ch > 2u) {
        for (var j0 = 0u; j0 < end; j0 += 4u) {
            let r = key_rows4(kb, j0, end, h);
            var s = dots4x4_k(q0, r, 0u, last) + dots4x4_k(q1, r, 4u, last) + dots4x4_k(q2, r, 8u, last) + dots4x4_k(q3, r, 12u, last);
            if (ch > 4u) {
                s += dots4x4_k(q4, r, 16u, last) + dots4x4_k(q5, r, 20u, last) + dots4x4_k(q6, r, 24u, last) + dots4x4_k(q7, r, 28u, last);
            }
            let j = vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u);
            let ok = keys_ok(kb, j, end);
            let o0 = online_step4(s[0], causal_ok(ok, j, i4.x), m.x);
            let o1 = online_step4(s[1], causal_ok(ok, j, i4.y), m.y);
            let o2 = online_step4(s[2], causal_ok(ok, j, i4.z), m.z);
            let o3 = online_step4(s[3], causal_ok(ok, j, i4.w), m.w);
            let alpha = vec4<f32>(o0.alpha, o1.alpha, o2.alpha, o3.alpha);
            let w = mat4x4<f32>(o0.w, o1.w, o2.w, o3.w);
            l = l * alpha + vec4<f32>(1.0) * w;
            m = vec4<f32>(o0.m, o1.m, o2.m, o3.m);
            a0 = mix4x4_v(a0, alpha, w, r, 0u, last); a1 = mix4x4_v(a1, alpha, w, r, 4u, last);
            a2 = mix4x4_v(a2, alpha, w, r, 8u, last); a3 = mix4x4_v(a3, alpha, w, r, 12u, last);
            if (ch > 4u) {
                a4 = mix4x4_v(a4, alpha, w, r, 16u, last); a5 = mix4x4_v(a5, alpha, w, r, 20u, last);
                a6 = mix4x4_v(a6, alpha, w, r, 24u, last); a7 = mix4x4_v(a7, alpha, w, r, 28u, last);
            }
        }
    } else {
        for (var j0 = 0u; j0 < end; j0 += 8u) {
            let r = key_rows(kb, j0, end, h);
            var s = dots4_k(q0, r, 0u, last);
            if (ch > 1u) { s = add_scores(s, dots4_k(q1, r, 4u, last)); }
            let j_lo = vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u);
            let j_hi = vec4<u32>(j0) + vec4<u32>(4u, 5u, 6u, 7u);
            let ok_lo = keys_ok(kb, j_lo, end);
            let ok_hi = keys_ok(kb, j_hi, end);
            let o0 = online_step(s.r0, causal_ok(ok_lo, j_lo, i4.x), causal_ok(ok_hi, j_hi, i4.x), m.x);
            let o1 = online_step(s.r1, causal_ok(ok_lo, j_lo, i4.y), causal_ok(ok_hi, j_hi, i4.y), m.y);
            let o2 = online_step(s.r2, causal_ok(ok_lo, j_lo, i4.z), causal_ok(ok_hi, j_hi, i4.z), m.z);
            let o3 = online_step(s.r3, causal_ok(ok_lo, j_lo, i4.w), causal_ok(ok_hi, j_hi, i4.w), m.w);
            let alpha = vec4<f32>(o0.alpha, o1.alpha, o2.alpha, o3.alpha);
            l = l * alpha + vec4<f32>(weight_sum(o0.w), weight_sum(o1.w), weight_sum(o2.w), weight_sum(o3.w));
            m = vec4<f32>(o0.m, o1.m, o2.m, o3.m);
            let w = Scores4(o0.w, o1.w, o2.w, o3.w);
            a0 = mix4_v(a0, alpha, w, r, 0u, last);
            if (ch > 1u) { a1 = mix4_v(a1, alpha, w, r, 4u, last); }
        }
    }
    let seen = l > vec4<f32>(0.0);
    let inv = select(vec4<f32>(0.0), vec4<f32>(1.0) / l, seen);
    store4_out(qb, in_range, 0u, last, a0, inv);
    if (ch > 1u) { store4_out(qb, in_range, 4u, last, a1, inv); }
    if (ch > 2u) { store4_out(qb, in_range, 8u, last, a2, inv); store4_out(qb, in_range, 12u, last, a3, inv); }
    if (ch > 4u) {
        store4_out(qb, in_range, 16u, last, a4, inv); store4_out(qb, in_range, 20u, last, a5, inv);
        store4_out(qb, in_range, 24u, last, a6, inv); store4_out(qb, in_range, 28u, last, a7, inv);
    }
    let row_lse = select(vec4<f32>(negative_infinity()), m + log(l), seen);
    let lb = bh * p.q_len;
    if (in_range.x) { lse[lb + i4.x] = row_lse.x; }
    if (in_range.y) { lse[lb + i4.y] = row_lse.y; }
    if (in_range.z) { lse[lb + i4.z] = row_lse.z; }
    if (in_range.w) { lse[lb + i4.w] = row_lse.w; }
}

// The last query tile of each head when it holds at most eight rows (the ViT's 257 tokens
// leave a ninth tile of one row), one row per invocation: workgroup `bh` takes rows
// (p.tiles - 1) * 32 + lid of head bh, row t = 0 of forward_body's four (rows t = 1..3 would
// be past the end). Run as a four-rows tile, such a tile costs as much as any other; per row
// the arithmetic is most of the forward's time, so one row per invocation costs about a third
// (docs/performance-log.md, 2026-12-05 from 09:50 UTC). The same loads, broadcasts and
// arithmetic per row as forward_body's four-keys-per-step loop, so head rows of more than 32
// elements only; a launch of its own, as the same loop inside forward_body's entry point saved
// a third of that.
fn forward_tail(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, ch: u32) {
    let bh = workgroup_index(wid, nwg);
    if (bh >= p.batch * p.heads) { return; }
    let tile = p.tiles - 1u;
    let qr = query_rows(bh, vec4<u32>(tile * TILE + lid) + vec4<u32>(0u, 1u, 2u, 3u) * LANES);
    let h = qr.h; let kb = qr.kb; let last = qr.last; let i = qr.i4.x; let qb = qr.qb.x;
    let q0 = chunk_q(qb, 0u, last) * p.scale;
    let q1 = chunk_q(qb, 4u, last) * p.scale;
    let q2 = chunk_q(qb, 8u, last) * p.scale;
    let q3 = chunk_q(qb, 12u, last) * p.scale;
    var q4 = mat4x4<f32>(); var q5 = mat4x4<f32>(); var q6 = mat4x4<f32>(); var q7 = mat4x4<f32>();
    if (ch > 4u) {
        q4 = chunk_q(qb, 16u, last) * p.scale; q5 = chunk_q(qb, 20u, last) * p.scale;
        q6 = chunk_q(qb, 24u, last) * p.scale; q7 = chunk_q(qb, 28u, last) * p.scale;
    }
    var a0 = mat4x4<f32>(); var a1 = mat4x4<f32>(); var a2 = mat4x4<f32>(); var a3 = mat4x4<f32>();
    var a4 = mat4x4<f32>(); var a5 = mat4x4<f32>(); var a6 = mat4x4<f32>(); var a7 = mat4x4<f32>();
    var end = p.kv_len;
    if (p.causal == 1u) { end = min(end, tile * TILE + TILE); }
    var m = NEG;
    var l = 0.0;
    for (var j0 = 0u; j0 < end; j0 += 4u) {
        let r = key_rows4(kb, j0, end, h);
        var s = dots_k(q0, r, 0u, last) + dots_k(q1, r, 4u, last) + dots_k(q2, r, 8u, last) + dots_k(q3, r, 12u, last);
        if (ch > 4u) {
            s += dots_k(q4, r, 16u, last) + dots_k(q5, r, 20u, last) + dots_k(q6, r, 24u, last) + dots_k(q7, r, 28u, last);
        }
        let j = vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u);
        let o = online_step4(s, causal_ok(keys_ok(kb, j, end), j, i), m);
        l = l * o.alpha + dot(vec4<f32>(1.0), o.w);
        m = o.m;
        a0 = mix_v(a0, o.alpha, o.w, r, 0u, last); a1 = mix_v(a1, o.alpha, o.w, r, 4u, last);
        a2 = mix_v(a2, o.alpha, o.w, r, 8u, last); a3 = mix_v(a3, o.alpha, o.w, r, 12u, last);
        if (ch > 4u) {
            a4 = mix_v(a4, o.alpha, o.w, r, 16u, last); a5 = mix_v(a5, o.alpha, o.w, r, 20u, last);
            a6 = mix_v(a6, o.alpha, o.w, r, 24u, last); a7 = mix_v(a7, o.alpha, o.w, r, 28u, last);
        }
    }
    if (!qr.in_range.x) { return; }
    let seen = l > 0.0;
    let inv = select(0.0, 1.0 / l, seen);
    store_out(qb, 0u, last, a0, inv); store_out(qb, 4u, last, a1, inv);
    store_out(qb, 8u, last, a2, inv); store_out(qb, 12u, last, a3, inv);
    if (ch > 4u) {
        store_out(qb, 16u, last, a4, inv); store_out(qb, 20u, last, a5, inv);
        store_out(qb, 24u, last, a6, inv); store_out(qb, 28u, last, a7, inv);
    }
    lse[bh * p.q_len + i] = select(negative_infinity(), m + log(l), seen);
}

// One row's scores against the four key rows r over chunk c (dots4x4_k's column for one row),
// and chunk c of one accumulator row mixed with the value rows r (mix4x4_v's, for one row).
fn dots_k(x: mat4x4<f32>, r: vec4<u32>, c: u32, last: u32) -> vec4<f32> {
    return dots_pair(x, k4(r, c, last), k4(r, c + 2u, last));
}
fn mix_v(a: mat4x4<f32>, alpha: f32, w: vec4<f32>, r: vec4<u32>, c: u32, last: u32) -> mat4x4<f32> {
    return mix_pair(a, alpha, w, v4(r, c, last), v4(r, c + 2u, last));
}

// Cross-attention over few keys (Nk <= 16, e.g. pixel queries over class text embeddings):
// every score of the row lives in registers, the softmax is exact (no rescaling), and nothing
// but the scores is kept per row.
@compute @workgroup_size(64)
fn forward_few_keys(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let bh = wg / p.tiles;
    if (bh >= p.batch * p.heads) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let i = tile * WG + lid;
    if (i >= p.q_len) { return; }
    let kb = kv_batch_of(b);
    let d4 = p.head_dim / 4u;
    let qb = row_base(b * p.q_len + i, h);
    let n = min(p.kv_len, FEW_KEYS);

    var s: array<f32, 16>;
    var m = NEG;
    for (var j = 0u; j < n; j++) {
        let kr = row_base(kb * p.kv_len + j, h);
        var dot4 = vec4<f32>(0.0);
        for (var c = 0u; c < d4; c++) {
            dot4 += load_q(qb + c) * load_k(kr + c);
        }
        let score = p.scale * dot(dot4, vec4<f32>(1.0));
        let ok = key_visible(kb, j, i, n);
        s[j] = select(NEG, score, ok);
        m = max(m, s[j]);
    }
    var l = 0.0;
    for (var j = 0u; j < n; j++) {
        let e = select(0.0, exp(s[j] - m), s[j] > NO_KEY);
        s[j] = e;
        l += e;
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < d4; c++) {
        var o = vec4<f32>(0.0);
        for (var j = 0u; j < n; j++) {
            o += s[j] * load_v(row_base(kb * p.kv_len + j, h) + c);
        }
        out[qb + c] = o * inv;
    }
    lse[bh * p.q_len + i] = select(negative_infinity(), m + log(l), l > 0.0);
}

// ---------------------------------------------------------------------------------------
// Backward.

// stats[t] = lse, stats[BHN + t] = delta for row t = (b*H + h)*Nq + i; then the key mask.
@compute @workgroup_size(64)
fn backward_prepare(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = workgroup_index(wid, nwg) * WG + lid;
    let rows = p.batch * p.heads * p.q_len;
    if (t < rows) {
        let bh = t / p.q_len;
        let i = t % p.q_len;
        let b = bh / p.heads;
        let h = bh % p.heads;
        let base = row_base(b * p.q_len + i, h);
        var d = vec4<f32>(0.0);
        for (var c = 0u; c < p.head_dim / 4u; c++) {
            d += load_out(base + c) * load_d_out(base + c);
        }
        stats[t] = lse[t];
        stats[rows + t] = dot(d, vec4<f32>(1.0));
    }
    let keys = p.kv_batch * p.kv_len;
    if (t < keys) {
        var valid = 1.0;
        if (p.has_mask == 1u) { valid = select(0.0, 1.0, key_mask[t] != 0u); }
        stats[2u * rows + t] = valid;
    }
}

// dq's accumulators: chunk c of the invocation's four rows in field c (the dq kernels).
struct Chunks8 {
    c0: Chunk4, c1: Chunk4, c2: Chunk4, c3: Chunk4,
    c4: Chunk4, c5: Chunk4, c6: Chunk4, c7: Chunk4,
}

// a + ds (the four rows' weights over eight keys) times the keys' rows r, chunk by chunk.
fn mix_chunks_k(a: Chunks8, ds: Scores4, r: Rows8, last: u32, ch: u32) -> Chunks8 {
    var o = a;
    o.c0 = mix4_k(a.c0, ds, r, 0u, last);
    if (ch > 1u) { o.c1 = mix4_k(a.c1, ds, r, 4u, last); }
    if (ch > 2u) { o.c2 = mix4_k(a.c2, ds, r, 8u, last); o.c3 = mix4_k(a.c3, ds, r, 12u, last); }
    if (ch > 4u) {
        o.c4 = mix4_k(a.c4, ds, r, 16u, last); o.c5 = mix4_k(a.c5, ds, r, 20u, last);
        o.c6 = mix4_k(a.c6, ds, r, 24u, last); o.c7 = mix4_k(a.c7, ds, r, 28u, last);
    }
    return o;
}

// Stores of every chunk of a, times f, into grad_a or grad_b.
fn store_chunks_grad_a(base: vec4<u32>, ok: vec4<bool>, last: u32, a: Chunks8, f: f32, ch: u32) {
    store4_grad_a(base, ok, 0u, last, a.c0, f);
    if (ch > 1u) { store4_grad_a(base, ok, 4u, last, a.c1, f); }
    if (ch > 2u) { store4_grad_a(base, ok, 8u, last, a.c2, f); store4_grad_a(base, ok, 12u, last, a.c3, f); }
    if (ch > 4u) {
        store4_grad_a(base, ok, 16u, last, a.c4, f); store4_grad_a(base, ok, 20u, last, a.c5, f);
        store4_grad_a(base, ok, 24u, last, a.c6, f); store4_grad_a(base, ok, 28u, last, a.c7, f);
    }
}
fn store_chunks_grad_b(base: vec4<u32>, ok: vec4<bool>, last: u32, a: Chunks8, f: f32, ch: u32) {
    store4_grad_b(base, ok, 0u, last, a.c0, f);
    if (ch > 1u) { store4_grad_b(base, ok, 4u, last, a.c1, f); }
    if (ch > 2u) { store4_grad_b(base, ok, 8u, last, a.c2, f); store4_grad_b(base, ok, 12u, last, a.c3, f); }
    if (ch > 4u) {
        store4_grad_b(base, ok, 16u, last, a.c4, f); store4_grad_b(base, ok, 20u, last, a.c5, f);
        store4_grad_b(base, ok, 24u, last, a.c6, f); store4_grad_b(base, ok, 28u, last, a.c7, f);
    }
}

// dq: four query rows of one head per invocation, walking the keys eight per step (as the
// forward does).
fn dq_body(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, ch: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let bh = wg / p.tiles;
    if (bh >= p.batch * p.heads) { return; }
    let qr = query_rows(bh, vec4<u32>(tile * TILE + lid) + vec4<u32>(0u, 1u, 2u, 3u) * LANES);
    let h = qr.h; let kb = qr.kb; let last = qr.last;
    let in_range = qr.in_range; let i4 = qr.i4; let qb = qr.qb;
    let rows = p.batch * p.heads * p.q_len;
    let st = vec4<u32>(bh * p.q_len) + i4;
    let row_lse = vec4<f32>(stats[st.x], stats[st.y], stats[st.z], stats[st.w]);
    let row_delta = vec4<f32>(stats[rows + st.x], stats[rows + st.y], stats[rows + st.z], stats[rows + st.w]);
    // A row that saw no key has no gradient.
    let row_ok = row_lse > vec4<f32>(NO_KEY);

    let q0 = chunk4_q(qb, 0u, last, p.scale);
    let g0 = chunk4_d_out(qb, 0u, last);
    var q1 = Chunk4(); var q2 = Chunk4(); var q3 = Chunk4();
    var q4 = Chunk4(); var q5 = Chunk4(); var q6 = Chunk4(); var q7 = Chunk4();
    var g1 = Chunk4(); var g2 = Chunk4(); var g3 = Chunk4();
    var g4 = Chunk4(); var g5 = Chunk4(); var g6 = Chunk4(); var g7 = Chunk4();
    if (ch > 1u) { q1 = chunk4_q(qb, 4u, last, p.scale); g1 = chunk4_d_out(qb, 4u, last); }
    if (ch > 2u) {
        q2 = chunk4_q(qb, 8u, last, p.scale); q3 = chunk4_q(qb, 12u, last, p.scale);
        g2 = chunk4_d_out(qb, 8u, last); g3 = chunk4_d_out(qb, 12u, last);
    }
    if (ch > 4u) {
        q4 = chunk4_q(qb, 16u, last, p.scale); q5 = chunk4_q(qb, 20u, last, p.scale);
        q6 = chunk4_q(qb, 24u, last, p.scale); q7 = chunk4_q(qb, 28u, last, p.scale);
        g4 = chunk4_d_out(qb, 16u, last); g5 = chunk4_d_out(qb, 20u, last);
        g6 = chunk4_d_out(qb, 24u, last); g7 = chunk4_d_out(qb, 28u, last);
    }
    var a = Chunks8();

    var end = p.kv_len;
    if (p.causal == 1u) { end = min(end, tile * TILE + TILE); }
    let mb = 2u * rows;
    for (var j0 = 0u; j0 < end; j0 += 8u) {
        let r = key_rows(kb, j0, end, h);
        var s = dots4_k(q0, r, 0u, last);
        var dp = dots4_v(g0, r, 0u, last);
        if (ch > 1u) { s = add_scores(s, dots4_k(q1, r, 4u, last)); dp = add_scores(dp, dots4_v(g1, r, 4u, last)); }
        if (ch > 2u) {
            s = add_scores(add_scores(s, dots4_k(q2, r, 8u, last)), dots4_k(q3, r, 12u, last));
            dp = add_scores(add_scores(dp, dots4_v(g2, r, 8u, last)), dots4_v(g3, r, 12u, last));
        }
        if (ch > 4u) {
            s = add_scores(add_scores(s, dots4_k(q4, r, 16u, last)), dots4_k(q5, r, 20u, last));
            s = add_scores(add_scores(s, dots4_k(q6, r, 24u, last)), dots4_k(q7, r, 28u, last));
            dp = add_scores(add_scores(dp, dots4_v(g4, r, 16u, last)), dots4_v(g5, r, 20u, last));
            dp = add_scores(add_scores(dp, dots4_v(g6, r, 24u, last)), dots4_v(g7, r, 28u, last));
        }
        let j_lo = vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u);
        let j_hi = vec4<u32>(j0) + vec4<u32>(4u, 5u, 6u, 7u);
        let valid = keys_valid8(kb, j0, mb);
        let ok_lo = (j_lo < vec4<u32>(end)) & (valid[0] != vec4<f32>(0.0));
        let ok_hi = (j_hi < vec4<u32>(end)) & (valid[1] != vec4<f32>(0.0));
        let ds = Scores4(
            grad_scores(s.r0, dp.r0, row_lse.x, row_delta.x, causal_ok(ok_lo, j_lo, i4.x) & vec4<bool>(row_ok.x), causal_ok(ok_hi, j_hi, i4.x) & vec4<bool>(row_ok.x)),
            grad_scores(s.r1, dp.r1, row_lse.y, row_delta.y, causal_ok(ok_lo, j_lo, i4.y) & vec4<bool>(row_ok.y), causal_ok(ok_hi, j_hi, i4.y) & vec4<bool>(row_ok.y)),
            grad_scores(s.r2, dp.r2, row_lse.z, row_delta.z, causal_ok(ok_lo, j_lo, i4.z) & vec4<bool>(row_ok.z), causal_ok(ok_hi, j_hi, i4.z) & vec4<bool>(row_ok.z)),
            grad_scores(s.r3, dp.r3, row_lse.w, row_delta.w, causal_ok(ok_lo, j_lo, i4.w) & vec4<bool>(row_ok.w), causal_ok(ok_hi, j_hi, i4.w) & vec4<bool>(row_ok.w)));
        a = mix_chunks_k(a, ds, r, last, ch);
    }
    store_chunks_grad_a(qb, in_range, last, a, p.scale, ch);
}

// dS = P (dP - delta) of one row over eight keys, P = exp(s - lse) where visible, else 0.
fn grad_scores(s: mat2x4<f32>, dp: mat2x4<f32>, row_lse: f32, row_delta: f32, ok_lo: vec4<bool>, ok_hi: vec4<bool>) -> mat2x4<f32> {
    let p_lo = select(vec4<f32>(0.0), exp(s[0] - row_lse), ok_lo);
    let p_hi = select(vec4<f32>(0.0), exp(s[1] - row_lse), ok_hi);
    return mat2x4<f32>(p_lo * (dp[0] - row_delta), p_hi * (dp[1] - row_delta));
}

// The query rows split `split` of a dk/dv pass (or of the few-keys backward) covers for kv
// batch kb: rows begin..end, flattened over the batch from batch first_b (every batch's rows
// when the keys are shared, else its own).
struct QueryRange {
    first_b: u32,
    begin: u32,
    end: u32,
}

fn query_range(kb: u32, split: u32) -> QueryRange {
    var total = p.q_len;
    var first_b = kb;
    if (p.kv_batch == 1u) {
        total = p.batch * p.q_len;
        first_b = 0u;
    }
    let begin = min(split * p.split_rows, total);
    return QueryRange(first_b, begin, min(begin + p.split_rows, total));
}

// The eight query rows of a dk/dv step from r0 (clamped at the range's end): their positions
// and batches, and whether the causal mask hides every key from tile_first_key on from all
// of them (rows before the workgroup's first key see none of its keys): the step is skipped.
struct StepRows {
    i_lo: vec4<u32>,
    i_hi: vec4<u32>,
    b_lo: vec4<u32>,
    b_hi: vec4<u32>,
    hidden: bool,
}

fn step_rows(r0: u32, range: QueryRange, tile_first_key: u32) -> StepRows {
    let lastr = vec4<u32>(range.end - 1u);
    let ra_lo = min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), lastr);
    let ra_hi = min(vec4<u32>(r0) + vec4<u32>(4u, 5u, 6u, 7u), lastr);
    let nq = vec4<u32>(p.q_len);
    let i_lo = ra_lo % nq;
    let i_hi = ra_hi % nq;
    let latest = max(max(max(i_lo.x, i_lo.y), max(i_lo.z, i_lo.w)), max(max(i_hi.x, i_hi.y), max(i_hi.z, i_hi.w)));
    let first = vec4<u32>(range.first_b);
    return StepRows(i_lo, i_hi, ra_lo / nq + first, ra_hi / nq + first, p.causal == 1u && latest < tile_first_key);
}

// Those rows' bases in q and dout (head h), their lse and delta, and which of them count (in
// the range, and not fully masked).
struct StepStats {
    r: Rows8,
    lse8: mat2x4<f32>,
    delta8: mat2x4<f32>,
    ok_lo: vec4<bool>,
    ok_hi: vec4<bool>,
}

fn step_stats(q8r: StepRows, r0: u32, end: u32, h: u32) -> StepStats {
    let nq = vec4<u32>(p.q_len);
    let rows = vec4<u32>(p.batch * p.heads * p.q_len);
    let r = Rows8(row_base4(q8r.b_lo * nq + q8r.i_lo, h), row_base4(q8r.b_hi * nq + q8r.i_hi, h));
    let st_lo = (q8r.b_lo * vec4<u32>(p.heads) + vec4<u32>(h)) * nq + q8r.i_lo;
    let st_hi = (q8r.b_hi * vec4<u32>(p.heads) + vec4<u32>(h)) * nq + q8r.i_hi;
    let lse8 = stats8(Rows8(st_lo, st_hi));
    let delta8 = stats8(Rows8(st_lo + rows, st_hi + rows));
    let end4 = vec4<u32>(end);
    let ok_lo = (vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u) < end4) & (lse8[0] > vec4<f32>(NO_KEY));
    let ok_hi = (vec4<u32>(r0) + vec4<u32>(4u, 5u, 6u, 7u) < end4) & (lse8[1] > vec4<f32>(NO_KEY));
    return StepStats(r, lse8, delta8, ok_lo, ok_hi);
}

// dk, dv: four key rows of one head per invocation, summing over one range of query rows,
// eight per step (the same rows for the whole workgroup). The query rows are flattened over
// the batch when Bk = 1 (row r = b*Nq + i). A masked key contributes nothing (its
// probabilities are zeroed), so loop bounds stay uniform.
// Writes partial `split` of dk (grad_a) and dv (grad_b): [splits, Bk*Nk, H*dh]; with
// p.scores_at set, dS^T too (see store_scores).
fn dkdv_body(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, ch: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let rest = wg / p.tiles;
    let split = rest % p.splits;
    let kbh = rest / p.splits;
    if (kbh >= p.kv_batch * p.heads) { return; }
    if (TAIL_APART != 0u && tile + 1u == p.tiles) { return; }
    let kb = kbh / p.heads;
    let h = kbh % p.heads;
    let rows_j = vec4<u32>(tile * TILE + lid) + vec4<u32>(0u, 1u, 2u, 3u) * LANES;
    let in_range = rows_j < vec4<u32>(p.kv_len);
    let j4 = min(rows_j, vec4<u32>(p.kv_len - 1u));
    let last = p.head_dim / 4u - 1u;
    let kr = row_base4(vec4<u32>(kb * p.kv_len) + j4, h);
    let rows = p.batch * p.heads * p.q_len;
    let range = query_range(kb, split);
    let mk = 2u * rows + kb * p.kv_len;
    let key_ok = vec4<f32>(stats[mk + j4.x], stats[mk + j4.y], stats[mk + j4.z], stats[mk + j4.w]) != vec4<f32>(0.0);

    let k0 = chunk4_k(kr, 0u, last, p.scale);
    let v0 = chunk4_v(kr, 0u, last);
    var k1 = Chunk4(); var k2 = Chunk4(); var k3 = Chunk4();
    var k4 = Chunk4(); var k5 = Chunk4(); var k6 = Chunk4(); var k7 = Chunk4();
    var v1 = Chunk4(); var v2 = Chunk4(); var v3 = Chunk4();
    var v4 = Chunk4(); var v5 = Chunk4(); var v6 = Chunk4(); var v7 = Chunk4();
    if (ch > 1u) { k1 = chunk4_k(kr, 4u, last, p.scale); v1 = chunk4_v(kr, 4u, last); }
    if (ch > 2u) {
        k2 = chunk4_k(kr, 8u, last, p.scale); k3 = chunk4_k(kr, 12u, last, p.scale);
        v2 = chunk4_v(kr, 8u, last); v3 = chunk4_v(kr, 12u, last);
    }
    if (ch > 4u) {
        k4 = chunk4_k(kr, 16u, last, p.scale); k5 = chunk4_k(kr, 20u, last, p.scale);
        k6 = chunk4_k(kr, 24u, last, p.scale); k7 = chunk4_k(kr, 28u, last, p.scale);
        v4 = chunk4_v(kr, 16u, last); v5 = chunk4_v(kr, 20u, last);
        v6 = chunk4_v(kr, 24u, last); v7 = chunk4_v(kr, 28u, last);
    }
    var dk0 = Chunk4(); var dk1 = Chunk4(); var dk2 = Chunk4(); var dk3 = Chunk4();
    var dk4 = Chunk4(); var dk5 = Chunk4(); var dk6 = Chunk4(); var dk7 = Chunk4();
    var dv0 = Chunk4(); var dv1 = Chunk4(); var dv2 = Chunk4(); var dv3 = Chunk4();
    var dv4 = Chunk4(); var dv5 = Chunk4(); var dv6 = Chunk4(); var dv7 = Chunk4();

    let tile_first_key = tile * TILE;
    for (var r0 = range.begin; r0 < range.end; r0 += 8u) {
        let q8r = step_rows(r0, range, tile_first_key);
        if (q8r.hidden) {
            continue;
        }
        let st = step_stats(q8r, r0, range.end, h);
        let r = st.r;
        var s = dots4_q(k0, r, 0u, last);
        var dp = dots4_d_out(v0, r, 0u, last);
        if (ch > 1u) { s = add_scores(s, dots4_q(k1, r, 4u, last)); dp = add_scores(dp, dots4_d_out(v1, r, 4u, last)); }
        if (ch > 2u) {
            s = add_scores(add_scores(s, dots4_q(k2, r, 8u, last)), dots4_q(k3, r, 12u, last));
            dp = add_scores(add_scores(dp, dots4_d_out(v2, r, 8u, last)), dots4_d_out(v3, r, 12u, last));
        }
        if (ch > 4u) {
            s = add_scores(add_scores(s, dots4_q(k4, r, 16u, last)), dots4_q(k5, r, 20u, last));
            s = add_scores(add_scores(s, dots4_q(k6, r, 24u, last)), dots4_q(k7, r, 28u, last));
            dp = add_scores(add_scores(dp, dots4_d_out(v4, r, 16u, last)), dots4_d_out(v5, r, 20u, last));
            dp = add_scores(add_scores(dp, dots4_d_out(v6, r, 24u, last)), dots4_d_out(v7, r, 28u, last));
        }
        let g0 = key_grads(s.r0, dp.r0, st.lse8, st.delta8, st.ok_lo, st.ok_hi, q8r.i_lo, q8r.i_hi, j4.x, key_ok.x);
        let g1 = key_grads(s.r1, dp.r1, st.lse8, st.delta8, st.ok_lo, st.ok_hi, q8r.i_lo, q8r.i_hi, j4.y, key_ok.y);
        let g2 = key_grads(s.r2, dp.r2, st.lse8, st.delta8, st.ok_lo, st.ok_hi, q8r.i_lo, q8r.i_hi, j4.z, key_ok.z);
        let g3 = key_grads(s.r3, dp.r3, st.lse8, st.delta8, st.ok_lo, st.ok_hi, q8r.i_lo, q8r.i_hi, j4.w, key_ok.w);
        let pr = Scores4(g0.p, g1.p, g2.p, g3.p);
        let ds = Scores4(g0.ds, g1.ds, g2.ds, g3.ds);
        dv0 = mix4_d_out(dv0, pr, r, 0u, last);
        dk0 = mix4_q(dk0, ds, r, 0u, last);
        if (ch > 1u) { dv1 = mix4_d_out(dv1, pr, r, 4u, last); dk1 = mix4_q(dk1, ds, r, 4u, last); }
        if (ch > 2u) {
            dv2 = mix4_d_out(dv2, pr, r, 8u, last); dk2 = mix4_q(dk2, ds, r, 8u, last);
            dv3 = mix4_d_out(dv3, pr, r, 12u, last); dk3 = mix4_q(dk3, ds, r, 12u, last);
        }
        if (ch > 4u) {
            dv4 = mix4_d_out(dv4, pr, r, 16u, last); dk4 = mix4_q(dk4, ds, r, 16u, last);
            dv5 = mix4_d_out(dv5, pr, r, 20u, last); dk5 = mix4_q(dk5, ds, r, 20u, last);
            dv6 = mix4_d_out(dv6, pr, r, 24u, last); dk6 = mix4_q(dk6, ds, r, 24u, last);
            dv7 = mix4_d_out(dv7, pr, r, 28u, last); dk7 = mix4_q(dk7, ds, r, 28u, last);
        }
        // Last in the step: a store before the mixes above would make the compiler load the
        // step's q and dout rows a second time (it cannot tell grad_a from them).
        if (p.scores_at != 0u) { store_scores(kbh, tile, lid, in_range, r0, ds); }
    }
    let ob = vec4<u32>(split * (p.kv_batch * p.kv_len * p.heads * (p.head_dim / 4u))) + kr;
    store4_grad_a(ob, in_range, 0u, last, dk0, p.scale); store4_grad_b(ob, in_range, 0u, last, dv0, 1.0);
    if (ch > 1u) { store4_grad_a(ob, in_range, 4u, last, dk1, p.scale); store4_grad_b(ob, in_range, 4u, last, dv1, 1.0); }
    if (ch > 2u) {
        store4_grad_a(ob, in_range, 8u, last, dk2, p.scale); store4_grad_b(ob, in_range, 8u, last, dv2, 1.0);
        store4_grad_a(ob, in_range, 12u, last, dk3, p.scale); store4_grad_b(ob, in_range, 12u, last, dv3, 1.0);
    }
    if (ch > 4u) {
        store4_grad_a(ob, in_range, 16u, last, dk4, p.scale); store4_grad_b(ob, in_range, 16u, last, dv4, 1.0);
        store4_grad_a(ob, in_range, 20u, last, dk5, p.scale); store4_grad_b(ob, in_range, 20u, last, dv5, 1.0);
        store4_grad_a(ob, in_range, 24u, last, dk6, p.scale); store4_grad_b(ob, in_range, 24u, last, dv6, 1.0);
        store4_grad_a(ob, in_range, 28u, last, dk7, p.scale); store4_grad_b(ob, in_range, 28u, last, dv7, 1.0);
    }
}

// dk/dv's last key tile when it holds at most eight keys (the ViT's 257 leave one), one key
// per invocation: workgroup `wg` takes split wg % p.splits of head wg / p.splits, key t = 0 of
// dkdv_body's four (keys t = 1..3 are past the end: nothing stored for them but the zeros of
// their stored dS, as there). The same loads, broadcasts and arithmetic per key as dkdv_body;
// a launch of its own, as forward_tail is.
fn dkdv_tail(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, ch: u32) {
    let wg = workgroup_index(wid, nwg);
    let split = wg % p.splits;
    let kbh = wg / p.splits;
    if (kbh >= p.kv_batch * p.heads) { return; }
    let tile = p.tiles - 1u;
    let kb = kbh / p.heads;
    let h = kbh % p.heads;
    let rows_j = vec4<u32>(tile * TILE + lid) + vec4<u32>(0u, 1u, 2u, 3u) * LANES;
    let in_range = rows_j < vec4<u32>(p.kv_len);
    let j = min(rows_j.x, p.kv_len - 1u);
    let last = p.head_dim / 4u - 1u;
    let kr = row_base(kb * p.kv_len + j, h);
    let rows = p.batch * p.heads * p.q_len;
    let range = query_range(kb, split);
    let key_ok = stats[2u * rows + kb * p.kv_len + j] != 0.0;

    let k0 = chunk_k(kr, 0u, last) * p.scale;
    let v0 = chunk_v(kr, 0u, last);
    var k1 = mat4x4<f32>(); var k2 = mat4x4<f32>(); var k3 = mat4x4<f32>();
    var k4 = mat4x4<f32>(); var k5 = mat4x4<f32>(); var k6 = mat4x4<f32>(); var k7 = mat4x4<f32>();
    var v1 = mat4x4<f32>(); var v2 = mat4x4<f32>(); var v3 = mat4x4<f32>();
    var v4 = mat4x4<f32>(); var v5 = mat4x4<f32>(); var v6 = mat4x4<f32>(); var v7 = mat4x4<f32>();
    if (ch > 1u) { k1 = chunk_k(kr, 4u, last) * p.scale; v1 = chunk_v(kr, 4u, last); }
    if (ch > 2u) {
        k2 = chunk_k(kr, 8u, last) * p.scale; k3 = chunk_k(kr, 12u, last) * p.scale;
        v2 = chunk_v(kr, 8u, last); v3 = chunk_v(kr, 12u, last);
    }
    if (ch > 4u) {
        k4 = chunk_k(kr, 16u, last) * p.scale; k5 = chunk_k(kr, 20u, last) * p.scale;
        k6 = chunk_k(kr, 24u, last) * p.scale; k7 = chunk_k(kr, 28u, last) * p.scale;
        v4 = chunk_v(kr, 16u, last); v5 = chunk_v(kr, 20u, last);
        v6 = chunk_v(kr, 24u, last); v7 = chunk_v(kr, 28u, last);
    }
    var dk0 = mat4x4<f32>(); var dk1 = mat4x4<f32>(); var dk2 = mat4x4<f32>(); var dk3 = mat4x4<f32>();
    var dk4 = mat4x4<f32>(); var dk5 = mat4x4<f32>(); var dk6 = mat4x4<f32>(); var dk7 = mat4x4<f32>();
    var dv0 = mat4x4<f32>(); var dv1 = mat4x4<f32>(); var dv2 = mat4x4<f32>(); var dv3 = mat4x4<f32>();
    var dv4 = mat4x4<f32>(); var dv5 = mat4x4<f32>(); var dv6 = mat4x4<f32>(); var dv7 = mat4x4<f32>();

    let tile_first_key = tile * TILE;
    for (var r0 = range.begin; r0 < range.end; r0 += 8u) {
        let q8r = step_rows(r0, range, tile_first_key);
        if (q8r.hidden) {
            continue;
        }
        let st = step_stats(q8r, r0, range.end, h);
        let r = st.r;
        var s = dots_q(k0, r, 0u, last);
        var dp = dots_d_out(v0, r, 0u, last);
        if (ch > 1u) { s += dots_q(k1, r, 4u, last); dp += dots_d_out(v1, r, 4u, last); }
        if (ch > 2u) {
            s = s + dots_q(k2, r, 8u, last) + dots_q(k3, r, 12u, last);
            dp = dp + dots_d_out(v2, r, 8u, last) + dots_d_out(v3, r, 12u, last);
        }
        if (ch > 4u) {
            s = s + dots_q(k4, r, 16u, last) + dots_q(k5, r, 20u, last);
            s = s + dots_q(k6, r, 24u, last) + dots_q(k7, r, 28u, last);
            dp = dp + dots_d_out(v4, r, 16u, last) + dots_d_out(v5, r, 20u, last);
            dp = dp + dots_d_out(v6, r, 24u, last) + dots_d_out(v7, r, 28u, last);
        }
        let g = key_grads(s, dp, st.lse8, st.delta8, st.ok_lo, st.ok_hi, q8r.i_lo, q8r.i_hi, j, key_ok);
        dv0 = mix_d_out(dv0, g.p, r, 0u, last);
        dk0 = mix_q(dk0, g.ds, r, 0u, last);
        if (ch > 1u) { dv1 = mix_d_out(dv1, g.p, r, 4u, last); dk1 = mix_q(dk1, g.ds, r, 4u, last); }
        if (ch > 2u) {
            dv2 = mix_d_out(dv2, g.p, r, 8u, last); dk2 = mix_q(dk2, g.ds, r, 8u, last);
            dv3 = mix_d_out(dv3, g.p, r, 12u, last); dk3 = mix_q(dk3, g.ds, r, 12u, last);
        }
        if (ch > 4u) {
            dv4 = mix_d_out(dv4, g.p, r, 16u, last); dk4 = mix_q(dk4, g.ds, r, 16u, last);
            dv5 = mix_d_out(dv5, g.p, r, 20u, last); dk5 = mix_q(dk5, g.ds, r, 20u, last);
            dv6 = mix_d_out(dv6, g.p, r, 24u, last); dk6 = mix_q(dk6, g.ds, r, 24u, last);
            dv7 = mix_d_out(dv7, g.p, r, 28u, last); dk7 = mix_q(dk7, g.ds, r, 28u, last);
        }
        if (p.scores_at != 0u) {
            store_scores(kbh, tile, lid, in_range, r0, Scores4(g.ds, mat2x4<f32>(), mat2x4<f32>(), mat2x4<f32>()));
        }
    }
    if (!in_range.x) { return; }
    let ob = split * (p.kv_batch * p.kv_len * p.heads * (p.head_dim / 4u)) + kr;
    store_grad_a(ob, 0u, last, dk0, p.scale); store_grad_b(ob, 0u, last, dv0, 1.0);
    if (ch > 1u) { store_grad_a(ob, 4u, last, dk1, p.scale); store_grad_b(ob, 4u, last, dv1, 1.0); }
    if (ch > 2u) {
        store_grad_a(ob, 8u, last, dk2, p.scale); store_grad_b(ob, 8u, last, dv2, 1.0);
        store_grad_a(ob, 12u, last, dk3, p.scale); store_grad_b(ob, 12u, last, dv3, 1.0);
    }
    if (ch > 4u) {
        store_grad_a(ob, 16u, last, dk4, p.scale); store_grad_b(ob, 16u, last, dv4, 1.0);
        store_grad_a(ob, 20u, last, dk5, p.scale); store_grad_b(ob, 20u, last, dv5, 1.0);
        store_grad_a(ob, 24u, last, dk6, p.scale); store_grad_b(ob, 24u, last, dv6, 1.0);
        store_grad_a(ob, 28u, last, dk7, p.scale); store_grad_b(ob, 28u, last, dv7, 1.0);
    }
}

// One key row's scores (or dP) against the eight streamed query rows r over chunk c, and chunk
// c of one key row's dk (or dv) mixed from them (row t = 0 of dots4_q, dots4_d_out, mix4_q and
// mix4_d_out).
fn dots_q(x: mat4x4<f32>, r: Rows8, c: u32, last: u32) -> mat2x4<f32> {
    return dots8(x, q8(r, min(c, last)), q8(r, min(c + 1u, last)), q8(r, min(c + 2u, last)), q8(r, min(c + 3u, last)));
}
fn dots_d_out(x: mat4x4<f32>, r: Rows8, c: u32, last: u32) -> mat2x4<f32> {
    return dots8(x, d_out8(r, min(c, last)), d_out8(r, min(c + 1u, last)), d_out8(r, min(c + 2u, last)), d_out8(r, min(c + 3u, last)));
}
fn mix_q(a: mat4x4<f32>, w: mat2x4<f32>, r: Rows8, c: u32, last: u32) -> mat4x4<f32> {
    return mix8(a, 1.0, w, q8(r, min(c, last)), q8(r, min(c + 1u, last)), q8(r, min(c + 2u, last)), q8(r, min(c + 3u, last)));
}
fn mix_d_out(a: mat4x4<f32>, w: mat2x4<f32>, r: Rows8, c: u32, last: u32) -> mat4x4<f32> {
    return mix8(a, 1.0, w, d_out8(r, min(c, last)), d_out8(r, min(c + 1u, last)), d_out8(r, min(c + 2u, last)), d_out8(r, min(c + 3u, last)));
}

// The stored-scores backward (launcher: one split, Bk = B, not causal). With p.scores_at set,
// the dk/dv kernel keeps the dS it computes after dk in its grad_a buffer, from vec4
// p.scores_at: B*H*k_pad*q_pad floats in the order the dk/dv kernel makes them (scores_index),
// zeros for keys past Nk (queries past Nq are never read); `backward_dq_scores_blocked` then
// takes dq = scale * dS k from it, one product instead of dq_body's three (s = q k^T and
// dP = dout v^T recomputed there). Both stay within the bindings the kernels already have:
// dS^T in grad_a, and dq written to grad_b.

// dS of the invocation's four keys (zeros where not in_range) against the eight query rows
// r0..r0+8 (r0 a multiple of 8): two vec4 per key, eight consecutive vec4 per invocation
// (3 % faster dk/dv kernel than rows of dS^T, where each key's two vec4 lay Nq apart).
fn store_scores(kbh: u32, tile: u32, lid: u32, in_range: vec4<bool>, r0: u32, ds: Scores4) {
    let at = scores_index(kbh, tile, r0 / 8u, lid, 0u);
    put_scores8(at, ds.r0, in_range.x);
    put_scores8(at + 2u, ds.r1, in_range.y);
    put_scores8(at + 4u, ds.r2, in_range.z);
    put_scores8(at + 6u, ds.r3, in_range.w);
}

// vec4 index of dS^T in grad_a, laid out so that each invocation of the dk/dv kernel writes the
// eight vec4 of a step (its four keys t, two vec4 of eight queries each) one after another:
// head bh, key tile, query step (eight queries), invocation (key within the step's eight),
// key t of the invocation, then the two vec4.
fn scores_index(bh: u32, key_tile: u32, step: u32, lane_key: u32, t: u32) -> u32 {
    return p.scores_at + (((bh * p.k_pad / TILE + key_tile) * (p.q_pad / 8u) + step) * LANES + lane_key) * SCORES_PER_STEP + 2u * t;
}
// The vec4 one dk/dv invocation writes per step: four keys, two vec4 each.
const SCORES_PER_STEP: u32 = 8u;
fn put_scores8(at: u32, x: mat2x4<f32>, ok: bool) {
    grad_a[at] = select(vec4<f32>(0.0), x[0], ok);
    grad_a[at + 1u] = select(vec4<f32>(0.0), x[1], ok);
}

// dq (into grad_b) from the stored dS: four consecutive query rows of one head per invocation
// (so that one stored vec4 holds all four), walking the keys eight per step. The eight vec4
// of a step are the 8 x 4 block dS^T[j0..j0+8, i..i+4]; transposed, column t is query i + t.
fn dq_scores_body(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, ch: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let bh = wg / p.tiles;
    if (bh >= p.batch * p.heads) { return; }
    let i0 = tile * TILE + 4u * lid;
    let qr = query_rows(bh, vec4<u32>(i0) + vec4<u32>(0u, 1u, 2u, 3u));
    let h = qr.h; let kb = qr.kb; let last = qr.last;
    let in_range = qr.in_range; let qb = qr.qb;
    var a = Chunks8();
    // Keys j0 + l (l = 0..8) of a step were written by invocation l of their key tile, as its
    // key (j0 % 32) / 8; the four queries are half (i0 % 8) / 4 of query step i0 / 8.
    let half = (i0 % 8u) / 4u;
    let stride = SCORES_PER_STEP;
    for (var j0 = 0u; j0 < p.kv_len; j0 += 8u) {
        let r = key_rows(kb, j0, p.kv_len, h);
        let at = scores_index(bh, j0 / TILE, i0 / 8u, 0u, (j0 % TILE) / 8u) + half;
        let lo = transpose(mat4x4<f32>(load_scores(at), load_scores(at + stride), load_scores(at + 2u * stride), load_scores(at + 3u * stride)));
        let hi = transpose(mat4x4<f32>(load_scores(at + 4u * stride), load_scores(at + 5u * stride), load_scores(at + 6u * stride), load_scores(at + 7u * stride)));
        let ds = Scores4(mat2x4<f32>(lo[0], hi[0]), mat2x4<f32>(lo[1], hi[1]), mat2x4<f32>(lo[2], hi[2]), mat2x4<f32>(lo[3], hi[3]));
        a = mix_chunks_k(a, ds, r, last, ch);
    }
    // dq goes to grad_b (grad_a holds dS^T).
    store_chunks_grad_b(qb, in_range, last, a, p.scale, ch);
}

// P and dS of one key j against the eight query rows of a dk/dv step (rows i_lo, i_hi, valid
// where ok_lo/ok_hi), from its scores s and dP.
struct KeyGrads {
    p: mat2x4<f32>,
    ds: mat2x4<f32>,
}

fn key_grads(s: mat2x4<f32>, dp: mat2x4<f32>, lse8: mat2x4<f32>, delta8: mat2x4<f32>, ok_lo: vec4<bool>, ok_hi: vec4<bool>,
             i_lo: vec4<u32>, i_hi: vec4<u32>, j: u32, key_ok: bool) -> KeyGrads {
    var v_lo = ok_lo & vec4<bool>(key_ok);
    var v_hi = ok_hi & vec4<bool>(key_ok);
    if (p.causal == 1u) {
        v_lo = v_lo & (i_lo >= vec4<u32>(j));
        v_hi = v_hi & (i_hi >= vec4<u32>(j));
    }
    let p_lo = select(vec4<f32>(0.0), exp(s[0] - lse8[0]), v_lo);
    let p_hi = select(vec4<f32>(0.0), exp(s[1] - lse8[1]), v_hi);
    return KeyGrads(mat2x4<f32>(p_lo, p_hi), mat2x4<f32>(p_lo * (dp[0] - delta8[0]), p_hi * (dp[1] - delta8[1])));
}

// Backward for rows of at most FEW_BACKWARD_KEYS keys (the decoder's cross-attention: pixels
// against a few class embeddings), in one pass where the fused kernels take two and stream
// eight rows per step of which only a few are keys. One invocation per (query-row range
// `split`, kv batch kb, head h): it holds k and v of its keys (loaded once, where the fused
// kernels reload them per row), walks its query rows one at a time (flattened over the batch
// when Bk = 1), writes each row's dq (grad_a) and adds the row's share to its dk and dv sums,
// written at the end as partial `split` of grad_b ([splits, 2, Bk*Nk, H*dh]: dk, then dv;
// backward_reduce_pairs adds the partials into dk_sum and dv_sum). Per row, with lse and delta from
// backward_prepare:
//   s_j = scale q.k_j,  p_j = exp(s_j - lse) (0 for a hidden key),  dp_j = dout.v_j,
//   ds_j = p_j (dp_j - delta),  dq = scale sum_j ds_j k_j,  dk_j += scale ds_j q,  dv_j += p_j dout
// Every row lives in a Head8 (up to 8 vec4: dh <= 32) and the four keys are written out, with
// no array: lavapipe reads and writes a private array at a run-time index through a chain of
// selects over its length (an array version of this kernel was 3-4x slower). Keys past Nk and
// vec4 past dh / 4 are zeros that add nothing.
const FEW_BACKWARD_KEYS: u32 = 4u;

struct Head8 {
    c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>,
    c4: vec4<f32>, c5: vec4<f32>, c6: vec4<f32>, c7: vec4<f32>,
}

// x with vec4 c replaced by y.
fn head8_with(x: Head8, c: u32, y: vec4<f32>) -> Head8 {
    var r = x;
    switch c {
        case 0u: { r.c0 = y; }
        case 1u: { r.c1 = y; }
        case 2u: { r.c2 = y; }
        case 3u: { r.c3 = y; }
        case 4u: { r.c4 = y; }
        case 5u: { r.c5 = y; }
        case 6u: { r.c6 = y; }
        default: { r.c7 = y; }
    }
    return r;
}

// The first d4 vec4 of the row at vec4 index `base` of q, k, v or d_out (one function each,
// so that a kernel binds only the buffers or textures it reads).
fn head8_q(base: u32, d4: u32) -> Head8 {
    var r = Head8();
    for (var c = 0u; c < d4; c++) { r = head8_with(r, c, load_q(base + c)); }
    return r;
}
fn head8_k(base: u32, d4: u32) -> Head8 {
    var r = Head8();
    for (var c = 0u; c < d4; c++) { r = head8_with(r, c, load_k(base + c)); }
    return r;
}
fn head8_v(base: u32, d4: u32) -> Head8 {
    var r = Head8();
    for (var c = 0u; c < d4; c++) { r = head8_with(r, c, load_v(base + c)); }
    return r;
}
fn head8_d_out(base: u32, d4: u32) -> Head8 {
    var r = Head8();
    for (var c = 0u; c < d4; c++) { r = head8_with(r, c, load_d_out(base + c)); }
    return r;
}

fn head8_dot(a: Head8, b: Head8) -> f32 {
    let s = a.c0 * b.c0 + a.c1 * b.c1 + a.c2 * b.c2 + a.c3 * b.c3
        + a.c4 * b.c4 + a.c5 * b.c5 + a.c6 * b.c6 + a.c7 * b.c7;
    return dot(s, vec4<f32>(1.0));
}

// acc + w x.
fn head8_axpy(acc: Head8, w: f32, x: Head8) -> Head8 {
    return Head8(acc.c0 + w * x.c0, acc.c1 + w * x.c1, acc.c2 + w * x.c2, acc.c3 + w * x.c3,
                 acc.c4 + w * x.c4, acc.c5 + w * x.c5, acc.c6 + w * x.c6, acc.c7 + w * x.c7);
}

// Vec4 c of a row.
fn head8_at(x: Head8, c: u32) -> vec4<f32> {
    switch c {
        case 0u: { return x.c0; }
        case 1u: { return x.c1; }
        case 2u: { return x.c2; }
        case 3u: { return x.c3; }
        case 4u: { return x.c4; }
        case 5u: { return x.c5; }
        case 6u: { return x.c6; }
        default: { return x.c7; }
    }
}

// Stores w times the first d4 vec4 of dk, and the first d4 of dv, of one key at `base` and
// `base + kv4` of grad_b (backward_few_keys' partials: [splits, 2, Bk*Nk*H*dh/4]).
fn head8_store_key_grads(base: u32, kv4: u32, d4: u32, w: f32, dk: Head8, dv: Head8) {
    for (var c = 0u; c < d4; c++) {
        grad_b[base + c] = w * head8_at(dk, c);
        grad_b[kv4 + base + c] = head8_at(dv, c);
    }
}

// What one invocation of the few-keys kernels that hold the keys takes (unit = its index):
// kv batch kb, head h, and range `split` of the query rows that kv batch serves, [r_begin,
// r_end) (flattened over the batch when Bk = 1), whose first row is query i0 of batch element
// b0 (the kernels then advance b and i without a division per row). `ok` is false past the
// last (kv batch, head).
struct FewRange { ok: bool, kb: u32, h: u32, split: u32, r_begin: u32, r_end: u32, b0: u32, i0: u32 }

fn few_range(unit: u32) -> FewRange {
    let split = unit % p.splits;
    let kbh = unit / p.splits;
    let kb = kbh / p.heads;
    let range = query_range(kb, split);
    return FewRange(kbh < p.kv_batch * p.heads, kb, kbh % p.heads, split, range.begin, range.end,
                    range.first_b + range.begin / p.q_len, range.begin % p.q_len);
}

// The k and v rows of keys 0..4 of (kv batch kb, head h); keys past Nk repeat key Nk - 1 (in
// range) and never count (key_visible is false for them).
struct FewKeyRows { k0: Head8, k1: Head8, k2: Head8, k3: Head8, v0: Head8, v1: Head8, v2: Head8, v3: Head8 }

fn few_key_rows(kb: u32, h: u32, d4: u32) -> FewKeyRows {
    let last = p.kv_len - 1u;
    let r0 = row_base(kb * p.kv_len, h);
    let r1 = row_base(kb * p.kv_len + min(1u, last), h);
    let r2 = row_base(kb * p.kv_len + min(2u, last), h);
    let r3 = row_base(kb * p.kv_len + min(3u, last), h);
    return FewKeyRows(head8_k(r0, d4), head8_k(r1, d4), head8_k(r2, d4), head8_k(r3, d4),
                      head8_v(r0, d4), head8_v(r1, d4), head8_v(r2, d4), head8_v(r3, d4));
}

// The probability and score gradient of key j for query i (0, 0 for a key past Nk, masked
// (key_on false) or after i under a causal mask, and for a row that sees no key).
fn few_key_grads(q: Head8, g: Head8, kj: Head8, vj: Head8, j: u32, key_on: bool, i: u32, row_lse: f32, delta: f32) -> vec2<f32> {
    let visible = key_on && row_lse > NO_KEY && (p.causal == 0u || j <= i);
    let pr = select(0.0, exp(p.scale * head8_dot(q, kj) - row_lse), visible);
    return vec2<f32>(pr, pr * (head8_dot(g, vj) - delta));
}

// The forward for 1 to FEW_BACKWARD_KEYS keys and heads of at most 32, laid out like
// backward_few_keys: one invocation per (query-row range `split`, kv batch, head) holds the
// keys' k and v and walks its rows, so a row loads only its q (forward_few_keys, one
// invocation per row, loads every key's k and v for every row). Per row the exact softmax
// over the keys (the same arithmetic as forward_few_keys): out = sum_j p_j v_j, and lse.
@compute @workgroup_size(8)
fn forward_few_keys_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = few_range(workgroup_index(wid, nwg) * 8u + lid);
    if (!u.ok) { return; }
    let kb = u.kb;
    let h = u.h;
    let d4 = p.head_dim / 4u;
    let n = min(p.kv_len, FEW_BACKWARD_KEYS);
    let kv = few_key_rows(kb, h, d4);
    let k0 = kv.k0; let k1 = kv.k1; let k2 = kv.k2; let k3 = kv.k3;
    let v0 = kv.v0; let v1 = kv.v1; let v2 = kv.v2; let v3 = kv.v3;
    var b = u.b0;
    var i = u.i0;
    for (var r = u.r_begin; r < u.r_end; r++) {
        let qb = row_base(b * p.q_len + i, h);
        let q = head8_q(qb, d4);
        let s0 = select(NEG, p.scale * head8_dot(q, k0), key_visible(kb, 0u, i, n));
        let s1 = select(NEG, p.scale * head8_dot(q, k1), key_visible(kb, 1u, i, n));
        let s2 = select(NEG, p.scale * head8_dot(q, k2), key_visible(kb, 2u, i, n));
        let s3 = select(NEG, p.scale * head8_dot(q, k3), key_visible(kb, 3u, i, n));
        let m = max(max(s0, s1), max(s2, s3));
        let e0 = select(0.0, exp(s0 - m), s0 > NO_KEY);
        let e1 = select(0.0, exp(s1 - m), s1 > NO_KEY);
        let e2 = select(0.0, exp(s2 - m), s2 > NO_KEY);
        let e3 = select(0.0, exp(s3 - m), s3 > NO_KEY);
        let l = e0 + e1 + e2 + e3;
        let inv = select(0.0, 1.0 / l, l > 0.0);
        let o = head8_axpy(head8_axpy(head8_axpy(head8_axpy(Head8(), e0, v0), e1, v1), e2, v2), e3, v3);
        for (var c = 0u; c < d4; c++) {
            out[qb + c] = inv * head8_at(o, c);
        }
        lse[(b * p.heads + h) * p.q_len + i] = select(negative_infinity(), m + log(l), l > 0.0);
        i++;
        if (i == p.q_len) {
            i = 0u;
            b++;
        }
    }
}

@compute @workgroup_size(8)
fn backward_few_keys(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = few_range(workgroup_index(wid, nwg) * 8u + lid);
    if (!u.ok) { return; }
    let kb = u.kb;
    let h = u.h;
    let d4 = p.head_dim / 4u;
    let n = min(p.kv_len, FEW_BACKWARD_KEYS);
    let rows = p.batch * p.heads * p.q_len;
    let kv = few_key_rows(kb, h, d4);
    let k0 = kv.k0; let k1 = kv.k1; let k2 = kv.k2; let k3 = kv.k3;
    let v0 = kv.v0; let v1 = kv.v1; let v2 = kv.v2; let v3 = kv.v3;
    // Keys present and not masked, from backward_prepare's mask floats (stats after the rows'
    // lse and delta; the key_mask buffer itself is not bound: seven storage buffers at most).
    let mk = 2u * rows + kb * p.kv_len;
    let last = p.kv_len - 1u;
    let mask4 = vec4<f32>(stats[mk], stats[mk + min(1u, last)], stats[mk + min(2u, last)], stats[mk + min(3u, last)]);
    let on = (mask4 != vec4<f32>(0.0)) & (vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n));
    var dk0 = Head8(); var dk1 = Head8(); var dk2 = Head8(); var dk3 = Head8();
    var dv0 = Head8(); var dv1 = Head8(); var dv2 = Head8(); var dv3 = Head8();
    var b = u.b0;
    var i = u.i0;
    for (var r = u.r_begin; r < u.r_end; r++) {
        let qb = row_base(b * p.q_len + i, h);
        let t = (b * p.heads + h) * p.q_len + i;
        let row_lse = stats[t];
        let delta = stats[rows + t];
        let q = head8_q(qb, d4);
        let g = head8_d_out(qb, d4);
        let g0 = few_key_grads(q, g, k0, v0, 0u, on.x, i, row_lse, delta);
        let g1 = few_key_grads(q, g, k1, v1, 1u, on.y, i, row_lse, delta);
        let g2 = few_key_grads(q, g, k2, v2, 2u, on.z, i, row_lse, delta);
        let g3 = few_key_grads(q, g, k3, v3, 3u, on.w, i, row_lse, delta);
        let dq = head8_axpy(head8_axpy(head8_axpy(head8_axpy(Head8(), g0.y, k0), g1.y, k1), g2.y, k2), g3.y, k3);
        for (var c = 0u; c < d4; c++) {
            grad_a[qb + c] = p.scale * head8_at(dq, c);
        }
        dk0 = head8_axpy(dk0, g0.y, q); dk1 = head8_axpy(dk1, g1.y, q);
        dk2 = head8_axpy(dk2, g2.y, q); dk3 = head8_axpy(dk3, g3.y, q);
        dv0 = head8_axpy(dv0, g0.x, g); dv1 = head8_axpy(dv1, g1.x, g);
        dv2 = head8_axpy(dv2, g2.x, g); dv3 = head8_axpy(dv3, g3.x, g);
        i++;
        if (i == p.q_len) {
            i = 0u;
            b++;
        }
    }
    let kv4 = p.kv_batch * p.kv_len * p.heads * p.head_dim / 4u;
    let kr = 2u * u.split * kv4 + row_base(kb * p.kv_len, h);
    let step = p.heads * p.head_dim / 4u;
    head8_store_key_grads(kr, kv4, d4, p.scale, dk0, dv0);
    if (n > 1u) { head8_store_key_grads(kr + step, kv4, d4, p.scale, dk1, dv1); }
    if (n > 2u) { head8_store_key_grads(kr + 2u * step, kv4, d4, p.scale, dk2, dv2); }
    if (n > 3u) { head8_store_key_grads(kr + 3u * step, kv4, d4, p.scale, dk3, dv3); }
}

// backward_few_keys' partials: dk = sum over splits of grad_b[split, 0], dv of grad_b[split,
// 1], in split order. One vec4 per invocation.
@compute @workgroup_size(64)
fn backward_reduce_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = workgroup_index(wid, nwg) * WG + lid;
    let n = p.kv_batch * p.kv_len * p.heads * p.head_dim / 4u;
    if (e >= n) { return; }
    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        a += grad_b[2u * s * n + e];
        b += grad_b[2u * s * n + n + e];
    }
    dk_sum[e] = a;
    dv_sum[e] = b;
}

// dk = sum over splits of the dk partials, dv likewise, in split order. One vec4 per
// invocation; `tiles` * 64 covers the Bk*Nk*H*dh/4 vec4 of one partial.
@compute @workgroup_size(64)
fn backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = workgroup_index(wid, nwg) * WG + lid;
    let n = p.kv_batch * p.kv_len * p.heads * p.head_dim / 4u;
    if (e >= n) { return; }
    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        a += grad_a[s * n + e];
        b += grad_b[s * n + e];
    }
    dk_sum[e] = a;
    dv_sum[e] = b;
}

// ---------------------------------------------------------------------------------------
// Rows split across lanes (the tiled path, for GPUs).
//
// The register-blocked kernels above hold four whole rows per invocation; at head_dim 128 that
// is far more registers than a GPU thread has. Here one head row is spread over `p.lanes`
// lanes (the power of two >= head_dim / 4, at most 32), each holding one vec4 of it, and a
// workgroup of 64 lanes covers 64 / lanes rows of one (b, h). Per block of KB streamed rows,
// every lane writes its partial dot products to workgroup memory, one lane per (row, key)
// sums the `lanes` partials, and every lane reads back its row's KB scores: two barriers per
// block, and per-lane state of a few vec4 whatever the head width. Loads of a streamed row are
// consecutive vec4 across a row's lanes (coalesced on a GPU). Loop bounds are uniform across
// the workgroup (rows past the end are clamped and not stored).

const SPLIT_WG: u32 = 64u;
const KB: u32 = 8u;

var<workgroup> part_a: array<f32, 512>;  // SPLIT_WG * KB partial dot products
var<workgroup> part_b: array<f32, 512>;
var<workgroup> sums_a: array<f32, 512>;  // rows * KB full dot products (rows <= SPLIT_WG)
var<workgroup> sums_b: array<f32, 512>;

// The vec4 `c` of head h of row `row` of a [rows, H*dh] tensor, zero for lanes past the row.
fn lane_q(row: u32, h: u32, c: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), q[row_base(row, h) + min(c, p.head_dim / 4u - 1u)], c < p.head_dim / 4u);
}
fn lane_k(row: u32, h: u32, c: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), k[row_base(row, h) + min(c, p.head_dim / 4u - 1u)], c < p.head_dim / 4u);
}
fn lane_v(row: u32, h: u32, c: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v[row_base(row, h) + min(c, p.head_dim / 4u - 1u)], c < p.head_dim / 4u);
}
fn lane_d_out(row: u32, h: u32, c: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), d_out[row_base(row, h) + min(c, p.head_dim / 4u - 1u)], c < p.head_dim / 4u);
}

// After every lane wrote part_a[lid * KB + jj] (and part_b, when `both`): sums over each row's
// lanes, into sums_a[r * KB + jj] (and sums_b). Called in uniform control flow.
fn reduce_lanes(lid: u32, both: bool) {
    workgroupBarrier();
    let L = p.lanes;
    let r = lid / L;
    for (var jj = lid % L; jj < KB; jj += L) {
        var sa = 0.0;
        var sb = 0.0;
        for (var t = 0u; t < L; t++) {
            sa += part_a[(r * L + t) * KB + jj];
            if (both) { sb += part_b[(r * L + t) * KB + jj]; }
        }
        sums_a[r * KB + jj] = sa;
        sums_b[r * KB + jj] = sb;
    }
    workgroupBarrier();
}

// Forward, online softmax as in forward_body, one block of KB keys per step.
@compute @workgroup_size(64)
fn forward_lanes(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let bh = wg / p.tiles;
    if (bh >= p.batch * p.heads) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let L = p.lanes;
    let rows_per_wg = SPLIT_WG / L;
    let c = lid % L;
    let r = lid / L;
    let i = tile * rows_per_wg + r;
    let ic = min(i, p.q_len - 1u);
    let kb = kv_batch_of(b);
    let qv = lane_q(b * p.q_len + ic, h, c) * p.scale;
    var end = p.kv_len;
    if (p.causal == 1u) { end = min(end, tile * rows_per_wg + rows_per_wg); }
    var acc = vec4<f32>(0.0);
    var m = NEG;
    var l = 0.0;
    for (var j0 = 0u; j0 < end; j0 += KB) {
        for (var jj = 0u; jj < KB; jj++) {
            let j = min(j0 + jj, end - 1u);
            part_a[lid * KB + jj] = dot(qv, lane_k(kb * p.kv_len + j, h, c));
        }
        reduce_lanes(lid, false);
        var m_new = m;
        for (var jj = 0u; jj < KB; jj++) {
            if (key_visible(kb, j0 + jj, ic, end)) { m_new = max(m_new, sums_a[r * KB + jj]); }
        }
        // exp(NEG - finite) underflows to 0: the first visible key resets the sums cleanly.
        let alpha = exp(m - m_new);
        acc *= alpha;
        l *= alpha;
        for (var jj = 0u; jj < KB; jj++) {
            let j = j0 + jj;
            if (key_visible(kb, j, ic, end)) {
                let w = exp(sums_a[r * KB + jj] - m_new);
                l += w;
                acc += w * lane_v(kb * p.kv_len + j, h, c);
            }
        }
        m = m_new;
    }
    if (i < p.q_len) {
        if (c < p.head_dim / 4u) {
            out[row_base(b * p.q_len + i, h) + c] = acc * select(0.0, 1.0 / l, l > 0.0);
        }
        if (c == 0u) {
            lse[bh * p.q_len + i] = select(negative_infinity(), m + log(l), l > 0.0);
        }
    }
}

// dq with rows split across lanes: per key block, s = q . k and dP = dout . v reduced over the
// row's lanes, then dS = P (dP - delta) and dq += dS k.
@compute @workgroup_size(64)
fn backward_dq_lanes(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let bh = wg / p.tiles;
    if (bh >= p.batch * p.heads) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let L = p.lanes;
    let rows_per_wg = SPLIT_WG / L;
    let c = lid % L;
    let r = lid / L;
    let i = tile * rows_per_wg + r;
    let ic = min(i, p.q_len - 1u);
    let kb = kv_batch_of(b);
    let rows = p.batch * p.heads * p.q_len;
    let row_lse = stats[bh * p.q_len + ic];
    let row_delta = stats[rows + bh * p.q_len + ic];
    let row_ok = row_lse > NO_KEY;
    let qv = lane_q(b * p.q_len + ic, h, c) * p.scale;
    let gv = lane_d_out(b * p.q_len + ic, h, c);
    let mb = 2u * rows + kb * p.kv_len;
    var end = p.kv_len;
    if (p.causal == 1u) { end = min(end, tile * rows_per_wg + rows_per_wg); }
    var acc = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < end; j0 += KB) {
        for (var jj = 0u; jj < KB; jj++) {
            let kr = kb * p.kv_len + min(j0 + jj, end - 1u);
            part_a[lid * KB + jj] = dot(qv, lane_k(kr, h, c));
            part_b[lid * KB + jj] = dot(gv, lane_v(kr, h, c));
        }
        reduce_lanes(lid, true);
        for (var jj = 0u; jj < KB; jj++) {
            let j = j0 + jj;
            var ok = row_ok && j < end && stats[mb + min(j, p.kv_len - 1u)] != 0.0;
            if (p.causal == 1u) { ok = ok && j <= ic; }
            if (ok) {
                let pr = exp(sums_a[r * KB + jj] - row_lse);
                acc += pr * (sums_b[r * KB + jj] - row_delta) * lane_k(kb * p.kv_len + j, h, c);
            }
        }
    }
    if (i < p.q_len && c < p.head_dim / 4u) {
        grad_a[row_base(b * p.q_len + i, h) + c] = acc * p.scale;
    }
}

// dk, dv with key rows split across lanes, over one range of (flattened) query rows as in
// dkdv_body: per block of KB query rows, s = k . q and dP = v . dout reduced over the key's
// lanes, then dv += P dout and dk += dS q. Writes partial `split` of dk (grad_a) and dv (grad_b).
@compute @workgroup_size(64)
fn backward_dkdv_lanes(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let rest = wg / p.tiles;
    let split = rest % p.splits;
    let kbh = rest / p.splits;
    if (kbh >= p.kv_batch * p.heads) { return; }
    let kb = kbh / p.heads;
    let h = kbh % p.heads;
    let L = p.lanes;
    let rows_per_wg = SPLIT_WG / L;
    let c = lid % L;
    let r = lid / L;
    let j = tile * rows_per_wg + r;
    let jc = min(j, p.kv_len - 1u);
    let rows = p.batch * p.heads * p.q_len;
    var total = p.q_len;
    var first_b = kb;
    if (p.kv_batch == 1u) {
        total = p.batch * p.q_len;
        first_b = 0u;
    }
    let r_begin = min(split * p.split_rows, total);
    let r_end = min(r_begin + p.split_rows, total);
    let key_ok = stats[2u * rows + kb * p.kv_len + jc] != 0.0;
    let kv_row = kb * p.kv_len + jc;
    let kv = lane_k(kv_row, h, c) * p.scale;
    let vv = lane_v(kv_row, h, c);
    var dk = vec4<f32>(0.0);
    var dv = vec4<f32>(0.0);
    for (var r0 = r_begin; r0 < r_end; r0 += KB) {
        for (var ii = 0u; ii < KB; ii++) {
            let fr = min(r0 + ii, r_end - 1u);
            let qrow = (fr / p.q_len + first_b) * p.q_len + fr % p.q_len;
            part_a[lid * KB + ii] = dot(kv, lane_q(qrow, h, c));
            part_b[lid * KB + ii] = dot(vv, lane_d_out(qrow, h, c));
        }
        reduce_lanes(lid, true);
        for (var ii = 0u; ii < KB; ii++) {
            let fr = r0 + ii;
            let i = fr % p.q_len;
            let qb = fr / p.q_len + first_b;
            let st = (qb * p.heads + h) * p.q_len + i;
            let row_lse = stats[min(st, rows - 1u)];
            var ok = key_ok && fr < r_end && row_lse > NO_KEY;
            if (p.causal == 1u) { ok = ok && i >= jc; }
            if (ok) {
                let pr = exp(sums_a[r * KB + ii] - row_lse);
                let ds = pr * (sums_b[r * KB + ii] - stats[rows + st]);
                let qrow = qb * p.q_len + i;
                dv += pr * lane_d_out(qrow, h, c);
                dk += ds * lane_q(qrow, h, c);
            }
        }
    }
    if (j < p.kv_len && c < p.head_dim / 4u) {
        let o = split * (p.kv_batch * p.kv_len * p.heads * (p.head_dim / 4u)) + row_base(kb * p.kv_len + j, h);
        grad_a[o + c] = dk * p.scale;
        grad_b[o + c] = dv;
    }
}
