// Segmentation losses over logits z [B, K, P] (P = pixels per image) and targets t [B, P] (u32),
// and the per-pixel argmax.
//
// With p = softmax over k of z[b, :, i] and n = B P pixels:
//   cross entropy:  L_ce = (1/n) sum_{b,i} (logsumexp_k z[b,k,i] - z[b,t,i])
//                   dz[b,k,i] = g / n (p_k - [k == t])                  (g = upstream dL)
//   dice, over the F = K - 1 foreground classes k >= 1, sums over batch and pixels:
//                   I_k = sum p_k y_k,  P_k = sum p_k,  Y_k = sum y_k   (y_k = [t == k])
//                   L_dice = 1 - (1/F) sum_k (2 I_k + 1) / (P_k + Y_k + 1)
//                   dL/dp_k = -(1/F) (2 y_k (P_k + Y_k + 1) - (2 I_k + 1)) / (P_k + Y_k + 1)^2
//                   dz_j = g p_j (dL/dp_j - sum_k p_k dL/dp_k)          (dL/dp_0 = 0)
//                   With K = 1 there is no foreground class: L_dice = 0 and dz = 0.
//   argmax:         labels[b, i] = the first k with the largest z[b, k, i]
// A target t >= K names no class: that pixel adds 0 to the cross-entropy sum (the mean still
// divides by all n pixels) and its y_k are all 0 for dice; it is never used as an index.
//
// Reductions are deterministic two-pass sums: `*_partial` has G workgroups (G depends only on
// n and on whether the adapter is a CPU: at most 256 on GPUs, 16 on CPUs, where each
// workgroup's barriers are costly; see kernels/src/loss.rs); each invocation sums a fixed
// strided set of pixels, the workgroup reduces its 256 values in a tree and writes one partial
// per workgroup (dice: per workgroup and class, along y); `*_finish` adds the partials in index
// order in one workgroup.
//
// The kernels read the logits through load_logit and dice_backward reads the statistics through
// load_stat, defined by loss.wgsl (storage) and loss_texture.wgsl (textures), the only thing
// the two modules do differently.

struct Params {
    batch: u32,
    classes: u32,   // K
    pixels: u32,    // P
    n: u32,         // B P
    groups: u32,    // G, partial-sum workgroups
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> labels: array<u32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;   // [F, 3]: P_k, Y_k, I_k
@group(0) @binding(7) var<storage, read> d_loss: array<f32>;
@group(0) @binding(8) var<storage, read_write> d_logits: array<f32>;

const WG: u32 = 256u;

var<workgroup> red0: array<f32, 256>;
var<workgroup> red1: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

fn pixel_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Index of z[b, 0, i] for pixel i of the flattened [B, P].
fn pixel_base(i: u32) -> u32 {
    let b = i / p.pixels;
    return b * p.classes * p.pixels + i % p.pixels;
}

// Max over k and sum of exp(z - max): softmax_k = exp(z_k - m) / s.
fn softmax_stats(base: u32) -> vec2<f32> {
    var m = load_logit(base);
    for (var k = 1u; k < p.classes; k++) {
        m = max(m, load_logit(base + k * p.pixels));
    }
    var s = 0.0;
    for (var k = 0u; k < p.classes; k++) {
        s += exp(load_logit(base + k * p.pixels) - m);
    }
    return vec2<f32>(m, s);
}

// Tree reduction of red0..red2 over the workgroup; the sums end in element 0.
fn reduce3(lid: u32) {
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            red0[lid] += red0[lid + stride];
            red1[lid] += red1[lid + stride];
            red2[lid] += red2[lid + stride];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn cross_entropy_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = wid.x * WG + lid; i < p.n; i += p.groups * WG) {
        let base = pixel_base(i);
        let t = targets[i];
        if (t < p.classes) {
            let ms = softmax_stats(base);
            acc += ms.x + log(ms.y) - load_logit(base + t * p.pixels);
        }
    }
    red0[lid] = acc;
    red1[lid] = 0.0;
    red2[lid] = 0.0;
    reduce3(lid);
    if (lid == 0u) { partials[wid.x] = red0[0]; }
}

@compute @workgroup_size(64)
fn cross_entropy_finish(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) { return; }
    var total = 0.0;
    for (var g = 0u; g < p.groups; g++) {
        total += partials[g];
    }
    loss[0] = total / f32(p.n);
}

