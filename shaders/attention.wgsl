// Fused multi-head attention, forward and backward, in the natural layouts of the q/k/v
// projections (heads interleaved per token, no permutes):
//   q [B, Nq, H*dh]    k, v [Bk, Nk, H*dh] with Bk = B, or Bk = 1 (shared across the batch)
//   out [B, Nq, H*dh]  lse [B, H, Nq]      key_mask u32 [Bk, Nk] (1 = attend, 0 = ignore)
//
// Math, per batch b, head h, query i (kb = b, or 0 when Bk = 1):
//   s_ij   = scale * q_i . k_j                       for the keys j the query may see:
//            j with key_mask[kb, j] = 1 and, when causal, j <= i (top-left aligned, as
//            PyTorch's is_causal)
//   lse_i  = log sum_j exp(s_ij)                     (-inf for a row that sees no key)
//   P_ij   = exp(s_ij - lse_i)
//   out_i  = sum_j P_ij v_j                          (zeros for a row that sees no key)
// Forward (`forward`) keeps, per query row, a running maximum m, a running sum l and an
// unnormalised output in registers and walks the keys in blocks of 8 (online softmax: when m
// grows, l and the output are rescaled by exp(m_old - m_new)); the Nq x Nk matrix never
// exists in memory. `forward_few_keys` is the cross-attention case (Nk <= 16): all scores of a
// row fit in registers, so it takes the exact softmax in two short passes over the keys.
//
// Backward recomputes P from q, k and the saved lse instead of storing it:
//   delta_i = dout_i . out_i                          (= sum_j P_ij dP_ij)
//   dP_ij   = dout_i . v_j
//   dS_ij   = P_ij (dP_ij - delta_i)
//   dq_i    = scale * sum_j dS_ij k_j                 (`backward_dq`: one row per invocation)
//   dk_j    = scale * sum_i dS_ij q_i                 (`backward_dkdv`: one key per invocation,
//   dv_j    =         sum_i P_ij dout_i                 summing over queries in a fixed order)
// With Bk = 1 the sums over i run over every batch element's queries too. For enough
// parallelism when there are few keys, `backward_dkdv` splits the (flattened) query rows into
// `splits` ranges and writes one partial per range; `backward_reduce` then sums the partials
// in order. No float atomics anywhere: results are deterministic.
// `backward_prepare` packs per-row lse and delta and the key mask (as 0/1 floats) into one
// `stats` buffer [lse: B*H*Nq | delta: B*H*Nq | key valid: Bk*Nk] so that the two gradient
// kernels stay within 7 storage buffers.
//
// Supported: head_dim a multiple of 4, from 4 to 128 (rows are read as vec4; the register
// arrays hold 32 vec4). Grid: 64 invocations per workgroup, one row (query or key) each;
// workgroups are folded over x and y (the launcher's `grid`) and bounds-checked.

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
    tiles: u32,       // 64-row tiles along the invocation axis (queries, keys or elements)
    splits: u32,      // backward_dkdv: query-row ranges, each written as one partial
    split_rows: u32,  // backward_dkdv: query rows per range
}

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
// Forward: one query row of one head per invocation; the 64 rows of a workgroup share (b, h),
// so they read the same key and value rows (broadcast loads, cache friendly).

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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

    // The scale is folded into q once.
    var qr: array<vec4<f32>, 32>;
    var acc: array<vec4<f32>, 32>;
    for (var c = 0u; c < d4; c++) {
        qr[c] = q[qb + c] * p.scale;
        acc[c] = vec4<f32>(0.0);
    }
    // Keys past the workgroup's last query are hidden from all its rows when causal.
    var end = p.kv_len;
    if (p.causal == 1u) { end = min(end, tile * WG + WG); }
    var m = NEG;
    var l = 0.0;
    for (var j0 = 0u; j0 < end; j0 += 8u) {
        // Eight key rows; those past the end are clamped (read, then masked out).
        let last = end - 1u;
        let k0 = row_base(kb * p.kv_len + j0, h);
        let k1 = row_base(kb * p.kv_len + min(j0 + 1u, last), h);
        let k2 = row_base(kb * p.kv_len + min(j0 + 2u, last), h);
        let k3 = row_base(kb * p.kv_len + min(j0 + 3u, last), h);
        let k4 = row_base(kb * p.kv_len + min(j0 + 4u, last), h);
        let k5 = row_base(kb * p.kv_len + min(j0 + 5u, last), h);
        let k6 = row_base(kb * p.kv_len + min(j0 + 6u, last), h);
        let k7 = row_base(kb * p.kv_len + min(j0 + 7u, last), h);
        var s_lo = vec4<f32>(0.0);
        var s_hi = vec4<f32>(0.0);
        for (var c = 0u; c < d4; c++) {
            let x = qr[c];
            s_lo += vec4<f32>(dot(x, k[k0 + c]), dot(x, k[k1 + c]), dot(x, k[k2 + c]), dot(x, k[k3 + c]));
            s_hi += vec4<f32>(dot(x, k[k4 + c]), dot(x, k[k5 + c]), dot(x, k[k6 + c]), dot(x, k[k7 + c]));
        }
        let ok_lo = vec4<bool>(key_visible(kb, j0, i, end), key_visible(kb, j0 + 1u, i, end),
                               key_visible(kb, j0 + 2u, i, end), key_visible(kb, j0 + 3u, i, end));
        let ok_hi = vec4<bool>(key_visible(kb, j0 + 4u, i, end), key_visible(kb, j0 + 5u, i, end),
                               key_visible(kb, j0 + 6u, i, end), key_visible(kb, j0 + 7u, i, end));
        let t_lo = select(vec4<f32>(NEG), s_lo, ok_lo);
        let t_hi = select(vec4<f32>(NEG), s_hi, ok_hi);
        let t = max(t_lo, t_hi);
        let m_new = max(m, max(max(t.x, t.y), max(t.z, t.w)));
        let p_lo = select(vec4<f32>(0.0), exp(s_lo - m_new), ok_lo);
        let p_hi = select(vec4<f32>(0.0), exp(s_hi - m_new), ok_hi);
        // exp(NEG - finite) underflows to 0: the first visible key resets the sums cleanly.
        let alpha = exp(m - m_new);
        l = l * alpha + dot(p_lo, vec4<f32>(1.0)) + dot(p_hi, vec4<f32>(1.0));
        m = m_new;
        for (var c = 0u; c < d4; c++) {
            acc[c] = acc[c] * alpha
                + p_lo.x * v[k0 + c] + p_lo.y * v[k1 + c] + p_lo.z * v[k2 + c] + p_lo.w * v[k3 + c]
                + p_hi.x * v[k4 + c] + p_hi.y * v[k5 + c] + p_hi.z * v[k6 + c] + p_hi.w * v[k7 + c];
        }
    }
    let ob = row_base(b * p.q_len + i, h);
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < d4; c++) {
        out[ob + c] = acc[c] * inv;
    }
    lse[bh * p.q_len + i] = select(negative_infinity(), m + log(l), l > 0.0);
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
            dot4 += q[qb + c] * k[kr + c];
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
            o += s[j] * v[row_base(kb * p.kv_len + j, h) + c];
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
            d += out[base + c] * d_out[base + c];
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

