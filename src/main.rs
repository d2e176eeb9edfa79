//! The `vlsa` command-line tool: thin wrappers over the library (DESIGN.md, "Command line").
//! Errors go to stderr as one sentence, with exit code 1.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vlsa::kernels::Gpu;

#[derive(Parser)]
#[command(name = "vlsa", version, about = "Vision-language semantic aggregation for medical image segmentation, on hand-written WGSL kernels")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter vlsa uses: backend, driver, device type, features and key limits.
    Info,
    /// Create a randomly initialised model from a configuration (DESIGN.md "Configuration").
    Init {
        /// The configuration JSON.
        #[arg(long, value_name = "CFG.json")]
        config: std::path::PathBuf,
        /// Where to write the model (safetensors, config in its metadata).
        #[arg(long, value_name = "MODEL.safetensors")]
        out: std::path::PathBuf,
        /// Seed of the initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fill the class embeddings with this text encoder's embeddings of the config's
        /// prompts (a Hugging Face BERT folder, e.g. from scripts/fetch-minilm.sh).
        #[arg(long, value_name = "DIR")]
        text_encoder: Option<std::path::PathBuf>,
    },
    /// Embed texts with a sentence encoder (all-MiniLM-L6-v2): print a summary or dump them.
    Embed {
        /// The text encoder: a Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json).
        #[arg(long, value_name = "DIR")]
        text_encoder: std::path::PathBuf,
        /// A text to embed; repeat for more.
        #[arg(long, required = true)]
        text: Vec<String>,
        /// Write `text.embeddings` [K, D] and `text.token_ids` [K, L] (f32) to this safetensors file.
        #[arg(long, value_name = "OUT.safetensors")]
        dump: Option<std::path::PathBuf>,
    },
    /// Profile kernels on the GPU, per dispatch.
    #[command(subcommand)]
    Profile(ProfileCommand),
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Run the EM Aggregation loop on random data and time every kernel of every iteration.
    Em {
        /// Pixel tokens N per image.
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        /// Feature width C.
        #[arg(long, default_value_t = 128)]
        width: usize,
        /// EM bases M (at most 64).
        #[arg(long, default_value_t = 16)]
        bases: usize,
        /// EM iterations T.
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Batch size B.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Softmax temperature lambda of the E-step.
        #[arg(long, default_value_t = 1.0)]
        lambda: f32,
        /// Also profile the unrolled backward through all iterations.
        #[arg(long)]
        backward: bool,
        /// Write a Chrome trace (chrome://tracing, Perfetto) to this file.
        #[arg(long, value_name = "OUT.json")]
        trace: Option<std::path::PathBuf>,
        /// Seed of the random data.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[allow(clippy::too_many_arguments)]
fn profile_em(tokens: usize, width: usize, bases: usize, iters: usize, batch: usize, lambda: f32, backward: bool, trace: Option<std::path::PathBuf>, seed: u64) -> Result<(), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let opts = vlsa::profile::EmProfileOptions { batch, tokens, width, bases, iters, lambda, backward, seed };
    let report = vlsa::profile::profile_em(&gpu, &opts).map_err(|e| e.to_string())?;
    print!("{report}");
    if let Some(path) = trace {
        vlsa::io::write_atomic(&path, report.chrome_trace().as_bytes()).map_err(|e| format!("cannot write the trace {}: {e}", path.display()))?;
        println!("trace written to {}", path.display());
    }
    Ok(())
}

fn init(config: &std::path::Path, out: &std::path::Path, seed: u64, text_encoder: Option<&std::path::Path>) -> Result<(), String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("cannot read the configuration {}: {e}", config.display()))?;
    let config = vlsa::config::Config::from_json(&text, &config.display().to_string()).map_err(|e| e.to_string())?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let mut model = vlsa::model::Model::init(&gpu, config, seed).map_err(|e| e.to_string())?;
    if let Some(dir) = text_encoder {
        let encoder = vlsa::text::TextEncoder::load(&gpu, dir).map_err(|e| e.to_string())?;
        let text_dim = model.config.text_dim;
        if encoder.dim() != text_dim {
            return Err(format!("the text encoder {} embeds into {} dimensions but the configuration's text_dim is {text_dim}", dir.display(), encoder.dim()));
        }
        let prompts = model.config.prompt_texts();
        let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let embeddings = encoder.embed(&texts).map_err(|e| e.to_string())?;
        model.set_class_embeddings(&vlsa::weights::HostTensor::new(&[texts.len(), text_dim], embeddings)).map_err(|e| e.to_string())?;
        println!("class embeddings: {} prompts embedded by {}", texts.len(), dir.display());
    }
    model.save(out, false).map_err(|e| e.to_string())?;
    let params: usize = model.parameters().map(|(_, t)| t.numel()).sum();
    println!("wrote {} ({params} trainable parameters)", out.display());
    Ok(())
}