// Workgroup (g, f): partial sums of class k = f + 1 over workgroup g's pixels, written to
// partials[(f * 3 + j) * G + g] for j = P, Y, I.
@compute @workgroup_size(256)
fn dice_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.y + 1u;
    var sp = 0.0;
    var sy = 0.0;
    var spy = 0.0;
    for (var i = wid.x * WG + lid; i < p.n; i += p.groups * WG) {
        let base = pixel_base(i);
        let ms = softmax_stats(base);
        let pk = exp(load_logit(base + k * p.pixels) - ms.x) / ms.y;
        let y = select(0.0, 1.0, targets[i] == k);
        sp += pk;
        sy += y;
        spy += pk * y;
    }
    red0[lid] = sp;
    red1[lid] = sy;
    red2[lid] = spy;
    reduce3(lid);
    if (lid == 0u) {
        let row = wid.y * 3u * p.groups + wid.x;
        partials[row] = red0[0];
        partials[row + p.groups] = red1[0];
        partials[row + 2u * p.groups] = red2[0];
    }
}

@compute @workgroup_size(64)
fn dice_finish(@builtin(local_invocation_index) lid: u32) {
    let f = p.classes - 1u;
    for (var r = lid; r < 3u * f; r += 64u) {
        var total = 0.0;
        for (var g = 0u; g < p.groups; g++) {
            total += partials[r * p.groups + g];
        }
        stats[r] = total;
    }
    storageBarrier();
    workgroupBarrier();
    if (lid != 0u) { return; }
    if (f == 0u) {
        loss[0] = 0.0;
        return;
    }
    var dice = 0.0;
    for (var c = 0u; c < f; c++) {
        dice += (2.0 * stats[3u * c + 2u] + 1.0) / (stats[3u * c] + stats[3u * c + 1u] + 1.0);
    }
    loss[0] = 1.0 - dice / f32(f);
}

@compute @workgroup_size(256)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = pixel_index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let base = pixel_base(i);
    let t = targets[i];
    if (t >= p.classes) {
        for (var k = 0u; k < p.classes; k++) { d_logits[base + k * p.pixels] = 0.0; }
        return;
    }
    let g = d_loss[0] / f32(p.n);
    let ms = softmax_stats(base);
    for (var k = 0u; k < p.classes; k++) {
        let j = base + k * p.pixels;
        let pk = exp(load_logit(j) - ms.x) / ms.y;
        d_logits[j] = g * (pk - select(0.0, 1.0, k == t));
    }
}

// dL/dp_k of the dice loss at a pixel with target t (k >= 1).
fn dice_dp(k: u32, t: u32, inv_f: f32) -> f32 {
    let r = 3u * (k - 1u);
    let den = load_stat(r) + load_stat(r + 1u) + 1.0;
    let y = select(0.0, 1.0, t == k);
    return -inv_f * (2.0 * y * den - (2.0 * load_stat(r + 2u) + 1.0)) / (den * den);
}

@compute @workgroup_size(256)
fn dice_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = pixel_index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let base = pixel_base(i);
    if (p.classes < 2u) {
        for (var k = 0u; k < p.classes; k++) { d_logits[base + k * p.pixels] = 0.0; }
        return;
    }
    let t = targets[i];
    let g = d_loss[0];
    let inv_f = 1.0 / f32(p.classes - 1u);
    let ms = softmax_stats(base);
    var dot = 0.0;
    for (var k = 1u; k < p.classes; k++) {
        dot += exp(load_logit(base + k * p.pixels) - ms.x) / ms.y * dice_dp(k, t, inv_f);
    }
    for (var k = 0u; k < p.classes; k++) {
        let j = base + k * p.pixels;
        let pk = exp(load_logit(j) - ms.x) / ms.y;
        var dp = 0.0;
        if (k > 0u) { dp = dice_dp(k, t, inv_f); }
        d_logits[j] = g * pk * (dp - dot);
    }
}

@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = pixel_index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let base = pixel_base(i);
    var best = 0u;
    var best_z = load_logit(base);
    for (var k = 1u; k < p.classes; k++) {
        let z = load_logit(base + k * p.pixels);
        if (z > best_z) {
            best = k;
            best_z = z;
        }
    }
    labels[i] = best;
}
