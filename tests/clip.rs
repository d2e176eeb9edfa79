//! A Hugging Face CLIPVisionModel checkpoint as vlsa's vision encoder: `vision.features` match
//! transformers' `post_layernorm(last_hidden_state[:, 1:])` (tests/fixtures/clip_tiny, made by
//! tests/reference/clip_fixture.py), at the checkpoint's size and with bicubic-interpolated
//! position embeddings at 48x48.

mod common;

use std::path::{Path, PathBuf};

use vlsa::clip::ClipVision;
use vlsa::config::Config;
use vlsa::model::Model;
use vlsa::weights::TensorFile;
use vlsa::Tensor;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny")
}

fn config(image_size: usize) -> Config {
    let json = format!(
        r#"{{"image_size": {image_size}, "patch_size": 8,
        "vision": {{"width": 32, "layers": 2, "heads": 2, "mlp_ratio": 4, "act": "quick_gelu"}},
        "text_dim": 8, "classes": ["background", "organ"],
        "decoder": {{"width": 16, "layers": 1, "heads": 2}}, "em": {{"bases": 4}}}}"#
    );
    Config::from_json(&json, "test config").unwrap()
}

fn features_match(image_size: usize, input: &str, want: &str) {
    let gpu = common::gpu();
    let clip = ClipVision::load(&fixture()).unwrap();
    let model = Model::init_with_clip(gpu, config(image_size), &clip, 7).unwrap();
    let reference = TensorFile::read(&fixture().join("reference.safetensors")).unwrap();
    let x = &reference.tensors[input];
    let out = vlsa::no_grad(|| model.forward(&Tensor::from_vec(gpu, &x.data, &x.shape).unwrap())).unwrap();
    let want = &reference.tensors[want];
    assert_eq!(out.vision_features.shape(), &want.shape[..]);
    let want: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
    common::assert_close(
        &format!("CLIP features at {image_size}"),
        &out.vision_features.to_vec().unwrap(),
        &want,
        0.0,
        1e-4,
    );
}

#[test]
fn clip_checkpoint_matches_transformers() {
    features_match(32, "pixel_values", "features");
}

#[test]
fn interpolated_position_embeddings_match_transformers() {
    features_match(48, "pixel_values_48", "features_48");
}

#[test]
fn unprefixed_names_and_mismatches() {
    // transformers 5 saves CLIPVisionModel without the `vision_model.` prefix: same encoder.
    let dir = std::env::temp_dir().join(format!("vlsa-clip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let mut file = TensorFile::read(&fixture().join("model.safetensors")).unwrap();
    file.tensors =
        file.tensors.into_iter().map(|(n, t)| (n.trim_start_matches("vision_model.").to_string(), t)).collect();
    file.write(&dir.join("model.safetensors"), false).unwrap();
    let a = ClipVision::load(&fixture()).unwrap();
    let b = ClipVision::load(&dir).unwrap();
    assert_eq!(a.tensors, b.tensors);

    let mut wide = config(32);
    wide.vision.width = 64;
    wide.vision.heads = 4;
    let e = a.check(&wide).unwrap_err().to_string();
    assert!(e.contains("vision.width is 64") && e.contains("hidden_size 32"), "{e}");
    let e = ClipVision::load(&dir.join("nowhere.safetensors")).unwrap_err().to_string();
    assert!(e.contains("nowhere.safetensors"), "{e}");
    let e = ClipVision::load(&dir.join("missing/model.safetensors")).unwrap_err().to_string();
    assert!(e.contains("missing/config.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_misshaped_or_non_finite_tensor_is_refused() {
    let name = "vision_model.encoder.layers.1.mlp.fc1.weight";
    let check = |change: &dyn Fn(&mut ClipVision)| {
        let mut clip = ClipVision::load(&fixture()).unwrap();
        change(&mut clip);
        clip.tensors_for(&config(32)).unwrap_err().to_string()
    };
    let e = check(&|c| {
        c.tensors.remove(name);
    });
    assert!(e.contains(name) && e.contains("is missing"), "{e}");
    let e = check(&|c| c.tensors.get_mut(name).unwrap().shape.reverse());
    assert!(e.contains(name) && e.contains("has shape [32, 128] but [128, 32] is needed"), "{e}");
    let e = check(&|c| c.tensors.get_mut(name).unwrap().data[5] = f32::NAN);
    assert!(e.contains(name) && e.contains("non-finite value at element 5"), "{e}");
    // At 48 px the position embeddings are resized first; a NaN in them is still refused.
    let mut clip = ClipVision::load(&fixture()).unwrap();
    clip.tensors.get_mut("vision_model.embeddings.position_embedding.weight").unwrap().data[0] = f32::INFINITY;
    let e = clip.tensors_for(&config(48)).unwrap_err().to_string();
    assert!(e.contains("position_embedding") && e.contains("non-finite"), "{e}");
}
