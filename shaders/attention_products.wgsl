// Attention as products: the row-wise steps between the matrix products of the "products"
// method (kernels/src/attention.rs). The launcher moves q, k and v into heads-outermost layouts
// (q [H, B, Nq, dh], k and v [H, Bk, Nk4, dh]), runs S = q k^T and out = P v on the matmul
// kernels, and these entry points turn scores into probabilities and back. The score matrix is
// [H, B, Nq, Nk4]: with heads outermost, keys shared by the batch (Bk = 1) are one
// [B*Nq, dh] x [dh, Nk4] product per head. Nk4 is Nk rounded up to a multiple of 4, so that
// every product has the vec4-aligned shapes the fast matmul kernels take (the ViT's 257 tokens
// would otherwise send all six products to the general kernels); k and v get zero rows up to
// Nk4, and the padded score columns are keys no query sees (P = 0 there).
//
// Per row r = (h, b, i), over the keys j that query i may see (j < Nk; key_mask[kb, j] = 1
// with kb = b, or 0 when Bk = 1; and j <= i when causal), the same math as
// shaders/attention.wgsl:
//   softmax_rows:  s_j = scale * S[r, j];  lse = log sum_j exp(s_j);  P[r, j] = exp(s_j - lse)
//                  in place over S; lse written at [b, h, i] of lse [B, H, Nq]; a row that
//                  sees no key gets P = 0 and lse = -inf. The maximum and the sum come from one
//                  pass (online: the sum is rescaled when the maximum grows), so S is read
//                  twice, not three times (every storage load costs on lavapipe). The keys
//                  every row sees (without a key mask: j < Nk, and j <= i when causal) run
//                  first, in loops without the visibility tests; with them, the ViT's and
//                  decoder's softmax took a third less time on lavapipe
//   probs_rows:    P[r, j] = exp(scale * S[r, j] - lse[b, h, i]) from the saved lse, in place
//                  (for a backward whose forward P was not kept)
//   delta_rows:    delta[b, h, i] = dout_i . out_i over the head's dh values, read in the
//                  projections' layout; this equals sum_k P[r, k] dP[r, k] (dP = dout vᵀ and
//                  out = P v), for a dh-long dot product instead of a pass over Nk4 pairs
//   backward_rows: dS[r, j] = scale * P[r, j] * (dP[r, j] - delta[b, h, i]), in place over dP
//                  (the softmax Jacobian, with the scale of s folded in so that dq = dS k and
//                  dk = dSᵀ q are plain products)
// One row per invocation, 64 rows per workgroup, no barriers: the schedule that suits CPU
// adapters, where this method is chosen. Workgroups are folded over x and y.
//
// `heads_outer` and `heads_inner` move q, k, v and the gradients between the projections'
// layout [N0, N1, H, dh] and the heads-outermost [H, N0, N1p, dh] (N1p >= N1: the padded rows
// are written as zeros, and read by nobody on the way back), one head row of dh floats per
// invocation (dh is a multiple of 4; dh / 4 vec4): contiguous runs on both sides, which a
// general axis permutation with per-element index arithmetic copies several times slower.
// One row rather than one vec4 per invocation (the index arithmetic, with its divisions, once
// per row) took these moves from 55-62 to 35-37 ms of a batch-8 training step on lavapipe.

struct Params {
    rows: u32,      // H * B * Nq
    batch: u32,     // B
    q_len: u32,     // Nq
    kv_len: u32,    // Nk
    heads: u32,     // H
    kv_batch: u32,  // Bk: B or 1
    causal: u32,    // 1: key j is visible to query i only when j <= i
    has_mask: u32,  // 1: key_mask is bound and used
    scale: f32,
    kv_stride: u32, // Nk4: the score matrix's row length (Nk rounded up to 4); heads_*: N1p
    head_vec4: u32, // heads_*: dh / 4
    n1: u32,        // heads_*: N1, the tokens per batch element (N0 is in `batch`)
}

@group(0) @binding(0) var<uniform> p: Params;
// S, P, dP and dS are read by vec4 (four neighbouring keys; the row length Nk4 is a multiple of
// 4): on lavapipe every storage access with a per-lane address is a loop over the SIMD lanes,
// so one vec4 costs about what one float does.
@group(0) @binding(1) var<storage, read_write> scores: array<vec4<f32>>;  // S, then P   [H, B, Nq, Nk4]
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;     // [B, H, Nq]
@group(0) @binding(3) var<storage, read> key_mask: array<u32>;      // [Bk, Nk]
@group(0) @binding(4) var<storage, read_write> grad: array<vec4<f32>>;    // dP, then dS [H, B, Nq, Nk4]
@group(0) @binding(5) var<storage, read> src: array<vec4<f32>>;       // heads_*: the input
@group(0) @binding(6) var<storage, read_write> dst: array<vec4<f32>>; // heads_*: the output
@group(0) @binding(7) var<storage, read> src2: array<vec4<f32>>;      // delta_rows: d_out (src: out)
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;     // [B, H, Nq]

// The row's query index i, its key-mask row kb and its place in lse.
struct Row {
    i: u32,
    kb: u32,
    lse_at: u32,
}

fn row_of(r: u32) -> Row {
    let i = r % p.q_len;
    let hb = r / p.q_len;
    let b = hb % p.batch;
    let h = hb / p.batch;
    return Row(i, select(b, 0u, p.kv_batch == 1u), (b * p.heads + h) * p.q_len + i);
}

fn visible(row: Row, j: u32) -> bool {
    var ok = j < p.kv_len;
    if (p.causal == 1u) { ok = ok && j <= row.i; }
    if (p.has_mask == 1u) { ok = ok && key_mask[row.kb * p.kv_len + min(j, p.kv_len - 1u)] != 0u; }
    return ok;
}

