// LayerNorm over the last axis of [rows, cols], forward and backward: the kernels of
// layer_norm.wgsl (rows read from storage) and layer_norm_texture.wgsl (the rows4 kernels'
// rows and parameters fetched from textures). Those modules define load_x4, load_dy4 and
// load_dx_in4 (vec4 i of x, dy and dx_in) and load_weight4 and load_bias4 (vec4 j of weight and
// bias), the only thing they do differently.
//
// Math, per row r (N = cols, j over the row):
//   forward:   mean = sum_j x[j] / N;  var = sum_j (x[j] - mean)^2 / N   (two passes, biased;
//              both passes work on x - x[0], so a row far from zero, e.g. 1000 +- 0.1, keeps
//              its digits: the shift is exact for nearby values and the sums stay small)
//              rstd = 1 / sqrt(var + eps);  xhat[j] = (x[j] - mean) * rstd
//              y[j] = xhat[j] * weight[j] + bias[j];   mean and rstd are saved per row
//   backward:  g[j] = dy[j] * weight[j]
//              dx[j] = rstd * (g[j] - sum_k g[k] / N - xhat[j] * sum_k g[k] xhat[k] / N)
//              dweight[j] = sum_r dy[r, j] xhat[r, j];   dbias[j] = sum_r dy[r, j]
//   backward with accumulate: dx[j] = dx_in[j] + (the above), where dx_in is the gradient that
//              already reached x by another path (the residual stream of a pre-norm block),
//              so the sum of the two costs no separate pass.
//
// Row kernels (forward, dx) come in two schedules, picked per adapter by the launcher:
//   *_rows:       one invocation per row, 64 rows per workgroup, no barriers (CPU adapters);
//   *_workgroup:  one 256-invocation workgroup per row, tree reductions in workgroup memory.
//   *_rows4:      the row schedule by vec4 (cols a multiple of 4): four neighbouring columns per
//                 access, since on lavapipe every storage access with a per-lane address is a
//                 loop over the SIMD lanes and one vec4 costs about what one float does; and
//                 four rows per invocation, so that each weight/bias vec4 serves four rows.
// dweight/dbias reduce over rows deterministically: `backward_params` sums a chunk of rows per
// (chunk, column) invocation into partials, `backward_params_finish` adds the chunks per
// column (skipped when there is one chunk: the first pass then writes dweight/dbias).
//
// Bindings: forward [x, weight, bias, out, mean, rstd]; backward [x, weight, dy, dx, mean,
// rstd, dx_in]; backward_params [x, dweight, dy, dbias, mean, rstd]; finish [partial_dweight,
// dweight, partial_dbias, dbias]. Globals sharing a binding number are never used by the same
// entry point.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    chunk: u32,   // rows per chunk (backward_params)
    chunks: u32,  // number of row chunks (backward_params)
    n: u32,       // invocations of backward_params: chunks * cols
    accumulate: u32, // backward: 1 adds dx_in to dx
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;
// Backward views of the same slots.
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read> saved_mean: array<f32>;
@group(0) @binding(6) var<storage, read> saved_rstd: array<f32>;
@group(0) @binding(2) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(4) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(7) var<storage, read> dx_in: array<f32>;
// backward_params_finish: partials in, sums out.
@group(0) @binding(1) var<storage, read> partial_dweight: array<f32>;
@group(0) @binding(3) var<storage, read> partial_dbias: array<f32>;

// vec4 views of the same slots (the *4 entry points).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weight4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> dx_in4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dweight4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dbias4: array<vec4<f32>>;

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

const WG: u32 = 256u; // workgroup size of the row-per-workgroup entry points

@compute @workgroup_size(64)
fn forward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = f32(p.cols);
    let shift = x[base];
    var s = 0.0;
    for (var j = 0u; j < p.cols; j++) { s += x[base + j] - shift; }
    let m = s / n; // mean - shift
    var v = 0.0;
    for (var j = 0u; j < p.cols; j++) { let d = (x[base + j] - shift) - m; v += d * d; }
    let rstd = inverseSqrt(v / n + p.eps);
    for (var j = 0u; j < p.cols; j++) {
        out[base + j] = ((x[base + j] - shift) - m) * rstd * weight[j] + bias[j];
    }
    mean_out[row] = shift + m;
    rstd_out[row] = rstd;
}

@compute @workgroup_size(256)
fn forward_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = f32(p.cols);
    let shift = x[base];
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) { s += x[base + j] - shift; }
    let m = workgroup_sum(s, lid) / n; // mean - shift
    var v = 0.0;
    for (var j = lid; j < p.cols; j += WG) { let d = (x[base + j] - shift) - m; v += d * d; }
    let rstd = inverseSqrt(workgroup_sum(v, lid) / n + p.eps);
    for (var j = lid; j < p.cols; j += WG) {
        out[base + j] = ((x[base + j] - shift) - m) * rstd * weight[j] + bias[j];
    }
    if (lid == 0u) {
        mean_out[row] = shift + m;
        rstd_out[row] = rstd;
    }
}

