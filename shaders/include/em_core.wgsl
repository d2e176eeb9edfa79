// EM Aggregation (docs/DESIGN.md step 8, after EMANet's EM attention unit): the fused element-wise
// and reduction kernels around the loop's matrix products. The products themselves (u mu^T,
// Z^T u, Z mu and their backward counterparts) run on the batched matmul kernel
// (shaders/matmul.wgsl); kernels/src/em.rs records which product feeds which kernel here.
//
// Shapes: u [B,N,C] tokens; mu0 [M,C] the bases, shared over the batch; Z [B,N,M]; mu [B,M,C].
// eps = 1e-6.
//
// Forward, for t = 1..T (mu_{t-1} is the bases when t = 1):
//   matmul:          Z <- u mu_{t-1}^T                         (the raw logits, written into Z)
//   softmax:         Z = softmax over m of (lambda Z), in place
//   tile_colsum:     P[b,tile,m] = sum over the tile's tokens n of Z[b,n,m]  (partial column sums)
//   colsum:          s[b,m] = sum over tiles of P[b,tile,m]  (two passes: WGSL has no float atomics)
//   matmul:          Q[b,sp] = Z[b, split sp]^T u[b, split sp]  [B,S,M,C], S token splits
//   reduce_splits:   mu_raw[b,m,:] = (sum over sp of Q[b,sp,m,:]) / (eps + s[b,m])
//   normalize:       mu_t[b,m,:] = mu_raw[b,m,:] / (eps + ||mu_raw[b,m,:]||_2)
// then R = Z_T mu_T (matmul). softmax4 and tile_colsum4 are the vec4 forms for M % 4 == 0.
// m_step_finish4 does tile_colsum, colsum, reduce_splits and normalize in one pass (M and C
// multiples of 4): the CPU paths' forward, where every pass costs a dispatch and its loads.
// Bases moving average (training, no gradient):
//   bases_update: bases'[m,:] = l2norm(momentum bases[m,:] + (1 - momentum) mean_b mu_T[b,m,:])
//
// Backward, unrolled (gX is dLoss/dX). From the reconstruction (matmuls):
//   gZ_T = gR mu_T^T (+ an incoming gZ_T),   gmu_T = Z_T^T gR (+ an incoming gmu_T)
// then for t = T..1:
//   normalize_backward, with x = mu_raw, r = ||x||, y = x / (eps + r):
//     gx = gy / (eps + r) - x (gy . x) / ((eps + r)^2 r)
//   and the per-basis half of the M-step's division A / (eps + s):
//     gA[m,:] = gx[m,:] / (eps + s_m),   gs[m] = -(gx[m,:] . mu_raw[m,:]) / (eps + s_m)
//   M-step backward (matmuls):  gZ_t[n,m] += u[n,:] . gA[m,:],   gu += Z_t gA
//     and the bias gs[m] of gZ_t, added by softmax_backward (or add_bias for the step launcher)
//   E-step backward:  gS[n,m] = lambda Z[n,m] (g[n,m] - sum_k Z[n,k] g[n,k]),
//                     g = gZ + gs (softmax_backward);
//                     gu += gS mu_{t-1},   gmu_{t-1} = gS^T u   (matmuls)
//
// Bindings: binding 0 is the parameter block; the storage buffers are generic (a, b, c read,
// out and out2 written, out4 a vec4 view) and each entry point says what they hold.
//
// These kernels are shared by em.wgsl (Z read from storage) and em_texture.wgsl (softmax4 and
// tile_colsum4 fetching Z from a texture); each module defines load_z4 (vec4 i of Z).