// Whether key j (of kv batch kb) is visible to query i, using the mask copy in stats.
fn key_visible_stats(kb: u32, j: u32, i: u32, end: u32, mask_base: u32) -> bool {
    var ok = j < end;
    if (p.causal == 1u) { ok = ok && j <= i; }
    return ok && stats[mask_base + kb * p.kv_len + min(j, p.kv_len - 1u)] != 0.0;
}

// dq: one query row of one head per invocation, walking the keys in blocks of 4.
@compute @workgroup_size(64)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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
    let rows = p.batch * p.heads * p.q_len;
    let row_lse = stats[bh * p.q_len + i];
    let row_delta = stats[rows + bh * p.q_len + i];

    var qr: array<vec4<f32>, 32>;
    var dor: array<vec4<f32>, 32>;
    var acc: array<vec4<f32>, 32>;
    for (var c = 0u; c < d4; c++) {
        qr[c] = q[qb + c] * p.scale;
        dor[c] = d_out[qb + c];
        acc[c] = vec4<f32>(0.0);
    }
    var end = p.kv_len;
    if (p.causal == 1u) { end = min(end, tile * WG + WG); }
    // A row that saw no key has no gradient.
    if (row_lse < NO_KEY) { end = 0u; }
    for (var j0 = 0u; j0 < end; j0 += 4u) {
        let last = end - 1u;
        let k0 = row_base(kb * p.kv_len + j0, h);
        let k1 = row_base(kb * p.kv_len + min(j0 + 1u, last), h);
        let k2 = row_base(kb * p.kv_len + min(j0 + 2u, last), h);
        let k3 = row_base(kb * p.kv_len + min(j0 + 3u, last), h);
        var s = vec4<f32>(0.0);
        var dp = vec4<f32>(0.0);
        for (var c = 0u; c < d4; c++) {
            let x = qr[c];
            let g = dor[c];
            s += vec4<f32>(dot(x, k[k0 + c]), dot(x, k[k1 + c]), dot(x, k[k2 + c]), dot(x, k[k3 + c]));
            dp += vec4<f32>(dot(g, v[k0 + c]), dot(g, v[k1 + c]), dot(g, v[k2 + c]), dot(g, v[k3 + c]));
        }
        let mb = 2u * rows;
        let ok = vec4<bool>(key_visible_stats(kb, j0, i, end, mb), key_visible_stats(kb, j0 + 1u, i, end, mb),
                            key_visible_stats(kb, j0 + 2u, i, end, mb), key_visible_stats(kb, j0 + 3u, i, end, mb));
        let pr = select(vec4<f32>(0.0), exp(s - row_lse), ok);
        let ds = pr * (dp - row_delta);
        for (var c = 0u; c < d4; c++) {
            acc[c] += ds.x * k[k0 + c] + ds.y * k[k1 + c] + ds.z * k[k2 + c] + ds.w * k[k3 + c];
        }
    }
    for (var c = 0u; c < d4; c++) {
        grad_a[qb + c] = acc[c] * p.scale;
    }
}

