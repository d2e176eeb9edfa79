// Patch embedding: a Conv2d(C -> D, kernel p, stride p, no bias) over NCHW images, written as
// three small GEMMs over the implicit im2col matrix A (no im2col buffer is ever built).
//
// Shapes: image [B, C, S, S], weight [D, C, p, p] (PyTorch layout), out [B, N, D] with
// g = S / p patches per side, N = g * g tokens in row-major (patch row, then patch column) order.
// Rows of A are tokens t = b * N + py * g + px; columns are k = (c * p + i) * p + j, K = C p p:
//   A[t, k] = image[b, c, py * p + i, px * p + j]
//
//   forward:          out[t, d]     = sum_k A[t, k] weight[d, k]
//   backward_image:   d_image(t, k) = sum_d d_out[t, d] weight[d, k]   (every pixel is in exactly
//                                     one patch since p divides S, so this writes d_image once)
//   backward_weight:  d_weight[d, k] = sum_t d_out[t, d] A[t, k]       (t in order: deterministic)
//
// Each invocation computes a 4 x 4 register tile of its output without workgroup memory;
// tiles are numbered along the output's columns first.
// The products method (kernels/src/patch_embed.rs) builds A instead: `im2col` writes
// A [B*N, K] and `col2im` scatters a [B*N, K] gradient back to d_image (a permutation, one
// patch row of p pixels per invocation); the three products then run on the matmul kernels of the kernel path. Out-of-range tile rows and columns read a clamped (valid) index and are not
// written. Workgroups are laid out over x and y (the launcher's `grid`).

struct Params {
    batch: u32,
    channels: u32,
    size: u32,       // S
    patch_size: u32, // p
    dim: u32,        // D
    grid_side: u32,  // g = S / p
    tokens: u32,     // N = g * g
    kdim: u32,       // K = C p p
    rows: u32,       // output rows of this entry point (tokens B*N, or D for backward_weight)
    cols: u32,       // output columns (D, or K)
    col_tiles: u32,  // ceil(cols / 4)
    tiles: u32,      // ceil(rows / 4) * col_tiles
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> image: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> d_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;

fn tile_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Index of A[t, 0] in the image: the top-left pixel of token t's patch.
fn patch_base(t: u32) -> u32 {
    let b = t / p.tokens;
    let n = t % p.tokens;
    let py = n / p.grid_side;
    let px = n % p.grid_side;
    return (b * p.channels * p.size + py * p.patch_size) * p.size + px * p.patch_size;
}

// Offset of column k of A from its patch base: channel c, row i, column j within the patch.
fn column_offset(k: u32) -> u32 {
    let pp = p.patch_size * p.patch_size;
    let c = k / pp;
    let rem = k % pp;
    return (c * p.size + rem / p.patch_size) * p.size + rem % p.patch_size;
}

fn store_row(row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.rows) { return; }
    for (var q = 0u; q < 4u; q++) {
        if (col0 + q < p.cols) { out[row * p.cols + col0 + q] = v[q]; }
    }
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = tile_index(wid, nwg, lid);
    if (tile >= p.tiles) { return; }
    let t0 = (tile / p.col_tiles) * 4u;
    let d0 = (tile % p.col_tiles) * 4u;
    let last_t = p.rows - 1u;
    let last_d = p.cols - 1u;
    let base = vec4<u32>(patch_base(min(t0, last_t)), patch_base(min(t0 + 1u, last_t)),
                         patch_base(min(t0 + 2u, last_t)), patch_base(min(t0 + 3u, last_t)));
    let wrow = vec4<u32>(min(d0, last_d), min(d0 + 1u, last_d), min(d0 + 2u, last_d), min(d0 + 3u, last_d)) * p.kdim;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var k = 0u;
    for (var c = 0u; c < p.channels; c++) {
        for (var i = 0u; i < p.patch_size; i++) {
            let off = (c * p.size + i) * p.size;
            for (var j = 0u; j < p.patch_size; j++) {
                let w = vec4<f32>(weight[wrow.x + k], weight[wrow.y + k], weight[wrow.z + k], weight[wrow.w + k]);
                acc0 += image[base.x + off + j] * w;
                acc1 += image[base.y + off + j] * w;
                acc2 += image[base.z + off + j] * w;
                acc3 += image[base.w + off + j] * w;
                k++;
            }
        }
    }
    store_row(t0, d0, acc0);
    store_row(t0 + 1u, d0, acc1);
    store_row(t0 + 2u, d0, acc2);
    store_row(t0 + 3u, d0, acc3);
}