@compute @workgroup_size(64)
fn backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let mean = saved_mean[row];
    let rstd = saved_rstd[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        let g = dy[base + j] * weight[j];
        sg += g;
        sgx += g * (x[base + j] - mean) * rstd;
    }
    let inv_n = 1.0 / f32(p.cols);
    sg *= inv_n;
    sgx *= inv_n;
    for (var j = 0u; j < p.cols; j++) {
        let xhat = (x[base + j] - mean) * rstd;
        let earlier = select(0.0, dx_in[base + j], p.accumulate != 0u);
        out[base + j] = earlier + rstd * (dy[base + j] * weight[j] - sg - xhat * sgx);
    }
}

@compute @workgroup_size(256)
fn backward_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let mean = saved_mean[row];
    let rstd = saved_rstd[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let g = dy[base + j] * weight[j];
        sg += g;
        sgx += g * (x[base + j] - mean) * rstd;
    }
    let inv_n = 1.0 / f32(p.cols);
    sg = workgroup_sum(sg, lid) * inv_n;
    sgx = workgroup_sum(sgx, lid) * inv_n;
    for (var j = lid; j < p.cols; j += WG) {
        let xhat = (x[base + j] - mean) * rstd;
        let earlier = select(0.0, dx_in[base + j], p.accumulate != 0u);
        out[base + j] = earlier + rstd * (dy[base + j] * weight[j] - sg - xhat * sgx);
    }
}

// The rows4 kernels take four consecutive rows per invocation (rows past the end are clamped
// to the last row: computed, not stored). A column's weight (and bias) vec4 is the same for
// every row and lane; loaded once for four rows it costs a quarter of the loads it did at one
// row per invocation (on lavapipe every storage load is a loop over the SIMD lanes, even when
// all lanes read one address). Each row's arithmetic is the same as in forward_rows.

// The four rows of this invocation (clamped), and which of them exist.
struct Rows4 {
    row: vec4<u32>,
    live: vec4<bool>,
}

