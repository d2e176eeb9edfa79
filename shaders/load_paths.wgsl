// Load-path probe (examples/load_paths.rs): how fast the adapter's compiler turns one f32 vec4
// load into registers, by address space and by whether the address differs between lanes.
// Not a model kernel. Every entry point sums 1024 vec4 loads from the same 16 KiB table, read
// either as the uniform block (binding 0) or as a storage buffer (binding 1):
//   *_lanes:   the index depends on the invocation (a different address in every lane: a gather);
//   *_uniform: the same index in every lane of the workgroup (one address for all lanes).
// idx_{i+1} = (idx_i + 97 + i) & 1023, started from 7 * invocation (lanes) or 0 (uniform).

struct Table {
    v: array<vec4<f32>, 1024>,
}

@group(0) @binding(0) var<uniform> table: Table;
@group(0) @binding(1) var<storage, read> stable: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const LOADS: u32 = 1024u;

@compute @workgroup_size(64)
fn uniform_lanes(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    var idx = (gid.x * 7u) & 1023u;
    for (var i = 0u; i < LOADS; i++) {
        idx = (idx + 97u + i) & 1023u;
        acc += table.v[idx];
    }
    out[gid.x] = dot(acc, vec4<f32>(1.0));
}

@compute @workgroup_size(64)
fn storage_lanes(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    var idx = (gid.x * 7u) & 1023u;
    for (var i = 0u; i < LOADS; i++) {
        idx = (idx + 97u + i) & 1023u;
        acc += stable[idx];
    }
    out[gid.x] = dot(acc, vec4<f32>(1.0));
}

@compute @workgroup_size(64)
fn uniform_uniform(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    var idx = 0u;
    for (var i = 0u; i < LOADS; i++) {
        idx = (idx + 97u + i) & 1023u;
        acc += table.v[idx];
    }
    out[gid.x] = dot(acc, vec4<f32>(1.0)) + f32(gid.x);
}

@compute @workgroup_size(64)
fn storage_uniform(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    var idx = 0u;
    for (var i = 0u; i < LOADS; i++) {
        idx = (idx + 97u + i) & 1023u;
        acc += stable[idx];
    }
    out[gid.x] = dot(acc, vec4<f32>(1.0)) + f32(gid.x);
}

// alu_ceiling: no loads at all, only multiply-adds on registers: what the adapter's compiler
// attains on arithmetic alone, the ceiling for any product kernel. Four vec4 accumulators per
// invocation (16 floats, within the x86 vector register file on lavapipe), 8 dependent
// multiply-adds on each per loop step, ALU_STEPS steps: 65,536 x 256 x 8 x 16 multiply-adds.
const ALU_STEPS: u32 = 256u;

@compute @workgroup_size(64)
fn alu_ceiling(@builtin(global_invocation_id) gid: vec3<u32>) {
    let x = f32(gid.x & 7u) * 1e-3;
    let m = vec4<f32>(0.999 - x, 0.998, 0.997 + x, 0.996);
    let c = vec4<f32>(x, 0.001, 0.002, 0.003);
    var a0 = vec4<f32>(x); var a1 = vec4<f32>(1.0 + x); var a2 = vec4<f32>(2.0); var a3 = vec4<f32>(3.0 - x);
    for (var i = 0u; i < ALU_STEPS; i++) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
    }
    out[gid.x] = dot(a0 + a1 + a2 + a3, vec4<f32>(1.0));
}

// workgroup_lanes: storage_lanes' addresses, read from a copy of the table in workgroup memory
// (each invocation copies 16 of its vec4, one barrier): whether staging an operand in workgroup
// memory makes per-lane loads cheaper on this adapter.
var<workgroup> wtable: array<vec4<f32>, 1024>;

@compute @workgroup_size(64)
fn workgroup_lanes(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < 16u; j++) { wtable[lid * 16u + j] = stable[lid * 16u + j]; }
    workgroupBarrier();
    var acc = vec4<f32>(0.0);
    var idx = (gid.x * 7u) & 1023u;
    for (var i = 0u; i < LOADS; i++) {
        idx = (idx + 97u + i) & 1023u;
        acc += wtable[idx];
    }
    out[gid.x] = dot(acc, vec4<f32>(1.0));
}
