//! The `vlsa` command-line tool: thin wrappers over the library (docs/DESIGN.md, "Command line").
//! Errors go to stderr as one sentence, with exit code 1 (clap's usage errors: 2; a training
//! run stopped by Ctrl-C or SIGTERM after writing its checkpoint: 130). A closed stdout ends the
//! program quietly. Every output path is checked (and its folders made) before any work.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::{Parser, Subcommand};
use vlsa::image_io::{Image, Mask};
use vlsa::kernels::Gpu;
use vlsa::model::Model;

/// An error of the command line: one sentence for stderr, and the exit code.
#[derive(Debug)]
struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    fn new(message: impl Into<String>) -> CliError {
        CliError { message: message.into(), code: 1 }
    }
}

impl From<vlsa::Error> for CliError {
    fn from(e: vlsa::Error) -> CliError {
        CliError::new(e.to_string())
    }
}

impl From<vlsa::kernels::Error> for CliError {
    fn from(e: vlsa::kernels::Error) -> CliError {
        CliError::new(e.to_string())
    }
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError::new(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError::new(message)
    }
}

type CliResult = Result<(), CliError>;

/// Prints a line on stdout (see [`write_stdout`]).
macro_rules! outln {
    ($($arg:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to stdout. When the reader has gone (`vlsa info | head -1`) the program ends quietly
/// with exit code 0, as the work asked for is done or cannot be seen anyway; any other write
/// error (a full disk) is one sentence and exit code 1.
fn write_stdout(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "vlsa: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Ctrl-C (SIGINT) and SIGTERM during training: the first sets a flag that `vlsa train` reads
/// after each step (it writes a checkpoint and exits 130); a second ends the program at once.
/// Uses the C library's `signal` directly (std links it already) rather than a crate: the
/// handler only swaps an atomic flag and calls async-signal-safe `write` and `_exit`.
#[cfg(unix)]
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static REQUESTED: AtomicBool = AtomicBool::new(false);

    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;

    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
        fn write(fd: i32, buf: *const u8, count: usize) -> isize;
        fn _exit(status: i32) -> !;
    }

    extern "C" fn on_signal(_: i32) {
        const MESSAGE: &[u8] =
            b"\nvlsa: stopping after this step to write a checkpoint; press Ctrl-C again to quit at once\n";
        if REQUESTED.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe and takes no pointers.
            unsafe { _exit(130) }
        }
        // SAFETY: write is async-signal-safe; the buffer is a static of the given length.
        unsafe {
            write(2, MESSAGE.as_ptr(), MESSAGE.len());
        }
    }

    /// Installs the handler for SIGINT and SIGTERM.
    pub fn install() {
        // SAFETY: `on_signal` has the C signature of a signal handler and only touches an
        // atomic and async-signal-safe functions; SIGINT and SIGTERM are 2 and 15 on every Unix.
        unsafe {
            signal(SIGINT, on_signal as extern "C" fn(i32) as usize);
            signal(SIGTERM, on_signal as extern "C" fn(i32) as usize);
        }
    }
}

/// Elsewhere Ctrl-C ends the program as usual (the last checkpoint is kept).
#[cfg(not(unix))]
mod interrupt {
    pub static REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    pub fn install() {}
}

#[derive(Parser)]
#[command(
    name = "vlsa",
    version,
    about = "Vision-language semantic aggregation for medical image segmentation, on hand-written WGSL kernels"
)]
struct Cli {
    /// Use the first GPU adapter whose name contains NAME (case-insensitive; `vlsa info` lists
    /// them). Without it: VLSA_ADAPTER, else the best adapter found. WGPU_BACKEND
    /// (vulkan, metal, dx12, gl; comma-separated) restricts the backends searched.
    #[arg(long, global = true, value_name = "NAME")]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The adapter asked for with --adapter, for [`open_gpu`].
static ADAPTER: OnceLock<Option<String>> = OnceLock::new();

/// The backend names wgpu reads from WGPU_BACKEND (it ignores others with a log line nobody
/// sees, and then finds no adapter).
const BACKENDS: [&str; 10] = ["vulkan", "vk", "metal", "mtl", "dx12", "d3d12", "gl", "gles", "opengl", "webgpu"];

/// Opens the GPU: --adapter, else VLSA_ADAPTER, else the best adapter; WGPU_BACKEND is checked
/// first so that a misspelt backend is named instead of reported as no adapter at all.
fn open_gpu() -> Result<Gpu, CliError> {
    if let Some(value) = std::env::var_os("WGPU_BACKEND") {
        let value = value.to_string_lossy().into_owned();
        if let Some(bad) = value.split(',').map(str::trim).find(|b| !BACKENDS.contains(&b.to_lowercase().as_str())) {
            return Err(CliError::new(format!(
                "WGPU_BACKEND={value}: the backend name {bad:?} is unknown; use vulkan, metal, dx12 or gl (several separated by commas), or unset it to search all"
            )));
        }
    }
    match ADAPTER.get().and_then(Option::as_deref) {
        Some(name) => Gpu::with_adapter(Some(name)).map_err(|e| match e {
            vlsa::kernels::Error::NoAdapter(m) => {
                CliError::new(m.replacen(&format!("VLSA_ADAPTER={name}"), &format!("--adapter {name}"), 1))
            }
            other => other.into(),
        }),
        None => Ok(Gpu::new()?),
    }
}

/// Checks before any work that `path`, given with `flag`, can be written (its folders are made).
fn check_output(flag: &str, path: &Path) -> CliResult {
    vlsa::io::prepare_output(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::IsADirectory {
            CliError::new(format!("{flag} {} is a folder; give a file name", path.display()))
        } else {
            CliError::new(format!("cannot write {flag} {}: {e}", path.display()))
        }
    })
}

