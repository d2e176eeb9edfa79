//! Fuzzing of the model loader: safetensors parsing (`TensorFile::parse`), the configuration
//! (`Config::from_json`) and building a model from the tensors (`Model::from_host`), on the
//! seeds of `tests/fuzz_corpus/` and on seeded random mutations of them.
//!
//! A hand-written, seeded mutation fuzzer rather than cargo-fuzz (nightly only) or proptest (a
//! dependency tree, and its shrinking matters little here): every input is reproducible from
//! the seed printed on failure, and it runs on stable inside `cargo test`. Mutations work on
//! bytes (bit flips, interesting bytes, truncations, splices, deletions, the 8-byte header
//! length) and on structure (the header's dtypes, shapes and data offsets, the metadata, the
//! configuration's keys and values). Every call runs under `catch_unwind`: a panic fails the
//! test with the seed and the case number, and the input is written next to the test binary.
//! Every rejection must be one sentence that names the file.
//!
//! A counting global allocator records the largest single allocation of each thread, so the
//! test also shows that an absurd configuration is refused before anything large is allocated.
//!
//! `VLSA_FUZZ_CASES=N` sets the number of mutated inputs per test (default 10000), `VLSA_FUZZ_SEED=S`
//! the seed (default 1); `VLSA_FUZZ_VERBOSE=1` prints every rejection. Regenerate the corpus with
//! `cargo test --test fuzz_loaders -- --ignored write_corpus`.

mod alloc_count;
mod common;
mod mutate;

use alloc_count::largest_allocation;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::Rng;
use mutate::{assemble, disassemble, mutate_bytes, mutate_json, mutate_structure, with_header_length};
use serde_json::{json, Value};
use vlsa::config::Config;
use vlsa::model::{expected_tensors, Model};
use vlsa::weights::{HostTensor, TensorFile, CONFIG_KEY};

// ----- the model under test -----

const SOURCE: &str = "fuzz.safetensors";

fn tiny_config_json() -> Value {
    json!({"image_size": 8, "patch_size": 4, "vision": {"width": 4, "layers": 1, "heads": 1, "mlp_ratio": 1},
           "text_dim": 2, "classes": ["bg", "a"], "decoder": {"width": 4, "layers": 1, "heads": 1, "mlp_ratio": 1},
           "em": {"bases": 2}})
}

/// A valid tiny model file, built on the host (deterministic values, no GPU).
fn tiny_model_file() -> TensorFile {
    let config = Config::from_json(&tiny_config_json().to_string(), "tiny").unwrap();
    let mut file = TensorFile::default();
    file.metadata.insert(CONFIG_KEY.into(), config.to_json());
    for (i, (name, shape)) in expected_tensors(&config).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|j| ((i * 31 + j) as f32 * 0.37).sin() * 0.1).collect();
        file.tensors.insert(name, HostTensor::new(&shape, data));
    }
    file
}

/// What a loader run gave: accepted, or the error sentence.
enum Outcome {
    Accepted,
    Rejected(String),
}

/// The whole loading path of `Model::load` after the file read: parse, config, tensors -> GPU.
fn load(bytes: &[u8]) -> Outcome {
    let gpu = common::gpu();
    let result = TensorFile::parse(bytes, SOURCE).and_then(|file| {
        let config = file.config(SOURCE)?;
        Model::from_host(gpu, config, file.tensors, SOURCE)
    });
    match result {
        Ok(_) => Outcome::Accepted,
        Err(e) => Outcome::Rejected(e.to_string()),
    }
}

/// Runs `f` on `input` under `catch_unwind`; a panic or an unclear rejection is returned as a
/// failure description (and the input saved) instead of unwinding through the test.
fn run_case(what: &str, input: &[u8], f: impl FnOnce(&[u8]) -> Outcome) -> Result<Outcome, String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| f(input)));
    let saved = || {
        let path = std::env::temp_dir().join(format!("vlsa-fuzz-failure-{}.bin", what.replace([' ', '/', '='], "_")));
        let _ = std::fs::write(&path, input);
        path.display().to_string()
    };
    match outcome {
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("{what}: PANIC `{message}` (input saved to {})", saved()))
        }
        Ok(Outcome::Rejected(msg)) if !is_one_sentence(&msg) => {
            Err(format!("{what}: unclear error `{msg}` (input saved to {})", saved()))
        }
        Ok(outcome) => Ok(outcome),
    }
}

