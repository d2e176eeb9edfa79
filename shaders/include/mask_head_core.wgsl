// Cosine-similarity mask head: pixel features X [B, N, C] against class text embeddings
// T [K, C], with a learned temperature.
//
//   s = min(exp(logit_scale), 100)
//   x^ = x / a,  a = max(||x||, 1e-6);   t^ = t / b,  b = max(||t||, 1e-6)
//   out[b, k, n] = s (x^[b, n] . t^[k])
// Backward, with dy = d_out and r[b, n] = sum_k dy[b, k, n] cos[b, k, n]:
//   dx^ = s sum_k dy[b, k, n] t^[k]      dx = (dx^ - x^ (x^ . dx^)) / a,   x^ . dx^ = s r
//   dt^[k] = s sum_{b,n} dy[b, k, n] x^[b, n]      dt = (dt^ - t^ (t^ . dt^)) / b
//   (while a norm is below 1e-6 the clamp holds a constant and dx = dx^ / a, dt = dt^ / b)
//   d logit_scale = exp(logit_scale) sum_{b,n} r[b, n] while exp(logit_scale) <= 100, else 0
//
// forward: one invocation per (b, n) row, all K classes. Backward: text_normalize (one
// workgroup per class) writes t^ and b; backward_x (one invocation per row) writes dx and, per
// row, 1/a and r; backward_text (one workgroup per class, invocations over C, rows summed in
// order) writes dt; backward_scale (one workgroup) sums r in a fixed order.
//
// Every kernel in two forms: the scalar ones above for any width, and, for widths that are a
// multiple of 4, `forward4`, `backward_x4` and `backward_text4`, which read x, t (or t^) by vec4
// through load_x4, load_text4 and load_text_hat4, and d_out through load_d_out: defined by
// mask_head.wgsl (storage) and mask_head_texture.wgsl (textures), the only thing the two
// modules do differently. Same math; each vec4 adds its four products before the running sum,
// so the vec4 kernels' sums differ from the scalar ones' in the last bits.


struct Params {
    batch: u32,
    tokens: u32,   // N
    width: u32,    // C
    classes: u32,  // K
    rows: u32,     // B N
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> text: array<f32>;
@group(0) @binding(3) var<storage, read> logit_scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> d_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> d_x: array<f32>;
@group(0) @binding(7) var<storage, read_write> text_hat: array<f32>;  // [K, C] t^, then [K] b
@group(0) @binding(8) var<storage, read_write> row_stats: array<f32>; // [rows] 1/a, then [rows] r
@group(0) @binding(9) var<storage, read_write> d_text: array<f32>;
@group(0) @binding(10) var<storage, read_write> d_scale: array<f32>;
// vec4 views of the same slots (the *4 entry points).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> text4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> d_x4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> text_hat4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> d_text4: array<vec4<f32>>;

const EPS: f32 = 1e-6;
const MAX_SCALE: f32 = 100.0;

var<workgroup> red: array<f32, 64>;

fn scale() -> f32 {
    return min(exp(logit_scale[0]), MAX_SCALE);
}

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// Sum of red[0..64] into red[0].
fn reduce(lid: u32) {
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) { red[lid] += red[lid + stride]; }
    }
    workgroupBarrier();
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let b = row / p.tokens;
    let n = row % p.tokens;
    let xr = row * p.width;
    var xx = 0.0;
    for (var c = 0u; c < p.width; c++) { xx += x[xr + c] * x[xr + c]; }
    let factor = scale() / max(sqrt(xx), EPS);
    for (var k = 0u; k < p.classes; k++) {
        let tr = k * p.width;
        var dot = 0.0;
        var tt = 0.0;
        for (var c = 0u; c < p.width; c++) {
            let t = text[tr + c];
            dot += x[xr + c] * t;
            tt += t * t;
        }
        out[(b * p.classes + k) * p.tokens + n] = factor * dot / max(sqrt(tt), EPS);
    }
}

@compute @workgroup_size(64)
fn text_normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tr = wid.x * p.width;
    var tt = 0.0;
    for (var c = lid; c < p.width; c += 64u) { tt += text[tr + c] * text[tr + c]; }
    red[lid] = tt;
    reduce(lid);
    let norm = max(sqrt(red[0]), EPS);
    for (var c = lid; c < p.width; c += 64u) { text_hat[tr + c] = text[tr + c] / norm; }
    if (lid == 0u) { text_hat[p.classes * p.width + wid.x] = norm; }
}

@compute @workgroup_size(64)
fn backward_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let b = row / p.tokens;
    let n = row % p.tokens;
    let xr = row * p.width;
    let dy0 = b * p.classes * p.tokens + n;   // d_out[b, 0, n]; class k adds k N
    let s = scale();
    var xx = 0.0;
    for (var c = 0u; c < p.width; c++) { xx += x[xr + c] * x[xr + c]; }
    let norm = sqrt(xx);
    let inv = 1.0 / max(norm, EPS);
    var r = 0.0;
    for (var k = 0u; k < p.classes; k++) {
        let tr = k * p.width;
        var dot = 0.0;
        for (var c = 0u; c < p.width; c++) { dot += x[xr + c] * text_hat[tr + c]; }
        r += d_out[dy0 + k * p.tokens] * dot * inv;
    }
    row_stats[row] = inv;
    row_stats[p.rows + row] = r;
    // Projection off x^ only while the norm is not clamped.
    let proj = select(s * r, 0.0, norm < EPS);
    for (var c = 0u; c < p.width; c++) {
        var dxh = 0.0;
        for (var k = 0u; k < p.classes; k++) { dxh += d_out[dy0 + k * p.tokens] * text_hat[k * p.width + c]; }
        d_x[xr + c] = (s * dxh - x[xr + c] * inv * proj) * inv;
    }
}

