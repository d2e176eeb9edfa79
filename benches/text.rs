//! The MiniLM-L6 text encoder: sentences per second for a batch of 32 prompts of ~12 tokens
//! (`benches/text_prompts.txt`, 11.5 tokens on average with [CLS]/[SEP], 17 at most), end to
//! end: tokenize, encode on the GPU, read the [32, 384] embeddings back. Criterion's
//! "elements" are sentences. `benches/compare_text.py` runs the same batch through
//! sentence-transformers.
//!
//! Needs the model folder (`VLSA_MINILM_DIR` or `.cache/minilm`, from
//! `scripts/fetch-minilm.sh`); without it the bench says so and measures nothing.

mod common;

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlsa::text::TextEncoder;

fn bench(c: &mut Criterion) {
    let dir = std::env::var_os("VLSA_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/minilm"));
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "text bench skipped: no MiniLM model folder at {} (run scripts/fetch-minilm.sh or set VLSA_MINILM_DIR)",
            dir.display()
        );
        return;
    }
    let prompts_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/text_prompts.txt");
    let prompts = std::fs::read_to_string(prompts_file).expect("benches/text_prompts.txt");
    let prompts: Vec<&str> = prompts.lines().filter(|l| !l.is_empty()).collect();
    let gpu = common::gpu();
    let encoder = TextEncoder::load(&gpu, &dir).expect("the model folder loads");
    let tokens: usize = prompts.iter().map(|p| encoder.tokenizer().encode(p).len()).sum();
    eprintln!("{} prompts, {:.1} tokens each on average", prompts.len(), tokens as f64 / prompts.len() as f64);

    let mut group = c.benchmark_group("text");
    common::configure(&mut group);
    encoder.embed(&prompts).expect("warm-up");
    group.throughput(Throughput::Elements(prompts.len() as u64));
    // embed() reads the embeddings back, which waits for the GPU: no extra sync needed.
    group.bench_function(format!("embed_{}_prompts", prompts.len()), |b| b.iter(|| encoder.embed(&prompts).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