/// Checks that an output folder given with `flag` is a folder or can be made.
fn check_output_dir(flag: &str, dir: &Path) -> CliResult {
    if dir.exists() && !dir.is_dir() {
        return Err(format!("{flag} {} is a file, but a folder is needed here; give a folder", dir.display()).into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the folder {flag} {}: {e}", dir.display()))?;
    Ok(())
}

/// Checks that an input folder given with `flag` exists.
fn check_input_dir(flag: &str, what: &str, dir: &Path) -> CliResult {
    if !dir.is_dir() {
        let state = if dir.exists() { "is not a folder" } else { "does not exist" };
        return Err(format!("{flag} {}: {what} {state}", dir.display()).into());
    }
    Ok(())
}

/// The images named by `paths`: files as given, and for each folder its PNG and JPEG files,
/// sorted by name. The same file named twice is kept once.
fn expand_images(flag: &str, paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("cannot list {flag} {}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension()
                            .and_then(|x| x.to_str())
                            .is_some_and(|x| ["png", "jpg", "jpeg"].contains(&x.to_ascii_lowercase().as_str()))
                })
                .collect();
            if found.is_empty() {
                return Err(format!("{flag} {} is a folder with no PNG or JPEG files", p.display()).into());
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter vlsa uses: backend, driver, device type, features and key limits.
    Info,
    /// Create a randomly initialised model from a configuration (docs/DESIGN.md "Configuration").
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
        /// Start from this trained model or checkpoint: every tensor the config expects takes
        /// the file's tensor of the same name and shape, the others are initialised afresh
        /// (listed), e.g. to add `decoder.upsample` to a trained model before training on.
        #[arg(long, value_name = "MODEL.safetensors", conflicts_with = "clip")]
        from: Option<PathBuf>,
        /// Fill the class embeddings with this text encoder's embeddings of the config's
        /// prompts (a Hugging Face BERT folder, e.g. from scripts/fetch-minilm.sh).
        #[arg(long, value_name = "DIR")]
        text_encoder: Option<std::path::PathBuf>,
        /// Store `shifts` = K in the model's configuration: it then predicts by a K x K shift
        /// ensemble (docs/DESIGN.md, "Shift ensemble"), as if `"shifts": K` were in CFG.json.
        #[arg(long, value_name = "K")]
        shifts: Option<usize>,
    },
    /// Segment images: writes <stem>_mask.png (class index per pixel, original size) and
    /// <stem>_overlay.png (classes tinted, with a legend) for each image.
    Segment {
        /// The model file.
        #[arg(long, value_name = "MODEL.safetensors")]
        model: PathBuf,
        /// Images to segment (PNG or JPEG), several after one flag (a shell glob works) or the
        /// flag repeated; a folder stands for its PNG and JPEG files, sorted by name.
        #[arg(long = "image", value_name = "IMG", required = true, num_args = 1..)]
        images: Vec<PathBuf>,
        /// Output folder (created if missing); default: beside each image. Two images whose
        /// outputs would have the same name are refused before any work.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// New class prompts, one per class in the model's order (background first); they are
        /// embedded by --text-encoder and replace the model's class embeddings for this run.
        #[arg(long = "prompt", value_name = "TEXT", requires = "text_encoder")]
        prompts: Vec<String>,
        /// The text encoder for --prompt (a Hugging Face BERT folder, e.g. from scripts/fetch-minilm.sh).
        #[arg(long, value_name = "DIR")]
        text_encoder: Option<PathBuf>,
        /// Shift ensemble: predict from the mean logits of K x K copies of each image moved by
        /// patch_size / K pixels (docs/DESIGN.md, "Shift ensemble"); 1 for one forward. Default:
        /// the model's own `shifts`, else 1.
        #[arg(long, value_name = "K")]
        shifts: Option<usize>,
        /// Zoom out: shrink each image to 1/K of the model's input side in a black input, for
        /// close-ups in which the object fills K times more of the image than in the model's
        /// training images (docs/DESIGN.md, "Zoom-out"); 1: the image fills the input; `auto`:
        /// the model's automatic zoom-out (its `auto_zoom_out`). Default: the model's own
        /// `zoom_out`, else its automatic zoom-out where enabled, else 1.
        #[arg(long, value_name = "K|auto", value_parser = parse_zoom_out)]
        zoom_out: Option<ZoomOut>,
    },
    /// Run the model on images and dump the input and every intermediate tensor (docs/DESIGN.md names).
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
        /// Data set folders (images/, masks/), one per domain: several after one flag or the
        /// flag repeated.
        #[arg(long, value_name = "DIR", required = true, num_args = 1..)]
        data: Vec<std::path::PathBuf>,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "OUT.json")]
        json: Option<std::path::PathBuf>,
        /// Images per forward pass.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
        /// Also score a union of classes as one structure: NAME=CLASSES, the classes by index or
        /// name, comma-separated (e.g. "whole-disc=1,2": the optic disc with its cup); repeat
        /// for more. Reported beside the classes, with their own mean.
        #[arg(long, value_name = "NAME=CLASSES")]
        region: Vec<String>,
        /// No progress line (one is shown only when stderr is a terminal).
        #[arg(long, short)]
        quiet: bool,
        /// Shift ensemble: predict from the mean logits of K x K copies of each image moved by
        /// patch_size / K pixels (docs/DESIGN.md, "Shift ensemble"); 1 for one forward. Default:
        /// the model's own `shifts`, else 1.
        #[arg(long, value_name = "K")]
        shifts: Option<usize>,
        /// Zoom out: shrink each image to 1/K of the model's input side in a black input, for
        /// close-ups in which the object fills K times more of the image than in the model's
        /// training images (docs/DESIGN.md, "Zoom-out"); 1: the image fills the input; `auto`:
        /// the model's automatic zoom-out (its `auto_zoom_out`). Default: the model's own
        /// `zoom_out`, else its automatic zoom-out where enabled, else 1.
        #[arg(long, value_name = "K|auto", value_parser = parse_zoom_out)]
        zoom_out: Option<ZoomOut>,
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
    /// Average model files of one configuration, tensor by tensor (e.g. snapshots of one run:
    /// stochastic weight averaging). Checkpoints may be given; their optimizer state is left out.
    Average {
        /// The model files or checkpoints to average (at least two), several after one flag or
        /// the flag repeated.
        #[arg(long = "model", value_name = "MODEL.safetensors", required = true, num_args = 1..)]
        models: Vec<PathBuf>,
        /// Where to write the averaged model.
        #[arg(long, value_name = "OUT.safetensors")]
        out: PathBuf,
    },
    /// Profile kernels on the GPU, per dispatch.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Train a model on a data set (images/NAME.png + masks/NAME.png), with checkpoints that resume exactly.
    Train(Box<TrainArgs>),
}