struct Params {
    batch: u32,         // B
    tokens: u32,        // N
    width: u32,         // C
    bases: u32,         // M (at most 64, checked by the launchers)
    lambda: f32,        // inverse temperature of the E-step softmax
    momentum: f32,      // bases_update's moving-average weight
    flags: u32,         // ACCUMULATE | SCALE_BY_COLSUM | ADD_BIAS
    count: u32,         // copy_prefix: elements to copy
    tiles: u32,         // token tiles per batch in tile_colsum (ceil(N / TILE))
    splits: u32,        // S, token splits of the Z^T X products (reduce_splits)
    z_rows: u32,        // m_step_finish4 in em_texture.wgsl: 1 if Z's texture has a row per token
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
// A vec4 view of Z (softmax4, tile_colsum4: M a multiple of 4).
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;
// Binding 7 is em_texture.wgsl's texture of Z. m_step_finish4 reads Z and the split products
// Q as vec4 (em.wgsl's load_zr4 and load_q4; em_texture.wgsl reads textures instead) and
// writes a third output.
@group(0) @binding(8) var<storage, read> z4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> q4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> out3: array<f32>;

const EPS: f32 = 1e-6;
const TILE: u32 = 256u;         // tokens per partial column sum (tile_colsum)

const ACCUMULATE: u32 = 1u;      // reduce_splits: out = b + (result)
const SCALE_BY_COLSUM: u32 = 2u; // reduce_splits: (result) / (eps + c[b,m])
const ADD_BIAS: u32 = 4u;       // softmax_backward: g = b + c[b,m]

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// ---------------------------------------------------------------------------------------------
// E-step softmax, in place: out = Z [B,N,M], holding the logits u mu^T on entry. One invocation
// per token row. (No workgroup barrier here: on lavapipe one costs more than a second dispatch,
// so the per-tile column sums are their own kernel, tile_colsum.)
@compute @workgroup_size(64)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wid, nwg, lid);
    if (row >= p.batch * p.tokens) { return; }
    let M = p.bases;
    let z = row * M;
    // Numerically safe: the row maximum is subtracted (lambda may be negative).
    var s_max = p.lambda * out[z];
    for (var m = 1u; m < M; m++) {
        s_max = max(s_max, p.lambda * out[z + m]);
    }
    var total = 0.0;
    for (var m = 0u; m < M; m++) {
        let e = exp(p.lambda * out[z + m] - s_max);
        out[z + m] = e;
        total += e;
    }
    let inv = 1.0 / total;
    for (var m = 0u; m < M; m++) {
        out[z + m] = out[z + m] * inv;
    }
}

// The same for M a multiple of 4, with vec4 loads and stores (on lavapipe every load is a
// per-lane scalar loop, so a quarter of the loads is most of the speed). out4 = Z [B,N,M/4];
// load_z4 reads its logits (from out4 itself, or from a texture copy of them in
// em_texture.wgsl). The last pass recomputes each exponential from the logit rather than
// storing it and reading it back: one store per element, the same values.
@compute @workgroup_size(64)
fn softmax4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wid, nwg, lid);
    if (row >= p.batch * p.tokens) { return; }
    let M4 = p.bases / 4u;
    let z = row * M4;
    var v_max = p.lambda * load_z4(z);
    for (var m = 1u; m < M4; m++) {
        v_max = max(v_max, p.lambda * load_z4(z + m));
    }
    let s_max = max(max(v_max.x, v_max.y), max(v_max.z, v_max.w));
    var total = vec4<f32>(0.0);
    for (var m = 0u; m < M4; m++) {
        total += exp(p.lambda * load_z4(z + m) - s_max);
    }
    let inv = 1.0 / (total.x + total.y + total.z + total.w);
    for (var m = 0u; m < M4; m++) {
        out4[z + m] = exp(p.lambda * load_z4(z + m) - s_max) * inv;
    }
}

// Partial column sums of Z per tile of TILE tokens: out2 = P[b,tile,m] = sum over the tile's
// tokens n of Z[b,n,m]. a = Z [B,N,M]. One invocation per (b, tile, m).
@compute @workgroup_size(64)
fn tile_colsum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.batch * p.tiles * p.bases) { return; }
    let m = i % p.bases;
    let tile = (i / p.bases) % p.tiles;
    let batch = i / (p.bases * p.tiles);
    let first = tile * TILE;
    let count = min(TILE, p.tokens - first);
    var sum = 0.0;
    for (var r = 0u; r < count; r++) {
        sum += a[(batch * p.tokens + first + r) * p.bases + m];
    }
    out2[i] = sum;
}

// The same for M a multiple of 4: Z [B,N,M/4] read through load_z4 (out4, or a texture copy
// of Z in em_texture.wgsl); one invocation per (b, tile, 4 bases).
@compute @workgroup_size(64)
fn tile_colsum4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    let M4 = p.bases / 4u;
    if (i >= p.batch * p.tiles * M4) { return; }
    let m4 = i % M4;
    let tile = (i / M4) % p.tiles;
    let batch = i / (M4 * p.tiles);
    let first = tile * TILE;
    let count = min(TILE, p.tokens - first);
    var sum = vec4<f32>(0.0);
    for (var r = 0u; r < count; r++) {
        sum += load_z4((batch * p.tokens + first + r) * M4 + m4);
    }
    let o = (batch * p.tiles + tile) * p.bases + 4u * m4;
    out2[o] = sum.x;
    out2[o + 1u] = sum.y;
    out2[o + 2u] = sum.z;
    out2[o + 3u] = sum.w;
}

// Column sums. a = P [B,tiles,M]; out = s [B,M]. One invocation per (b, m).
@compute @workgroup_size(64)
fn colsum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.batch * p.bases) { return; }
    let batch = i / p.bases;
    let m = i % p.bases;
    var sum = 0.0;
    for (var t = 0u; t < p.tiles; t++) {
        sum += a[(batch * p.tiles + t) * p.bases + m];
    }
    out[i] = sum;
}

