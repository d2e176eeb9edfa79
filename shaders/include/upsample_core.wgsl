// Resizing of [planes, h, w] images to [planes, H, W] (planes = batch x channels), in PyTorch's
// F.interpolate semantics, for any sizes (up or down).
//
// Bilinear, align_corners = false, per axis (the launcher passes scale = in / out as an f32
// computed on the host, as PyTorch does):
//   src  = max(scale * (dst + 0.5) - 0.5, 0)
//   i0   = min(floor(src), in - 1),  i1 = min(i0 + 1, in - 1),  l1 = src - i0,  l0 = 1 - l1
//   out[Y, X] = l0y (l0x in[y0, x0] + l1x in[y0, x1]) + l1y (l0x in[y1, x0] + l1x in[y1, x1])
// bilinear_backward gathers, so no atomics are needed and the sum order is fixed: each input
// pixel (y, x) sums wy(Y, y) wx(X, x) d_out[Y, X] over the outputs that read it, where
// wy(Y, y) = l0y [y0(Y) == y] + l1y [y1(Y) == y]. Since y0(Y) never decreases with Y, those
// outputs form one run, found from the inverse map Y ~ (y - 0.5) out / in - 0.5 (minus one for
// rounding) and ended when y0(Y) > y.
//
// Nearest (u32 class maps), PyTorch 'nearest': src = min(floor(dst * scale), in - 1).
//
// Grid: one invocation per output element (per input element for the backward), 256 per
// workgroup, except `bilinear` and `bilinear4`: one output row per invocation, 64 per
// workgroup; workgroups over x and y (the launcher's `grid`).
//
// The bilinear kernels read src through load_src, defined by upsample.wgsl (storage) and
// upsample_texture.wgsl (a texture), the only thing the two modules do differently.

struct Params {
    planes: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    n: u32,          // invocations: elements this dispatch writes (output rows for `bilinear*`)
    scale_h: f32,    // in_h / out_h
    scale_w: f32,    // in_w / out_w
    inv_scale_h: f32, // out_h / in_h (backward search start only)
    inv_scale_w: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> src_u32: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst_u32: array<u32>;
// `bilinear4`'s view of dst: four neighbouring outputs per store (the launcher binds dst twice).
@group(0) @binding(5) var<storage, read_write> dst4: array<vec4<f32>>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

struct Tap {
    i0: u32,
    i1: u32,
    l0: f32,
    l1: f32,
}

fn tap(d: u32, scale: f32, n_in: u32) -> Tap {
    let s = max(scale * (f32(d) + 0.5) - 0.5, 0.0);
    let i0 = min(u32(s), n_in - 1u);
    let i1 = min(i0 + 1u, n_in - 1u);
    let l1 = s - f32(i0);
    return Tap(i0, i1, 1.0 - l1, l1);
}

// Weight of input index i in output index d's interpolation along one axis.
fn weight_of(t: Tap, i: u32) -> f32 {
    return select(0.0, t.l0, t.i0 == i) + select(0.0, t.l1, t.i1 == i);
}

// First output index that may read input index i (never past the true first).
fn first_reader(i: u32, inv_scale: f32) -> u32 {
    return u32(max(floor((f32(i) - 0.5) * inv_scale - 0.5) - 1.0, 0.0));
}

// One output row (plane, Y) per invocation, p.n = planes out_h rows, 64 per workgroup, X in
// order. Every lane of a workgroup is at the same X at the same time, so the horizontal taps and
// the test for a new left tap are uniform, and the four inputs are loaded only when the left
// tap moves: once per input column when upsampling, instead of four loads per output. The
// arithmetic is the same expression as per element.
struct RowState {
    ty: Tap,
    r0: u32,    // index of input row y0's first pixel
    r1: u32,    // the same for y1
    left: u32,  // the left tap x0 whose four inputs are held (none at first)
    a00: f32,
    a01: f32,
    a10: f32,
    a11: f32,
}

fn row_state(r: u32) -> RowState {
    let ty = tap(r % p.out_h, p.scale_h, p.in_h);
    let base = (r / p.out_h) * p.in_h * p.in_w;
    return RowState(ty, base + ty.i0 * p.in_w, base + ty.i1 * p.in_w, 0xffffffffu, 0.0, 0.0, 0.0, 0.0);
}

// Output X of the row, loading the four inputs when its left tap is a new one.
fn row_value(st: ptr<function, RowState>, x: u32) -> f32 {
    let tx = tap(x, p.scale_w, p.in_w);
    if (tx.i0 != (*st).left) {
        (*st).left = tx.i0;
        (*st).a00 = load_src((*st).r0 + tx.i0);
        (*st).a01 = load_src((*st).r0 + tx.i1);
        (*st).a10 = load_src((*st).r1 + tx.i0);
        (*st).a11 = load_src((*st).r1 + tx.i1);
    }
    let ty = (*st).ty;
    return ty.l0 * (tx.l0 * (*st).a00 + tx.l1 * (*st).a01) + ty.l1 * (tx.l0 * (*st).a10 + tx.l1 * (*st).a11);
}

@compute @workgroup_size(64)
fn bilinear(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (r >= p.n) { return; }
    var st = row_state(r);
    for (var x = 0u; x < p.out_w; x++) {
        dst[r * p.out_w + x] = row_value(&st, x);
    }
}

// The same with W a multiple of 4, one vec4 store per four outputs: on lavapipe a store costs
// about the same for a vec4 as for a float (this halved the default model's resize again).
@compute @workgroup_size(64)
fn bilinear4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (r >= p.n) { return; }
    var st = row_state(r);
    let w4 = p.out_w / 4u;
    for (var x4 = 0u; x4 < w4; x4++) {
        let x = 4u * x4;
        let o0 = row_value(&st, x);
        let o1 = row_value(&st, x + 1u);
        let o2 = row_value(&st, x + 2u);
        let o3 = row_value(&st, x + 3u);
        dst4[r * w4 + x4] = vec4<f32>(o0, o1, o2, o3);
    }
}

// src = d_out [planes, out_h, out_w]; dst = d_in [planes, in_h, in_w]; n = planes in_h in_w.
@compute @workgroup_size(256)
fn bilinear_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let x = i % p.in_w;
    let y = (i / p.in_w) % p.in_h;
    let plane = i / (p.in_w * p.in_h);
    let base = plane * p.out_h * p.out_w;
    let x_first = first_reader(x, p.inv_scale_w);
    var acc = 0.0;
    for (var oy = first_reader(y, p.inv_scale_h); oy < p.out_h; oy++) {
        let ty = tap(oy, p.scale_h, p.in_h);
        if (ty.i0 > y) { break; }
        let wy = weight_of(ty, y);
        if (wy == 0.0) { continue; }
        var row = 0.0;
        for (var ox = x_first; ox < p.out_w; ox++) {
            let tx = tap(ox, p.scale_w, p.in_w);
            if (tx.i0 > x) { break; }
            row += weight_of(tx, x) * load_src(base + oy * p.out_w + ox);
        }
        acc += wy * row;
    }
    dst[i] = acc;
}

@compute @workgroup_size(256)
fn nearest_u32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let x = i % p.out_w;
    let y = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let sy = min(u32(floor(f32(y) * p.scale_h)), p.in_h - 1u);
    let sx = min(u32(floor(f32(x) * p.scale_w)), p.in_w - 1u);
    dst_u32[i] = src_u32[(plane * p.in_h + sy) * p.in_w + sx];
}
