//! The MiniLM-L6 text encoder against sentence-transformers: token ids and embeddings of the
//! inputs in `tests/fixtures/minilm_reference.json` (written by
//! `tests/reference/minilm_fixture.py`), loading errors, and class embeddings in a model.
//!
//! These need the model folder: `VLSA_MINILM_DIR`, or `.cache/minilm` where
//! `scripts/fetch-minilm.sh` puts it. Without it they print why and pass without checking.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;
use vlsa::text::{TextEncoder, Tokenizer};

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VLSA_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/minilm"));
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: no MiniLM model folder at {} (run scripts/fetch-minilm.sh or set VLSA_MINILM_DIR)",
            dir.display()
        );
        None
    }
}

struct Case {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect(),
            embedding: c["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
        })
        .collect()
}

fn encoder(dir: &Path) -> &'static TextEncoder {
    static ENCODER: std::sync::OnceLock<TextEncoder> = std::sync::OnceLock::new();
    ENCODER.get_or_init(|| TextEncoder::load(common::gpu(), dir).unwrap())
}

/// Checks cosine >= 0.9999 and max abs error <= 1e-4; returns both.
fn compare(what: &str, got: &[f32], want: &[f32]) -> (f64, f32) {
    assert_eq!(got.len(), want.len(), "{what}: width");
    let dot: f64 = got.iter().zip(want).map(|(&a, &b)| a as f64 * b as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
    let cosine = dot / (norm(got) * norm(want));
    let max_err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(cosine >= 0.9999 && max_err <= 1e-4, "{what}: cosine {cosine}, max abs error {max_err}");
    (cosine, max_err)
}

#[test]
fn token_ids_match_the_hugging_face_tokenizer() {
    let Some(dir) = model_dir() else { return };
    let mut tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    // sentence-transformers cuts at max_seq_length 256 (sentence_bert_config.json), not at
    // the tokenizer file's own 128; the encoder reads it from there.
    assert_eq!(tokenizer.max_length(), 128);
    tokenizer.set_max_length(256).unwrap();
    let cases = reference();
    assert!(cases.len() >= 20);
    for case in &cases {
        assert_eq!(tokenizer.encode(&case.text), case.ids, "token ids of {:?}", case.text);
    }
    assert_eq!(cases.iter().map(|c| c.ids.len()).max(), Some(256), "the fixture has a text past the maximum length");
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(dir) = model_dir() else { return };
    let encoder = encoder(&dir);
    assert_eq!((encoder.dim(), encoder.tokenizer().max_length()), (384, 256));
    let cases = reference();
    // All short texts in one call (one padded batch: padding must not change any row), the
    // 256-token text alone so the batch is not padded to 256.
    let (long, short): (Vec<&Case>, Vec<&Case>) = cases.iter().partition(|c| c.ids.len() > 64);
    let (mut worst_cosine, mut worst_err) = (1.0f64, 0.0f32);
    for group in [short, long] {
        let texts: Vec<&str> = group.iter().map(|c| c.text.as_str()).collect();
        let got = encoder.embed(&texts).unwrap();
        for (case, row) in group.iter().zip(got.chunks_exact(384)) {
            let (cosine, err) = compare(&format!("embedding of {:?}", case.text), row, &case.embedding);
            (worst_cosine, worst_err) = (worst_cosine.min(cosine), worst_err.max(err));
        }
    }
    eprintln!("{} texts: lowest cosine {worst_cosine:.7}, largest abs error {worst_err:.2e}", cases.len());
}

#[test]
fn a_text_embeds_the_same_alone_and_in_a_padded_batch() {
    let Some(dir) = model_dir() else { return };
    let encoder = encoder(&dir);
    let texts = ["optic cup", "the myocardium of the left ventricle, seen in a short-axis cine MRI slice"];
    let batch = encoder.embed(&texts).unwrap();
    let alone = encoder.embed(&texts[..1]).unwrap();
    let max_err = batch[..384].iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_err <= 1e-5, "padding changed the short text's embedding by {max_err}");
    let norm: f32 = batch[384..].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    assert!(encoder.embed(&[]).unwrap().is_empty());
    let e = encoder.embed_ids(&[vec![101, 102], vec![]]).unwrap_err().to_string();
    assert!(e.contains("at least one token"), "{e}");
    let e = encoder.embed_ids(&[vec![101, 40000, 102]]).unwrap_err().to_string();
    assert!(e.contains("40000") && e.contains("vocabulary"), "{e}");
}

