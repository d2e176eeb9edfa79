use std::path::Path;
use std::sync::Arc;
use vlsa::config::Config;
use vlsa::model::Model;
use vlsa::{Gpu, Tensor};
fn main() {
    let gpu = Gpu::new().unwrap();
    let config = "configs/fundus-tiny.json";
    let text = std::fs::read_to_string(Path::new(config)).unwrap();
    let model = Model::init(&gpu, Config::from_json(&text, config).unwrap(), 0).unwrap();
    let b = 8;
    let (s, k) = (model.config.image_size, model.config.num_classes());
    let input: Vec<f32> = (0..b * 3 * s * s).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let input = Tensor::from_vec(&gpu, &input, &[b, 3, s, s]).unwrap();
    let target: Vec<u32> = (0..b * s * s).map(|i| (i / 97 % k) as u32).collect();
    let target = Arc::new(gpu.upload(&target).unwrap());
    for rep in 0..6 {
        let t0 = std::time::Instant::now();
        let out = model.forward(&input).unwrap();
        let t1 = t0.elapsed().as_secs_f64() * 1e3;
        let loss = model.loss(&out.logits_up, &target).unwrap();
        let t2 = t0.elapsed().as_secs_f64() * 1e3;
        vlsa::backward(&loss).unwrap();
        let t3 = t0.elapsed().as_secs_f64() * 1e3;
        for (_, p) in model.parameters() {
            p.zero_grad();
        }
        gpu.sync().unwrap();
        let t4 = t0.elapsed().as_secs_f64() * 1e3;
        println!("rep {rep}: fwd-record {t1:.1} loss {t2:.1} bwd-record {t3:.1} total {t4:.1}");
    }
}
