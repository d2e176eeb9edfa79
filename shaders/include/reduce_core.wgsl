// Sums over one axis of a tensor viewed as [outer, len, inner]: the kernels of reduce.wgsl
// (read from storage) and reduce_texture.wgsl (sum_axis4's input fetched from a texture).
// Those modules define load_x4 (vec4 i of x), the only thing they do differently.
//
// Math:
//   sum_axis:  out[o, c, i] = sum over j in chunk c of x[o, j, i]
//              chunk c covers j in [c * chunk, min((c + 1) * chunk, len)).
// With one chunk (chunk >= len) this is the plain axis sum out[o, i] = sum_j x[o, j, i]. When
// outer * inner is small and len is long (a whole-tensor sum, a bias gradient over many rows)
// the launcher splits len into chunks so enough invocations run, then sums the partials with a
// second dispatch of the same entry point. Every output is summed by one invocation in a fixed
// order, so results are deterministic.
//
// sum_axis4 is the same by vec4 when inner is a multiple of 4: four neighbouring outputs per
// invocation (p.n counts vec4s, p.inner stays in floats). On lavapipe every storage access with
// a per-lane address is a loop over the SIMD lanes, so a vec4 costs about what a float does.
//
// Grid: one invocation per output (o, c, i), i fastest so neighbouring invocations read
// neighbouring addresses; 256 per workgroup, workgroups folded over x and y.

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    chunk: u32,   // elements of the summed axis per chunk
    chunks: u32,  // number of chunks (1 for a plain sum)
    n: u32,       // outputs: outer * chunks * inner
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// vec4 views of the same buffers (sum_axis4)
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn sum_axis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (g >= p.n) { return; }
    let i = g % p.inner;
    let t = g / p.inner;
    let c = t % p.chunks;
    let o = t / p.chunks;
    let start = c * p.chunk;
    let end = min(start + p.chunk, p.len);
    var acc = 0.0;
    var at = (o * p.len + start) * p.inner + i;
    for (var j = start; j < end; j++) {
        acc += x[at];
        at += p.inner;
    }
    out[g] = acc;
}

@compute @workgroup_size(256)
fn sum_axis4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (g >= p.n) { return; }
    let inner4 = p.inner / 4u;
    let i = g % inner4;
    let t = g / inner4;
    let c = t % p.chunks;
    let o = t / p.chunks;
    let start = c * p.chunk;
    let end = min(start + p.chunk, p.len);
    var acc = vec4<f32>(0.0);
    var at = (o * p.len + start) * inner4 + i;
    for (var j = start; j < end; j++) {
        acc += load_x4(at);
        at += inner4;
    }
    out4[g] = acc;
}
