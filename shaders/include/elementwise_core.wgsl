// Elementwise kernels: broadcast binary ops, scale, bias add, activations and their backward;
// the kernels of elementwise.wgsl (every operand read from storage) and elementwise_texture.wgsl
// (the fused vec4 kernels' operands fetched from textures). Those modules define load_a4,
// load_b4 and load_c34 (vec4 i of a, of the bias and of the third operand), the only thing
// they do differently; activation.wgsl comes with each.
//
// Math (i runs over the output's elements; broadcasting follows NumPy rules: a size-1 axis
// of an input repeats along the output, which the launcher encodes as stride 0):
//   binary:           out[i] = a[ia(i)] op b[ib(i)]     op in {+, -, *, /}
//   binary_same4:     the same without broadcasting (a, b and out of one shape, n a multiple
//                     of 4), one vec4 per invocation
//   binary_suffix4:   the same with b's shape the trailing axes of a's (b repeats over a's
//                     leading axes, e.g. a position embedding added to every batch element;
//                     b's length a multiple of 4): b4[i mod (len(b) / 4)], one vec4 per
//                     invocation, where `binary` would work out every index axis by axis
//   scale:            out[i] = alpha * a[i] + beta
//   bias_add:         out[i] = a[i] + bias[i mod C]     (bias over the last axis)
//   unary:            out[i] = f(a[i])                  f in {relu, gelu, quick_gelu, ...}
//   unary_backward:   dx[i]  = dy[i] * f'(x[i])
//   unary4, unary_backward4: the same two by vec4 (n a multiple of 4)
//   bias_act:         out[i] = f(a[i] + bias[i mod C])  (a Linear's bias and activation, one pass)
//   bias_act_backward: dz[i] = dy[i] * f'(a[i] + bias[i mod C])   (dbias = sum over rows of dz,
//                     by the launcher's caller; the pre-activation is recomputed, not stored)
//   bias_residual:    out[i] = a[i] + bias[i mod C] + r[i]  (a Linear's bias and the residual
//                     add after it, one pass; its backward is the identity and a row sum)
//   bias_act4, bias_act_backward4, bias_residual4: the same three, one vec4 of four
//                     neighbouring elements per invocation (n = out's elements / 4 there)
//     relu'(x)       = 1 if x > 0 else 0
//     gelu(x)        = x Phi(x) = x/2 (1 + erf(x/sqrt 2)),   gelu'(x) = Phi(x) + x phi(x)
//     quick_gelu(x)  = x sigmoid(1.702 x),   quick_gelu'(x) = s + 1.702 x s (1 - s)
//
// Grid: one invocation per element, 256 per workgroup; workgroups are laid out over x and y
// (the launcher's `grid`) so that more than 65535 * 256 elements still fit.

struct Params {
    n: u32,            // output elements
    rank: u32,         // number of axes of the broadcast shape (<= 8)
    c: u32,            // bias length for bias_add
    _pad0: u32,
    alpha: f32,
    beta: f32,
    _pad1: u32,
    _pad2: u32,
    shape: array<vec4<u32>, 2>,     // output shape, 8 axes, innermost last
    a_strides: array<vec4<u32>, 2>, // a's element strides per output axis (0 = broadcast)
    b_strides: array<vec4<u32>, 2>,
}

// The operation code of `binary`, `binary_same4` (0 +, 1 -, 2 *, 3 /) and of the activation
// entry points (activation.wgsl's unary_f / unary_df), fixed when the pipeline is built
// (Gpu::dispatch_specialized): a switch on a uniform inside each element's arithmetic made the
// activation passes about 1.4x slower on lavapipe than the same pass with the code a constant.
override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// The third operand of the fused entry points: dy (bias_act_backward) or the residual
// (bias_residual).
@group(0) @binding(4) var<storage, read> c3: array<f32>;
// vec4 views of the same four buffers, for the `*4` entry points of the fused kernels (the
// launcher binds each buffer twice and takes them when the bias length is a multiple of 4).
// On lavapipe every storage access with a per-lane address is a loop over the SIMD lanes, so
// moving four neighbouring floats per access, one vec4 per invocation, costs about what one
// float did.
@group(0) @binding(5) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> c34: array<vec4<f32>>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}


