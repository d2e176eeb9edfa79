// EM Aggregation (DESIGN.md step 8, after EMANet's EM attention unit): forward and backward.
//
// Shapes: u [B,N,C] tokens; mu0 [M,C] the bases, shared over the batch; Z [B,N,M]; mu [B,M,C].
// eps = 1e-6.
//
// Forward, for t = 1..T (mu_{t-1} is the bases when t = 1):
//   e_step:      S = lambda u mu_{t-1}^T;   Z = softmax over m of S;
//                P[b,tile,m] = sum over the tile's tokens n of Z[b,n,m]   (partial column sums)
//   colsum:      s[b,m] = sum over tiles of P[b,tile,m]      (two passes: WGSL has no float atomics)
//   m_step:      mu_raw[b,m,:] = (sum_n Z[b,n,m] u[b,n,:]) / (eps + s[b,m])
//   normalize:   mu_t[b,m,:] = mu_raw[b,m,:] / (eps + ||mu_raw[b,m,:]||_2)
// then
//   reconstruct: R[b,n,:] = sum_m Z_T[b,n,m] mu_T[b,m,:]
// Bases moving average (training, no gradient):
//   bases_update: bases'[m,:] = l2norm(momentum bases[m,:] + (1 - momentum) mean_b mu_T[b,m,:])
//
// Backward, unrolled (gX is dLoss/dX). From the reconstruction:
//   gZ_T  = gR mu_T^T  (+ an incoming gZ_T)              token_dots
//   gmu_T = Z_T^T gR   (+ an incoming gmu_T)             m_step without the 1/(eps+s) scale
// then for t = T..1:
//   normalize_backward, with x = mu_raw, r = ||x||, y = x / (eps + r):
//     gx = gy / (eps + r) - x (gy . x) / ((eps + r)^2 r)
//   and the per-basis half of the M-step's division A / (eps + s) (A = Z^T u):
//     gA[m,:] = gx[m,:] / (eps + s_m),   gs[m] = -(gx[m,:] . mu_raw[m,:]) / (eps + s_m)
//   M-step backward:  gZ_t[n,m] += u[n,:] . gA[m,:] + gs[m]     token_dots with a bias
//                     gu[n,:]   += sum_m Z_t[n,m] gA[m,:]         reconstruct, accumulating
//   E-step backward:  gS[n,m]    = lambda Z[n,m] (gZ[n,m] - sum_k Z[n,k] gZ[n,k])   softmax_backward
//                     gu[n,:]   += sum_m gS[n,m] mu_{t-1}[m,:]    reconstruct, accumulating
//                     gmu_{t-1}[m,:] = sum_n gS[n,m] u[n,:]       m_step without scale
//
// Layout of the work: the three products are register-blocked, without shared memory (on
// lavapipe barriers cost more than they save, NOTES.md): each invocation computes a small tile
// of outputs and loads each operand value once per tile, not once per output.
//   e_step, token_dots:  4 tokens x 4 bases per pass over C (16 FMAs per 8 loads)
//   m_step:              4 bases x 8 channels per token      (32 FMAs per 12 loads)
//   reconstruct:         4 tokens x 8 channels per basis     (32 FMAs per 12 loads)
// Tile rows past the end are clamped to the last row and their results discarded.
//
// Bindings: binding 0 is the parameter block; the storage buffers are generic (a, b, c, d
// read, out and out2 written) and each entry point says what they hold.