fn rows4(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Rows4 {
    let first = vec4<u32>(((wid.x + wid.y * nwg.x) * 64u + lid) * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    return Rows4(min(first, vec4<u32>(p.rows - 1u)), first < vec4<u32>(p.rows));
}

fn hsum4(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(hsum(a), hsum(b), hsum(c), hsum(d));
}

@compute @workgroup_size(64)
fn forward_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = rows4(wid, nwg, lid);
    if (!r.live.x) { return; }
    let c4 = p.cols / 4u;
    let base = r.row * c4;
    let n = f32(p.cols);
    let shift = vec4<f32>(load_x4(base.x).x, load_x4(base.y).x, load_x4(base.z).x, load_x4(base.w).x);
    var s0 = vec4<f32>(0.0); var s1 = vec4<f32>(0.0); var s2 = vec4<f32>(0.0); var s3 = vec4<f32>(0.0);
    for (var j = 0u; j < c4; j++) {
        s0 += load_x4(base.x + j) - shift.x; s1 += load_x4(base.y + j) - shift.y;
        s2 += load_x4(base.z + j) - shift.z; s3 += load_x4(base.w + j) - shift.w;
    }
    let m = hsum4(s0, s1, s2, s3) / n; // mean - shift, per row
    var v0 = vec4<f32>(0.0); var v1 = vec4<f32>(0.0); var v2 = vec4<f32>(0.0); var v3 = vec4<f32>(0.0);
    for (var j = 0u; j < c4; j++) {
        let d0 = (load_x4(base.x + j) - shift.x) - m.x; v0 += d0 * d0;
        let d1 = (load_x4(base.y + j) - shift.y) - m.y; v1 += d1 * d1;
        let d2 = (load_x4(base.z + j) - shift.z) - m.z; v2 += d2 * d2;
        let d3 = (load_x4(base.w + j) - shift.w) - m.w; v3 += d3 * d3;
    }
    let rstd = inverseSqrt(hsum4(v0, v1, v2, v3) / n + vec4<f32>(p.eps));
    for (var j = 0u; j < c4; j++) {
        let w = load_weight4(j);
        let b = load_bias4(j);
        out4[base.x + j] = ((load_x4(base.x + j) - shift.x) - m.x) * rstd.x * w + b;
        if (r.live.y) { out4[base.y + j] = ((load_x4(base.y + j) - shift.y) - m.y) * rstd.y * w + b; }
        if (r.live.z) { out4[base.z + j] = ((load_x4(base.z + j) - shift.z) - m.z) * rstd.z * w + b; }
        if (r.live.w) { out4[base.w + j] = ((load_x4(base.w + j) - shift.w) - m.w) * rstd.w * w + b; }
    }
    let mean = shift + m;
    mean_out[r.row.x] = mean.x; rstd_out[r.row.x] = rstd.x;
    if (r.live.y) { mean_out[r.row.y] = mean.y; rstd_out[r.row.y] = rstd.y; }
    if (r.live.z) { mean_out[r.row.z] = mean.z; rstd_out[r.row.z] = rstd.z; }
    if (r.live.w) { mean_out[r.row.w] = mean.w; rstd_out[r.row.w] = rstd.w; }
}

// dx of one vec4 (at o, weight w) of a row with saved mean and rstd and its sums mg, mgx.
fn dx4(o: u32, w: vec4<f32>, mean: f32, rstd: f32, mg: f32, mgx: f32) -> vec4<f32> {
    let xhat = (load_x4(o) - mean) * rstd;
    let earlier = select(vec4<f32>(0.0), load_dx_in4(o), p.accumulate != 0u);
    return earlier + rstd * (load_dy4(o) * w - mg - xhat * mgx);
}

@compute @workgroup_size(64)
fn backward_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = rows4(wid, nwg, lid);
    if (!r.live.x) { return; }
    let c4 = p.cols / 4u;
    let base = r.row * c4;
    let mean = vec4<f32>(saved_mean[r.row.x], saved_mean[r.row.y], saved_mean[r.row.z], saved_mean[r.row.w]);
    let rstd = vec4<f32>(saved_rstd[r.row.x], saved_rstd[r.row.y], saved_rstd[r.row.z], saved_rstd[r.row.w]);
    var sg0 = vec4<f32>(0.0); var sg1 = vec4<f32>(0.0); var sg2 = vec4<f32>(0.0); var sg3 = vec4<f32>(0.0);
    var sx0 = vec4<f32>(0.0); var sx1 = vec4<f32>(0.0); var sx2 = vec4<f32>(0.0); var sx3 = vec4<f32>(0.0);
    for (var j = 0u; j < c4; j++) {
        let w = load_weight4(j);
        let g0 = load_dy4(base.x + j) * w; sg0 += g0; sx0 += g0 * (load_x4(base.x + j) - mean.x) * rstd.x;
        let g1 = load_dy4(base.y + j) * w; sg1 += g1; sx1 += g1 * (load_x4(base.y + j) - mean.y) * rstd.y;
        let g2 = load_dy4(base.z + j) * w; sg2 += g2; sx2 += g2 * (load_x4(base.z + j) - mean.z) * rstd.z;
        let g3 = load_dy4(base.w + j) * w; sg3 += g3; sx3 += g3 * (load_x4(base.w + j) - mean.w) * rstd.w;
    }
    let inv_n = 1.0 / f32(p.cols);
    let mg = hsum4(sg0, sg1, sg2, sg3) * inv_n;
    let mgx = hsum4(sx0, sx1, sx2, sx3) * inv_n;
    for (var j = 0u; j < c4; j++) {
        let w = load_weight4(j);
        out4[base.x + j] = dx4(base.x + j, w, mean.x, rstd.x, mg.x, mgx.x);
        if (r.live.y) { out4[base.y + j] = dx4(base.y + j, w, mean.y, rstd.y, mg.y, mgx.y); }
        if (r.live.z) { out4[base.z + j] = dx4(base.z + j, w, mean.z, rstd.z, mg.z, mgx.z); }
        if (r.live.w) { out4[base.w + j] = dx4(base.w + j, w, mean.w, rstd.w, mg.w, mgx.w); }
    }
}

// backward_params by vec4: one invocation per (chunk, four columns); p.n counts those.
@compute @workgroup_size(256)
fn backward_params4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (g >= p.n) { return; }
    let c4 = p.cols / 4u;
    let col = g % c4;
    let start = (g / c4) * p.chunk;
    let end = min(start + p.chunk, p.rows);
    var dw = vec4<f32>(0.0);
    var db = vec4<f32>(0.0);
    for (var r = start; r < end; r++) {
        let d = load_dy4(r * c4 + col);
        dw += d * (load_x4(r * c4 + col) - saved_mean[r]) * saved_rstd[r];
        db += d;
    }
    dweight4[g] = dw;
    dbias4[g] = db;
}

// One invocation per (chunk, column), column fastest: sums dy * xhat and dy over the chunk's rows.
@compute @workgroup_size(256)
fn backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (g >= p.n) { return; }
    let col = g % p.cols;
    let start = (g / p.cols) * p.chunk;
    let end = min(start + p.chunk, p.rows);
    var dw = 0.0;
    var db = 0.0;
    for (var r = start; r < end; r++) {
        let d = dy[r * p.cols + col];
        dw += d * (x[r * p.cols + col] - saved_mean[r]) * saved_rstd[r];
        db += d;
    }
    dweight[g] = dw;
    dbias[g] = db;
}

// One invocation per column: adds the chunks' partial sums in chunk order.
@compute @workgroup_size(256)
fn backward_params_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (col >= p.cols) { return; }
    var dw = 0.0;
    var db = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        dw += partial_dweight[c * p.cols + col];
        db += partial_dbias[c * p.cols + col];
    }
    dweight[col] = dw;
    dbias[col] = db;
}
