// L2 normalization over the last axis of [rows, cols], forward and backward, in the two forms
// the model uses (mode 0 and 1).
//
// Math, per row (j over the row), n = ||x||_2 = sqrt(sum_j x[j]^2), saved per row:
//   mode 0 (add eps, the EM M-step):     d = eps + n
//   mode 1 (clamp min, the mask head):   d = max(n, eps)
//   forward:   y[j] = x[j] / d
//   backward:  dx[j] = dy[j] / d - x[j] * (sum_k x[k] dy[k]) / (d^2 n)   while d depends on n,
//              dx[j] = dy[j] / d                                           otherwise:
//              mode 0 at n = 0 (the norm's subgradient 0), mode 1 when n < eps (clamped).
//
// Two schedules of the same math (the launcher picks one per adapter):
//   *_rows:       one invocation per row, 64 rows per workgroup, no barriers (CPU adapters);
//   *_workgroup:  one 256-invocation workgroup per row, tree reductions in workgroup memory.
//
// Bindings: forward [x, unused, y, norms]; backward [x, dy, dx, norms]. `norms` and
// `saved_norms` share binding 4 and are never used by the same entry point.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    mode: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> norms: array<f32>;
@group(0) @binding(4) var<storage, read> saved_norms: array<f32>;

const WG: u32 = 256u; // workgroup size of the row-per-workgroup entry points
#include "workgroup_reduce.wgsl"

fn denominator(n: f32) -> f32 {
    return select(max(n, p.eps), p.eps + n, p.mode == 0u);
}

// The factor c of dx = dy / d - c * x, given the norm n and dot = sum x dy.
fn norm_factor(n: f32, dot: f32) -> f32 {
    let d = denominator(n);
    let through_norm = select(n >= p.eps, n > 0.0, p.mode == 0u) && n > 0.0;
    return select(0.0, dot / (d * d * n), through_norm);
}

@compute @workgroup_size(64)
fn forward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var ss = 0.0;
    for (var j = 0u; j < p.cols; j++) { let v = x[base + j]; ss += v * v; }
    let n = sqrt(ss);
    let inv = 1.0 / denominator(n);
    for (var j = 0u; j < p.cols; j++) { out[base + j] = x[base + j] * inv; }
    norms[row] = n;
}

@compute @workgroup_size(256)
fn forward_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var ss = 0.0;
    for (var j = lid; j < p.cols; j += WG) { let v = x[base + j]; ss += v * v; }
    let n = sqrt(workgroup_sum(ss, lid));
    let inv = 1.0 / denominator(n);
    for (var j = lid; j < p.cols; j += WG) { out[base + j] = x[base + j] * inv; }
    if (lid == 0u) { norms[row] = n; }
}

@compute @workgroup_size(64)
fn backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = saved_norms[row];
    var dot = 0.0;
    for (var j = 0u; j < p.cols; j++) { dot += x[base + j] * dy[base + j]; }
    let inv = 1.0 / denominator(n);
    let c = norm_factor(n, dot);
    for (var j = 0u; j < p.cols; j++) { out[base + j] = dy[base + j] * inv - c * x[base + j]; }
}

@compute @workgroup_size(256)
fn backward_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = saved_norms[row];
    var dot = 0.0;
    for (var j = lid; j < p.cols; j += WG) { dot += x[base + j] * dy[base + j]; }
    dot = workgroup_sum(dot, lid);
    let inv = 1.0 / denominator(n);
    let c = norm_factor(n, dot);
    for (var j = lid; j < p.cols; j += WG) { out[base + j] = dy[base + j] * inv - c * x[base + j]; }
}