// The Z^T X products run split over tokens (S splits of N/S tokens, as a batch of B*S matmuls,
// so that a small [M,C] output still spreads over many workgroups); a = P [B,S,M,C] holds the
// partial products and these kernels sum them.
fn split_sum(batch: u32, mc: u32) -> f32 {
    let MC = p.bases * p.width;
    var v = 0.0;
    for (var sp = 0u; sp < p.splits; sp++) {
        v += a[(batch * p.splits + sp) * MC + mc];
    }
    return v;
}

// out[b,m,c] = (b[b,m,c] if ACCUMULATE) + (sum_s P[b,s,m,c]) (/ (eps + c[b,m]) if SCALE_BY_COLSUM).
// a = P [B,S,M,C], b = accumulator [B,M,C], c = s [B,M]; out [B,M,C]. One invocation per element.
@compute @workgroup_size(64)
fn reduce_splits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    let MC = p.bases * p.width;
    if (i >= p.batch * MC) { return; }
    let batch = i / MC;
    var v = split_sum(batch, i % MC);
    if ((p.flags & SCALE_BY_COLSUM) != 0u) {
        v = v / (EPS + c[i / p.width]);
    }
    if ((p.flags & ACCUMULATE) != 0u) {
        v += b[i];
    }
    out[i] = v;
}

// The end of the M-step in one pass, for M and C multiples of 4: the column sums of Z (tile by
// tile, as tile_colsum and colsum add them), the sum of the S split products divided by
// (eps + s) (reduce_splits) and the L2 normalisation (normalize), with the same additions in
// the same order as those three kernels, so the same values:
//   out[b,m]      = s[b,m] = sum over tiles of (sum over the tile's tokens n of Z[b,n,m])
//   out2[b,m,:]   = mu_raw[b,m,:] = (sum over sp of Q[b,sp,m,:]) / (eps + s[b,m])
//   out3[b,m,:]   = mu[b,m,:] = mu_raw[b,m,:] / (eps + ||mu_raw[b,m,:]||_2)
// load_zr4(n, m4) reads vec4 m4 of Z's token row n (of B*N), load_q4 vec4 i of Q [B,S,M,C/4]
// (storage, or textures in em_texture.wgsl). One invocation per (b, 4 bases), eight per workgroup (B*M/4 is small:
// 16 for the bench shape, so 64 per workgroup would leave all but one CPU thread idle).
// mu_raw is recomputed for its second pass rather than read back (a storage load costs more).
fn finish_row_vec4(batch: u32, m: u32, k4: u32, denom: f32) -> vec4<f32> {
    let C4 = p.width / 4u;
    var v = vec4<f32>(0.0);
    for (var sp = 0u; sp < p.splits; sp++) {
        v += load_q4(((batch * p.splits + sp) * p.bases + m) * C4 + k4);
    }
    return v / denom;
}

@compute @workgroup_size(8)
fn m_step_finish4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 8u + lid;
    let M4 = p.bases / 4u;
    if (i >= p.batch * M4) { return; }
    let batch = i / M4;
    let m4 = i % M4;
    var s = vec4<f32>(0.0);
    for (var tile = 0u; tile < p.tiles; tile++) {
        let first = tile * TILE;
        let count = min(TILE, p.tokens - first);
        var sum = vec4<f32>(0.0);
        for (var r = 0u; r < count; r++) {
            sum += load_zr4(batch * p.tokens + first + r, m4);
        }
        s += sum;
    }
    let C4 = p.width / 4u;
    for (var j = 0u; j < 4u; j++) {
        let m = 4u * m4 + j;
        let row = batch * p.bases + m;
        out[row] = s[j];
        let denom = EPS + s[j];
        var sq = 0.0;
        for (var k4 = 0u; k4 < C4; k4++) {
            let v = finish_row_vec4(batch, m, k4, denom);
            let o = row * p.width + 4u * k4;
            out2[o] = v.x;
            out2[o + 1u] = v.y;
            out2[o + 2u] = v.z;
            out2[o + 3u] = v.w;
            sq += v.x * v.x;
            sq += v.y * v.y;
            sq += v.z * v.z;
            sq += v.w * v.w;
        }
        let inv = 1.0 / (EPS + sqrt(sq));
        for (var k4 = 0u; k4 < C4; k4++) {
            let v = finish_row_vec4(batch, m, k4, denom) * inv;
            let o = row * p.width + 4u * k4;
            out3[o] = v.x;
            out3[o + 1u] = v.y;
            out3[o + 2u] = v.z;
            out3[o + 3u] = v.w;
        }
    }
}