struct Params {
    batch: u32,         // B
    tokens: u32,        // N
    width: u32,         // C
    bases: u32,         // M (at most MAX_BASES)
    lambda: f32,        // inverse temperature of the E-step softmax
    momentum: f32,      // bases_update's moving-average weight
    flags: u32,         // ACCUMULATE | SCALE_BY_COLSUM | ADD_BIAS
    shared_stride: u32, // elements between batches of the [M,C] operand: M*C, or 0 for the shared bases
    tiles: u32,         // token tiles per batch in e_step (ceil(N / TILE))
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read> d: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;

const EPS: f32 = 1e-6;
const TOKENS_PER_INVOCATION: u32 = 4u;
const TILE: u32 = 256u;         // tokens per e_step workgroup (64 x 4; one partial column sum each)
const MAX_BASES: u32 = 64u;     // a column sum per lane of the e_step workgroup

const ACCUMULATE: u32 = 1u;      // out = d + (result)
const SCALE_BY_COLSUM: u32 = 2u; // m_step: result / (eps + c[b,m])
const ADD_BIAS: u32 = 4u;        // token_dots: result + c[b,m]

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// Four row indices starting at `first`, clamped to `count - 1`.
fn four(first: u32, count: u32) -> vec4<u32> {
    let last = count - 1u;
    return vec4<u32>(min(first, last), min(first + 1u, last), min(first + 2u, last), min(first + 3u, last));
}

// The 4 x 4 tile of dot products over C between token rows xs of `a` (element offsets) and
// basis rows ys of `b`: result[i][j] = a[xs[i] ..] . b[ys[j] ..].
fn dots_4x4(xs: vec4<u32>, ys: vec4<u32>) -> mat4x4<f32> {
    var t0 = vec4<f32>(0.0);
    var t1 = vec4<f32>(0.0);
    var t2 = vec4<f32>(0.0);
    var t3 = vec4<f32>(0.0);
    for (var k = 0u; k < p.width; k++) {
        let y = vec4<f32>(b[ys.x + k], b[ys.y + k], b[ys.z + k], b[ys.w + k]);
        t0 += a[xs.x + k] * y;
        t1 += a[xs.y + k] * y;
        t2 += a[xs.z + k] * y;
        t3 += a[xs.w + k] * y;
    }
    return mat4x4<f32>(t0, t1, t2, t3);
}

// ---------------------------------------------------------------------------------------------
// E-step. a = u [B,N,C], b = mu_{t-1} [B or 1, M, C]; out = Z [B,N,M], out2 = P [B,tiles,M].
// Grid: (tiles, B) workgroups of 64 invocations, 4 tokens each. The logits are written to Z
// first, then each invocation turns its own rows into softmax rows in place.
@compute @workgroup_size(64)
fn e_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let batch = wid.y;
    let tile = wid.x;
    let n0 = tile * TILE + lid * TOKENS_PER_INVOCATION;
    let M = p.bases;
    if (n0 < p.tokens) {
        let rows = batch * p.tokens + four(n0, p.tokens);
        let mu_base = batch * p.shared_stride;
        // Logits S[n,m] = lambda u[n,:] . mu[m,:], 4 tokens x 4 bases at a time.
        for (var m0 = 0u; m0 < M; m0 += 4u) {
            let s = p.lambda * dots_4x4(rows * p.width, mu_base + four(m0, M) * p.width);
            for (var i = 0u; i < TOKENS_PER_INVOCATION && n0 + i < p.tokens; i++) {
                for (var j = 0u; j < 4u && m0 + j < M; j++) {
                    out[rows[i] * M + m0 + j] = s[i][j];
                }
            }
        }
        // Softmax over m of each row, numerically safe (max subtracted).
        for (var i = 0u; i < TOKENS_PER_INVOCATION && n0 + i < p.tokens; i++) {
            let z = rows[i] * M;
            var s_max = out[z];
            for (var m = 1u; m < M; m++) {
                s_max = max(s_max, out[z + m]);
            }
            var total = 0.0;
            for (var m = 0u; m < M; m++) {
                let e = exp(out[z + m] - s_max);
                out[z + m] = e;
                total += e;
            }
            let inv = 1.0 / total;
            for (var m = 0u; m < M; m++) {
                out[z + m] = out[z + m] * inv;
            }
        }
    }
    // Partial column sums of this tile: lane m sums column m of the Z rows just written.
    storageBarrier();
    if (lid < M) {
        let first = tile * TILE;
        let count = min(TILE, p.tokens - first);
        var sum = 0.0;
        for (var r = 0u; r < count; r++) {
            sum += out[(batch * p.tokens + first + r) * M + lid];
        }
        out2[(batch * p.tiles + tile) * M + lid] = sum;
    }
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

// M-step product (also the transposed products of the backward):
//   out[b,m,:] = (d[b,m,:] if ACCUMULATE) + (sum_n a[b,n,m] b[b,n,:]) (/ (eps + c[b,m]) if SCALE_BY_COLSUM)
// a = Z [B,N,M], b = X [B,N,C], c = s [B,M], d = accumulator [B,M,C]; out [B,M,C].
// One invocation per (b, 4 bases, 8 channels), channels fastest.
@compute @workgroup_size(64)
fn m_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    let C = p.width;
    let M = p.bases;
    let c_blocks = (C + 7u) / 8u;
    let m_blocks = (M + 3u) / 4u;
    if (i >= p.batch * m_blocks * c_blocks) { return; }
    let c0 = (i % c_blocks) * 8u;
    let m0 = ((i / c_blocks) % m_blocks) * 4u;
    let batch = i / (c_blocks * m_blocks);
    let ms = four(m0, M);
    let ca = four(c0, C);
    let cb = four(c0 + 4u, C);
    // acc[2j] holds channels c0..c0+3 of basis m0+j, acc[2j+1] channels c0+4..c0+7.
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0); var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0); var acc7 = vec4<f32>(0.0);
    for (var n = 0u; n < p.tokens; n++) {
        let zr = (batch * p.tokens + n) * M;
        let xr = (batch * p.tokens + n) * C;
        let z = vec4<f32>(a[zr + ms.x], a[zr + ms.y], a[zr + ms.z], a[zr + ms.w]);
        let xa = vec4<f32>(b[xr + ca.x], b[xr + ca.y], b[xr + ca.z], b[xr + ca.w]);
        let xb = vec4<f32>(b[xr + cb.x], b[xr + cb.y], b[xr + cb.z], b[xr + cb.w]);
        acc0 += z.x * xa; acc1 += z.x * xb;
        acc2 += z.y * xa; acc3 += z.y * xb;
        acc4 += z.z * xa; acc5 += z.z * xb;
        acc6 += z.w * xa; acc7 += z.w * xb;
    }
    let tile = array<vec4<f32>, 8>(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7);
    for (var j = 0u; j < 4u && m0 + j < M; j++) {
        let m = m0 + j;
        var scale = 1.0;
        if ((p.flags & SCALE_BY_COLSUM) != 0u) {
            scale = 1.0 / (EPS + c[batch * M + m]);
        }
        for (var k = 0u; k < 8u && c0 + k < C; k++) {
            let o = (batch * M + m) * C + c0 + k;
            var v = tile[2u * j + k / 4u][k % 4u] * scale;
            if ((p.flags & ACCUMULATE) != 0u) {
                v += d[o];
            }
            out[o] = v;
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

// Reconstruction (also the accumulations into gu in the backward):
//   out[b,n,:] = (d[b,n,:] if ACCUMULATE) + sum_m a[b,n,m] b[b or shared,m,:]
// a = Z [B,N,M], b = mu [B or 1, M, C] (batch stride shared_stride), d = accumulator [B,N,C];
// out [B,N,C]. One invocation per (b, 4 tokens, 8 channels), channels fastest.
@compute @workgroup_size(64)
fn reconstruct(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    let C = p.width;
    let M = p.bases;
    let N = p.tokens;
    let c_blocks = (C + 7u) / 8u;
    let n_blocks = (N + 3u) / 4u;
    if (i >= p.batch * n_blocks * c_blocks) { return; }
    let c0 = (i % c_blocks) * 8u;
    let n0 = ((i / c_blocks) % n_blocks) * 4u;
    let batch = i / (c_blocks * n_blocks);
    let zs = (batch * N + four(n0, N)) * M;
    let ca = four(c0, C);
    let cb = four(c0 + 4u, C);
    let mu_base = batch * p.shared_stride;
    // acc[2i] holds channels c0..c0+3 of token n0+i, acc[2i+1] channels c0+4..c0+7.
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0); var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0); var acc7 = vec4<f32>(0.0);
    for (var m = 0u; m < M; m++) {
        let xr = mu_base + m * C;
        let z = vec4<f32>(a[zs.x + m], a[zs.y + m], a[zs.z + m], a[zs.w + m]);
        let xa = vec4<f32>(b[xr + ca.x], b[xr + ca.y], b[xr + ca.z], b[xr + ca.w]);
        let xb = vec4<f32>(b[xr + cb.x], b[xr + cb.y], b[xr + cb.z], b[xr + cb.w]);
        acc0 += z.x * xa; acc1 += z.x * xb;
        acc2 += z.y * xa; acc3 += z.y * xb;
        acc4 += z.z * xa; acc5 += z.z * xb;
        acc6 += z.w * xa; acc7 += z.w * xb;
    }
    let tile = array<vec4<f32>, 8>(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7);
    for (var r = 0u; r < 4u && n0 + r < N; r++) {
        for (var k = 0u; k < 8u && c0 + k < C; k++) {
            let o = (batch * N + n0 + r) * C + c0 + k;
            var v = tile[2u * r + k / 4u][k % 4u];
            if ((p.flags & ACCUMULATE) != 0u) {
                v += d[o];
            }
            out[o] = v;
        }
    }
}

