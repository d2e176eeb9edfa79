// AdamW update of one parameter tensor, in place, in PyTorch's order (torch.optim.AdamW,
// single-tensor path) at step t >= 1:
//   p = p * (1 - lr wd)                                  decoupled weight decay, first
//   m = m + (1 - b1) (g - m)                             (torch's lerp; = b1 m + (1 - b1) g)
//   v = b2 v + (1 - b2) g^2
//   p = p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// which is p -= lr m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - b1^t),
// v_hat = v / (1 - b2^t). The bias corrections are computed on the host in f64.
//
// Grid: one invocation per element, 256 per workgroup, workgroups over x and y.

struct Params {
    n: u32,
    decay: f32,        // 1 - lr wd
    beta1: f32,        // (unused by the lerp form; kept for readers of a dump)
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,    // lr / (1 - b1^t)
    bias2_sqrt: f32,   // sqrt(1 - b2^t)
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.n) { return; }
    let g = grad[i];
    let w = param[i] * p.decay;
    let mi = m[i] + p.one_minus_beta1 * (g - m[i]);
    let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = w - p.step_size * (mi / (sqrt(vi) / p.bias2_sqrt + p.eps));
}
