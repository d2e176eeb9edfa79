// Fused multi-head attention, forward and backward, in the natural layouts of the q/k/v
// projections (heads interleaved per token, no permutes):
//   q [B, Nq, H*dh]    k, v [Bk, Nk, H*dh] with Bk = B, or Bk = 1 (shared across the batch)
//   out [B, Nq, H*dh]  lse [B, H, Nq]      key_mask u32 [Bk, Nk] (1 = attend, 0 = ignore)
//
// Math, per batch b, head h, query i (kb = b, or 0 when Bk = 1):
//   s_ij   = scale * q_i . k_j                       for the keys j the query may see:
//            j with key_mask[kb, j] = 1 and, when causal, j <= i (top-left aligned, as
//            PyTorch's is_causal)
//   lse_i  = log sum_j exp(s_ij)                     (-inf for a row that sees no key)
//   P_ij   = exp(s_ij - lse_i)
//   out_i  = sum_j P_ij v_j                          (zeros for a row that sees no key)
// Forward (`forward_blocked`) keeps, per query row, a running maximum m, a running sum l and an
// unnormalised output in registers and walks the keys in blocks of 8, or of 4 for head rows
// wider than 32 (include/attention_core.wgsl, "Four keys per step") (online softmax: when m
// grows, l and the output are rescaled by exp(m_old - m_new)); the Nq x Nk matrix never
// exists in memory. `forward_few_keys` is the cross-attention case (Nk <= 16): all scores of a
// row fit in registers, so it takes the exact softmax in two short passes over the keys.
//
// Backward recomputes P from q, k and the saved lse instead of storing it:
//   delta_i = dout_i . out_i                          (= sum_j P_ij dP_ij)
//   dP_ij   = dout_i . v_j
//   dS_ij   = P_ij (dP_ij - delta_i)
//   dq_i    = scale * sum_j dS_ij k_j                 (`backward_dq_blocked`: by query rows)
//   dk_j    = scale * sum_i dS_ij q_i                 (`backward_dkdv_blocked`: by key rows,
//   dv_j    =         sum_i P_ij dout_i                 summing over queries in a fixed order)
// With Bk = 1 the sums over i run over every batch element's queries too. For enough
// parallelism when there are few keys, `backward_dkdv` splits the (flattened) query rows into
// `splits` ranges and writes one partial per range; `backward_reduce` then sums the partials
// in order. No float atomics anywhere: results are deterministic.
// `backward_prepare` packs per-row lse and delta and the key mask (as 0/1 floats) into one
// `stats` buffer [lse: B*H*Nq | delta: B*H*Nq | key valid: Bk*Nk] so that the two gradient
// kernels stay within 7 storage buffers.
// Stored scores (the launcher's `BackwardPath::Scores`; Bk = B, not causal, one query range):
// the dk/dv kernel, which computes every dS_ij anyway, also writes it transposed after dk in
// its grad_a buffer, and `backward_dq_scores_blocked` takes dq = scale * sum_j dS_ij k_j from
// it: five products per backward instead of seven (dq_blocked recomputes s and dP).
//
// Supported: head_dim a multiple of 4, from 4 to 128 (rows are read as vec4). The forward,
// dq and dk/dv kernels are register-blocked (see "Four rows per invocation" in
// include/attention_core.wgsl, which holds every kernel but the streamed-row loads): 8
// invocations per workgroup, 4 rows (queries or keys) each (the `_blocked` entry points). The
// pipeline-overridable constant ROW_CHUNKS sizes their registers: head rows of up to 16, 32,
// 64 or 128 elements take 1, 2, 4 or 8 chunks of 16, one pipeline each. `forward_few_keys`,
// `backward_prepare` and `backward_reduce` take one row or element per invocation, 64 per
// workgroup. Workgroups are folded over x and y (the launcher's `grid`) and bounds-checked.
// The tiled kernel path (GPUs) runs `forward_lanes`, `backward_dq_lanes` and
// `backward_dkdv_lanes` instead of the `_blocked` kernels: one head row spread over up to 32 lanes,
// a few vec4 of registers per lane at any head width (see "Rows split across lanes" there).
// The subgroup kernel path (lavapipe) runs the `_blocked` kernels of attention_subgroup.wgsl:
// the same code with the streamed rows shared by subgroupBroadcast instead of loaded by every
// invocation.

