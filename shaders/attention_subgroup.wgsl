// The fused attention kernels of attention.wgsl (same math, layouts, bindings and entry point
// names; see the top of that file) for adapters with subgroup operations, where the eight rows
// a workgroup streams per step are shared by subgroupBroadcast: invocation l loads row l, and
// eight broadcasts give every invocation all eight. A module of its own because an adapter
// without subgroups (llvmpipe GL) cannot compile one that uses them.
//
// Why: on lavapipe a storage load is a loop over the 8 SIMD lanes, even when every lane reads
// the same address, while a broadcast is a register shuffle. attention.wgsl's kernels load each
// streamed vec4 in every lane (8 loads per vec4); these load it once. Measured on the Intel
// Xeon (family 6 model 167, lavapipe, 2026-12-03), at the ViT's 8 x 3 heads of 257 x 64 and
// the decoder's 8 x 4 heads of 256 x 32: forward and backward 2.3-3.6x faster than
// attention.wgsl's kernels, and the forward 1.4-2.9x faster than the score matrix
// materialised on the matmul (docs/performance-log.md, "Attention and patch embedding").
//
// The launcher runs these only when the adapter's smallest subgroup has at least 8
// invocations, so the 8 invocations of a workgroup are one subgroup; every loop bound and
// branch around a broadcast is uniform across the workgroup (the kernels clamp rows instead of
// returning early), so every broadcast runs with all 8 lanes active.

#include "attention_core.wgsl"

// This invocation's subgroup lane (0..7), set by the entry points.
var<private> lane: u32;

// Row `lane` of the eight: the one this invocation loads for the others.
fn own_row(r: Rows8) -> u32 {
    return select(r.hi[lane & 3u], r.lo[lane & 3u], lane < 4u);
}

// Block8 from each lane's vec4 x: column t of `lo` is lane t's, of `hi` lane 4 + t's.
fn share8(x: vec4<f32>) -> Block8 {
    return Block8(mat4x4<f32>(subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u), subgroupBroadcast(x, 2u), subgroupBroadcast(x, 3u)),
                  mat4x4<f32>(subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u), subgroupBroadcast(x, 6u), subgroupBroadcast(x, 7u)));
}

fn q8(r: Rows8, o: u32) -> Block8 {
    return share8(q[own_row(r) + o]);
}
fn k8(r: Rows8, o: u32) -> Block8 {
    return share8(k[own_row(r) + o]);
}
fn v8(r: Rows8, o: u32) -> Block8 {
    return share8(v[own_row(r) + o]);
}
fn d_out8(r: Rows8, o: u32) -> Block8 {
    return share8(d_out[own_row(r) + o]);
}
// Offsets o and o + 1 (clamped to last) of the four rows r: lane l loads row l % 4 at offset
// o + l / 4, so eight lanes load the pair once between them.
fn own_pair(r: vec4<u32>, o: u32, last: u32) -> u32 {
    return r[lane & 3u] + min(o + (lane >> 2u), last);
}
fn k4(r: vec4<u32>, o: u32, last: u32) -> Pair4 {
    return share8(k[own_pair(r, o, last)]);
}
fn v4(r: vec4<u32>, o: u32, last: u32) -> Pair4 {
    return share8(v[own_pair(r, o, last)]);
}
// stats[i] for the eight indices of r: lane l loads index l.
fn stats8(r: Rows8) -> mat2x4<f32> {
    let x = stats[own_row(r)];
    return mat2x4<f32>(vec4<f32>(subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u), subgroupBroadcast(x, 2u), subgroupBroadcast(x, 3u)),
                       vec4<f32>(subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u), subgroupBroadcast(x, 6u), subgroupBroadcast(x, 7u)));
}

@compute @workgroup_size(8)
fn forward_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
    lane = sg_lane;
    forward_body(wid, nwg, sg_lane, ROW_CHUNKS);
}

@compute @workgroup_size(8)
fn backward_dq_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
    lane = sg_lane;
    dq_body(wid, nwg, sg_lane, ROW_CHUNKS);
}

@compute @workgroup_size(8)
fn backward_dkdv_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
    lane = sg_lane;
    dkdv_body(wid, nwg, sg_lane, ROW_CHUNKS);
}

@compute @workgroup_size(8)
fn backward_dq_scores_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
    lane = sg_lane;
    dq_scores_body(wid, nwg, sg_lane, ROW_CHUNKS);
}
