//! Model files: init, save and load round trip; every loading problem is one clear error.

mod common;

use std::collections::BTreeMap;

use vlsa::config::Config;
use vlsa::model::{expected_tensors, Model};
use vlsa::weights::{HostTensor, TensorFile, CONFIG_KEY};

fn tiny() -> Config {
    Config::from_json(
        r#"{"image_size": 16, "patch_size": 8, "vision": {"width": 8, "layers": 1, "heads": 2},
            "text_dim": 6, "classes": ["bg", "a", "b"], "decoder": {"width": 8, "layers": 1, "heads": 2}, "em": {"bases": 3}}"#,
        "tiny",
    )
    .unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-model-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn init_save_load_round_trip_in_f32_and_f16() {
    let gpu = common::gpu();
    let model = Model::init(gpu, tiny(), 7).unwrap();
    let path = temp("m.safetensors");
    model.save(&path, false).unwrap();
    let back = Model::load(gpu, &path).unwrap();
    assert_eq!(back.config, model.config);
    for (name, t) in &model.tensors {
        assert_eq!(back.get(name).unwrap().to_vec().unwrap(), t.to_vec().unwrap(), "{name}");
    }
    model.save(&path, true).unwrap();
    let half = Model::load(gpu, &path).unwrap();
    let a = model.get("head.visual_proj.weight").unwrap().to_vec().unwrap();
    let b = half.get("head.visual_proj.weight").unwrap().to_vec().unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-3 * x.abs().max(1e-2)), "f16 storage keeps ~3 digits");
    // A forward pass runs and gives finite logits of the right shape.
    let input = vlsa::Tensor::zeros(gpu, &[2, 3, 16, 16]).unwrap();
    let out = vlsa::no_grad(|| model.forward(&input)).unwrap();
    assert_eq!(out.logits_up.shape(), &[2, 3, 16, 16]);
    assert!(out.logits_up.to_vec().unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn loading_problems_name_the_tensor() {
    let gpu = common::gpu();
    let config = tiny();
    let full: BTreeMap<String, HostTensor> = expected_tensors(&config)
        .into_iter()
        .map(|(n, s)| (n, HostTensor::new(&s, vec![0.1; s.iter().product()])))
        .collect();
    let mut missing = full.clone();
    missing.remove("head.em.norm.bias");
    let e = Model::from_host(gpu, config.clone(), missing, "f").err().unwrap().to_string();
    assert!(e.contains("head.em.norm.bias") && e.contains("missing"), "{e}");
    let mut extra = full.clone();
    extra.insert("head.surprise".into(), HostTensor::new(&[1], vec![0.0]));
    let e = Model::from_host(gpu, config.clone(), extra, "f").err().unwrap().to_string();
    assert!(e.contains("head.surprise"), "{e}");
    let mut wrong = full.clone();
    wrong.insert("head.logit_scale".into(), HostTensor::new(&[2], vec![0.0; 2]));
    let e = Model::from_host(gpu, config.clone(), wrong, "f").err().unwrap().to_string();
    assert!(e.contains("head.logit_scale") && e.contains("[2]") && e.contains("[1]"), "{e}");
    let mut nan = full.clone();
    nan.insert("head.logit_scale".into(), HostTensor::new(&[1], vec![f32::NAN]));
    assert!(Model::from_host(gpu, config.clone(), nan, "f").err().unwrap().to_string().contains("non-finite"));
    // A file without a config, and a truncated file.
    let file = TensorFile { tensors: full, ..TensorFile::default() };
    let path = temp("noconfig.safetensors");
    file.write(&path, false).unwrap();
    let e = Model::load(gpu, &path).err().unwrap().to_string();
    assert!(e.contains(CONFIG_KEY), "{e}");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = Model::load(gpu, &path).err().unwrap().to_string();
    assert!(e.contains("noconfig.safetensors"), "{e}");
}