/// `vlsa train`. Options left out take their defaults on a new run; with --resume they come
/// from the checkpoint, and any given must agree with it.
#[derive(clap::Args)]
struct TrainArgs {
    /// Start from a random model of this configuration (seeded by --seed).
    #[arg(long, value_name = "CFG.json", conflicts_with = "model", required_unless_present_any = ["model", "resume"])]
    config: Option<std::path::PathBuf>,
    /// Start from this model file (e.g. a pretrained one).
    #[arg(long, value_name = "MODEL.safetensors")]
    model: Option<std::path::PathBuf>,
    /// The training data set.
    #[arg(long, value_name = "DIR")]
    data: std::path::PathBuf,
    /// Total training steps (the length of the learning-rate schedule).
    #[arg(long, required_unless_present = "resume")]
    steps: Option<usize>,
    /// The checkpoint to write (and to resume from with --resume); the log
    /// (<out>.log.csv) and the curve (<out>.curve.svg) go beside it.
    #[arg(long, value_name = "CKPT.safetensors")]
    out: std::path::PathBuf,
    /// Validation data set: mean foreground Dice every --val-every steps.
    #[arg(long, value_name = "DIR")]
    val: Option<std::path::PathBuf>,
    /// Continue exactly from the checkpoint at --out (starts from step 0 when there is none yet).
    #[arg(long)]
    resume: bool,
    /// Start a new run even though --out (or its log or curve) exists, replacing them.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Images per step [default: 8].
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate [default: 1e-3].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Warmup steps [default: min(100, steps / 10)].
    #[arg(long)]
    warmup: Option<usize>,
    /// Decoupled weight decay [default: 0.05].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f32>,
    /// Learning-rate multiplier of the vision encoder [default: 1 with --config, 0.1 with --model].
    #[arg(long, allow_negative_numbers = true)]
    vision_lr_mult: Option<f32>,
    /// Seed of the initialisation, data order and augmentation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Train without augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Train without domain randomization (random gamma, colour, blur, noise, resolution, shading).
    #[arg(long)]
    no_randomize: bool,
    /// Fraction of the samples cropped to a square of 0.25-0.45 of the side around their
    /// foreground (labels other than 0), as a model with `refine` sees it in its second pass
    /// [default: 0].
    #[arg(long, value_name = "FRACTION", allow_negative_numbers = true)]
    focus_crops: Option<f32>,
    /// Fraction of the samples acquired by a low-end camera or scanner, whose degradations come
    /// together: coarse, noisy, soft, vignetted and hard-compressed at one shared severity
    /// (uniform in 0-1) instead of each drawn on its own [default: 0].
    #[arg(long, value_name = "FRACTION", allow_negative_numbers = true)]
    low_end: Option<f32>,
    /// At the start of a new run, replace the class embeddings by this text encoder's embeddings
    /// of the configuration's prompts (as `init --text-encoder` does; a Hugging Face BERT folder).
    /// A resumed run keeps the checkpoint's.
    #[arg(long, value_name = "DIR")]
    text_encoder: Option<std::path::PathBuf>,
    /// Validate every N steps.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    val_every: u64,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// When stderr is not a terminal, print a progress line every N steps.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    log_every: u64,
    /// Also keep the model (no optimizer state) after every N-th step K as
    /// <out>.step-<K>.safetensors, e.g. to average a run's last snapshots with `vlsa average`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep_every: Option<u64>,
    /// Stop after this step (writing a checkpoint) without changing the schedule; --resume continues.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    stop_at: Option<u64>,
    /// No progress output on stderr (neither the bar nor the plain lines).
    #[arg(long, short)]
    quiet: bool,
    /// Also write the final model, without optimizer state, to this file.
    #[arg(long, value_name = "MODEL.safetensors")]
    export: Option<std::path::PathBuf>,
}