/// One sentence naming the file: one line, not empty, not too long, mentions the source.
fn is_one_sentence(msg: &str) -> bool {
    !msg.trim().is_empty() && !msg.contains('\n') && msg.len() < 600 && msg.contains(SOURCE)
}

// ----- the corpus -----

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

/// Each seed of the corpus and what its rejection must mention (`None`: it loads).
fn seeds() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    let valid = tiny_model_file();
    let bytes = valid.to_bytes(false).unwrap();
    let (header, data) = disassemble(&bytes).unwrap();
    let first_two: Vec<String> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(k, _)| k.clone())
        .take(2)
        .collect();
    let edit_header = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut h = header.clone();
        f(h.as_object_mut().unwrap());
        assemble(&h, &data)
    };
    let with_config = |f: &dyn Fn(&mut Value)| {
        let mut c = tiny_config_json();
        f(&mut c);
        let mut file = valid.clone();
        file.metadata.insert(CONFIG_KEY.into(), c.to_string());
        file.to_bytes(false).unwrap()
    };
    let with_tensor = |name: &str, t: Option<HostTensor>| {
        let mut file = valid.clone();
        match t {
            Some(t) => file.tensors.insert(name.into(), t),
            None => file.tensors.remove(name),
        };
        file.to_bytes(false).unwrap()
    };
    let mut non_utf8 = bytes.clone();
    non_utf8[12] = 0xff;
    let (t0, t1) = (first_two[0].clone(), first_two[1].clone());
    vec![
        ("valid_tiny.safetensors", bytes.clone(), None),
        ("valid_tiny_f16.safetensors", valid.to_bytes(true).unwrap(), None),
        ("empty.safetensors", Vec::new(), Some("too short")),
        ("truncated_header.safetensors", bytes[..40].to_vec(), Some("only 32 bytes follow")),
        ("truncated_data.safetensors", bytes[..bytes.len() - 100].to_vec(), Some("truncated")),
        ("trailing_bytes.safetensors", [&bytes[..], b"junk"].concat(), Some("trailing bytes")),
        ("header_length_huge.safetensors", with_header_length(&bytes, 1 << 40), Some("100000000-byte limit")),
        ("header_length_negative.safetensors", with_header_length(&bytes, -8i64 as u64), Some("-8")),
        ("header_length_zero.safetensors", with_header_length(&bytes, 0), Some("not a positive size")),
        ("header_not_utf8.safetensors", non_utf8, Some("UTF-8")),
        ("header_bad_json.safetensors", [&5u64.to_le_bytes()[..], b"{\"a\":"].concat(), Some("JSON")),
        (
            "offsets_past_end.safetensors",
            edit_header(&|h| h.get_mut(&t0).unwrap()["data_offsets"] = json!([0, 1 << 30])),
            Some("data offsets"),
        ),
        (
            "offsets_overlapping.safetensors",
            edit_header(&|h| {
                let start = h[&t1]["data_offsets"][0].as_u64().unwrap();
                let end = h[&t1]["data_offsets"][1].as_u64().unwrap();
                h.get_mut(&t1).unwrap()["data_offsets"] = json!([start - 4, end - 4]);
            }),
            Some("overlapping"),
        ),
        (
            "shape_overflow.safetensors",
            edit_header(&|h| h.get_mut(&t0).unwrap()["shape"] = json!([1u64 << 62, 1u64 << 62])),
            Some("overflows"),
        ),
        ("dtype_int.safetensors", edit_header(&|h| h.get_mut(&t0).unwrap()["dtype"] = json!("I32")), Some("dtype I32")),
        (
            "dtype_size_mismatch.safetensors",
            edit_header(&|h| h.get_mut(&t0).unwrap()["dtype"] = json!("F64")),
            Some("data offsets"),
        ),
        (
            "metadata_not_string.safetensors",
            edit_header(&|h| {
                h.insert("__metadata__".into(), json!({CONFIG_KEY: 5}));
            }),
            Some("JSON"),
        ),
        (
            "no_config.safetensors",
            edit_header(&|h| {
                h.remove("__metadata__");
            }),
            Some(CONFIG_KEY),
        ),
        (
            "config_not_json.safetensors",
            edit_header(&|h| {
                h.insert("__metadata__".into(), json!({CONFIG_KEY: "{\"image_size\": "}));
            }),
            Some("invalid configuration"),
        ),
        (
            "config_image_size_1e9.safetensors",
            with_config(&|c| c["image_size"] = json!(1_000_000_000u64)),
            Some("image_size 1000000000"),
        ),
        (
            "config_layers_1e6.safetensors",
            with_config(&|c| c["vision"]["layers"] = json!(1_000_000)),
            Some("vision.layers 1000000"),
        ),
        ("config_patch_zero.safetensors", with_config(&|c| c["patch_size"] = json!(0)), Some("patch_size 0")),
        (
            "config_heads_not_dividing.safetensors",
            with_config(&|c| c["decoder"]["heads"] = json!(3)),
            Some("decoder.heads 3"),
        ),
        ("config_width_negative.safetensors", with_config(&|c| c["vision"]["width"] = json!(-1)), Some("vision.width")),
        (
            "config_iters_huge.safetensors",
            with_config(&|c| c["em"]["iters"] = json!(1_000_000)),
            Some("em.iters 1000000"),
        ),
        (
            "config_activation_too_large.safetensors",
            with_config(&|c| {
                c["image_size"] = json!(4096);
                c["patch_size"] = json!(4);
                c["vision"] = json!({"width": 512, "layers": 1, "heads": 8});
            }),
            Some("128 MiB"),
        ),
        (
            "config_too_many_parameters.safetensors",
            with_config(&|c| c["vision"] = json!({"width": 8192, "layers": 256, "heads": 64})),
            Some("parameters"),
        ),
        ("config_unknown_key.safetensors", with_config(&|c| c["em"]["temperature"] = json!(2.0)), Some("temperature")),
        (
            "tensor_nan.safetensors",
            with_tensor("head.logit_scale", Some(HostTensor::new(&[1], vec![f32::NAN]))),
            Some("non-finite"),
        ),
        (
            "tensor_wrong_shape.safetensors",
            with_tensor("head.logit_scale", Some(HostTensor::new(&[2], vec![1.0; 2]))),
            Some("head.logit_scale has shape [2]"),
        ),
        ("tensor_missing.safetensors", with_tensor("head.em.bases", None), Some("head.em.bases [2, 4] is missing")),
        (
            "tensor_unexpected.safetensors",
            with_tensor("head.extra", Some(HostTensor::new(&[1], vec![1.0]))),
            Some("unexpected tensor head.extra"),
        ),
    ]
}