#include "attention_core.wgsl"
#include "attention_storage_loads.wgsl"

// ---------------------------------------------------------------------------------------
// This module's streamed rows: every invocation loads the eight rows itself (uniform loads).
// Adapters with subgroups run attention_subgroup.wgsl's versions of these kernels instead.

fn q8(r: Rows8, o: u32) -> Block8 {
    return Block8(mat4x4<f32>(q[r.lo.x + o], q[r.lo.y + o], q[r.lo.z + o], q[r.lo.w + o]),
                  mat4x4<f32>(q[r.hi.x + o], q[r.hi.y + o], q[r.hi.z + o], q[r.hi.w + o]));
}
fn k8(r: Rows8, o: u32) -> Block8 {
    return Block8(mat4x4<f32>(k[r.lo.x + o], k[r.lo.y + o], k[r.lo.z + o], k[r.lo.w + o]),
                  mat4x4<f32>(k[r.hi.x + o], k[r.hi.y + o], k[r.hi.z + o], k[r.hi.w + o]));
}
fn v8(r: Rows8, o: u32) -> Block8 {
    return Block8(mat4x4<f32>(v[r.lo.x + o], v[r.lo.y + o], v[r.lo.z + o], v[r.lo.w + o]),
                  mat4x4<f32>(v[r.hi.x + o], v[r.hi.y + o], v[r.hi.z + o], v[r.hi.w + o]));
}
fn d_out8(r: Rows8, o: u32) -> Block8 {
    return Block8(mat4x4<f32>(d_out[r.lo.x + o], d_out[r.lo.y + o], d_out[r.lo.z + o], d_out[r.lo.w + o]),
                  mat4x4<f32>(d_out[r.hi.x + o], d_out[r.hi.y + o], d_out[r.hi.z + o], d_out[r.hi.w + o]));
}
// Offsets o and o + 1 (clamped to last) of the four rows r.
fn k4(r: vec4<u32>, o: u32, last: u32) -> Pair4 {
    let o0 = min(o, last);
    let o1 = min(o + 1u, last);
    return Pair4(mat4x4<f32>(k[r.x + o0], k[r.y + o0], k[r.z + o0], k[r.w + o0]), mat4x4<f32>(k[r.x + o1], k[r.y + o1], k[r.z + o1], k[r.w + o1]));
}
fn v4(r: vec4<u32>, o: u32, last: u32) -> Pair4 {
    let o0 = min(o, last);
    let o1 = min(o + 1u, last);
    return Pair4(mat4x4<f32>(v[r.x + o0], v[r.y + o0], v[r.z + o0], v[r.w + o0]), mat4x4<f32>(v[r.x + o1], v[r.y + o1], v[r.z + o1], v[r.w + o1]));
}
// stats[i] for the eight indices of r.
fn stats8(r: Rows8) -> mat2x4<f32> {
    return mat2x4<f32>(vec4<f32>(stats[r.lo.x], stats[r.lo.y], stats[r.lo.z], stats[r.lo.w]),
                       vec4<f32>(stats[r.hi.x], stats[r.hi.y], stats[r.hi.z], stats[r.hi.w]));
}

@compute @workgroup_size(8)
fn forward_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    forward_body(wid, nwg, lid, ROW_CHUNKS);
}

@compute @workgroup_size(8)
fn backward_dq_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dq_body(wid, nwg, lid, ROW_CHUNKS);
}

@compute @workgroup_size(8)
fn backward_dkdv_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dkdv_body(wid, nwg, lid, ROW_CHUNKS);
}

@compute @workgroup_size(8)
fn backward_dq_scores_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dq_scores_body(wid, nwg, lid, ROW_CHUNKS);
}