fn train(a: TrainArgs) -> CliResult {
    use vlsa::train::{prepare, run, Begun, OptionChoices, RunOptions, Setup, Start};
    // Every output is checked before the first step, so no step is lost to a bad path.
    check_output("--out", &a.out)?;
    if let Some(path) = &a.export {
        check_output("--export", path)?;
    }
    // The data sets are read (and any problem named) before the first step too.
    if let Some(dir) = &a.text_encoder {
        check_input_dir("--text-encoder", "the text encoder folder", dir)?;
    }
    let gpu = open_gpu()?;
    let start = match (&a.config, &a.model) {
        (Some(c), _) => Some(Start::Config(c)),
        (None, Some(m)) => Some(Start::Model(m)),
        (None, None) => None,
    };
    let choices = OptionChoices {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        vision_lr_mult: a.vision_lr_mult,
        seed: a.seed,
        augment: a.no_augment.then_some(false),
        randomize: a.no_randomize.then_some(false),
        focus: a.focus_crops,
        low_end: a.low_end,
    };
    let setup = Setup { out: &a.out, data: &a.data, start, resume: a.resume, force: a.force, choices: &choices };
    let (mut trainer, begun) = prepare(&gpu, &setup)?;
    let steps = trainer.options.steps;
    match begun {
        Begun::Resumed => eprintln!("vlsa: resuming {} at step {} of {steps}", a.out.display(), trainer.step),
        Begun::NoCheckpointYet => eprintln!("vlsa: no checkpoint at {} yet; starting from step 0", a.out.display()),
        Begun::New => {}
    }
    if let Some(stop) = a.stop_at.map(|s| s as usize) {
        if stop > steps {
            return Err(format!("--stop-at {stop} is beyond the {steps} steps of the run; give at most {steps}").into());
        }
    }
    if let Some(dir) = &a.text_encoder {
        if begun == Begun::Resumed {
            eprintln!("vlsa: the class embeddings come from the checkpoint; --text-encoder is used when a run starts");
        } else {
            let prompts = trainer.model.config.prompt_texts();
            vlsa::infer::embed_prompts(&mut trainer.model, dir, &prompts)?;
            eprintln!("vlsa: class embeddings: {} prompts embedded by {}", prompts.len(), dir.display());
        }
    }
    let val = match &a.val {
        Some(dir) => {
            let data = vlsa::data::Dataset::load(dir, trainer.model.config.num_classes())?;
            vlsa::train::check_validation_set(&data)?;
            Some(data)
        }
        None => None,
    };
    interrupt::install();
    let opts = RunOptions {
        out: a.out.clone(),
        val_every: a.val_every as usize,
        checkpoint_every: a.checkpoint_every as usize,
        log_every: a.log_every as usize,
        keep_every: a.keep_every.map(|k| k as usize),
        stop_at: a.stop_at.map(|s| s as usize),
        quiet: a.quiet,
        interrupt: Some(&interrupt::REQUESTED),
    };
    let params: usize = trainer.model.parameters().map(|(_, t)| t.numel()).sum();
    if !a.quiet {
        eprintln!(
            "vlsa: training {params} parameters on {} images ({}), batch {}, {steps} steps, on {}",
            trainer.data().len(),
            a.data.display(),
            trainer.options.batch,
            gpu.info().name
        );
    }
    let stop = opts.stop_at.unwrap_or(steps).min(steps);
    if a.force {
        // The replaced run's snapshots go now, after every check, so none is mixed with this run's.
        let removed = vlsa::train::report::remove_snapshots(&a.out)?;
        if removed > 0 && !a.quiet {
            eprintln!("vlsa: removed {removed} snapshots of the run --force replaces");
        }
    }
    if trainer.step >= stop {
        outln!("nothing to do: {} is at step {} and the run stops at step {stop}", a.out.display(), trainer.step);
    } else {
        let summary = run(&mut trainer, val.as_ref(), &opts)?;
        if summary.interrupted {
            return Err(CliError {
                message: format!(
                    "interrupted: the checkpoint {} holds step {} of {steps}; rerun the same command with --resume to continue",
                    a.out.display(),
                    trainer.step
                ),
                code: 130,
            });
        }
        let (log, curve) = vlsa::train::report::side_paths(&a.out);
        outln!("steps {}..{} of {steps} in {:.1} s", summary.first_step, summary.last_step, summary.seconds);
        if let Some(l) = summary.last_loss {
            outln!("last loss:          {l:.4}");
        }
        if let Some(d) = summary.val_dice {
            outln!("validation Dice:    {d:.4}");
        }
        if let Some(r) = summary.images_per_second {
            outln!("throughput:         {r:.2} images/s (after the first step)");
        }
        outln!("dispatches/step:    {:.0}", summary.dispatches_per_step);
        outln!("checkpoint:         {}", a.out.display());
        outln!("log, curve:         {}, {}", log.display(), curve.display());
    }
    if let Some(path) = &a.export {
        trainer.model.save(path, false)?;
        outln!("model:              {}", path.display());
    }
    Ok(())
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
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
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
        /// How a forward iteration runs: `auto` (the kernel path's choice), `two-pass` (E-step,
        /// column sums, M-step and normalisation in two dispatches: the GPU path's default) or
        /// `per-step` (four dispatches where M and C are multiples of 4, else seven: the CPU
        /// paths' default).
        #[arg(long, default_value = "auto")]
        iteration: String,
    },
    /// Time one matrix product on each kernel path: the entry point that ran, GPU time and
    /// GFLOP/s, one line per path.
    Matmul {
        /// Rows of A and of the output.
        #[arg(long)]
        m: usize,
        /// Columns of B and of the output.
        #[arg(long)]
        n: usize,
        /// The summed axis.
        #[arg(long)]
        k: usize,
        /// Storage of A and B: n = as written ([M, K], [K, N]), t = transposed.
        #[arg(long, default_value = "nn")]
        layout: String,
        /// Products in the batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Kernel path (registers, subgroup, tiled) or all the adapter can run.
        #[arg(long, default_value = "all")]
        path: String,
        /// Timed products per path.
        #[arg(long, default_value_t = 10)]
        iters: usize,
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

/// `vlsa profile em`'s options.
struct EmArgs {
    tokens: usize,
    width: usize,
    bases: usize,
    iters: usize,
    batch: usize,
    lambda: f32,
    backward: bool,
    trace: Option<PathBuf>,
    seed: u64,
    iteration: String,
}

fn profile_em(a: EmArgs) -> CliResult {
    let iteration = match a.iteration.as_str() {
        "auto" => vlsa::kernels::em::Iteration::Auto,
        "two-pass" => vlsa::kernels::em::Iteration::TwoPass,
        "per-step" => vlsa::kernels::em::Iteration::PerStep,
        other => return Err(format!("--iteration {other} is not one of auto, two-pass, per-step").into()),
    };
    if let Some(path) = &a.trace {
        check_output("--trace", path)?;
    }
    let gpu = open_gpu()?;
    let opts = vlsa::profile::EmProfileOptions {
        batch: a.batch,
        tokens: a.tokens,
        width: a.width,
        bases: a.bases,
        iters: a.iters,
        lambda: a.lambda,
        backward: a.backward,
        seed: a.seed,
        iteration,
    };
    let report = vlsa::profile::profile_em(&gpu, &opts)?;
    write_stdout(format_args!("{report}"));
    if let Some(path) = &a.trace {
        write_trace(path, &report.chrome_trace())?;
    }
    Ok(())
}

fn write_trace(path: &Path, trace: &str) -> CliResult {
    vlsa::io::write_atomic(path, trace.as_bytes())
        .map_err(|e| format!("cannot write the trace {}: {e}", path.display()))?;
    outln!("trace written to {}", path.display());
    Ok(())
}

/// What `vlsa init` starts from besides its seed.
enum Start {
    Fresh,
    /// A CLIP checkpoint folder for the vision encoder (`--clip`).
    Clip(PathBuf),
    /// A trained model or checkpoint whose matching tensors are kept (`--from`).
    From(PathBuf),
}

fn init(
    config: &Path,
    out: &Path,
    seed: u64,
    start: &Start,
    text_encoder: Option<&Path>,
    shifts: Option<usize>,
) -> CliResult {
    check_output("--out", out)?;
    match start {
        Start::Clip(dir) => check_input_dir("--clip", "the CLIP checkpoint folder", dir)?,
        Start::From(_) | Start::Fresh => {}
    }
    if let Some(dir) = text_encoder {
        check_input_dir("--text-encoder", "the text encoder folder", dir)?;
    }
    let mut config = vlsa::train::read_config(config)?;
    if let Some(k) = shifts {
        vlsa::config::check_shifts(k, config.patch_size).map_err(|why| format!("--shifts {why}"))?;
        config.shifts = Some(k);
    }
    let gpu = open_gpu()?;
    let mut model = match start {
        Start::Clip(dir) => {
            let clip = vlsa::clip::ClipVision::load(dir)?;
            Model::init_with_clip(&gpu, config, &clip, seed)?
        }
        Start::From(file) => {
            let (model, fresh) = Model::init_from(&gpu, config, seed, file)?;
            let kept = vlsa::config::expected_tensors(&model.config).len() - fresh.len();
            outln!("started from {}: {kept} tensors kept, {} initialised afresh", file.display(), fresh.len());
            for name in &fresh {
                outln!("  new: {name}");
            }
            model
        }
        Start::Fresh => Model::init(&gpu, config, seed)?,
    };
    if let Some(dir) = text_encoder {
        let prompts = model.config.prompt_texts();
        vlsa::infer::embed_prompts(&mut model, dir, &prompts)?;
        outln!("class embeddings: {} prompts embedded by {}", prompts.len(), dir.display());
    }
    model.save(out, false)?;
    let params: usize = model.parameters().map(|(_, t)| t.numel()).sum();
    outln!("wrote {} ({params} trainable parameters)", out.display());
    Ok(())
}

/// `vlsa average`: reads the files one at a time into a running mean, and writes `--out` only
/// once every file has been read, so a bad one costs nothing and `--out` may be one of the inputs.
fn average(models: &[PathBuf], out: &Path) -> CliResult {
    check_output("--out", out)?;
    let read = |p: &PathBuf| vlsa::weights::TensorFile::read(p).map(|f| (p.display().to_string(), f));
    let (first, file) = read(&models[0])?;
    let mut mean = vlsa::average::Average::new(&first, &file)?;
    drop(file);
    for path in &models[1..] {
        let (name, file) = read(path)?;
        mean.add(&name, &file)?;
    }
    let mean = mean.finish()?;
    mean.write(out, false)?;
    let values: usize = mean.tensors.values().map(|t| t.data.len()).sum();
    outln!("wrote {} (the mean of {} files, {values} values)", out.display(), models.len());
    Ok(())
}

fn profile_matmul(m: usize, n: usize, k: usize, layout: &str, batch: usize, path: &str, iters: usize) -> CliResult {
    let gpu = open_gpu()?;
    let args = vlsa::profile::MatmulProfileArgs { m, n, k, layout, batch, path, iters };
    let opts = vlsa::profile::MatmulProfileOptions::parse(&gpu, &args)?;
    write_stdout(format_args!("{}", vlsa::profile::profile_matmul(&gpu, &opts)?));
    Ok(())
}

fn profile_model(model: &Path, batch: usize, backward: bool, trace: Option<&Path>, seed: u64) -> CliResult {
    if batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if let Some(path) = trace {
        check_output("--trace", path)?;
    }
    let (_gpu, model) = load_model(model)?;
    let report = vlsa::profile::profile_model(&model, batch, backward, seed)?;
    write_stdout(format_args!("{report}"));
    if let Some(path) = trace {
        write_trace(path, &report.profile.chrome_trace())?;
    }
    Ok(())
}

fn load_model(path: &Path) -> Result<(Gpu, Model), CliError> {
    let gpu = open_gpu()?;
    let model = Model::load(&gpu, path)?;
    Ok((gpu, model))
}

fn load_images(paths: &[PathBuf]) -> Result<Vec<Image>, CliError> {
    Ok(paths.iter().map(|p| Image::load(p)).collect::<vlsa::Result<_>>()?)
}

fn segment(
    model: &Path,
    images: &[PathBuf],
    out: Option<&Path>,
    prompts: &[String],
    text_encoder: Option<&Path>,
    prediction: Prediction,
) -> CliResult {
    let images = expand_images("--image", images)?;
    // Where each image's files go; two images that would write the same files are refused
    // before any work (e.g. a/x.png and b/x.png into one --out, or x.png and x.jpg).
    let mut targets: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(images.len());
    let mut owner: HashMap<PathBuf, &Path> = HashMap::new();
    for path in &images {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        let dir =
            out.map(Path::to_path_buf).unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
        let mask_path = dir.join(format!("{stem}_mask.png"));
        if let Some(first) = owner.insert(mask_path.clone(), path) {
            return Err(format!(
                "{} and {} would both be written to {}; segment them into different --out folders or rename one",
                first.display(),
                path.display(),
                mask_path.display()
            )
            .into());
        }
        targets.push((mask_path, dir.join(format!("{stem}_overlay.png"))));
    }
    if let Some(dir) = out {
        check_output_dir("--out", dir)?;
    }
    if let Some(dir) = text_encoder {
        check_input_dir("--text-encoder", "the text encoder folder", dir)?;
    }
    let (_gpu, mut model) = load_model(model)?;
    set_prediction(&mut model, prediction)?;
    if let Some(dir) = text_encoder {
        let k = model.config.num_classes();
        if prompts.is_empty() {
            return Err("--text-encoder is only used with --prompt; give one --prompt per class".into());
        }
        if prompts.len() != k {
            return Err(format!(
                "{} prompts were given but the model has {k} classes ({}); give one --prompt per class, background first",
                prompts.len(),
                model.config.classes.join(", ")
            )
            .into());
        }
        vlsa::infer::embed_prompts(&mut model, dir, prompts)?;
        outln!("class embeddings: {} prompts embedded by {}", prompts.len(), dir.display());
    }
    let classes = model.config.classes.clone();
    let auto = model.config.auto_zoom().is_some();
    // One image at a time from disk, batched on the GPU.
    for (chunk, targets) in images.chunks(vlsa::infer::SEGMENT_BATCH).zip(targets.chunks(vlsa::infer::SEGMENT_BATCH)) {
        let loaded = load_images(chunk)?;
        let refs: Vec<&Image> = loaded.iter().collect();
        let masks = model.segment_zoomed(&refs)?;
        for (((path, image), (mask, zoom)), (mask_path, overlay_path)) in
            chunk.iter().zip(&loaded).zip(&masks).zip(targets)
        {
            mask.save_png(mask_path)?;
            vlsa::infer::overlay(image, mask, &classes)?.save_png(overlay_path)?;
            let total = mask.labels.len() as f64;
            let shares: Vec<String> = (1..classes.len())
                .map(|k| {
                    format!(
                        "{} {:.1}%",
                        classes[k],
                        100.0 * mask.labels.iter().filter(|&&l| l as usize == k).count() as f64 / total
                    )
                })
                .collect();
            // Said where the automatic zoom-out chose it, so a close-up's zoom-out is seen.
            let zoomed = if auto { format!(" (automatic zoom-out: {zoom})") } else { String::new() };
            outln!(
                "{}: {}x{}{zoomed}, {} -> {}, {}",
                path.display(),
                image.width,
                image.height,
                shares.join(", "),
                mask_path.display(),
                overlay_path.display()
            );
        }
    }
    Ok(())
}

fn embed(dir: &Path, texts: &[String], dump: Option<&Path>) -> CliResult {
    if let Some(path) = dump {
        check_output("--dump", path)?;
    }
    check_input_dir("--text-encoder", "the text encoder folder", dir)?;
    let gpu = open_gpu()?;
    let encoder = vlsa::text::TextEncoder::load(&gpu, dir)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embeddings = encoder.embed(&refs)?;
    let ids: Vec<Vec<u32>> = refs.iter().map(|t| encoder.tokenizer().encode(t)).collect();
    let d = encoder.dim();
    for ((text, row), ids) in texts.iter().zip(embeddings.chunks_exact(d)).zip(&ids) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let first: Vec<String> = row.iter().take(4).map(|v| format!("{v:+.5}")).collect();
        outln!("{:>3} tokens  [{} ...]  norm {norm:.4}  {text:?}", ids.len(), first.join(", "));
    }
    if let Some(path) = dump {
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let pad = encoder.tokenizer().pad_id();
        let id_table: Vec<f32> = ids
            .iter()
            .flat_map(|row| row.iter().copied().chain(std::iter::repeat(pad)).take(len).map(|i| i as f32))
            .collect();
        let mut file = vlsa::weights::TensorFile::default();
        file.tensors.insert("text.embeddings".into(), vlsa::weights::HostTensor::new(&[texts.len(), d], embeddings));
        file.tensors.insert("text.token_ids".into(), vlsa::weights::HostTensor::new(&[texts.len(), len], id_table));
        let texts_json = serde_json::to_string(texts).expect("a list of strings always serializes");
        file.metadata.insert("vlsa.texts".into(), texts_json);
        file.write(path, false)?;
        outln!(
            "wrote {} (text.embeddings [{}, {d}], text.token_ids [{}, {len}])",
            path.display(),
            texts.len(),
            texts.len()
        );
    }
    Ok(())
}