fn embed(dir: &std::path::Path, texts: &[String], dump: Option<&std::path::Path>) -> Result<(), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let encoder = vlsa::text::TextEncoder::load(&gpu, dir).map_err(|e| e.to_string())?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embeddings = encoder.embed(&refs).map_err(|e| e.to_string())?;
    let ids: Vec<Vec<u32>> = refs.iter().map(|t| encoder.tokenizer().encode(t)).collect();
    let d = encoder.dim();
    for ((text, row), ids) in texts.iter().zip(embeddings.chunks_exact(d)).zip(&ids) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let first: Vec<String> = row.iter().take(4).map(|v| format!("{v:+.5}")).collect();
        println!("{:>3} tokens  [{} ...]  norm {norm:.4}  {text:?}", ids.len(), first.join(", "));
    }
    if let Some(path) = dump {
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let pad = encoder.tokenizer().pad_id();
        let id_table: Vec<f32> = ids.iter().flat_map(|row| row.iter().copied().chain(std::iter::repeat(pad)).take(len).map(|i| i as f32)).collect();
        let mut file = vlsa::weights::TensorFile::default();
        file.tensors.insert("text.embeddings".into(), vlsa::weights::HostTensor::new(&[texts.len(), d], embeddings));
        file.tensors.insert("text.token_ids".into(), vlsa::weights::HostTensor::new(&[texts.len(), len], id_table));
        file.metadata.insert("vlsa.texts".into(), serde_json::to_string(texts).map_err(|e| e.to_string())?);
        file.write(path, false).map_err(|e| e.to_string())?;
        println!("wrote {} (text.embeddings [{}, {d}], text.token_ids [{}, {len}])", path.display(), texts.len(), texts.len());
    }
    Ok(())
}

fn info() -> Result<(), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let i = gpu.info();
    let l = &i.limits;
    println!("adapter:      {}", i.name);
    println!("backend:      {}", i.backend);
    println!("device type:  {}", i.device_type);
    println!("driver:       {}", i.driver);
    println!("timestamps:   {}", if i.timestamps { "yes (GPU-timed profiles)" } else { "no (profiles fall back to wall clock)" });
    println!("shader f16:   {}", if i.shader_f16 { "yes" } else { "no" });
    println!("limits:");
    println!("  max_buffer_size                      {} MiB", l.max_buffer_size >> 20);
    println!("  max_storage_buffer_binding_size      {} MiB", l.max_storage_buffer_binding_size >> 20);
    println!("  max_storage_buffers_per_shader_stage {}", l.max_storage_buffers_per_shader_stage);
    println!("  max_compute_invocations_per_workgroup {}", l.max_compute_invocations_per_workgroup);
    println!("  max_compute_workgroup_storage_size   {} KiB", l.max_compute_workgroup_storage_size >> 10);
    println!("  max_compute_workgroups_per_dimension {}", l.max_compute_workgroups_per_dimension);
    println!("adapters found:");
    for a in &i.all_adapters {
        println!("  {a}");
    }
    Ok(())
}

fn main() -> ExitCode {
    // Mesa's EGL probes Wayland while wgpu looks for GL adapters and prints an "error" when no
    // runtime directory is set (common on servers); give it one so the output stays clean.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(),
        Command::Init { config, out, seed, text_encoder } => init(&config, &out, seed, text_encoder.as_deref()),
        Command::Embed { text_encoder, text, dump } => embed(&text_encoder, &text, dump.as_deref()),
        Command::Profile(ProfileCommand::Em { tokens, width, bases, iters, batch, lambda, backward, trace, seed }) => {
            profile_em(tokens, width, bases, iters, batch, lambda, backward, trace, seed)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vlsa: {message}");
            ExitCode::FAILURE
        }
    }
}
