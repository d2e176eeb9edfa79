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
#include "attention_broadcast.wgsl"
#include "attention_storage_loads.wgsl"
