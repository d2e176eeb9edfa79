//! Timing shared by the examples that feed the comparison scripts (benches/compare_*.py).

use vlsa::kernels::Gpu;

/// Median wall time in ms of `reps` runs of `run`, each followed by a device sync, after one
/// untimed warm-up run (pipeline compilation, buffer pool).
pub fn median_ms(mut run: impl FnMut(), gpu: &Gpu, reps: usize) -> f64 {
    run();
    gpu.sync().unwrap();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            run();
            gpu.sync().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
