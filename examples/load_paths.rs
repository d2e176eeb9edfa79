//! Load-path probe for kernel authors: how fast the adapter runs a vec4 load from a uniform
//! block and from a storage buffer, with a different address in every lane (a gather) and with
//! one address for the whole workgroup, and from workgroup memory (shaders/load_paths.wgsl). On
//! lavapipe this is the question behind the matmul's speed: every product there is limited by
//! how its operand loads compile.
//!
//! `cargo run --release --example load_paths [-- REPS]` prints one line per entry point:
//! `ENTRY ms Gloads/s checksum` (median wall time of one dispatch of 65,536 invocations x 1024
//! vec4 loads, with a device sync; the checksum shows every address space read the same table),
//! then `alu_ceiling ms GFLOP/s`: the same dispatch with multiply-adds on registers only, the
//! arithmetic ceiling any product kernel on this adapter stays under.

use vlsa::kernels::pipeline::Shader;
use vlsa::kernels::{grid, Dispatch, Gpu, KernelLabel};

mod timing;
use timing::median_ms;

static SHADER: Shader = Shader {
    file: "load_paths.wgsl",
    source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/load_paths.wgsl")),
};

const INVOCATIONS: usize = 65_536;
const LOADS: f64 = 1024.0;
const ALU_STEPS: f64 = 256.0;

fn main() {
    let reps: usize = std::env::args().nth(1).map(|a| a.parse().expect("usage: load_paths [REPS]")).unwrap_or(5);
    let gpu = Gpu::new().expect("a GPU adapter");
    let limits = gpu.limits();
    eprintln!(
        "adapter: {} (a uniform binding holds at most {} bytes, {} per stage)",
        gpu.info().name,
        limits.max_uniform_buffer_binding_size,
        limits.max_uniform_buffers_per_shader_stage
    );
    let table: Vec<f32> = (0..4096).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
    let stable = gpu.upload(&table).unwrap();
    let out = gpu.alloc(INVOCATIONS).unwrap();
    // Median time of one dispatch of `entry` over the whole grid.
    let time = |entry: &'static str| {
        let run = || {
            gpu.dispatch(Dispatch {
                shader: &SHADER,
                entry,
                params: bytemuck::cast_slice(&table),
                buffers: &[&stable, &out],
                workgroups: grid((INVOCATIONS / 64) as u32),
                label: KernelLabel { kernel: "load_paths", shape: entry.into(), flops: 0, bytes: 0 },
            })
            .unwrap()
        };
        median_ms(run, &gpu, reps)
    };
    let mut sums = Vec::new();
    for entry in ["uniform_lanes", "storage_lanes", "uniform_uniform", "storage_uniform", "workgroup_lanes"] {
        let ms = time(entry);
        let sum: f64 = gpu.download(&out).unwrap().iter().map(|&v| v as f64).sum();
        println!("{entry} {ms:.2} {:.3} {sum:.6e}", INVOCATIONS as f64 * LOADS / (ms * 1e-3) / 1e9);
        sums.push(sum);
    }
    // The arithmetic ceiling: the same dispatch with multiply-adds only (no loads).
    let ms = time("alu_ceiling");
    let flops = INVOCATIONS as f64 * ALU_STEPS * 8.0 * 16.0 * 2.0;
    let finite = gpu.download(&out).unwrap().iter().all(|v| v.is_finite());
    println!("alu_ceiling {ms:.2} {:.1} GFLOP/s", flops / (ms * 1e-3) / 1e9);
    if !finite {
        eprintln!("load_paths: alu_ceiling produced a non-finite value");
        std::process::exit(1);
    }
    // Each pair reads the same table through two address spaces, and workgroup_lanes reads
    // storage_lanes' addresses from a workgroup copy: the same sums, bit for bit.
    if sums[0] != sums[1] || sums[2] != sums[3] || sums[4] != sums[1] {
        eprintln!("load_paths: the uniform and storage reads disagree: {sums:?}");
        std::process::exit(1);
    }
}