@compute @workgroup_size(64)
fn backward_text(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x;
    let tr = k * p.width;
    let s = scale();
    var partial = 0.0;
    for (var c = lid; c < p.width; c += 64u) {
        var acc = 0.0;
        var row = 0u;
        for (var b = 0u; b < p.batch; b++) {
            let dy0 = (b * p.classes + k) * p.tokens;
            for (var n = 0u; n < p.tokens; n++) {
                acc += d_out[dy0 + n] * x[row * p.width + c] * row_stats[row];
                row++;
            }
        }
        acc *= s;
        d_text[tr + c] = acc;   // dt^ for now; this invocation rewrites it below
        partial += text_hat[tr + c] * acc;
    }
    red[lid] = partial;
    reduce(lid);
    let norm = text_hat[p.classes * p.width + k];
    let proj = select(red[0], 0.0, norm <= EPS);
    for (var c = lid; c < p.width; c += 64u) {
        d_text[tr + c] = (d_text[tr + c] - text_hat[tr + c] * proj) / norm;
    }
}

@compute @workgroup_size(64)
fn backward_scale(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var row = lid; row < p.rows; row += 64u) { acc += row_stats[p.rows + row]; }
    red[lid] = acc;
    reduce(lid);
    if (lid == 0u) {
        let e = exp(logit_scale[0]);
        d_scale[0] = select(0.0, e * red[0], e <= MAX_SCALE);
    }
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// ||x|| of row `row` (c4 = width / 4 vec4s per row).
fn row_norm4(xr: u32, c4: u32) -> f32 {
    var xx = vec4<f32>(0.0);
    for (var c = 0u; c < c4; c++) { let v = load_x4(xr + c); xx += v * v; }
    return sqrt(hsum(xx));
}

@compute @workgroup_size(64)
fn forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let b = row / p.tokens;
    let n = row % p.tokens;
    let c4 = p.width / 4u;
    let xr = row * c4;
    let factor = scale() / max(row_norm4(xr, c4), EPS);
    for (var k = 0u; k < p.classes; k++) {
        let tr = k * c4;
        var dot = vec4<f32>(0.0);
        var tt = vec4<f32>(0.0);
        for (var c = 0u; c < c4; c++) {
            let t = load_text4(tr + c);
            dot += load_x4(xr + c) * t;
            tt += t * t;
        }
        out[(b * p.classes + k) * p.tokens + n] = factor * hsum(dot) / max(sqrt(hsum(tt)), EPS);
    }
}

@compute @workgroup_size(64)
fn backward_x4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let b = row / p.tokens;
    let n = row % p.tokens;
    let c4 = p.width / 4u;
    let xr = row * c4;
    let dy0 = b * p.classes * p.tokens + n;   // d_out[b, 0, n]; class k adds k N
    let s = scale();
    let norm = row_norm4(xr, c4);
    let inv = 1.0 / max(norm, EPS);
    var r = 0.0;
    for (var k = 0u; k < p.classes; k++) {
        let tr = k * c4;
        var dot = vec4<f32>(0.0);
        for (var c = 0u; c < c4; c++) { dot += load_x4(xr + c) * load_text_hat4(tr + c); }
        r += load_d_out(dy0 + k * p.tokens) * hsum(dot) * inv;
    }
    row_stats[row] = inv;
    row_stats[p.rows + row] = r;
    let proj = select(s * r, 0.0, norm < EPS);
    for (var c = 0u; c < c4; c++) {
        var dxh = vec4<f32>(0.0);
        for (var k = 0u; k < p.classes; k++) { dxh += load_d_out(dy0 + k * p.tokens) * load_text_hat4(k * c4 + c); }
        d_x4[xr + c] = (s * dxh - load_x4(xr + c) * inv * proj) * inv;
    }
}

// backward_text by vec4: invocation lid of class k's workgroup sums columns 4c .. 4c + 4 for
// c = lid, lid + 64, ... over the rows in order, as backward_text does one column.
@compute @workgroup_size(64)
fn backward_text4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x;
    let c4 = p.width / 4u;
    let tr = k * c4;
    let s = scale();
    var partial = 0.0;
    for (var c = lid; c < c4; c += 64u) {
        var acc = vec4<f32>(0.0);
        var row = 0u;
        for (var b = 0u; b < p.batch; b++) {
            let dy0 = (b * p.classes + k) * p.tokens;
            for (var n = 0u; n < p.tokens; n++) {
                acc += load_d_out(dy0 + n) * load_x4(row * c4 + c) * load_row_inv(row);
                row++;
            }
        }
        acc *= s;
        d_text4[tr + c] = acc;   // dt^ for now; this invocation rewrites it below
        partial += hsum(text_hat4[tr + c] * acc);
    }
    red[lid] = partial;
    reduce(lid);
    // b of class k through the vec4 view (the launcher pads text_hat to whole vec4s).
    let at = p.classes * p.width + k;
    let norm = text_hat4[at / 4u][at % 4u];
    let proj = select(red[0], 0.0, norm <= EPS);
    for (var c = lid; c < c4; c += 64u) {
        d_text4[tr + c] = (d_text4[tr + c] - text_hat4[tr + c] * proj) / norm;
    }
}
