// Embedding lookup and its backward.
//
// Math (table [vocab, dim], indices [count] of u32, rows i in 0..count, channels d in 0..dim):
//   gather:                out[i, d] = table[indices[i], d], or 0 when indices[i] >= vocab
//                          (an out-of-range index reads nothing and yields a zero row)
//   scatter_add_backward:  dtable[v, d] = sum over i with indices[i] == v of dy[i, d]
//                          (out-of-range indices contribute to no row)
//
// The backward has one invocation per (v, d) that scans all indices in order: no atomics,
// deterministic, O(vocab * dim * count) index reads (neighbouring invocations are neighbouring
// channels of the same row, so they read the same index together). Right for the small
// tables and token counts vlsa trains; a large vocabulary with many tokens would want a sort.
// The launcher scans the indices in slices of at most 16384 (one dispatch each, in order,
// the later ones adding to dtable): llvmpipe stops longer loops.
//
// Grid: one invocation per output element, 256 per workgroup, folded over x and y.
// Bindings: gather [table, indices, out]; backward [dy, indices, dtable].

struct Params {
    count: u32,
    dim: u32,
    vocab: u32,
    n: u32,      // output elements: count * dim (gather) or vocab * dim (backward)
    start: u32,  // backward: the indices [start, stop) this dispatch scans
    stop: u32,
    accumulate: u32, // backward: 1 adds to dtable (a later slice of indices), 0 overwrites
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;       // table (gather) or dy (backward)
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // out (gather) or dtable (backward)

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (g >= p.n) { return; }
    let i = g / p.dim;
    let d = g % p.dim;
    let v = indices[i];
    var value = 0.0;
    if (v < p.vocab) { value = src[v * p.dim + d]; }
    out[g] = value;
}

@compute @workgroup_size(256)
fn scatter_add_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (g >= p.n) { return; }
    let v = g / p.dim;
    let d = g % p.dim;
    var acc = 0.0;
    for (var i = p.start; i < p.stop; i++) {
        if (indices[i] == v) { acc += src[i * p.dim + d]; }
    }
    if (p.accumulate == 1u) { acc = out[g] + acc; }
    out[g] = acc;
}
