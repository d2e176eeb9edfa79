//! Sub-token logits (`decoder.upsample`, docs/DESIGN.md step 10): the pixel shuffle's order, a
//! model with sub-tokens against the same model without them, the configuration's checks, and
//! `Model::init_from`, which starts a model with sub-tokens from a trained one. The gradients
//! through the shuffle are checked in tests/autograd.rs.

mod common;

use vlsa::config::Config;
use vlsa::model::{expected_tensors, Model};
use vlsa::weights::{HostTensor, TensorFile};
use vlsa::{no_grad, Tensor};

fn config(upsample: usize) -> Config {
    let decoder = if upsample == 1 {
        r#"{"width": 8, "layers": 1, "heads": 2}"#.to_string()
    } else {
        format!(r#"{{"width": 8, "layers": 1, "heads": 2, "upsample": {upsample}}}"#)
    };
    Config::from_json(
        &format!(
            r#"{{"image_size": 24, "patch_size": 8, "vision": {{"width": 8, "layers": 1, "heads": 2}},
                "text_dim": 6, "classes": ["bg", "a", "b"], "decoder": {decoder}, "em": {{"bases": 3}}}}"#
        ),
        "sub-tokens",
    )
    .unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-sub-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A [B,3,24,24] input with some structure, the same every call.
fn input() -> Tensor {
    let data: Vec<f32> = (0..2 * 3 * 24 * 24).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    Tensor::from_vec(common::gpu(), &data, &[2, 3, 24, 24]).unwrap()
}

#[test]
fn pixel_shuffle_places_sub_token_i_j_of_token_y_x_at_yr_plus_i_xr_plus_j() {
    let gpu = common::gpu();
    for (b, g, r, c) in [(2, 3, 2, 5), (1, 2, 4, 3), (3, 1, 3, 2), (1, 4, 1, 4)] {
        // Each value encodes where it comes from: batch, token, sub-token, channel.
        let code = |bi: usize, t: usize, s: usize, ch: usize| (((bi * 100 + t) * 100 + s) * 10 + ch) as f32;
        let mut data = Vec::new();
        for bi in 0..b {
            for t in 0..g * g {
                for s in 0..r * r {
                    for ch in 0..c {
                        data.push(code(bi, t, s, ch));
                    }
                }
            }
        }
        let x = Tensor::from_vec(gpu, &data, &[b, g * g, r * r * c]).unwrap();
        let out = x.pixel_shuffle(g, r).unwrap();
        let side = g * r;
        assert_eq!(out.shape(), &[b, side * side, c]);
        let got = out.to_vec().unwrap();
        for bi in 0..b {
            for py in 0..side {
                for px in 0..side {
                    let (t, s) = ((py / r) * g + px / r, (py % r) * r + px % r);
                    for ch in 0..c {
                        let at = ((bi * side + py) * side + px) * c + ch;
                        assert_eq!(got[at], code(bi, t, s, ch), "b {b} g {g} r {r}: pixel ({py}, {px}) channel {ch}");
                    }
                }
            }
        }
    }
    let x = Tensor::zeros(gpu, &[1, 4, 12]).unwrap();
    let e = x.pixel_shuffle(3, 2).err().unwrap().to_string();
    assert!(e.contains("[1, 4, 12]"), "{e}");
    let e = Tensor::zeros(gpu, &[1, 4, 10]).unwrap().pixel_shuffle(2, 2).err().unwrap().to_string();
    assert!(e.contains("[1, 4, 10]"), "{e}");
}

