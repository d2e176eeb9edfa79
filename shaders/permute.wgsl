// Axis permutation of a tensor (up to 8 axes).
//
// Math: out has shape [shape[perm[0]], ..., shape[perm[r-1]]] and
//   out[c_0, ..., c_{r-1}] = x[the element whose coordinate on axis perm[k] is c_k].
// The launcher passes, per output axis k, its size and the input stride of axis perm[k]; it
// has already merged axes that stay neighbours and dropped axes of size 1.
//
// Grid: one invocation per output element, written in order (reads are strided), 256 per
// workgroup, folded over x and y.

struct Params {
    n: u32,       // elements
    rank: u32,    // axes after merging (<= 8)
    _pad0: u32,
    _pad1: u32,
    out_shape: array<vec4<u32>, 2>,   // output sizes, 8 axes, innermost last
    in_strides: array<vec4<u32>, 2>,  // input element stride of each output axis
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (g >= p.n) { return; }
    var rest = g;
    var at = 0u;
    for (var k = i32(p.rank) - 1; k >= 0; k--) {
        let q = u32(k) / 4u;
        let r = u32(k) % 4u;
        let size = p.out_shape[q][r];
        at += (rest % size) * p.in_strides[q][r];
        rest = rest / size;
    }
    out[g] = x[at];
}