// Products of token rows with basis rows, for the backward:
//   out[b,n,m] = (d[b,n,m] if ACCUMULATE) + a[b,n,:] . b[b or shared,m,:] (+ c[b,m] if ADD_BIAS)
// a = X [B,N,C], b = Y [B or 1, M, C], c = bias [B,M], d = accumulator [B,N,M]; out [B,N,M].
// One invocation per (b, 4 tokens); 4 bases per pass over C.
@compute @workgroup_size(64)
fn token_dots(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    let N = p.tokens;
    let M = p.bases;
    let n_blocks = (N + 3u) / 4u;
    if (i >= p.batch * n_blocks) { return; }
    let batch = i / n_blocks;
    let n0 = (i % n_blocks) * 4u;
    let rows = batch * N + four(n0, N);
    let y_base = batch * p.shared_stride;
    for (var m0 = 0u; m0 < M; m0 += 4u) {
        let s = dots_4x4(rows * p.width, y_base + four(m0, M) * p.width);
        for (var r = 0u; r < 4u && n0 + r < N; r++) {
            for (var j = 0u; j < 4u && m0 + j < M; j++) {
                let m = m0 + j;
                let o = rows[r] * M + m;
                var v = s[r][j];
                if ((p.flags & ADD_BIAS) != 0u) {
                    v += c[batch * M + m];
                }
                if ((p.flags & ACCUMULATE) != 0u) {
                    v += d[o];
                }
                out[o] = v;
            }
        }
    }
}

// Softmax backward of the E-step, with lambda folded in:
//   out[n,m] = lambda Z[n,m] (gZ[n,m] - sum_k Z[n,k] gZ[n,k])
// a = Z [B,N,M], b = gZ [B,N,M]; out = gS [B,N,M]. One invocation per token.
@compute @workgroup_size(64)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wid, nwg, lid);
    if (row >= p.batch * p.tokens) { return; }
    let M = p.bases;
    var inner = 0.0;
    for (var m = 0u; m < M; m++) {
        inner += a[row * M + m] * b[row * M + m];
    }
    for (var m = 0u; m < M; m++) {
        out[row * M + m] = p.lambda * a[row * M + m] * (b[row * M + m] - inner);
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