#[test]
fn model_folder_problems_are_one_clear_error() {
    let Some(dir) = model_dir() else { return };
    let gpu = common::gpu();
    let scratch = std::env::temp_dir().join(format!("vlsa-text-encoder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let err = |d: &Path| TextEncoder::load(gpu, d).err().expect("loading must fail").to_string();

    let e = err(&scratch.join("nowhere"));
    assert!(e.contains("nowhere") && e.contains("not a folder"), "{e}");
    let e = err(&scratch);
    assert!(e.contains("config.json") && e.contains("missing"), "{e}");

    // A config that does not match the weights, then one vlsa cannot run.
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::copy(dir.join("tokenizer.json"), scratch.join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink(dir.join("model.safetensors"), scratch.join("model.safetensors")).unwrap();
    std::fs::write(scratch.join("config.json"), config.replace("\"num_hidden_layers\": 6", "\"num_hidden_layers\": 7"))
        .unwrap();
    let e = err(&scratch);
    assert!(e.contains("encoder.layer.6.attention.self.query.weight") && e.contains("missing"), "{e}");
    std::fs::write(
        scratch.join("config.json"),
        config.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
    )
    .unwrap();
    let e = err(&scratch);
    assert!(
        e.contains("encoder.layer.0.intermediate.dense.weight")
            && e.contains("[1536, 384]")
            && e.contains("[1024, 384]"),
        "{e}"
    );
    std::fs::write(scratch.join("config.json"), config.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\""))
        .unwrap();
    let e = err(&scratch);
    assert!(e.contains("config.json") && e.contains("relu"), "{e}");
    std::fs::write(
        scratch.join("config.json"),
        config.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7"),
    )
    .unwrap();
    let e = err(&scratch);
    assert!(e.contains("7 heads"), "{e}");
    std::fs::write(scratch.join("config.json"), "{").unwrap();
    let e = err(&scratch);
    assert!(e.contains("config.json") && e.contains("not valid JSON"), "{e}");
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn a_bert_prefix_on_the_tensor_names_is_accepted() {
    let Some(dir) = model_dir() else { return };
    let scratch = std::env::temp_dir().join(format!("vlsa-text-prefix-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for f in ["config.json", "tokenizer.json", "sentence_bert_config.json"] {
        std::fs::copy(dir.join(f), scratch.join(f)).unwrap();
    }
    // Rewrite the weights as a BertForXxx checkpoint would name them (f16, to check that too).
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut file = vlsa::weights::TensorFile::default();
    for (name, view) in st.tensors() {
        if view.dtype() == safetensors::Dtype::F32 {
            let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            file.tensors.insert(format!("bert.{name}"), vlsa::weights::HostTensor::new(view.shape(), data));
        }
    }
    file.write(&scratch.join("model.safetensors"), true).unwrap();
    let prefixed = TextEncoder::load(common::gpu(), &scratch).unwrap();
    let text = ["the optic disc"];
    let (got, want) = (prefixed.embed(&text).unwrap(), encoder(&dir).embed(&text).unwrap());
    let dot: f32 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
    assert!(dot > 0.999, "f16 weights under bert. names: cosine {dot}");
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn a_model_carries_the_embeddings_of_its_prompts() {
    let Some(dir) = model_dir() else { return };
    let gpu = common::gpu();
    let encoder = encoder(&dir);
    let config = vlsa::config::Config::from_json(
        r#"{"image_size": 16, "patch_size": 8, "vision": {"width": 8, "layers": 1, "heads": 2}, "text_dim": 384,
            "classes": ["background", "optic disc", "optic cup"], "prompts": ["background of a retinal fundus photograph", "the optic disc", "the optic cup"],
            "decoder": {"width": 8, "layers": 1, "heads": 2}, "em": {"bases": 3}}"#,
        "tiny",
    )
    .unwrap();
    let mut model = vlsa::model::Model::init(gpu, config.clone(), 1).unwrap();
    let prompts = config.prompt_texts();
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let embeddings = encoder.embed(&texts).unwrap();
    model.set_class_embeddings(&vlsa::weights::HostTensor::new(&[3, 384], embeddings.clone())).unwrap();
    let stored = model.get("text.class_embeddings").unwrap().to_vec().unwrap();
    let fixture = reference();
    for (k, prompt) in texts.iter().enumerate() {
        let case = fixture.iter().find(|c| c.text == *prompt).expect("prompt in the fixture");
        compare(&format!("class embedding {k}"), &stored[k * 384..(k + 1) * 384], &case.embedding);
    }
    let e =
        model.set_class_embeddings(&vlsa::weights::HostTensor::new(&[3, 8], vec![0.0; 24])).unwrap_err().to_string();
    assert!(e.contains("text_dim 384") && e.contains("[3, 8]"), "{e}");
}

#[test]
fn init_and_segment_take_prompts_from_the_command_line() {
    let Some(dir) = model_dir() else { return };
    let tmp = std::env::temp_dir().join(format!("vlsa-text-cli-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        tmp.join("cfg.json"),
        r#"{"image_size": 16, "patch_size": 8, "vision": {"width": 8, "layers": 1, "heads": 2}, "text_dim": 384,
            "classes": ["background", "optic disc", "optic cup"], "prompts": ["background of a retinal fundus photograph", "the optic disc", "the optic cup"],
            "decoder": {"width": 8, "layers": 1, "heads": 2}, "em": {"bases": 3}}"#,
    )
    .unwrap();
    let vlsa =
        |args: &[&std::ffi::OsStr]| std::process::Command::new(env!("CARGO_BIN_EXE_vlsa")).args(args).output().unwrap();
    let os = |s: &str| std::ffi::OsString::from(s);
    let model = tmp.join("m.safetensors");
    let out = vlsa(&[
        &os("init"),
        &os("--config"),
        tmp.join("cfg.json").as_os_str(),
        &os("--out"),
        model.as_os_str(),
        &os("--text-encoder"),
        dir.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The model file carries the fixture embeddings of its prompts.
    let file = vlsa::weights::TensorFile::read(&model).unwrap();
    let stored = &file.tensors["text.class_embeddings"].data;
    let fixture = reference();
    let case = fixture.iter().find(|c| c.text == "the optic cup").unwrap();
    compare("init --text-encoder, class 2", &stored[2 * 384..3 * 384], &case.embedding);

    let image = tmp.join("i.png");
    vlsa::image_io::Image::from_rgb8(20, 12, &vec![120; 20 * 12 * 3]).unwrap().save_png(&image).unwrap();
    let prompt = |t: &str| [os("--prompt"), os(t)];
    let mut args = vec![
        os("segment"),
        os("--model"),
        model.clone().into(),
        os("--image"),
        image.clone().into(),
        os("--text-encoder"),
        dir.clone().into(),
    ];
    args.extend(prompt("background"));
    args.extend(prompt("the rim of the optic nerve head"));
    let two: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = vlsa(&two);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("2 prompts were given but the model has 3 classes"), "{err}");
    args.extend(prompt("a pale cup"));
    let three: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = vlsa(&three);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tmp.join("i_mask.png").is_file() && tmp.join("i_overlay.png").is_file());
    std::fs::remove_dir_all(&tmp).unwrap();
}
