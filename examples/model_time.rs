//! Times the whole model at one batch size, for benches/compare_model.py.
//!
//! `cargo run --release --example model_time -- CONFIG.json BATCH REPS` prints one line of
//! `key=value` pairs: median wall time (ms, device synced) of a forward pass without gradient
//! and of a training step's forward + loss + backward, and the dispatches and submits of each.

use std::path::Path;
use std::sync::Arc;

use vlsa::config::Config;
use vlsa::model::Model;
use vlsa::{Gpu, Tensor};

mod timing;
use timing::median_ms;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, batch, reps] = &args[..] else { panic!("usage: model_time CONFIG.json BATCH REPS") };
    let (b, reps): (usize, usize) = (batch.parse().unwrap(), reps.parse().unwrap());
    let text = std::fs::read_to_string(Path::new(config)).unwrap();
    let gpu = Gpu::new().unwrap();
    let model = Model::init(&gpu, Config::from_json(&text, config).unwrap(), 0).unwrap();
    let (s, k) = (model.config.image_size, model.config.num_classes());
    let input: Vec<f32> = (0..b * 3 * s * s).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let input = Tensor::from_vec(&gpu, &input, &[b, 3, s, s]).unwrap();
    let target: Vec<u32> = (0..b * s * s).map(|i| (i / 97 % k) as u32).collect();
    let target = Arc::new(gpu.upload(&target).unwrap());
    let forward = || drop(vlsa::no_grad(|| model.forward(&input)).unwrap());
    let train = || {
        let out = model.forward(&input).unwrap();
        let loss = model.loss(&out.logits_up, &target).unwrap();
        vlsa::backward(&loss).unwrap();
        for (_, p) in model.parameters() {
            p.zero_grad();
        }
    };
    let forward_ms = median_ms(forward, &gpu, reps);
    let train_ms = median_ms(train, &gpu, reps);
    let fwd = vlsa::profile::profile_model(&model, b, false, 0).unwrap();
    let step = vlsa::profile::profile_model(&model, b, true, 0).unwrap();
    println!(
        "forward_ms={forward_ms:.2} train_ms={train_ms:.2} forward_dispatches={} train_dispatches={} forward_submits={} train_submits={}",
        fwd.dispatches, step.dispatches, fwd.submits, step.submits
    );
}