// dk, dv: one key row of one head per invocation, summing over one range of query rows in
// blocks of 4. The query rows are flattened over the batch when Bk = 1 (row r = b*Nq + i).
// Writes partial `split` of dk (grad_a) and dv (grad_b): [splits, Bk*Nk, H*dh].
@compute @workgroup_size(64)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = workgroup_index(wid, nwg);
    let tile = wg % p.tiles;
    let rest = wg / p.tiles;
    let split = rest % p.splits;
    let kbh = rest / p.splits;
    if (kbh >= p.kv_batch * p.heads) { return; }
    let kb = kbh / p.heads;
    let h = kbh % p.heads;
    let j = tile * WG + lid;
    if (j >= p.kv_len) { return; }
    let d4 = p.head_dim / 4u;
    let kr = row_base(kb * p.kv_len + j, h);
    let rows = p.batch * p.heads * p.q_len;
    // Query rows this kv batch serves: every batch's when shared, else its own.
    var total = p.q_len;
    var first_b = kb;
    if (p.kv_batch == 1u) {
        total = p.batch * p.q_len;
        first_b = 0u;
    }
    let r_begin = min(split * p.split_rows, total);
    var r_end = min(r_begin + p.split_rows, total);
    if (stats[2u * rows + kb * p.kv_len + j] == 0.0) { r_end = r_begin; }  // a masked key

    var kk: array<vec4<f32>, 32>;
    var vv: array<vec4<f32>, 32>;
    var dk: array<vec4<f32>, 32>;
    var dv: array<vec4<f32>, 32>;
    for (var c = 0u; c < d4; c++) {
        kk[c] = k[kr + c] * p.scale;
        vv[c] = v[kr + c];
        dk[c] = vec4<f32>(0.0);
        dv[c] = vec4<f32>(0.0);
    }
    let tile_first_key = tile * WG;
    for (var r0 = r_begin; r0 < r_end; r0 += 4u) {
        // Four query rows (flattened over the batch), clamped at the end and masked.
        let last = r_end - 1u;
        let ra = vec4<u32>(r0, min(r0 + 1u, last), min(r0 + 2u, last), min(r0 + 3u, last));
        let ia = ra % vec4<u32>(p.q_len);
        let ba = ra / vec4<u32>(p.q_len) + vec4<u32>(first_b);
        if (p.causal == 1u && max(max(ia.x, ia.y), max(ia.z, ia.w)) < tile_first_key) { continue; }
        let q0 = row_base(ba.x * p.q_len + ia.x, h);
        let q1 = row_base(ba.y * p.q_len + ia.y, h);
        let q2 = row_base(ba.z * p.q_len + ia.z, h);
        let q3 = row_base(ba.w * p.q_len + ia.w, h);
        let st = (ba * vec4<u32>(p.heads) + vec4<u32>(h)) * vec4<u32>(p.q_len) + ia;
        let row_lse = vec4<f32>(stats[st.x], stats[st.y], stats[st.z], stats[st.w]);
        let row_delta = vec4<f32>(stats[rows + st.x], stats[rows + st.y], stats[rows + st.z], stats[rows + st.w]);
        var ok = vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u) < vec4<u32>(r_end) & row_lse > vec4<f32>(NO_KEY);
        if (p.causal == 1u) { ok = ok & (ia >= vec4<u32>(j)); }
        var s = vec4<f32>(0.0);
        var dp = vec4<f32>(0.0);
        for (var c = 0u; c < d4; c++) {
            let x = kk[c];
            let y = vv[c];
            s += vec4<f32>(dot(x, q[q0 + c]), dot(x, q[q1 + c]), dot(x, q[q2 + c]), dot(x, q[q3 + c]));
            dp += vec4<f32>(dot(y, d_out[q0 + c]), dot(y, d_out[q1 + c]), dot(y, d_out[q2 + c]), dot(y, d_out[q3 + c]));
        }
        let pr = select(vec4<f32>(0.0), exp(s - row_lse), ok);
        let ds = pr * (dp - row_delta);
        for (var c = 0u; c < d4; c++) {
            dv[c] += pr.x * d_out[q0 + c] + pr.y * d_out[q1 + c] + pr.z * d_out[q2 + c] + pr.w * d_out[q3 + c];
            dk[c] += ds.x * q[q0 + c] + ds.y * q[q1 + c] + ds.z * q[q2 + c] + ds.w * q[q3 + c];
        }
    }
    let ob = split * (p.kv_batch * p.kv_len * p.heads * d4) + kr;
    for (var c = 0u; c < d4; c++) {
        grad_a[ob + c] = dk[c] * p.scale;
        grad_b[ob + c] = dv[c];
    }
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