@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    var rest = i;
    var ia = 0u;
    var ib = 0u;
    for (var k = i32(p.rank) - 1; k >= 0; k--) {
        let q = u32(k) / 4u;
        let r = u32(k) % 4u;
        let size = p.shape[q][r];
        let coord = rest % size;
        rest = rest / size;
        ia += coord * p.a_strides[q][r];
        ib += coord * p.b_strides[q][r];
    }
    out[i] = binary_op4(vec4<f32>(a[ia]), vec4<f32>(b[ib])).x;
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = p.alpha * a[i] + p.beta;
}

@compute @workgroup_size(256)
fn bias_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] + b[i % p.c];
}


@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = unary_f(OP, a[i]);
}

// a = x (the forward input), b = dy; out = dx
@compute @workgroup_size(256)
fn unary_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = b[i] * unary_df(OP, a[i]);
}

// a = the product (before bias), b = bias; out = f(a + bias)
@compute @workgroup_size(256)
fn bias_act(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = unary_f(OP, a[i] + b[i % p.c]);
}

// a = the product (before bias), b = bias, c3 = dy; out = dz, the gradient of the product
@compute @workgroup_size(256)
fn bias_act_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = c3[i] * unary_df(OP, a[i] + b[i % p.c]);
}

// a = the product, b = bias, c3 = the residual
@compute @workgroup_size(256)
fn bias_residual(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] + b[i % p.c] + c3[i];
}

// ----- the fused kernels by vec4 (C a multiple of 4; p.n counts vec4s, p.c floats) -----

fn unary_f4(op: u32, x: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(unary_f(op, x.x), unary_f(op, x.y), unary_f(op, x.z), unary_f(op, x.w));
}

fn unary_df4(op: u32, x: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(unary_df(op, x.x), unary_df(op, x.y), unary_df(op, x.z), unary_df(op, x.w));
}

// The bias vec4 of output vec4 i: columns (4i mod C) .. + 4.
fn bias_at4(i: u32) -> vec4<f32> {
    return load_b4(((4u * i) % p.c) / 4u);
}

@compute @workgroup_size(256)
fn bias_act4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out4[i] = unary_f4(OP, load_a4(i) + bias_at4(i));
}

@compute @workgroup_size(256)
fn bias_act_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out4[i] = load_c34(i) * unary_df4(OP, load_a4(i) + bias_at4(i));
}

@compute @workgroup_size(256)
fn bias_residual4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out4[i] = load_a4(i) + bias_at4(i) + load_c34(i);
}

// x op y for the operation code OP (0 +, 1 -, 2 *, 3 /), per component; the scalar `binary`
// takes one component.
fn binary_op4(x: vec4<f32>, y: vec4<f32>) -> vec4<f32> {
    switch OP {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        default: { return x / y; }
    }
}

// binary without broadcasting, by vec4 (p.n counts vec4s).
@compute @workgroup_size(256)
fn binary_same4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out4[i] = binary_op4(load_a4(i), load_b4(i));
}

// binary with b repeating over a's leading axes, by vec4 (p.n counts vec4s, p.c is b's).
@compute @workgroup_size(256)
fn binary_suffix4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out4[i] = binary_op4(load_a4(i), load_b4(i % p.c));
}

// unary and unary_backward by vec4 (n a multiple of 4; p.n counts vec4s): a = x, b = dy.
@compute @workgroup_size(256)
fn unary4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out4[i] = unary_f4(OP, load_a4(i));
}

@compute @workgroup_size(256)
fn unary_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out4[i] = load_b4(i) * unary_df4(OP, load_a4(i));
}
