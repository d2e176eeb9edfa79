//! Memory soak: N training steps of a tiny model (a checkpoint and a validation every 20 steps,
//! as a real run does) with the GPU buffer pool's bytes and the process's resident memory sampled
//! every 5 steps. After a warm-up of 20 steps both must be flat: the GPU pool exactly (every step
//! asks for the same buffers, so a pool that grows is a leak), the bytes in use after each step
//! exactly the same, and the resident memory's maximum over the second half no more than
//! `RSS_TOLERANCE` above its maximum over the first half.
//!
//! `VLSA_SOAK_STEPS=N` sets the number of steps (default 60; the README gives a 1000-step run).

mod common;

use std::path::PathBuf;

use vlsa::config::Config;
use vlsa::model::Model;
use vlsa::train::{validation_dice, TrainOptions, Trainer};

const WARM_UP: usize = 20;
const EVERY: usize = 5;
/// Resident memory may move by allocator noise (glibc keeps freed chunks in per-thread arenas,
/// and lavapipe's worker threads allocate on their own); between the halves of a 60- and a
/// 1000-step run it moved by less than 0.1 MiB. 4 MiB lets such noise pass and still catches a
/// leak of 4 MiB / (N / 2) per step: 140 KiB a step at 60 steps (one batch's host input and
/// target are 64 KiB here), 8 KiB a step at 1000 steps.
const RSS_TOLERANCE: u64 = 4 << 20;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-soak-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max(v: &[u64]) -> u64 {
    v.iter().copied().max().unwrap_or(0)
}

#[test]
fn gpu_pool_and_resident_memory_stay_flat_while_training() {
    let steps: usize =
        std::env::var("VLSA_SOAK_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(60).max(2 * WARM_UP);
    let gpu = common::gpu();
    let dir = temp_dir("run");
    let data = common::squares(&dir.join("data"), 8, 32, 11);
    let config = Config::from_json(
        r#"{"image_size": 32, "patch_size": 8, "vision": {"width": 16, "layers": 1, "heads": 2}, "text_dim": 8,
            "classes": ["background", "square"], "decoder": {"width": 16, "layers": 1, "heads": 2}, "em": {"bases": 4}}"#,
        "soak",
    )
    .unwrap();
    let model = Model::init(gpu, config, 1).unwrap();
    let mut trainer = Trainer::new(model, TrainOptions { batch: 4, ..TrainOptions::new(steps) }, data.clone()).unwrap();
    let checkpoint = dir.join("soak.safetensors");
    let (mut pool, mut rss, mut in_use) = (Vec::new(), Vec::new(), Vec::new());
    let clock = std::time::Instant::now();
    for step in 1..=steps {
        let entry = trainer.step().unwrap();
        assert!(entry.loss.is_finite(), "step {step}: loss {}", entry.loss);
        if step % 20 == 0 {
            trainer.save_checkpoint(&checkpoint).unwrap();
            validation_dice(&trainer.model, &data, 4).unwrap();
        }
        if step > WARM_UP && step % EVERY == 0 {
            let stats = gpu.pool_stats();
            pool.push(stats.allocated_bytes);
            in_use.push(stats.in_use_bytes);
            rss.push(resident_bytes());
        }
    }
    let seconds = clock.elapsed().as_secs_f64();
    let half = pool.len() / 2;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{steps} steps in {seconds:.1} s; GPU pool {:.3} MiB allocated (max first half {:.3}, second half {:.3}), {:.3} MiB in use after each step; RSS max first half {:.1} MiB, second half {:.1} MiB (min {:.1})",
        mib(pool[0]), mib(max(&pool[..half])), mib(max(&pool[half..])), mib(in_use[0]),
        mib(max(&rss[..half])), mib(max(&rss[half..])), mib(*rss.iter().min().unwrap())
    );
    assert!(pool.iter().all(|&p| p == pool[0]), "the GPU pool grew after warm-up: {pool:?}");
    assert!(in_use.iter().all(|&b| b == in_use[0]), "buffers in use after a step changed after warm-up: {in_use:?}");
    assert!(
        max(&rss[half..]) <= max(&rss[..half]) + RSS_TOLERANCE,
        "resident memory grew: {:?} MiB",
        rss.iter().map(|&r| mib(r)).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
