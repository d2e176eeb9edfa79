//! The `vlsa` command-line tool: thin wrappers over the library (DESIGN.md, "Command line").
//! Errors go to stderr as one sentence, with exit code 1.

use std::process::ExitCode;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use vlsa::image_io::{Image, Mask};
use vlsa::kernels::Gpu;
use vlsa::model::Model;

#[derive(Parser)]
#[command(
    name = "vlsa",
    version,
    about = "Vision-language semantic aggregation for medical image segmentation, on hand-written WGSL kernels"
)]
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
        /// Fill the class embeddings with this text encoder's embeddings of the config's
        /// prompts (a Hugging Face BERT folder, e.g. from scripts/fetch-minilm.sh).
        #[arg(long, value_name = "DIR")]
        text_encoder: Option<std::path::PathBuf>,
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
        /// New class prompts, one per class in the model's order (background first); they are
        /// embedded by --text-encoder and replace the model's class embeddings for this run.
        #[arg(long = "prompt", value_name = "TEXT", requires = "text_encoder")]
        prompts: Vec<String>,
        /// The text encoder for --prompt (a Hugging Face BERT folder, e.g. from scripts/fetch-minilm.sh).
        #[arg(long, value_name = "DIR")]
        text_encoder: Option<PathBuf>,
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
    /// Images per step [default: 8].
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate [default: 1e-3].
    #[arg(long)]
    lr: Option<f32>,
    /// Warmup steps [default: min(100, steps / 10)].
    #[arg(long)]
    warmup: Option<usize>,
    /// Decoupled weight decay [default: 0.05].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Learning-rate multiplier of the vision encoder [default: 1 with --config, 0.1 with --model].
    #[arg(long)]
    vision_lr_mult: Option<f32>,
    /// Seed of the initialisation, data order and augmentation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Train without augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Text encoder for new class prompts (not used yet: the model's class embeddings are kept).
    #[arg(long, value_name = "DIR")]
    text_encoder: Option<std::path::PathBuf>,
    /// Validate every N steps.
    #[arg(long, default_value_t = 100)]
    val_every: usize,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// When stderr is not a terminal, print a progress line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Stop after this step (writing a checkpoint) without changing the schedule; --resume continues.
    #[arg(long)]
    stop_at: Option<usize>,
    /// Also write the final model, without optimizer state, to this file.
    #[arg(long, value_name = "MODEL.safetensors")]
    export: Option<std::path::PathBuf>,
}

