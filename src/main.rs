//! The `vlsa` command-line tool: thin wrappers over the library (DESIGN.md, "Command line").
//! Errors go to stderr as one sentence, with exit code 1.

use std::process::ExitCode;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use vlsa::image_io::{Image, Mask};
use vlsa::kernels::Gpu;
use vlsa::model::Model;

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
        /// Take the vision encoder from a Hugging Face CLIP checkpoint folder (config.json and
        /// model.safetensors); the config's vision settings must match it.
        #[arg(long, value_name = "DIR")]
        clip: Option<PathBuf>,
    },
    /// Segment images: writes <stem>_mask.png (class index per pixel, original size) and
    /// <stem>_overlay.png (classes tinted, with a legend) for each image.
    Segment {
        /// The model file.
        #[arg(long, value_name = "MODEL.safetensors")]
        model: PathBuf,
        /// Images to segment (PNG or JPEG); repeat for several.
        #[arg(long = "image", value_name = "IMG", required = true)]
        images: Vec<PathBuf>,
        /// Output folder (created if missing); default: beside each image.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Run the model on images and dump the input and every intermediate tensor (DESIGN.md names).
    Forward {
        /// The model file.
        #[arg(long, value_name = "MODEL.safetensors")]
        model: PathBuf,
        /// Images (a batch; repeat for several).
        #[arg(long = "image", value_name = "IMG", required = true)]
        images: Vec<PathBuf>,
        /// The safetensors file to write.
        #[arg(long, value_name = "OUT.safetensors")]
        dump: PathBuf,
    },
    /// Compute the loss of images against masks and dump every parameter gradient.
    Grad {
        /// The model file.
        #[arg(long, value_name = "MODEL.safetensors")]
        model: PathBuf,
        /// Images (a batch; repeat for several).
        #[arg(long = "image", value_name = "IMG", required = true)]
        images: Vec<PathBuf>,
        /// Masks, one per image in the same order (grey PNG, pixel value = class index).
        #[arg(long = "mask", value_name = "MASK", required = true)]
        masks: Vec<PathBuf>,
        /// The safetensors file to write.
        #[arg(long, value_name = "OUT.safetensors")]
        dump: PathBuf,
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
    /// Time every dispatch of one forward (and with --backward, loss and backward) of a model
    /// on a random batch: per-kernel table, dispatch counts, optional Chrome trace.
    Model {
        /// The model file.
        #[arg(long, value_name = "MODEL.safetensors")]
        model: PathBuf,
        /// Batch size B.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Also profile the loss and the backward pass.
        #[arg(long)]
        backward: bool,
        /// Write a Chrome trace (chrome://tracing, Perfetto) to this file.
        #[arg(long, value_name = "OUT.json")]
        trace: Option<PathBuf>,
        /// Seed of the random batch.
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

fn init(config: &Path, out: &Path, seed: u64, clip: Option<&Path>) -> Result<(), String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("cannot read the configuration {}: {e}", config.display()))?;
    let config = vlsa::config::Config::from_json(&text, &config.display().to_string()).map_err(|e| e.to_string())?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let model = match clip {
        Some(dir) => {
            let clip = vlsa::clip::ClipVision::load(dir).map_err(|e| e.to_string())?;
            vlsa::model::Model::init_with_clip(&gpu, config, &clip, seed).map_err(|e| e.to_string())?
        }
        None => vlsa::model::Model::init(&gpu, config, seed).map_err(|e| e.to_string())?,
    };
    model.save(out, false).map_err(|e| e.to_string())?;
    let params: usize = model.parameters().map(|(_, t)| t.numel()).sum();
    println!("wrote {} ({params} trainable parameters)", out.display());
    Ok(())
}

fn profile_model(model: &Path, batch: usize, backward: bool, trace: Option<&Path>, seed: u64) -> Result<(), String> {
    if batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let (_gpu, model) = load_model(model)?;
    let report = vlsa::profile::profile_model(&model, batch, backward, seed).map_err(|e| e.to_string())?;
    print!("{report}");
    if let Some(path) = trace {
        vlsa::io::write_atomic(path, report.profile.chrome_trace().as_bytes()).map_err(|e| format!("cannot write the trace {}: {e}", path.display()))?;
        println!("trace written to {}", path.display());
    }
    Ok(())
}

fn load_model(path: &Path) -> Result<(Gpu, Model), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let model = Model::load(&gpu, path).map_err(|e| e.to_string())?;
    Ok((gpu, model))
}

