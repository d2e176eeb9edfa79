// Work with no other purpose than keeping every worker thread of a software adapter busy for a
// moment, so that the context can tell the driver's worker threads from its other threads by
// the CPU time they take (kernels/src/cpu_threads.rs; Gpu::from_adapter). Each invocation runs a
// chain of `iters` dependent multiply-adds and stores its end, so nothing can be left out.

struct Params {
    iters: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn busy(@builtin(global_invocation_id) gid: vec3<u32>) {
    var x = f32(gid.x) * 1e-3;
    for (var i = 0u; i < p.iters; i++) {
        x = fma(x, 0.999, 0.5);
    }
    out[gid.x] = x;
}
