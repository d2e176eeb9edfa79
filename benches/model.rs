//! The whole VLSA model at the default configuration (configs/fundus-tiny.json: image 128,
//! patch 8, width 192, 4 layers, decoder 128 x 2, M = 16): forward without gradient and a
//! training step's forward + loss + backward, at batch 1 and 8. Throughput is images/s
//! (criterion "elements"); the dispatches and submits per pass are printed before each group.

mod common;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa::config::Config;
use vlsa::model::Model;
use vlsa::Tensor;

fn model(c: &mut Criterion) {
    let gpu = common::gpu();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/fundus-tiny.json");
    let config = Config::from_json(&std::fs::read_to_string(path).unwrap(), path).unwrap();
    let model = Model::init(&gpu, config, 0).unwrap();
    let (s, k) = (model.config.image_size, model.config.num_classes());
    let mut group = c.benchmark_group("model");
    group.sample_size(10);
    for b in [1usize, 8] {
        let input = Tensor::from_vec(&gpu, &common::data(b * 3 * s * s, 1), &[b, 3, s, s]).unwrap();
        let target: Vec<u32> = (0..b * s * s).map(|i| (i / 97 % k) as u32).collect();
        let target = Arc::new(gpu.upload(&target).unwrap());
        for backward in [false, true] {
            let counted = vlsa::profile::profile_model(&model, b, backward, 0).unwrap();
            let name = if backward { "train_step" } else { "forward" };
            eprintln!("model/{name}/b{b}: {} dispatches and {} submits per pass", counted.dispatches, counted.submits);
            common::bench_gpu(&mut group, &format!("{name}/b{b}"), &gpu, Throughput::Elements(b as u64), || {
                if backward {
                    let out = model.forward(&input).unwrap();
                    let loss = model.loss(&out.logits_up, &target).unwrap();
                    vlsa::backward(&loss).unwrap();
                    for (_, p) in model.parameters() {
                        p.zero_grad();
                    }
                } else {
                    drop(vlsa::no_grad(|| model.forward(&input)).unwrap());
                }
            });
        }
    }
    group.finish();
}

criterion_group!(benches, model);
criterion_main!(benches);