fn load_images(paths: &[PathBuf]) -> Result<Vec<Image>, String> {
    paths.iter().map(|p| Image::load(p).map_err(|e| e.to_string())).collect()
}

fn segment(model: &Path, images: &[PathBuf], out: Option<&Path>) -> Result<(), String> {
    let (_gpu, model) = load_model(model)?;
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the output folder {}: {e}", dir.display()))?;
    }
    let classes = model.config.classes.clone();
    // One image at a time from disk, batched on the GPU.
    for chunk in images.chunks(vlsa::infer::SEGMENT_BATCH) {
        let loaded = load_images(chunk)?;
        let refs: Vec<&Image> = loaded.iter().collect();
        let masks = model.segment(&refs).map_err(|e| e.to_string())?;
        for ((path, image), mask) in chunk.iter().zip(&loaded).zip(&masks) {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
            let dir = out.map(Path::to_path_buf).unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
            let mask_path = dir.join(format!("{stem}_mask.png"));
            let overlay_path = dir.join(format!("{stem}_overlay.png"));
            mask.save_png(&mask_path).map_err(|e| e.to_string())?;
            vlsa::infer::overlay(image, mask, &classes).and_then(|o| o.save_png(&overlay_path)).map_err(|e| e.to_string())?;
            let total = mask.labels.len() as f64;
            let shares: Vec<String> = (1..classes.len())
                .map(|k| format!("{} {:.1}%", classes[k], 100.0 * mask.labels.iter().filter(|&&l| l as usize == k).count() as f64 / total))
                .collect();
            println!("{}: {}x{}, {} -> {}, {}", path.display(), image.width, image.height, shares.join(", "), mask_path.display(), overlay_path.display());
        }
    }
    Ok(())
}

fn write_dump(file: &vlsa::weights::TensorFile, path: &Path) -> Result<(), String> {
    file.write(path, false).map_err(|e| e.to_string())?;
    println!("wrote {} ({} tensors)", path.display(), file.tensors.len());
    Ok(())
}

fn forward(model: &Path, images: &[PathBuf], dump: &Path) -> Result<(), String> {
    let (_gpu, model) = load_model(model)?;
    let loaded = load_images(images)?;
    let file = model.forward_dump(&loaded.iter().collect::<Vec<_>>()).map_err(|e| e.to_string())?;
    write_dump(&file, dump)
}

fn grad(model: &Path, images: &[PathBuf], mask_paths: &[PathBuf], dump: &Path) -> Result<(), String> {
    if images.len() != mask_paths.len() {
        return Err(format!("{} images but {} masks were given; pass one --mask per --image, in the same order", images.len(), mask_paths.len()));
    }
    let (_gpu, model) = load_model(model)?;
    let loaded = load_images(images)?;
    let k = model.config.num_classes();
    let masks: Vec<Mask> = mask_paths.iter().map(|p| Mask::load(p, Some(k)).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    for ((ip, img), (mp, m)) in images.iter().zip(&loaded).zip(mask_paths.iter().zip(&masks)) {
        if (img.width, img.height) != (m.width, m.height) {
            return Err(format!("{} is {}x{} but its image {} is {}x{}; a mask must have its image's size", mp.display(), m.width, m.height, ip.display(), img.width, img.height));
        }
    }
    let file = model.grad_dump(&loaded.iter().collect::<Vec<_>>(), &masks.iter().collect::<Vec<_>>()).map_err(|e| e.to_string())?;
    write_dump(&file, dump)
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
        Command::Init { config, out, seed, clip } => init(&config, &out, seed, clip.as_deref()),
        Command::Segment { model, images, out } => segment(&model, &images, out.as_deref()),
        Command::Forward { model, images, dump } => forward(&model, &images, &dump),
        Command::Grad { model, images, masks, dump } => grad(&model, &images, &masks, &dump),
        Command::Profile(ProfileCommand::Em { tokens, width, bases, iters, batch, lambda, backward, trace, seed }) => {
            profile_em(tokens, width, bases, iters, batch, lambda, backward, trace, seed)
        }
        Command::Profile(ProfileCommand::Model { model, batch, backward, trace, seed }) => profile_model(&model, batch, backward, trace.as_deref(), seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vlsa: {message}");
            ExitCode::FAILURE
        }
    }
}