// L2 normalisation over C. a = mu_raw [B,M,C]; out = mu [B,M,C]. One invocation per (b, m).
@compute @workgroup_size(64)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.batch * p.bases) { return; }
    let row = i * p.width;
    var sq = 0.0;
    for (var k = 0u; k < p.width; k++) {
        sq += a[row + k] * a[row + k];
    }
    let inv = 1.0 / (EPS + sqrt(sq));
    for (var k = 0u; k < p.width; k++) {
        out[row + k] = a[row + k] * inv;
    }
}

// Adds a per-basis bias to every token row, in place: out[b,n,m] += c[b,m]. out [B,N,M].
@compute @workgroup_size(64)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.batch * p.tokens * p.bases) { return; }
    let batch = i / (p.tokens * p.bases);
    out[i] = out[i] + c[batch * p.bases + i % p.bases];
}

// out[i] = a[i] for i < count: the first elements of an accumulator that is longer than the
// output it initialises (a whole-buffer copy would not fit).
@compute @workgroup_size(64)
fn copy_prefix(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.count) { return; }
    out[i] = a[i];
}

// Softmax backward of the E-step, with lambda folded in:
//   out[n,m] = lambda Z[n,m] (g[n,m] - sum_k Z[n,k] g[n,k]),  g = gZ (+ c[b,m] if ADD_BIAS)
// a = Z [B,N,M], b = gZ [B,N,M], c = bias [B,M]; out = gS [B,N,M]. One invocation per token.
fn grad_at(row: u32, batch: u32, m: u32) -> f32 {
    var g = b[row * p.bases + m];
    if ((p.flags & ADD_BIAS) != 0u) {
        g += c[batch * p.bases + m];
    }
    return g;
}

@compute @workgroup_size(64)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wid, nwg, lid);
    if (row >= p.batch * p.tokens) { return; }
    let M = p.bases;
    let batch = row / p.tokens;
    var inner = 0.0;
    for (var m = 0u; m < M; m++) {
        inner += a[row * M + m] * grad_at(row, batch, m);
    }
    for (var m = 0u; m < M; m++) {
        out[row * M + m] = p.lambda * a[row * M + m] * (grad_at(row, batch, m) - inner);
    }
}

// Backward of the L2 normalisation and of the M-step's division by (eps + s), per basis row:
// a = mu_raw [B,M,C], b = gmu [B,M,C] (gradient of the normalised mu), c = s [B,M];
// out = gA [B,M,C], out2 = gs [B,M]. One invocation per (b, m).
@compute @workgroup_size(64)
fn normalize_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.batch * p.bases) { return; }
    let row = i * p.width;
    var sq = 0.0;
    var gy_dot_x = 0.0;
    for (var k = 0u; k < p.width; k++) {
        sq += a[row + k] * a[row + k];
        gy_dot_x += b[row + k] * a[row + k];
    }
    let r = sqrt(sq);
    let inv = 1.0 / (EPS + r);
    // x (gy . x) / ((eps + r)^2 r); zero when x = 0 (then y = 0 near x, with slope 1/eps).
    let coef = select(0.0, gy_dot_x * inv * inv / r, r > 0.0);
    let inv_s = 1.0 / (EPS + c[i]);
    var gx_dot_x = 0.0;
    for (var k = 0u; k < p.width; k++) {
        let gx = b[row + k] * inv - a[row + k] * coef;
        gx_dot_x += gx * a[row + k];
        out[row + k] = gx * inv_s;
    }
    // gx . mu_raw with mu_raw = x, so gs = -(gx . x) / (eps + s).
    out2[i] = -gx_dot_x * inv_s;
}

// Bases moving average: a = bases [M,C], b = mu_T [B,M,C]; out = new bases [M,C].
//   v = momentum bases[m,:] + (1 - momentum) mean_b mu_T[b,m,:];   out[m,:] = v / (eps + ||v||)
// One invocation per basis; v is computed twice (once for its norm) rather than read back.
fn moving_average(m: u32, k: u32) -> f32 {
    var total = 0.0;
    for (var bb = 0u; bb < p.batch; bb++) {
        total += b[(bb * p.bases + m) * p.width + k];
    }
    return p.momentum * a[m * p.width + k] + (1.0 - p.momentum) * total / f32(p.batch);
}

@compute @workgroup_size(64)
fn bases_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m = flat_index(wid, nwg, lid);
    if (m >= p.bases) { return; }
    var sq = 0.0;
    for (var k = 0u; k < p.width; k++) {
        let v = moving_average(m, k);
        sq += v * v;
    }
    let inv = 1.0 / (EPS + sqrt(sq));
    for (var k = 0u; k < p.width; k++) {
        out[m * p.width + k] = moving_average(m, k) * inv;
    }
}
