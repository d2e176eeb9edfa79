// The `_blocked` attention kernels with the streamed rows shared by subgroupBroadcast: the part
// shared by attention_subgroup.wgsl (rows loaded from storage) and attention_texture.wgsl (rows
// fetched from textures). Each of those modules defines where one vec4 of a streamed row comes
// from: load_q, load_k, load_v and load_d_out (vec4 index i of q, k, v or d_out), the only
// thing they do differently. See attention_subgroup.wgsl for why the rows are shared and what
// the launcher guarantees (8 invocations = one subgroup, uniform control flow around every
// broadcast).

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
    return share8(load_q(own_row(r) + o));
}
fn k8(r: Rows8, o: u32) -> Block8 {
    return share8(load_k(own_row(r) + o));
}
fn v8(r: Rows8, o: u32) -> Block8 {
    return share8(load_v(own_row(r) + o));
}
fn d_out8(r: Rows8, o: u32) -> Block8 {
    return share8(load_d_out(own_row(r) + o));
}
// Offsets o and o + 1 (clamped to last) of the four rows r: lane l loads row l % 4 at offset
// o + l / 4, so eight lanes load the pair once between them.
fn own_pair(r: vec4<u32>, o: u32, last: u32) -> u32 {
    return r[lane & 3u] + min(o + (lane >> 2u), last);
}
fn k4(r: vec4<u32>, o: u32, last: u32) -> Pair4 {
    return share8(load_k(own_pair(r, o, last)));
}
fn v4(r: vec4<u32>, o: u32, last: u32) -> Pair4 {
    return share8(load_v(own_pair(r, o, last)));
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
fn forward_tail_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
    lane = sg_lane;
    forward_tail(wid, nwg, sg_lane, ROW_CHUNKS);
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
fn backward_dkdv_tail_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
    lane = sg_lane;
    dkdv_tail(wid, nwg, sg_lane, ROW_CHUNKS);
}

@compute @workgroup_size(8)
fn backward_dq_scores_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
    lane = sg_lane;
    dq_scores_body(wid, nwg, sg_lane, ROW_CHUNKS);
}
