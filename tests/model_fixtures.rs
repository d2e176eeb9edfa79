//! The whole model against the independent PyTorch reference (tests/reference/vlsa_ref.py):
//! forward intermediates, loss, every parameter gradient and the bases update, in both EM
//! gradient modes and with sub-token logits (`decoder.upsample`), at atol 1e-4 / rtol 1e-3.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use vlsa::model::{expected_tensors, Model};
use vlsa::weights::TensorFile;
use vlsa::{backward, Tensor};

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-4;

fn compare(what: &str, got: &[f32], want: &[f32]) {
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    common::assert_close(what, got, &want, RTOL, ATOL);
}

fn check_fixture(file: &str, trainable: usize) {
    let gpu = common::gpu();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
    let mut fixture = TensorFile::read(&path).unwrap();
    let config = fixture.config(file).unwrap();
    let mut params = BTreeMap::new();
    for (name, _) in expected_tensors(&config) {
        params.insert(name.clone(), fixture.tensors.remove(&name).unwrap_or_else(|| panic!("fixture lacks {name}")));
    }
    let model = Model::from_host(gpu, config.clone(), params, file).unwrap();
    let dump = &fixture.tensors;
    let input = &dump["input"];
    let input = Tensor::from_vec(gpu, &input.data, &input.shape).unwrap();
    let out = model.forward(&input).unwrap();
    for (name, t) in out.named() {
        let want = dump.get(name).unwrap_or_else(|| panic!("fixture lacks {name}"));
        assert_eq!(t.shape(), &want.shape[..], "{file}: shape of {name}");
        compare(&format!("{file} {name}"), &t.to_vec().unwrap(), &want.data);
    }
    let target: Vec<u32> = dump["target"].data.iter().map(|&v| v as u32).collect();
    let target = Arc::new(gpu.upload(&target).unwrap());
    let loss = model.loss(&out.logits_up, &target).unwrap();
    compare(&format!("{file} loss"), &loss.to_vec().unwrap(), &dump["loss"].data);
    backward(&loss).unwrap();
    let mut checked = 0;
    for (name, p) in model.parameters() {
        let want = dump.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("fixture lacks grad.{name}"));
        let got = match p.grad() {
            Some(g) => g.to_vec().unwrap(),
            None => vec![0.0; p.numel()],
        };
        compare(&format!("{file} grad.{name}"), &got, &want.data);
        checked += 1;
    }
    assert_eq!(checked, trainable, "every trainable parameter's gradient is compared");
    model.update_bases(out.em_mu.as_ref().unwrap()).unwrap();
    compare(
        &format!("{file} em.bases_next"),
        &model.get("head.em.bases").unwrap().to_vec().unwrap(),
        &dump["em.bases_next"].data,
    );
}

#[test]
fn detached_model_matches_pytorch_reference() {
    check_fixture("vlsa_tiny_detached.safetensors", 104);
}

#[test]
fn unrolled_model_matches_pytorch_reference() {
    check_fixture("vlsa_tiny_unrolled.safetensors", 104);
}

#[test]
fn sub_token_model_matches_pytorch_reference() {
    // decoder.upsample 2: the Linear to 2 x 2 sub-tokens and the pixel shuffle before the head.
    check_fixture("vlsa_tiny_upsample.safetensors", 106);
}