// rows = tokens B*N, cols = K; the tile is scattered back to image positions.
@compute @workgroup_size(64)
fn backward_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = tile_index(wid, nwg, lid);
    if (tile >= p.tiles) { return; }
    let t0 = (tile / p.col_tiles) * 4u;
    let k0 = (tile % p.col_tiles) * 4u;
    let last_t = p.rows - 1u;
    let last_k = p.cols - 1u;
    let yrow = vec4<u32>(min(t0, last_t), min(t0 + 1u, last_t), min(t0 + 2u, last_t), min(t0 + 3u, last_t)) * p.dim;
    let kc = vec4<u32>(min(k0, last_k), min(k0 + 1u, last_k), min(k0 + 2u, last_k), min(k0 + 3u, last_k));
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var d = 0u; d < p.dim; d++) {
        let wr = d * p.kdim;
        let w = vec4<f32>(weight[wr + kc.x], weight[wr + kc.y], weight[wr + kc.z], weight[wr + kc.w]);
        acc0 += d_out[yrow.x + d] * w;
        acc1 += d_out[yrow.y + d] * w;
        acc2 += d_out[yrow.z + d] * w;
        acc3 += d_out[yrow.w + d] * w;
    }
    let offs = vec4<u32>(column_offset(kc.x), column_offset(kc.y), column_offset(kc.z), column_offset(kc.w));
    for (var r = 0u; r < 4u; r++) {
        let t = t0 + r;
        if (t >= p.rows) { break; }
        var v: vec4<f32>;
        switch r {
            case 0u: { v = acc0; }
            case 1u: { v = acc1; }
            case 2u: { v = acc2; }
            default: { v = acc3; }
        }
        let base = patch_base(t);
        for (var q = 0u; q < 4u; q++) {
            if (k0 + q < p.cols) { out[base + offs[q]] = v[q]; }
        }
    }
}

// rows = D, cols = K; the reduction runs over every token in order.
@compute @workgroup_size(64)
fn backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = tile_index(wid, nwg, lid);
    if (tile >= p.tiles) { return; }
    let d0 = (tile / p.col_tiles) * 4u;
    let k0 = (tile % p.col_tiles) * 4u;
    let last_d = p.rows - 1u;
    let last_k = p.cols - 1u;
    let dc = vec4<u32>(min(d0, last_d), min(d0 + 1u, last_d), min(d0 + 2u, last_d), min(d0 + 3u, last_d));
    let kc = vec4<u32>(min(k0, last_k), min(k0 + 1u, last_k), min(k0 + 2u, last_k), min(k0 + 3u, last_k));
    let offs = vec4<u32>(column_offset(kc.x), column_offset(kc.y), column_offset(kc.z), column_offset(kc.w));
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var t = 0u;
    for (var b = 0u; b < p.batch; b++) {
        for (var py = 0u; py < p.grid_side; py++) {
            for (var px = 0u; px < p.grid_side; px++) {
                let base = (b * p.channels * p.size + py * p.patch_size) * p.size + px * p.patch_size;
                let a = vec4<f32>(image[base + offs.x], image[base + offs.y], image[base + offs.z], image[base + offs.w]);
                let yr = t * p.dim;
                acc0 += d_out[yr + dc.x] * a;
                acc1 += d_out[yr + dc.y] * a;
                acc2 += d_out[yr + dc.z] * a;
                acc3 += d_out[yr + dc.w] * a;
                t++;
            }
        }
    }
    store_row(d0, k0, acc0);
    store_row(d0 + 1u, k0, acc1);
    store_row(d0 + 2u, k0, acc2);
    store_row(d0 + 3u, k0, acc3);
}

// One row of one patch per invocation: q = (t * C + c) * p + i copies the p neighbouring pixels
// image[b, c, py * p + i, px * p .. + p] to A[t, (c * p + i) * p .. + p] (contiguous on both
// sides), with the index arithmetic once per p elements instead of per element: on lavapipe
// the default model's im2col went from 2.6-2.8 ms to 1.1-1.5 ms at batch 8.
fn patch_row(q: u32) -> vec2<u32> {
    let ci = q % (p.channels * p.patch_size);  // c * p + i
    let t = q / (p.channels * p.patch_size);
    let c = ci / p.patch_size;
    let i = ci % p.patch_size;
    return vec2<u32>(patch_base(t) + (c * p.size + i) * p.size, t * p.cols + ci * p.patch_size);
}

@compute @workgroup_size(64)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = tile_index(wid, nwg, lid);
    if (q >= p.rows * p.channels * p.patch_size) { return; }
    let at = patch_row(q);  // (image, A)
    for (var j = 0u; j < p.patch_size; j++) {
        out[at.y + j] = image[at.x + j];
    }
}

// d_image (out) from its [B*N, K] im2col-layout gradient d_out, the same rows per invocation:
// each pixel belongs to exactly one (t, k).
@compute @workgroup_size(64)
fn col2im(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = tile_index(wid, nwg, lid);
    if (q >= p.rows * p.channels * p.patch_size) { return; }
    let at = patch_row(q);
    for (var j = 0u; j < p.patch_size; j++) {
        out[at.x + j] = d_out[at.y + j];
    }
}