fn synth(task: &str, domain: &str, count: usize, size: usize, out: &Path, seed: u64) -> CliResult {
    let task = vlsa::synth::Task::parse(task)?;
    let domain = vlsa::synth::Domain::of(task, domain)?;
    check_output_dir("--out", out)?;
    let start = std::time::Instant::now();
    let options = vlsa::synth::SynthOptions { task, domain, count, size, seed };
    vlsa::synth::write_dataset(&options, out)?;
    outln!(
        "wrote {count} {} images of domain {} ({size}x{size}) to {} in {:.2} s",
        task.name(),
        options.domain.name,
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--shifts` and `--zoom-out` of `vlsa segment` and `vlsa eval`.
#[derive(Debug, Clone, Copy)]
struct Prediction {
    shifts: Option<usize>,
    zoom_out: Option<ZoomOut>,
}

/// `--zoom-out K` or `--zoom-out auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ZoomOut {
    Fixed(usize),
    Auto,
}

/// Parses `--zoom-out`: a whole number or `auto` (its range is checked with the model).
fn parse_zoom_out(text: &str) -> Result<ZoomOut, String> {
    if text == "auto" {
        return Ok(ZoomOut::Auto);
    }
    text.parse().map(ZoomOut::Fixed).map_err(|_| format!("{text:?} is neither a whole number nor auto"))
}

/// Applies `--shifts` and `--zoom-out` over the model's own settings.
fn set_prediction(model: &mut Model, Prediction { shifts, zoom_out }: Prediction) -> CliResult {
    if let Some(k) = shifts {
        vlsa::config::check_shifts(k, model.config.patch_size).map_err(|why| format!("--shifts {why}"))?;
        model.config.shifts = Some(k);
    }
    match zoom_out {
        Some(ZoomOut::Fixed(k)) => {
            vlsa::config::check_zoom_out(k).map_err(|why| format!("--zoom-out {why}"))?;
            if k > 1 && model.config.refine.is_some() {
                return Err("--zoom-out does not combine with the model's refine (two-pass refinement)"
                    .to_string()
                    .into());
            }
            model.config.zoom_out = Some(k);
        }
        Some(ZoomOut::Auto) => {
            let Some(auto) = model.config.auto_zoom_out.as_mut() else {
                return Err("--zoom-out auto needs a model with an automatic zoom-out (`auto_zoom_out` in its \
                    configuration: `vlsa init --config CFG.json --from MODEL` with it in CFG.json); give a factor instead"
                    .to_string()
                    .into());
            };
            auto.enabled = true;
            model.config.zoom_out = None;
        }
        None => {}
    }
    Ok(())
}

fn eval(
    model: &Path,
    data: &[PathBuf],
    json: Option<&Path>,
    batch: usize,
    regions: &[String],
    quiet: bool,
    prediction: Prediction,
) -> CliResult {
    if let Some(path) = json {
        check_output("--json", path)?;
    }
    // Every data set must exist before the first is evaluated.
    for dir in data {
        if !dir.is_dir() {
            return Err(format!("{} is not a data set: there is no such folder (--data)", dir.display()).into());
        }
    }
    let (_gpu, mut loaded) = load_model(model)?;
    set_prediction(&mut loaded, prediction)?;
    let regions = vlsa::eval::Region::parse_all(regions, &loaded.config.classes)?;
    // A progress line on a terminal only: a log or a pipe gets the table alone.
    let terminal = !quiet && std::io::stderr().is_terminal();
    let mut progress = |dir: &Path, done: usize, total: usize| {
        if terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\revaluating {}: {done}/{total} images\x1b[K", dir.display());
            let _ = err.flush();
        }
    };
    let result = vlsa::eval::evaluate_folders_with_progress(&loaded, data, batch, &regions, &mut progress);
    if terminal {
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }
    let mut report = result?;
    report.model = model.display().to_string();
    report.shifts = loaded.config.shifts();
    report.zoom_out = loaded.config.zoom_out();
    write_stdout(format_args!("{}", report.table()));
    if let Some(path) = json {
        let text =
            serde_json::to_string_pretty(&report.to_json()).expect("an evaluation report always serializes") + "\n";
        vlsa::io::write_atomic(path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        outln!("results written to {}", path.display());
    }
    Ok(())
}

fn write_dump(file: &vlsa::weights::TensorFile, path: &Path) -> CliResult {
    file.write(path, false)?;
    outln!("wrote {} ({} tensors)", path.display(), file.tensors.len());
    Ok(())
}

fn forward(model: &Path, images: &[PathBuf], dump: &Path) -> CliResult {
    check_output("--dump", dump)?;
    let (_gpu, model) = load_model(model)?;
    let loaded = load_images(images)?;
    let file = model.forward_dump(&loaded.iter().collect::<Vec<_>>())?;
    write_dump(&file, dump)
}

fn grad(model: &Path, images: &[PathBuf], mask_paths: &[PathBuf], dump: &Path) -> CliResult {
    if images.len() != mask_paths.len() {
        return Err(format!(
            "{} images but {} masks were given; pass one --mask per --image, in the same order",
            images.len(),
            mask_paths.len()
        )
        .into());
    }
    check_output("--dump", dump)?;
    let (_gpu, model) = load_model(model)?;
    let loaded = load_images(images)?;
    let k = model.config.num_classes();
    let masks: Vec<Mask> = mask_paths.iter().map(|p| Mask::load(p, Some(k))).collect::<vlsa::Result<_>>()?;
    for ((ip, img), (mp, m)) in images.iter().zip(&loaded).zip(mask_paths.iter().zip(&masks)) {
        if (img.width, img.height) != (m.width, m.height) {
            return Err(format!(
                "{} is {}x{} but its image {} is {}x{}; a mask must have its image's size",
                mp.display(),
                m.width,
                m.height,
                ip.display(),
                img.width,
                img.height
            )
            .into());
        }
    }
    let file = model.grad_dump(&loaded.iter().collect::<Vec<_>>(), &masks.iter().collect::<Vec<_>>())?;
    write_dump(&file, dump)
}

fn info() -> CliResult {
    let gpu = open_gpu()?;
    let i = gpu.info();
    let l = &i.limits;
    outln!("adapter:      {}", i.name);
    outln!("backend:      {}", i.backend);
    outln!("device type:  {}", i.device_type);
    outln!("driver:       {}", i.driver);
    outln!(
        "timestamps:   {}",
        if i.timestamps { "yes (GPU-timed profiles)" } else { "no (profiles fall back to wall clock)" }
    );
    outln!("shader f16:   {}", if i.shader_f16 { "yes" } else { "no" });
    if i.subgroups {
        outln!("subgroups:    yes (size {}..{})", i.subgroup_size.0, i.subgroup_size.1);
    } else {
        outln!("subgroups:    no");
    }
    outln!("kernel path:  {} (override with VLSA_KERNEL_PATH=registers|subgroup|tiled)", gpu.kernel_path());
    if i.device_type == "Cpu" {
        let w = gpu.worker_threads();
        let cores: Vec<String> = w.cores.iter().map(usize::to_string).collect();
        let state = match (w.found, &w.note) {
            (0, Some(why)) => format!("none pinned ({why})"),
            (n, Some(why)) => format!("{n}, not pinned ({why})"),
            (n, None) if !cores.is_empty() => {
                format!("{n}, pinned to cores {} (VLSA_PIN_THREADS=0 leaves them to the system)", cores.join(", "))
            }
            (n, None) => format!("{n}, not pinned"),
        };
        outln!("worker threads: {state}");
    }
    outln!("limits:");
    outln!("  max_buffer_size                      {} MiB", l.max_buffer_size >> 20);
    outln!("  max_storage_buffer_binding_size      {} MiB", l.max_storage_buffer_binding_size >> 20);
    outln!("  max_storage_buffers_per_shader_stage {}", l.max_storage_buffers_per_shader_stage);
    outln!("  max_storage_textures_per_shader_stage {}", l.max_storage_textures_per_shader_stage);
    outln!("  max_compute_invocations_per_workgroup {}", l.max_compute_invocations_per_workgroup);
    outln!("  max_compute_workgroup_storage_size   {} KiB", l.max_compute_workgroup_storage_size >> 10);
    outln!("  max_compute_workgroups_per_dimension {}", l.max_compute_workgroups_per_dimension);
    outln!("adapters found (choose with --adapter NAME):");
    for a in &i.all_adapters {
        outln!("  {a}");
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
    ADAPTER.set(cli.adapter).expect("set once, before any GPU is opened");
    let result = match cli.command {
        Command::Info => info(),
        Command::Init { config, out, seed, clip, from, text_encoder, shifts } => {
            let start = match (clip, from) {
                (Some(dir), _) => Start::Clip(dir),
                (None, Some(file)) => Start::From(file),
                (None, None) => Start::Fresh,
            };
            init(&config, &out, seed, &start, text_encoder.as_deref(), shifts)
        }
        Command::Segment { model, images, out, prompts, text_encoder, shifts, zoom_out } => {
            segment(&model, &images, out.as_deref(), &prompts, text_encoder.as_deref(), Prediction { shifts, zoom_out })
        }
        Command::Forward { model, images, dump } => forward(&model, &images, &dump),
        Command::Grad { model, images, masks, dump } => grad(&model, &images, &masks, &dump),
        Command::Train(args) => train(*args),
        Command::Synth { task, domain, count, size, out, seed } => synth(&task, &domain, count, size, &out, seed),
        Command::Eval { model, data, json, batch, region, quiet, shifts, zoom_out } => {
            eval(&model, &data, json.as_deref(), batch as usize, &region, quiet, Prediction { shifts, zoom_out })
        }
        Command::Embed { text_encoder, text, dump } => embed(&text_encoder, &text, dump.as_deref()),
        Command::Average { models, out } => average(&models, &out),
        Command::Profile(ProfileCommand::Em {
            tokens,
            width,
            bases,
            iters,
            batch,
            lambda,
            backward,
            trace,
            seed,
            iteration,
        }) => profile_em(EmArgs { tokens, width, bases, iters, batch, lambda, backward, trace, seed, iteration }),
        Command::Profile(ProfileCommand::Model { model, batch, backward, trace, seed }) => {
            profile_model(&model, batch, backward, trace.as_deref(), seed)
        }
        Command::Profile(ProfileCommand::Matmul { m, n, k, layout, batch, path, iters }) => {
            profile_matmul(m, n, k, &layout, batch, &path, iters)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "vlsa: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
