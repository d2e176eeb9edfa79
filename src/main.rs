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
    },
    /// Write a synthetic data set (images/NAME.png, masks/NAME.png, domain.json) for one domain.
    Synth {
        /// cardiac (short-axis MRI: LV, myocardium, RV) or fundus (photo: optic disc, optic cup).
        #[arg(long)]
        task: String,
        /// Acquisition domain: A, B, C or D (scanner or camera; see the README's domain table).
        #[arg(long)]
        domain: String,
        /// Number of images.
        #[arg(long)]
        count: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// The output folder (its images/ and masks/ must be new or empty).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Seed of every random choice; the same seed gives the same files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Dice per class of a model on one or more data sets (domains), and the mean over them.
    Eval {
        /// The model (safetensors with its configuration).
        #[arg(long, value_name = "MODEL.safetensors")]
        model: std::path::PathBuf,
        /// A data set folder (images/, masks/); repeat for several domains.
        #[arg(long, value_name = "DIR", required = true)]
        data: Vec<std::path::PathBuf>,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "OUT.json")]
        json: Option<std::path::PathBuf>,
        /// Images per forward pass.
        #[arg(long, default_value_t = 8)]
        batch: usize,
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

fn init(config: &std::path::Path, out: &std::path::Path, seed: u64) -> Result<(), String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("cannot read the configuration {}: {e}", config.display()))?;
    let config = vlsa::config::Config::from_json(&text, &config.display().to_string()).map_err(|e| e.to_string())?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let model = vlsa::model::Model::init(&gpu, config, seed).map_err(|e| e.to_string())?;
    model.save(out, false).map_err(|e| e.to_string())?;
    let params: usize = model.parameters().map(|(_, t)| t.numel()).sum();
    println!("wrote {} ({params} trainable parameters)", out.display());
    Ok(())
}

fn synth(task: &str, domain: &str, count: usize, size: usize, out: &std::path::Path, seed: u64) -> Result<(), String> {
    let task = vlsa::synth::Task::parse(task).map_err(|e| e.to_string())?;
    let domain = vlsa::synth::Domain::of(task, domain).map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let options = vlsa::synth::SynthOptions { task, domain, count, size, seed };
    vlsa::synth::write_dataset(&options, out).map_err(|e| e.to_string())?;
    println!("wrote {count} {} images of domain {} ({size}x{size}) to {} in {:.2} s", task.name(), options.domain.name, out.display(), start.elapsed().as_secs_f64());
    Ok(())
}

fn eval(model: &std::path::Path, data: &[std::path::PathBuf], json: Option<&std::path::Path>, batch: usize) -> Result<(), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let loaded = vlsa::model::Model::load(&gpu, model).map_err(|e| e.to_string())?;
    let mut report = vlsa::eval::evaluate_folders(&loaded, data, batch).map_err(|e| e.to_string())?;
    report.model = model.display().to_string();
    print!("{}", report.table());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report.to_json()).expect("an evaluation report always serializes") + "\n";
        vlsa::io::write_atomic(path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("results written to {}", path.display());
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
        Command::Init { config, out, seed } => init(&config, &out, seed),
        Command::Synth { task, domain, count, size, out, seed } => synth(&task, &domain, count, size, &out, seed),
        Command::Eval { model, data, json, batch } => eval(&model, &data, json.as_deref(), batch),
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