#[test]
fn a_fresh_model_with_sub_tokens_is_the_model_without_them_on_a_finer_grid() {
    let gpu = common::gpu();
    let plain = Model::init(gpu, config(1), 5).unwrap();
    for r in [2, 4] {
        let model = Model::init(gpu, config(r), 5).unwrap();
        // The same seed draws every other tensor alike (the sub-token projection draws nothing).
        for (name, t) in &plain.tensors {
            assert_eq!(model.get(name).unwrap().to_vec().unwrap(), t.to_vec().unwrap(), "{name}");
        }
        let w = model.get("head.decoder.upsample.weight").unwrap();
        assert_eq!(w.shape(), &[8 * r * r, 8]);
        let (a, b) = no_grad(|| Ok::<_, vlsa::Error>((plain.forward(&input())?, model.forward(&input())?))).unwrap();
        let (g, k) = (3, 3);
        assert_eq!(b.logits.shape(), &[2, k, g * r, g * r]);
        assert_eq!(b.logits_up.shape(), &[2, k, 24, 24]);
        // Stacked identities: every sub-token is its token, so logit (y r + i, x r + j) is the
        // plain model's logit (y, x).
        let (la, lb) = (a.logits.to_vec().unwrap(), b.logits.to_vec().unwrap());
        let side = g * r;
        for bk in 0..2 * k {
            for py in 0..side {
                for px in 0..side {
                    let want = la[(bk * g + py / r) * g + px / r];
                    let got = lb[(bk * side + py) * side + px];
                    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "r {r}: ({py}, {px}) {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn sub_token_logits_follow_their_own_projection() {
    // With a random projection each sub-token differs; the logits must be s * cos(W_ij x + b_ij,
    // t_k) of the decoder output x of its token, computed here on the host in f64.
    let gpu = common::gpu();
    let r = 2;
    let cfg = config(r);
    let fresh = Model::init(gpu, cfg.clone(), 9).unwrap();
    let mut host: std::collections::BTreeMap<String, HostTensor> =
        fresh.tensors.iter().map(|(n, t)| (n.clone(), HostTensor::new(t.shape(), t.to_vec().unwrap()))).collect();
    let mut rng = common::Rng::new(3);
    host.insert("head.decoder.upsample.weight".into(), HostTensor::new(&[32, 8], rng.vec(32 * 8)));
    host.insert("head.decoder.upsample.bias".into(), HostTensor::new(&[32], rng.vec(32)));
    let model = Model::from_host(gpu, cfg, host.clone(), "test").unwrap();
    let out = no_grad(|| model.forward(&input())).unwrap();
    let x = out.decoder_out.to_vec().unwrap();
    let t = out.text.to_vec().unwrap();
    let scale = (host["head.logit_scale"].data[0] as f64).exp().min(100.0);
    let (w, bias) = (&host["head.decoder.upsample.weight"].data, &host["head.decoder.upsample.bias"].data);
    let logits = out.logits.to_vec().unwrap();
    let (g, c, k, side) = (3, 8, 3, 6);
    for b in 0..2 {
        for token in 0..g * g {
            let xt = &x[(b * g * g + token) * c..][..c];
            for s in 0..r * r {
                let v: Vec<f64> = (0..c)
                    .map(|o| {
                        let row = &w[(s * c + o) * c..][..c];
                        bias[s * c + o] as f64 + row.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                    })
                    .collect();
                let (py, px) = ((token / g) * r + s / r, (token % g) * r + s % r);
                for kk in 0..k {
                    let tk = &t[kk * c..][..c];
                    let dot: f64 = v.iter().zip(tk).map(|(a, b)| a * *b as f64).sum();
                    let nv = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                    let nt = tk.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                    let want = scale * dot / (nv.max(1e-12) * nt.max(1e-12));
                    let got = logits[((b * k + kk) * side + py) * side + px] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "b {b} class {kk} ({py}, {px}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn upsample_is_checked_and_written_only_when_used() {
    assert!(!config(1).to_json().contains("upsample"), "the default is not written");
    assert!(config(2).to_json().contains("\"upsample\":2"));
    assert!(expected_tensors(&config(1)).iter().all(|(n, _)| !n.contains("upsample")));
    let names: Vec<_> = expected_tensors(&config(4)).into_iter().filter(|(n, _)| n.contains("upsample")).collect();
    assert_eq!(
        names,
        [
            ("head.decoder.upsample.weight".to_string(), vec![128, 8]),
            ("head.decoder.upsample.bias".to_string(), vec![128])
        ]
    );
    for bad in [0, 3, 16] {
        let json = format!(
            r#"{{"image_size": 24, "patch_size": 8, "vision": {{"width": 8, "layers": 1, "heads": 2}}, "text_dim": 6,
                "classes": ["bg", "a"], "decoder": {{"width": 8, "layers": 1, "heads": 2, "upsample": {bad}}}, "em": {{"bases": 0}}}}"#
        );
        let e = Config::from_json(&json, "c").err().unwrap().to_string();
        assert!(e.contains(&format!("decoder.upsample {bad}")) && e.contains("patch_size 8"), "{e}");
    }
}

#[test]
fn init_from_keeps_what_matches_and_initialises_the_rest() {
    let gpu = common::gpu();
    let trained = Model::init(gpu, config(1), 21).unwrap();
    let path = temp("trained.safetensors");
    trained.save(&path, false).unwrap();
    let (model, fresh) = Model::init_from(gpu, config(2), 4, &path).unwrap();
    assert_eq!(fresh, ["head.decoder.upsample.bias", "head.decoder.upsample.weight"]);
    for (name, t) in &trained.tensors {
        assert_eq!(model.get(name).unwrap().to_vec().unwrap(), t.to_vec().unwrap(), "{name} is kept");
    }
    let same_seed = Model::init(gpu, config(2), 4).unwrap();
    for name in &fresh {
        let (a, b) = (model.get(name).unwrap().to_vec().unwrap(), same_seed.get(name).unwrap().to_vec().unwrap());
        assert_eq!(a, b, "{name} as init draws it");
    }
    // A tensor of another shape is initialised afresh too, not taken.
    let mut file = TensorFile::read(&path).unwrap();
    file.tensors.insert("head.logit_scale".into(), HostTensor::new(&[2], vec![1.0, 2.0]));
    let odd = temp("odd.safetensors");
    file.write(&odd, false).unwrap();
    let (_, fresh) = Model::init_from(gpu, config(1), 4, &odd).unwrap();
    assert_eq!(fresh, ["head.logit_scale"]);
    // A file sharing nothing with the configuration is refused in one sentence.
    let other =
        TensorFile { tensors: [("x".to_string(), HostTensor::new(&[1], vec![0.0]))].into(), ..Default::default() };
    let none = temp("none.safetensors");
    other.write(&none, false).unwrap();
    let e = Model::init_from(gpu, config(2), 4, &none).err().unwrap().to_string();
    assert!(e.contains("none.safetensors") && e.contains("no tensor matches"), "{e}");
}
