// Softmax over the last axis of [rows, cols], forward and backward.
//
// Math, per row r (j over the row's cols):
//   forward:   m = max_j x[j];  e[j] = exp(x[j] - m);  y[j] = e[j] / sum_j e[j]
//              (subtracting the row max keeps exp from overflowing; the result is unchanged)
//   backward:  dx[j] = y[j] * (dy[j] - sum_k dy[k] y[k])
//              (the Jacobian dy_j/dx_k = y_j (delta_jk - y_k) applied to dy)
//
// Two schedules of the same math (the launcher picks one per adapter):
//   *_rows:       one invocation per row, 64 rows per workgroup, no barriers (CPU adapters);
//   *_workgroup:  one 256-invocation workgroup per row, strided loops and a tree reduction in
//                 workgroup memory (GPUs, and few long rows).
// Workgroups are folded over x and y so that more than 65535 of them fit.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;          // x (forward) or y (backward)
@group(0) @binding(2) var<storage, read> dy: array<f32>;         // backward only
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // y (forward) or dx (backward)

const WG: u32 = 256u; // workgroup size of the row-per-workgroup entry points
#include "workgroup_reduce.wgsl"

@compute @workgroup_size(64)
fn forward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let end = base + p.cols;
    var m = a[base];
    for (var i = base + 1u; i < end; i++) { m = max(m, a[i]); }
    var s = 0.0;
    for (var i = base; i < end; i++) { s += exp(a[i] - m); }
    let inv = 1.0 / s;
    for (var i = base; i < end; i++) { out[i] = exp(a[i] - m) * inv; }
}

@compute @workgroup_size(256)
fn forward_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var m = -3.402823e38;
    for (var j = lid; j < p.cols; j += WG) { m = max(m, a[base + j]); }
    m = workgroup_max(m, lid);
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let e = exp(a[base + j] - m);
        out[base + j] = e;
        s += e;
    }
    let inv = 1.0 / workgroup_sum(s, lid);
    // Each invocation rescales the elements it wrote itself: no barrier needed.
    for (var j = lid; j < p.cols; j += WG) { out[base + j] *= inv; }
}

@compute @workgroup_size(64)
fn backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let end = base + p.cols;
    var d = 0.0;
    for (var i = base; i < end; i++) { d += dy[i] * a[i]; }
    for (var i = base; i < end; i++) { out[i] = a[i] * (dy[i] - d); }
}

@compute @workgroup_size(256)
fn backward_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var d = 0.0;
    for (var j = lid; j < p.cols; j += WG) { d += dy[base + j] * a[base + j]; }
    d = workgroup_sum(d, lid);
    for (var j = lid; j < p.cols; j += WG) { out[base + j] = a[base + j] * (dy[base + j] - d); }
}