fn negative_infinity() -> f32 {
    return bitcast<f32>(0xff800000u);
}

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// The visibility of keys j..j+4 (see `visible`).
fn visible4(row: Row, j: u32) -> vec4<bool> {
    return vec4<bool>(visible(row, j), visible(row, j + 1u), visible(row, j + 2u), visible(row, j + 3u));
}

@compute @workgroup_size(64)
fn softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let row = row_of(r);
    let n4 = p.kv_stride / 4u;
    let base = r * n4;
    var m = -3.402823e38;
    var l = 0.0;
    var seen = false;
    // Four keys per step: the running maximum moves once per vec4, so the sum is rescaled by
    // one exp per four keys, plus one exp per key.
    // Keys before `clear` pass every test (no mask, below the length and the causal limit).
    let clear = select(0u, select(p.kv_len, min(p.kv_len, row.i + 1u), p.causal == 1u) / 4u, p.has_mask == 0u);
    for (var j4 = 0u; j4 < clear; j4++) {
        let x = p.scale * scores[base + j4];
        let m_new = max(m, max(max(x.x, x.y), max(x.z, x.w)));
        let e = exp(x - m_new);
        l = l * exp(m - m_new) + (e.x + e.y) + (e.z + e.w);
        m = m_new;
        seen = true;
    }
    for (var j4 = clear; j4 < n4; j4++) {
        let vis = visible4(row, 4u * j4);
        let x = select(vec4<f32>(-3.402823e38), p.scale * scores[base + j4], vis);
        let m_new = max(m, max(max(x.x, x.y), max(x.z, x.w)));
        let e = select(vec4<f32>(0.0), exp(x - m_new), vis);
        l = l * exp(m - m_new) + (e.x + e.y) + (e.z + e.w);
        m = m_new;
        seen = seen || any(vis);
    }
    let row_lse = m + log(l);
    lse[row.lse_at] = select(negative_infinity(), row_lse, seen);
    for (var j4 = 0u; j4 < clear; j4++) {
        scores[base + j4] = exp(p.scale * scores[base + j4] - row_lse);
    }
    for (var j4 = clear; j4 < n4; j4++) {
        let keep = visible4(row, 4u * j4) & vec4<bool>(seen);
        scores[base + j4] = select(vec4<f32>(0.0), exp(p.scale * scores[base + j4] - row_lse), keep);
    }
}

@compute @workgroup_size(64)
fn probs_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let row = row_of(r);
    let n4 = p.kv_stride / 4u;
    let base = r * n4;
    let row_lse = lse[row.lse_at];
    // A row that saw no key has lse = -inf and P = 0 (exp would give inf there).
    let seen = row_lse > -3.402823e38;
    for (var j4 = 0u; j4 < n4; j4++) {
        let keep = visible4(row, 4u * j4) & vec4<bool>(seen);
        scores[base + j4] = select(vec4<f32>(0.0), exp(p.scale * scores[base + j4] - row_lse), keep);
    }
}

// One (b, i, h) per invocation; `rows` = B * Nq * H in the projections' order (token, then head).
@compute @workgroup_size(64)
fn delta_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = row_index(wid, nwg, lid);
    if (t >= p.rows) { return; }
    let h = t % p.heads;
    let bi = t / p.heads;  // b * Nq + i
    let base = t * p.head_vec4;
    var d = vec4<f32>(0.0);
    for (var c = 0u; c < p.head_vec4; c++) { d = fma(src[base + c], src2[base + c], d); }
    delta[((bi / p.q_len) * p.heads + h) * p.q_len + bi % p.q_len] = d.x + d.y + d.z + d.w;
}

@compute @workgroup_size(64)
fn backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let n4 = p.kv_stride / 4u;
    let base = r * n4;
    // P is zero at the keys the row does not see (and at a row that sees none).
    let d = delta[row_of(r).lse_at];
    for (var j4 = 0u; j4 < n4; j4++) {
        grad[base + j4] = p.scale * scores[base + j4] * (grad[base + j4] - d);
    }
}

// dst [H, N0, N1p, dh] <- src [N0, N1, H, dh] (zeros at rows n1 >= N1), one head row of dst
// per invocation: its place in both layouts is worked out once per row, not per vec4.
@compute @workgroup_size(64)
fn heads_outer(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg, lid);  // (h * N0 + n0) * N1p + n1
    if (row >= p.heads * p.batch * p.kv_stride) { return; }
    let n1 = row % p.kv_stride;
    let hn0 = row / p.kv_stride;
    let n0 = hn0 % p.batch;
    let h = hn0 / p.batch;
    let keep = n1 < p.n1;
    let src_at = (min(n0 * p.n1 + n1, p.batch * p.n1 - 1u) * p.heads + h) * p.head_vec4;
    let dst_at = row * p.head_vec4;
    for (var c = 0u; c < p.head_vec4; c++) {
        dst[dst_at + c] = select(vec4<f32>(0.0), src[src_at + c], keep);
    }
}

// dst [N0, N1, H, dh] <- src [H, N0, N1p, dh], one head row of dst per invocation.
@compute @workgroup_size(64)
fn heads_inner(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg, lid);  // (n0 * N1 + n1) * H + h
    if (row >= p.heads * p.batch * p.n1) { return; }
    let h = row % p.heads;
    let t = row / p.heads;
    let n1 = t % p.n1;
    let n0 = t / p.n1;
    let src_at = ((h * p.batch + n0) * p.kv_stride + n1) * p.head_vec4;
    let dst_at = row * p.head_vec4;
    for (var c = 0u; c < p.head_vec4; c++) {
        dst[dst_at + c] = src[src_at + c];
    }
}
