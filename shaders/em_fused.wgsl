// One EM iteration in two passes, for GPUs (the `tiled` kernel path; kernels/src/em.rs,
// `Em::fused_iteration`). The same math as em.wgsl's seven-dispatch iteration (matmul, softmax,
// tile_colsum, colsum, split matmul, reduce_splits, normalize), with Z of a token tile kept in
// workgroup memory between the E-step and the M-step:
//
// e_m_tile, one workgroup per (token tile of T = 32 tokens, batch element b):
//   Z[n,m]          = softmax over m of (lambda u[n,:] . mu[m,:])      (written to Z [B,N,M])
//   S[b,tile,m]     = sum over the tile's tokens n of Z[n,m]            (partial column sums)
//   P[b,tile,m,c]   = sum over the tile's tokens n of Z[n,m] u[n,c]     (partial M-step)
// e_m_reduce, one workgroup per (basis m, batch element b):
//   s[b,m]          = sum over tiles of S[b,tile,m]
//   mu_raw[b,m,c]   = (sum over tiles of P[b,tile,m,c]) / (eps + s[b,m])
//   mu[b,m,c]       = mu_raw[b,m,c] / (eps + ||mu_raw[b,m,:]||_2)
//
// Shapes: u [B,N,C]; mu_in [B,M,C], or the shared bases [M,C] when SHARED_MU is set; M <= 64
// (checked by the launcher). The partial buffer holds P [B,tiles,M,C] followed by
// S [B,tiles,M]. Sums run in a fixed order, so results are deterministic.
//
// Workgroup barriers are cheap on GPUs and costly on lavapipe, which is why the CPU paths keep
// the seven-dispatch iteration; this one is tested there all the same (kernel path override).

struct Params {
    batch: u32,         // B
    tokens: u32,        // N
    width: u32,         // C
    bases: u32,         // M (at most 64)
    lambda: f32,        // inverse temperature of the E-step softmax
    tiles: u32,         // ceil(N / T)
    flags: u32,         // SHARED_MU
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read> mu_in: array<f32>;
// e_m_tile: Z [B,N,M]; e_m_reduce: mu_raw [B,M,C].
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// e_m_tile: the partials P then S (written); e_m_reduce: mu [B,M,C].
@group(0) @binding(4) var<storage, read_write> out2: array<f32>;
// e_m_reduce: the partials (read); e_m_tile: unused (bound to u).
@group(0) @binding(5) var<storage, read> partial: array<f32>;
// e_m_reduce: the column sums s [B,M]; e_m_tile: unused (bound to Z).
@group(0) @binding(6) var<storage, read_write> colsum: array<f32>;

const EPS: f32 = 1e-6;
const T: u32 = 32u;           // tokens per tile
const MAX_M: u32 = 64u;       // row stride of the Z tile
const TILE_WG: u32 = 256u;    // invocations of e_m_tile
const WG: u32 = 64u;          // invocations of e_m_reduce (workgroup_reduce.wgsl)
const SHARED_MU: u32 = 1u;

#include "workgroup_reduce.wgsl"

// Z of the tile's tokens, [T][MAX_M]: 8 KiB, within every adapter's workgroup memory (GL's
// downlevel limit is just under 16 KiB).
var<workgroup> zt: array<f32, 2048>;

@compute @workgroup_size(256)
fn e_m_tile(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y;
    let tile = wid.x;
    let N = p.tokens;
    let C = p.width;
    let M = p.bases;
    let n0 = tile * T;
    let rows = min(T, N - n0);
    let u0 = (b * N + n0) * C;          // first element of the tile's tokens in u
    var mu0 = b * M * C;
    if ((p.flags & SHARED_MU) != 0u) { mu0 = 0u; }
    // Logits: one (token, basis) pair per step; neighbouring invocations share the token row.
    for (var i = lid; i < rows * M; i += TILE_WG) {
        let r = i / M;
        let m = i % M;
        var acc = 0.0;
        for (var c = 0u; c < C; c++) {
            acc = fma(u[u0 + r * C + c], mu_in[mu0 + m * C + c], acc);
        }
        zt[r * MAX_M + m] = p.lambda * acc;
    }
    workgroupBarrier();
    // Softmax over m, one token row per invocation (the row maximum subtracted first).
    if (lid < rows) {
        let z = lid * MAX_M;
        var s_max = zt[z];
        for (var m = 1u; m < M; m++) { s_max = max(s_max, zt[z + m]); }
        var total = 0.0;
        for (var m = 0u; m < M; m++) {
            let e = exp(zt[z + m] - s_max);
            zt[z + m] = e;
            total += e;
        }
        let inv = 1.0 / total;
        let zg = (b * N + n0 + lid) * M;
        for (var m = 0u; m < M; m++) {
            let v = zt[z + m] * inv;
            zt[z + m] = v;
            out[zg + m] = v;
        }
    }
    workgroupBarrier();
    // Partial column sums and the partial M-step product over the tile's tokens.
    let base = (b * p.tiles + tile) * M;
    let s_off = p.batch * p.tiles * M * C;
    if (lid < M) {
        var s = 0.0;
        for (var r = 0u; r < rows; r++) { s += zt[r * MAX_M + lid]; }
        out2[s_off + base + lid] = s;
    }
    for (var i = lid; i < M * C; i += TILE_WG) {
        let m = i / C;
        let c = i % C;
        var acc = 0.0;
        for (var r = 0u; r < rows; r++) {
            acc = fma(zt[r * MAX_M + m], u[u0 + r * C + c], acc);
        }
        out2[base * C + i] = acc;
    }
}

@compute @workgroup_size(64)
fn e_m_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y;
    let m = wid.x;
    let M = p.bases;
    let C = p.width;
    let tiles = p.tiles;
    let s_off = p.batch * tiles * M * C;
    var s = 0.0;
    for (var t = lid; t < tiles; t += WG) {
        s += partial[s_off + (b * tiles + t) * M + m];
    }
    let total = workgroup_sum(s, lid);
    let inv = 1.0 / (EPS + total);
    let row = (b * M + m) * C;
    var sq = 0.0;
    for (var c = lid; c < C; c += WG) {
        var acc = 0.0;
        for (var t = 0u; t < tiles; t++) {
            acc += partial[((b * tiles + t) * M + m) * C + c];
        }
        let v = acc * inv;
        out[row + c] = v;
        sq += v * v;
    }
    let norm = sqrt(workgroup_sum(sq, lid));
    let scale = 1.0 / (EPS + norm);
    for (var c = lid; c < C; c += WG) {
        out2[row + c] = out[row + c] * scale;
    }
    if (lid == 0u) {
        colsum[b * M + m] = total;
    }
}