/// Writes the corpus seeds (run once after changing `seeds`).
#[test]
#[ignore]
fn write_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes, _) in seeds() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn read_corpus() -> Vec<(String, Vec<u8>)> {
    // The model-file seeds; subfolders hold other fuzzers' corpora (images/ for fuzz_inputs.rs).
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir())
        .expect("tests/fuzz_corpus exists")
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|x| x == "safetensors"))
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()))
        .collect();
    files.sort();
    files
}

// ----- the tests -----

#[test]
fn every_corpus_seed_loads_or_is_refused_with_its_reason() {
    let corpus = read_corpus();
    let expected = seeds();
    assert_eq!(corpus.len(), expected.len(), "tests/fuzz_corpus is out of date: run the ignored test write_corpus");
    let mut failures = Vec::new();
    for (name, bytes, want) in expected {
        let committed =
            corpus.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("tests/fuzz_corpus lacks {name}"));
        assert_eq!(committed.1, bytes, "tests/fuzz_corpus/{name} is out of date: run the ignored test write_corpus");
        match (run_case(name, &bytes, load), want) {
            (Err(f), _) => failures.push(f),
            (Ok(Outcome::Accepted), None) => {}
            (Ok(Outcome::Rejected(msg)), Some(w)) if msg.contains(w) => {}
            (Ok(Outcome::Rejected(msg)), w) => failures.push(format!("{name}: expected {w:?}, got `{msg}`")),
            (Ok(Outcome::Accepted), Some(w)) => failures.push(format!("{name}: loaded, but should be refused ({w})")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_model_file_on_disk_loads_and_its_problems_name_the_path() {
    let dir = std::env::temp_dir().join(format!("vlsa-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.safetensors");
    std::fs::write(&path, tiny_model_file().to_bytes(false).unwrap()).unwrap();
    let model = Model::load(common::gpu(), &path).unwrap();
    assert_eq!(model.config.image_size, 8);
    std::fs::write(&path, &tiny_model_file().to_bytes(false).unwrap()[..100]).unwrap();
    let e = Model::load(common::gpu(), &path).err().unwrap().to_string();
    assert!(e.starts_with(&path.display().to_string()) && e.contains("truncated"), "{e}");
    let e = Model::load(common::gpu(), &dir.join("absent.safetensors")).err().unwrap().to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn cases_from_env(default: usize) -> (usize, u64) {
    let cases = std::env::var("VLSA_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let seed = std::env::var("VLSA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    (cases, seed)
}

#[test]
fn mutated_model_files_never_panic() {
    let (cases, seed) = cases_from_env(10_000);
    let corpus = read_corpus();
    let valid: Vec<(String, Vec<u8>)> = corpus.iter().filter(|(n, _)| n.starts_with("valid")).cloned().collect();
    let mut rng = Rng::new(seed);
    let (mut accepted, mut rejected, mut failures) = (0usize, 0usize, Vec::new());
    let start = std::time::Instant::now();
    for case in 0..cases {
        // Half the inputs start from a valid file, so mutations also reach the later checks.
        let (name, base) =
            if rng.below(2) == 0 { &valid[rng.below(valid.len())] } else { &corpus[rng.below(corpus.len())] };
        let mut input = base.clone();
        for _ in 0..1 + rng.below(2) * rng.below(3) {
            input = match rng.below(2) {
                0 => mutate_structure(&mut rng, &input).unwrap_or_else(|| mutate_bytes(&mut rng, &input)),
                _ => mutate_bytes(&mut rng, &input),
            };
        }
        // Parsing and validating never allocate more than a few times the file (the GPU
        // upload of an accepted model is separate and bounded by the config's limits).
        let ((parsed, _), largest) = largest_allocation(|| {
            let parsed = catch_unwind(AssertUnwindSafe(|| {
                TensorFile::parse(&input, SOURCE).and_then(|f| f.config(SOURCE).map(|c| (f, c)))
            }));
            (parsed.is_ok(), ())
        });
        if parsed && largest > 4 * input.len() + (16 << 20) {
            failures.push(format!(
                "seed {seed} case {case} (from {name}): parsing a {}-byte file allocated {largest} bytes at once",
                input.len()
            ));
        }
        match run_case(&format!("seed={seed} case={case} from {name}"), &input, load) {
            Ok(Outcome::Accepted) => accepted += 1,
            Ok(Outcome::Rejected(msg)) => {
                rejected += 1;
                if std::env::var_os("VLSA_FUZZ_VERBOSE").is_some() {
                    println!("case {case}: {msg}");
                }
            }
            Err(f) => failures.push(f),
        }
        if failures.len() >= 10 {
            break;
        }
    }
    common::gpu().check_errors().expect("no GPU error is left behind by the loader");
    println!(
        "fuzz: {cases} mutated model files (seed {seed}): {accepted} loaded, {rejected} refused, in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(accepted > 0 && rejected > 0, "the mutations reach both outcomes ({accepted} loaded, {rejected} refused)");
}

#[test]
fn mutated_configurations_never_panic_and_accepted_ones_are_bounded() {
    let (cases, seed) = cases_from_env(10_000);
    let mut rng = Rng::new(seed ^ 0x00C0_FFEE);
    let design = json!({
      "image_size": 128, "patch_size": 8,
      "vision":  {"width": 192, "layers": 4, "heads": 3, "mlp_ratio": 4, "act": "quick_gelu"},
      "text_dim": 384, "classes": ["background", "optic disc", "optic cup"],
      "prompts": ["background of a retinal fundus photograph", "the optic disc", "the optic cup"],
      "decoder": {"width": 128, "layers": 2, "heads": 4, "mlp_ratio": 4},
      "em": {"bases": 16, "iters": 3, "lambda": 1.0, "momentum": 0.9, "grad": "detached"}, "ln_eps": 1e-5
    });
    let (mut accepted, mut failures) = (0usize, Vec::new());
    for case in 0..cases {
        let mut config = if rng.below(2) == 0 { design.clone() } else { tiny_config_json() };
        for _ in 0..1 + rng.below(4) {
            mutate_json(&mut rng, &mut config);
        }
        let mut text = config.to_string();
        if rng.below(8) == 0 {
            let mut cut = rng.below(text.len() + 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| largest_allocation(|| Config::from_json(&text, SOURCE))));
        match outcome {
            Err(_) => failures.push(format!("seed {seed} case {case}: PANIC on config {text}")),
            Ok((_, largest)) if largest > (1 << 20) + 4 * text.len() => {
                failures.push(format!("seed {seed} case {case}: validating allocated {largest} bytes at once: {text}"))
            }
            Ok((Ok(c), _)) => {
                accepted += 1;
                let largest = c.largest_tensor(1);
                if largest.bytes() > vlsa::config::PORTABLE_BINDING_BYTES || c.tokens() > 1 << 20 {
                    failures.push(format!(
                        "seed {seed} case {case}: accepted a config whose {} is {} bytes",
                        largest.describe(),
                        largest.bytes()
                    ));
                }
            }
            Ok((Err(e), _)) => {
                let msg = e.to_string();
                if !is_one_sentence(&msg) || !msg.starts_with("invalid configuration: ") {
                    failures.push(format!("seed {seed} case {case}: unclear error `{msg}`"));
                }
            }
        }
        if failures.len() >= 10 {
            break;
        }
    }
    println!("fuzz: {cases} mutated configurations (seed {seed}): {accepted} accepted");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(accepted > 0, "some mutations keep the config valid");
}

/// A change to a valid config and the error it must give.
type ConfigBreak = (Box<dyn Fn(&mut Config)>, &'static str);

#[test]
fn absurd_sizes_are_refused_before_anything_large_is_allocated() {
    let base = Config::from_json(&tiny_config_json().to_string(), "tiny").unwrap();
    let gpu = common::gpu();
    let cases: Vec<ConfigBreak> = vec![
        (Box::new(|c| c.image_size = 1_000_000_000), "image_size 1000000000 is not between 1 and 4096"),
        (Box::new(|c| c.vision.layers = 1_000_000), "vision.layers 1000000 is more than 256"),
        (Box::new(|c| c.patch_size = 0), "patch_size 0"),
        (Box::new(|c| c.decoder.heads = 3), "decoder.heads 3 does not divide decoder.width 4"),
        (Box::new(|c| c.vision.mlp_ratio = 1_000_000), "vision.mlp_ratio 1000000 is not between 1 and 16"),
        (Box::new(|c| c.em.iters = usize::MAX), "em.iters"),
        (Box::new(|c| c.text_dim = usize::MAX), "text_dim"),
        (
            Box::new(|c| {
                c.image_size = 4096;
                c.patch_size = 1;
            }),
            "over the 128 MiB",
        ),
        (
            Box::new(|c| {
                c.vision.width = 8192;
                c.vision.heads = 64;
                c.vision.layers = 256;
            }),
            "more than vlsa's limit of 1073741824",
        ),
    ];
    for (edit, want) in cases {
        let mut c = base.clone();
        edit(&mut c);
        let (result, largest) = largest_allocation(|| Model::init(gpu, c.clone(), 1).map(|_| ()));
        let msg = result.expect_err("an absurd config is refused").to_string();
        assert!(msg.contains(want) && !msg.contains('\n'), "expected `{want}` in `{msg}`");
        assert!(largest < 1 << 20, "refusing `{want}` allocated {largest} bytes at once");
    }
}

#[test]
fn a_batch_over_the_binding_limit_is_refused_before_any_kernel_runs() {
    let gpu = common::gpu();
    let config = Config::from_json(&tiny_config_json().to_string(), "tiny").unwrap();
    // One image's largest tensor is [1, 3, 16, 16] upsampled logits (768 floats); find the
    // batch that just exceeds the adapter's binding limit without allocating it.
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let per_image = config.largest_activation(1).bytes();
    let batch = (limit / per_image + 1) as usize;
    let e = config.check_batch(batch, limit).unwrap_err().to_string();
    assert!(
        e.contains("max_storage_buffer_binding_size") && e.contains(&format!("at most {} images", limit / per_image)),
        "{e}"
    );
    assert!(config.check_batch(batch - 1, limit).is_ok());
}