fn train(a: TrainArgs) -> Result<(), String> {
    use vlsa::train::{run, RunOptions, TrainOptions, Trainer};
    let err = |e: vlsa::Error| e.to_string();
    if a.text_encoder.is_some() {
        eprintln!("vlsa: note: --text-encoder is not used yet; the model's class embeddings are kept");
    }
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let mut trainer = if a.resume && a.out.exists() {
        let trainer = Trainer::resume(&gpu, &a.out, &a.data).map_err(err)?;
        if let Some(path) = &a.config {
            if vlsa::train::read_config(path).map_err(err)? != trainer.model.config {
                return Err(format!(
                    "{} is not the configuration of the checkpoint {}; resume without --config or with the same one",
                    path.display(),
                    a.out.display()
                ));
            }
        }
        let o = &trainer.options;
        let differs = [
            ("--steps", a.steps.is_some_and(|v| v != o.steps)),
            ("--batch", a.batch.is_some_and(|v| v != o.batch)),
            ("--lr", a.lr.is_some_and(|v| v != o.lr)),
            ("--warmup", a.warmup.is_some_and(|v| v != o.warmup)),
            ("--weight-decay", a.weight_decay.is_some_and(|v| v != o.weight_decay)),
            ("--vision-lr-mult", a.vision_lr_mult.is_some_and(|v| v != o.vision_lr_mult)),
            ("--seed", a.seed.is_some_and(|v| v != o.seed)),
            ("--no-augment", a.no_augment == o.augment),
        ];
        if let Some((flag, _)) = differs.iter().find(|(_, d)| *d) {
            return Err(format!("{flag} differs from the value the checkpoint {} was trained with; resuming exactly needs the same options (see its log)", a.out.display()));
        }
        eprintln!("vlsa: resuming {} at step {} of {}", a.out.display(), trainer.step, o.steps);
        trainer
    } else {
        if a.resume {
            eprintln!("vlsa: no checkpoint at {} yet; starting from step 0", a.out.display());
        }
        let steps = a.steps.ok_or("--steps is required for a new run")?;
        let seed = a.seed.unwrap_or(0);
        let (model, pretrained) = match (&a.config, &a.model) {
            (Some(c), _) => {
                (vlsa::model::Model::init(&gpu, vlsa::train::read_config(c).map_err(err)?, seed).map_err(err)?, false)
            }
            (None, Some(m)) => (vlsa::model::Model::load(&gpu, m).map_err(err)?, true),
            (None, None) => return Err("a new run needs --config or --model".into()),
        };
        let defaults = TrainOptions::new(steps);
        let options = TrainOptions {
            batch: a.batch.unwrap_or(defaults.batch),
            lr: a.lr.unwrap_or(defaults.lr),
            warmup: a.warmup.unwrap_or(defaults.warmup),
            weight_decay: a.weight_decay.unwrap_or(defaults.weight_decay),
            vision_lr_mult: a.vision_lr_mult.unwrap_or(if pretrained { 0.1 } else { 1.0 }),
            seed,
            augment: !a.no_augment,
            ..defaults
        };
        let data = vlsa::data::Dataset::load(&a.data, model.config.num_classes()).map_err(err)?;
        Trainer::new(model, options, data).map_err(err)?
    };
    let val = match &a.val {
        Some(dir) => Some(vlsa::data::Dataset::load(dir, trainer.model.config.num_classes()).map_err(err)?),
        None => None,
    };
    let opts = RunOptions {
        out: a.out.clone(),
        val_every: a.val_every,
        checkpoint_every: a.checkpoint_every,
        log_every: a.log_every,
        stop_at: a.stop_at,
        quiet: false,
    };
    let params: usize = trainer.model.parameters().map(|(_, t)| t.numel()).sum();
    eprintln!(
        "vlsa: training {params} parameters on {} images ({}), batch {}, {} steps, on {}",
        trainer.data().len(),
        a.data.display(),
        trainer.options.batch,
        trainer.options.steps,
        gpu.info().name
    );
    let stop = a.stop_at.unwrap_or(trainer.options.steps).min(trainer.options.steps);
    if trainer.step >= stop {
        println!("nothing to do: {} is at step {} and the run stops at step {stop}", a.out.display(), trainer.step);
    } else {
        let summary = run(&mut trainer, val.as_ref(), &opts).map_err(err)?;
        let (log, curve) = vlsa::train::report::side_paths(&a.out);
        println!(
            "steps {}..{} of {} in {:.1} s",
            summary.first_step, summary.last_step, trainer.options.steps, summary.seconds
        );
        if let Some(l) = summary.last_loss {
            println!("last loss:          {l:.4}");
        }
        if let Some(d) = summary.val_dice {
            println!("validation Dice:    {d:.4}");
        }
        if let Some(r) = summary.images_per_second {
            println!("throughput:         {r:.2} images/s (after the first step)");
        }
        println!("dispatches/step:    {:.0}", summary.dispatches_per_step);
        println!("checkpoint:         {}", a.out.display());
        println!("log, curve:         {}, {}", log.display(), curve.display());
    }
    if let Some(path) = &a.export {
        trainer.model.save(path, false).map_err(err)?;
        println!("model:              {}", path.display());
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

#[allow(clippy::too_many_arguments)]
fn profile_em(
    tokens: usize,
    width: usize,
    bases: usize,
    iters: usize,
    batch: usize,
    lambda: f32,
    backward: bool,
    trace: Option<std::path::PathBuf>,
    seed: u64,
) -> Result<(), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let opts = vlsa::profile::EmProfileOptions { batch, tokens, width, bases, iters, lambda, backward, seed };
    let report = vlsa::profile::profile_em(&gpu, &opts).map_err(|e| e.to_string())?;
    print!("{report}");
    if let Some(path) = trace {
        vlsa::io::write_atomic(&path, report.chrome_trace().as_bytes())
            .map_err(|e| format!("cannot write the trace {}: {e}", path.display()))?;
        println!("trace written to {}", path.display());
    }
    Ok(())
}

fn init(config: &Path, out: &Path, seed: u64, clip: Option<&Path>, text_encoder: Option<&Path>) -> Result<(), String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read the configuration {}: {e}", config.display()))?;
    let config = vlsa::config::Config::from_json(&text, &config.display().to_string()).map_err(|e| e.to_string())?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let mut model = match clip {
        Some(dir) => {
            let clip = vlsa::clip::ClipVision::load(dir).map_err(|e| e.to_string())?;
            vlsa::model::Model::init_with_clip(&gpu, config, &clip, seed).map_err(|e| e.to_string())?
        }
        None => vlsa::model::Model::init(&gpu, config, seed).map_err(|e| e.to_string())?,
    };
    if let Some(dir) = text_encoder {
        let prompts = model.config.prompt_texts();
        embed_prompts(&gpu, &mut model, dir, &prompts)?;
    }
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
        vlsa::io::write_atomic(path, report.profile.chrome_trace().as_bytes())
            .map_err(|e| format!("cannot write the trace {}: {e}", path.display()))?;
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

fn segment(
    model: &Path,
    images: &[PathBuf],
    out: Option<&Path>,
    prompts: &[String],
    text_encoder: Option<&Path>,
) -> Result<(), String> {
    let (gpu, mut model) = load_model(model)?;
    if let Some(dir) = text_encoder {
        let k = model.config.num_classes();
        if prompts.is_empty() {
            return Err("--text-encoder is only used with --prompt; give one --prompt per class".into());
        }
        if prompts.len() != k {
            return Err(format!("{} prompts were given but the model has {k} classes ({}); give one --prompt per class, background first", prompts.len(), model.config.classes.join(", ")));
        }
        embed_prompts(&gpu, &mut model, dir, prompts)?;
    }
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
            let dir =
                out.map(Path::to_path_buf).unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
            let mask_path = dir.join(format!("{stem}_mask.png"));
            let overlay_path = dir.join(format!("{stem}_overlay.png"));
            mask.save_png(&mask_path).map_err(|e| e.to_string())?;
            vlsa::infer::overlay(image, mask, &classes)
                .and_then(|o| o.save_png(&overlay_path))
                .map_err(|e| e.to_string())?;
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
            println!(
                "{}: {}x{}, {} -> {}, {}",
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

/// Replaces the model's class embeddings by the text encoder's embeddings of `prompts`.
fn embed_prompts(gpu: &Gpu, model: &mut Model, dir: &Path, prompts: &[String]) -> Result<(), String> {
    let encoder = vlsa::text::TextEncoder::load(gpu, dir).map_err(|e| e.to_string())?;
    let text_dim = model.config.text_dim;
    if encoder.dim() != text_dim {
        return Err(format!(
            "the text encoder {} embeds into {} dimensions but the model's text_dim is {text_dim}",
            dir.display(),
            encoder.dim()
        ));
    }
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let embeddings = encoder.embed(&texts).map_err(|e| e.to_string())?;
    model
        .set_class_embeddings(&vlsa::weights::HostTensor::new(&[texts.len(), text_dim], embeddings))
        .map_err(|e| e.to_string())?;
    println!("class embeddings: {} prompts embedded by {}", texts.len(), dir.display());
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
        let id_table: Vec<f32> = ids
            .iter()
            .flat_map(|row| row.iter().copied().chain(std::iter::repeat(pad)).take(len).map(|i| i as f32))
            .collect();
        let mut file = vlsa::weights::TensorFile::default();
        file.tensors.insert("text.embeddings".into(), vlsa::weights::HostTensor::new(&[texts.len(), d], embeddings));
        file.tensors.insert("text.token_ids".into(), vlsa::weights::HostTensor::new(&[texts.len(), len], id_table));
        file.metadata.insert("vlsa.texts".into(), serde_json::to_string(texts).map_err(|e| e.to_string())?);
        file.write(path, false).map_err(|e| e.to_string())?;
        println!(
            "wrote {} (text.embeddings [{}, {d}], text.token_ids [{}, {len}])",
            path.display(),
            texts.len(),
            texts.len()
        );
    }
    Ok(())
}

fn synth(task: &str, domain: &str, count: usize, size: usize, out: &std::path::Path, seed: u64) -> Result<(), String> {
    let task = vlsa::synth::Task::parse(task).map_err(|e| e.to_string())?;
    let domain = vlsa::synth::Domain::of(task, domain).map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let options = vlsa::synth::SynthOptions { task, domain, count, size, seed };
    vlsa::synth::write_dataset(&options, out).map_err(|e| e.to_string())?;
    println!(
        "wrote {count} {} images of domain {} ({size}x{size}) to {} in {:.2} s",
        task.name(),
        options.domain.name,
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn eval(
    model: &std::path::Path,
    data: &[std::path::PathBuf],
    json: Option<&std::path::Path>,
    batch: usize,
) -> Result<(), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let loaded = vlsa::model::Model::load(&gpu, model).map_err(|e| e.to_string())?;
    let mut report = vlsa::eval::evaluate_folders(&loaded, data, batch).map_err(|e| e.to_string())?;
    report.model = model.display().to_string();
    print!("{}", report.table());
    if let Some(path) = json {
        let text =
            serde_json::to_string_pretty(&report.to_json()).expect("an evaluation report always serializes") + "\n";
        vlsa::io::write_atomic(path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("results written to {}", path.display());
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
        return Err(format!(
            "{} images but {} masks were given; pass one --mask per --image, in the same order",
            images.len(),
            mask_paths.len()
        ));
    }
    let (_gpu, model) = load_model(model)?;
    let loaded = load_images(images)?;
    let k = model.config.num_classes();
    let masks: Vec<Mask> =
        mask_paths.iter().map(|p| Mask::load(p, Some(k)).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
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
            ));
        }
    }
    let file = model
        .grad_dump(&loaded.iter().collect::<Vec<_>>(), &masks.iter().collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
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
    println!(
        "timestamps:   {}",
        if i.timestamps { "yes (GPU-timed profiles)" } else { "no (profiles fall back to wall clock)" }
    );
    println!("shader f16:   {}", if i.shader_f16 { "yes" } else { "no" });
    if i.subgroups {
        println!("subgroups:    yes (size {}..{})", i.subgroup_size.0, i.subgroup_size.1);
    } else {
        println!("subgroups:    no");
    }
    println!("kernel path:  {} (override with VLSA_KERNEL_PATH=registers|subgroup|tiled)", gpu.kernel_path());
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
        Command::Init { config, out, seed, clip, text_encoder } => {
            init(&config, &out, seed, clip.as_deref(), text_encoder.as_deref())
        }
        Command::Segment { model, images, out, prompts, text_encoder } => {
            segment(&model, &images, out.as_deref(), &prompts, text_encoder.as_deref())
        }
        Command::Forward { model, images, dump } => forward(&model, &images, &dump),
        Command::Grad { model, images, masks, dump } => grad(&model, &images, &masks, &dump),
        Command::Train(args) => train(*args),
        Command::Synth { task, domain, count, size, out, seed } => synth(&task, &domain, count, size, &out, seed),
        Command::Eval { model, data, json, batch } => eval(&model, &data, json.as_deref(), batch),
        Command::Embed { text_encoder, text, dump } => embed(&text_encoder, &text, dump.as_deref()),
        Command::Profile(ProfileCommand::Em { tokens, width, bases, iters, batch, lambda, backward, trace, seed }) => {
            profile_em(tokens, width, bases, iters, batch, lambda, backward, trace, seed)
        }
        Command::Profile(ProfileCommand::Model { model, batch, backward, trace, seed }) => {
            profile_model(&model, batch, backward, trace.as_deref(), seed)
        }
        Command::Profile(ProfileCommand::Matmul { m, n, k, layout, batch, path, iters }) => {
            Gpu::new().map_err(|e| e.to_string()).and_then(|gpu| {
                let opts = vlsa::profile::MatmulProfileOptions::parse(&gpu, m, n, k, &layout, batch, &path, iters)?;
                let report = vlsa::profile::profile_matmul(&gpu, &opts).map_err(|e| e.to_string())?;
                print!("{report}");
                Ok(())
            })
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
