// Workgroup-wide reductions through workgroup memory, shared by the row kernels (l2norm,
// layer_norm, softmax) with `#include "workgroup_reduce.wgsl"`.
//
// Contract with the including shader: it declares `const WG: u32`, a power of two equal to the
// workgroup size of every entry point that calls these functions; `lid` is the invocation's
// `local_invocation_index`. Every invocation of the workgroup gets the result, so a call must
// come from uniform control flow. Tree reduction: log2(WG) halving steps, one barrier each
// (barriers are costly on lavapipe, but a row of a few hundred values needs only 8).

var<workgroup> scratch: array<f32, WG>;

// Sum of `v` over the workgroup.
fn workgroup_sum(v: f32, lid: u32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { scratch[lid] += scratch[lid + s]; }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier(); // scratch is reused by the next reduction
    return r;
}

// Maximum of `v` over the workgroup.
fn workgroup_max(v: f32, lid: u32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { scratch[lid] = max(scratch[lid], scratch[lid + s]); }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier(); // scratch is reused by the next reduction
    return r;
}
