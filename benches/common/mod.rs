//! Shared bench plumbing: one GPU per bench binary, and a timing loop that syncs the device
//! inside the measured region so criterion sees GPU time, not recording time.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use criterion::{measurement::WallTime, BenchmarkGroup, Throughput};
use vlsa_kernels::Gpu;

/// Opens the GPU (honours VLSA_ADAPTER and WGPU_BACKEND) and prints which one runs the bench.
pub fn gpu() -> Gpu {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("benches need a GPU adapter: {e}"));
    eprintln!("adapter: {} ({}, {})", gpu.info().name, gpu.info().backend, gpu.info().device_type);
    gpu
}

/// Benchmarks `launch` (which records one or more dispatches) with a device sync inside the
/// timing. `work` is the FLOPs (as criterion "elements") or bytes per call.
pub fn bench_gpu(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    gpu: &Gpu,
    work: Throughput,
    mut launch: impl FnMut(),
) {
    // Warm up: compile pipelines and fill the buffer pool outside the measurement.
    launch();
    gpu.sync().expect("GPU failed during warm-up");
    group.throughput(work);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                launch();
            }
            gpu.sync().expect("GPU failed during the benchmark");
            start.elapsed()
        })
    });
}

/// Deterministic pseudo-random data in [-1, 1).
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    vlsa::random::Rng::new(seed).vec(n)
}

/// Short measurement settings: lavapipe is slow and CI machines have two cores.
pub fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
}
