//! Training: AdamW with decoupled weight decay, warmup then cosine learning rate, a learning-rate
//! multiplier for the vision encoder, seeded mini-batches with augmentation, the EM bases moving
//! average after each step, validation Dice, and checkpoints that resume bit for bit.
//!
//! A [`Trainer`] owns the model, the optimizer moments and the training data; [`Trainer::step`]
//! runs one step. [`run`] is the loop of `vlsa train`: progress, validation, checkpoints, the
//! log and the curve. The data order and the augmentation are pure functions of the seed and the
//! step ([`augment`]), so a checkpoint holds all the state a run has: the model (with the EM
//! bases), the optimizer moments, the step, the options and the log. Being pure, the next
//! step's batch is made on another thread while the GPU runs the current step.
//!
//! A checkpoint is a model file (loadable by [`Model::load`]) plus `optim.m.<name>` and
//! `optim.v.<name>` for each trainable tensor, with the training state as JSON under the
//! metadata key [`CHECKPOINT_KEY`].

pub mod augment;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::image_io::{preprocess, Image};
use crate::kernels::adamw::{self, AdamW, AdamWTensor};
use crate::kernels::{Gpu, GpuBuffer};
use crate::model::{Model, CHECKPOINT_KEY, OPTIMIZER_PREFIX};
use crate::tensor::Tensor;
use crate::weights::{checked_tensor, HostTensor, TensorFile, CONFIG_KEY};
use augment::{
    augment_rng, epoch_order, focus_rng, low_end_device, low_end_rng, randomize_rng, Augmentation, Randomization,
};
pub use report::LogEntry;

/// The options that decide a run's trajectory: a resumed run must use the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// Total optimizer steps (the length of the learning-rate schedule).
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Steps of linear warmup from 0 to `lr`.
    pub warmup: usize,
    /// The cosine decay ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f32,
    /// Decoupled weight decay (not applied to norms, biases, embeddings and the logit scale).
    pub weight_decay: f32,
    /// Learning-rate multiplier of the vision encoder (`vision_model.*`).
    pub vision_lr_mult: f32,
    /// AdamW first-moment decay.
    pub beta1: f32,
    /// AdamW second-moment decay.
    pub beta2: f32,
    /// AdamW denominator epsilon.
    pub eps: f32,
    /// Seed of the data order and the augmentation.
    pub seed: u64,
    /// Whether to augment (flips, scale/crop, intensity and colour jitter).
    pub augment: bool,
    /// Whether to randomize the acquisition of each sample ([`augment::Randomization`]); false in
    /// checkpoints written before it existed.
    #[serde(default)]
    pub randomize: bool,
    /// Fraction of the samples cropped around their foreground ([`augment::focus_window`]), the
    /// view a model with `refine` sees in its second pass; 0 in checkpoints written before it
    /// existed.
    #[serde(default)]
    pub focus: f32,
    /// Fraction of the randomized samples acquired by a low-end device, whose degradations come
    /// together ([`augment::Randomization::apply_device`]); 0 in checkpoints written before it
    /// existed.
    #[serde(default)]
    pub low_end: f32,
}

impl TrainOptions {
    /// The defaults for a run of `steps` steps: batch 8, lr 1e-3, warmup min(100, steps/10),
    /// cosine to 1% of lr, weight decay 0.05, vision multiplier 1, betas (0.9, 0.999), eps 1e-8,
    /// seed 0, augmentation and domain randomization on.
    pub fn new(steps: usize) -> TrainOptions {
        TrainOptions {
            steps,
            batch: 8,
            lr: 1e-3,
            warmup: (steps / 10).min(100),
            min_lr_ratio: 0.01,
            weight_decay: 0.05,
            vision_lr_mult: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            seed: 0,
            augment: true,
            randomize: true,
            focus: 0.0,
            low_end: 0.0,
        }
    }

    /// Checks that the values make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.steps == 0 || self.steps > u32::MAX as usize {
            return bad(format!("--steps {} must be at least 1", self.steps));
        }
        if self.batch == 0 || self.batch > 4096 {
            return bad(format!("--batch {} must be between 1 and 4096", self.batch));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr {} must be a positive number", self.lr));
        }
        if self.warmup > self.steps {
            return bad(format!("--warmup {} is longer than the {} steps of the run", self.warmup, self.steps));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!("min_lr_ratio {} must be between 0 and 1", self.min_lr_ratio));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("--weight-decay {} must be zero or positive", self.weight_decay));
        }
        if !(self.vision_lr_mult.is_finite() && self.vision_lr_mult >= 0.0) {
            return bad(format!("--vision-lr-mult {} must be zero or positive", self.vision_lr_mult));
        }
        if !(0.0..=1.0).contains(&self.focus) {
            return bad(format!("--focus-crops {} must be a fraction between 0 and 1", self.focus));
        }
        if !(0.0..=1.0).contains(&self.low_end) {
            return bad(format!("--low-end {} must be a fraction between 0 and 1", self.low_end));
        }
        if self.low_end > 0.0 && !self.randomize {
            return bad("--low-end is part of the domain randomization and cannot be used with --no-randomize".into());
        }
        if self.focus > 0.0 && !self.augment {
            return bad("--focus-crops is part of the augmentation and cannot be used with --no-augment".into());
        }
        if !((0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2) && self.eps > 0.0) {
            return bad("AdamW needs betas in [0, 1) and a positive eps".into());
        }
        Ok(())
    }
}

/// The learning rate of step `step` (from 1): linear warmup over `warmup` steps, then a cosine
/// from `lr` down to `lr * min_lr_ratio` at the last step.
pub fn learning_rate(o: &TrainOptions, step: usize) -> f32 {
    let lr = o.lr as f64;
    if step <= o.warmup {
        return (lr * step as f64 / o.warmup.max(1) as f64) as f32;
    }
    let span = (o.steps - o.warmup).max(1) as f64;
    let progress = ((step - o.warmup) as f64 / span).min(1.0);
    let floor = lr * o.min_lr_ratio as f64;
    (floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
}

/// Whether weight decay applies to the tensor `name`: not to norms, biases, the class and
/// position embeddings, or the logit scale.
pub fn decays(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    !(last == "bias"
        || name.contains("norm")
        || name.contains("layrnorm")
        || name.contains("class_embedding")
        || name.contains("position_embedding")
        || name.ends_with("logit_scale"))
}

/// The learning-rate multiplier of the tensor `name` (the vision encoder has its own).
pub fn lr_multiplier(name: &str, o: &TrainOptions) -> f32 {
    if name.starts_with("vision_model.") {
        o.vision_lr_mult
    } else {
        1.0
    }
}

/// Identifies a data set by its sample names and sizes, so a resumed run can check it trains on
/// the same one (the data order depends on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Number of samples.
    pub count: usize,
    /// FNV-1a hash of the names and image sizes, in order.
    pub hash: u64,
}

impl DataFingerprint {
    /// The fingerprint of `data`.
    pub fn of(data: &Dataset) -> DataFingerprint {
        let mut hash = 0xCBF2_9CE4_8422_2325u64;
        for s in &data.samples {
            for byte in s
                .name
                .bytes()
                .chain((s.image.width as u64).to_le_bytes())
                .chain((s.image.height as u64).to_le_bytes())
                .chain([0])
            {
                hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01B3);
            }
        }
        DataFingerprint { count: data.len(), hash }
    }
}

/// The training state stored as JSON under [`CHECKPOINT_KEY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointState {
    /// Steps done.
    step: usize,
    options: TrainOptions,
    data: DataFingerprint,
    log: Vec<LogEntry>,
}

/// A model being trained, with its optimizer state and training data.
pub struct Trainer {
    /// The model (parameters and EM bases are updated in place).
    pub model: Model,
    /// The run's options.
    pub options: TrainOptions,
    /// Steps done so far.
    pub step: usize,
    /// One entry per step done.
    pub log: Vec<LogEntry>,
    /// The step of the last checkpoint written or resumed from, if any.
    pub saved_step: Option<usize>,
    data: Arc<Dataset>,
    fingerprint: DataFingerprint,
    /// AdamW first and second moments of each trainable tensor.
    moments: BTreeMap<String, (GpuBuffer, GpuBuffer)>,
    /// The next step's batch, being made on another thread while this step runs.
    next_batch: Option<NextBatch>,
}

/// What a step's batch depends on: the data, the run's options, and the model's input size and
/// normalisation. A batch is a pure function of these and the step, so the next one can be made
/// on another thread while the GPU runs the current step.
#[derive(Clone)]
struct BatchMaker {
    data: Arc<Dataset>,
    options: TrainOptions,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
}

/// A batch under way on another thread: its step, what it was made from, and the thread.
struct NextBatch {
    step: usize,
    options: TrainOptions,
    thread: std::thread::JoinHandle<(Vec<f32>, Vec<u32>)>,
}

impl Trainer {
    /// Starts training `model` on `data` from step 0.
    pub fn new(model: Model, options: TrainOptions, data: Dataset) -> Result<Trainer> {
        options.validate()?;
        let gpu = model.gpu().clone();
        let mut moments = BTreeMap::new();
        for (name, t) in model.parameters() {
            moments.insert(name.clone(), (gpu.zeros(t.numel())?, gpu.zeros(t.numel())?));
        }
        let fingerprint = DataFingerprint::of(&data);
        Ok(Trainer {
            model,
            options,
            step: 0,
            log: Vec::new(),
            saved_step: None,
            data: Arc::new(data),
            fingerprint,
            moments,
            next_batch: None,
        })
    }

    /// Continues from the checkpoint `path`, training on the data set in `data_dir`, which must
    /// be the one the checkpoint was trained on.
    pub fn resume(gpu: &Gpu, path: &Path, data_dir: &Path) -> Result<Trainer> {
        let source = path.display().to_string();
        let (model, mut rest) = Model::load_checkpoint(gpu, path)?;
        let state = rest.metadata.get(CHECKPOINT_KEY).ok_or_else(|| {
            Error::Invalid(format!("{source} is a model file, not a training checkpoint; start a new run from it with --model instead of --resume"))
        })?;
        let state: CheckpointState = serde_json::from_str(state).map_err(|e| Error::Format {
            path: source.clone(),
            message: format!("the training state under `{CHECKPOINT_KEY}` is not valid ({e})"),
        })?;
        state.options.validate()?;
        if state.step > state.options.steps || state.log.len() != state.step {
            return Err(Error::Format {
                path: source,
                message: format!(
                    "the training state is inconsistent (step {}, {} log entries, {} steps)",
                    state.step,
                    state.log.len(),
                    state.options.steps
                ),
            });
        }
        let data = training_data(data_dir, &model.config)?;
        let fingerprint = DataFingerprint::of(&data);
        if fingerprint != state.data {
            return Err(Error::Invalid(format!(
                "{} is not the data set {source} was trained on ({} images now, {} then, or different names or sizes); resuming exactly needs the same data",
                data_dir.display(),
                fingerprint.count,
                state.data.count
            )));
        }
        let mut moments = BTreeMap::new();
        for (name, t) in model.parameters() {
            let mut take = |which: &str| -> Result<GpuBuffer> {
                let key = format!("{OPTIMIZER_PREFIX}{which}.{name}");
                let host = checked_tensor(&rest.tensors, &key, t.shape(), "optimizer tensor", &source)?;
                let buffer = gpu.upload(&host.data)?;
                rest.tensors.remove(&key);
                Ok(buffer)
            };
            let m = take("m")?;
            let v = take("v")?;
            moments.insert(name.clone(), (m, v));
        }
        if let Some(extra) = rest.tensors.keys().next() {
            return Err(Error::Weights(format!("{source}: unexpected optimizer tensor {extra}")));
        }
        Ok(Trainer {
            model,
            options: state.options,
            step: state.step,
            log: state.log,
            saved_step: Some(state.step),
            data: Arc::new(data),
            fingerprint,
            moments,
            next_batch: None,
        })
    }

    /// The training data.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    fn batch_maker(&self) -> BatchMaker {
        let c = &self.model.config;
        BatchMaker {
            data: self.data.clone(),
            options: self.options.clone(),
            size: c.image_size,
            mean: c.pixel_mean,
            std: c.pixel_std,
        }
    }

    /// The batch of step `step`: the one made ahead on another thread when it was made for this
    /// step with the options of now, else made here. Then the next step's batch is started.
    fn batch(&mut self, step: usize) -> (Vec<f32>, Vec<u32>) {
        let ahead = match self.next_batch.take() {
            Some(next) if next.step == step && next.options == self.options => {
                Some(next.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            }
            _ => None,
        };
        let batch = ahead.unwrap_or_else(|| self.batch_maker().make(step));
        if step < self.options.steps {
            let maker = self.batch_maker();
            let options = self.options.clone();
            // Where no thread can be started, the next step makes its batch itself.
            let thread = std::thread::Builder::new().name("vlsa-batch".into()).spawn(move || maker.make(step + 1));
            self.next_batch = thread.ok().map(|thread| NextBatch { step: step + 1, options, thread });
        }
        batch
    }

    /// Runs the next step: forward, loss, backward, AdamW, EM bases update. Returns its log
    /// entry. A non-finite loss is an error naming the step, raised before any weight changes.
    pub fn step(&mut self) -> Result<LogEntry> {
        let step = self.step + 1;
        if step > self.options.steps {
            return Err(Error::Invalid(format!("the run is complete: all {} steps are done", self.options.steps)));
        }
        let gpu = self.model.gpu().clone();
        let (input, target) = self.batch(step);
        let size = self.model.config.image_size;
        let input = Tensor::from_vec(&gpu, &input, &[self.options.batch, 3, size, size])?;
        let target = Arc::new(gpu.upload(&target)?);
        let out = self.model.forward(&input)?;
        let loss = self.model.loss(&out.logits_up, &target)?;
        // The backward is recorded before the loss is read back, so forward, loss and backward
        // reach the GPU as one stream of work with no wait in the middle; the check still comes
        // before the optimizer touches a weight.
        crate::backward(&loss)?;
        let value = loss.to_vec()?[0];
        if !value.is_finite() {
            for (_, p) in self.model.parameters() {
                p.zero_grad();
            }
            return Err(Error::Invalid(format!("the loss is not finite ({value}) at step {step}; the weights of step {} were not updated (try a lower --lr)", step - 1)));
        }
        let lr = learning_rate(&self.options, step);
        crate::no_grad(|| -> Result<()> {
            for (name, p) in self.model.parameters() {
                // A tensor no gradient reaches this step (e.g. the EM input projection in
                // detached mode) is left alone, weight decay included, as torch.optim.AdamW does.
                let Some(grad) = p.grad() else { continue };
                let (m, v) = &self.moments[name];
                let cfg = AdamW {
                    lr: lr * lr_multiplier(name, &self.options),
                    beta1: self.options.beta1,
                    beta2: self.options.beta2,
                    eps: self.options.eps,
                    weight_decay: if decays(name) { self.options.weight_decay } else { 0.0 },
                };
                let tensor = AdamWTensor { param: p.buffer(), grad: grad.buffer(), m, v };
                adamw::step(&gpu, &tensor, p.numel(), step as u32, &cfg)?;
                p.zero_grad();
            }
            if let Some(mu) = &out.em_mu {
                self.model.update_bases(mu)?;
            }
            Ok(())
        })?;
        self.step = step;
        let entry = LogEntry { step, loss: value, lr, val_dice: None };
        self.log.push(entry);
        Ok(entry)
    }

    /// Writes a checkpoint atomically: the model, the optimizer moments and the training state.
    /// Refuses (and leaves the file as it was) when any tensor is not finite.
    pub fn save_checkpoint(&mut self, path: &Path) -> Result<()> {
        let gpu = self.model.gpu().clone();
        let mut file = TensorFile::default();
        file.metadata.insert(CONFIG_KEY.into(), self.model.config.to_json());
        let state = CheckpointState {
            step: self.step,
            options: self.options.clone(),
            data: self.fingerprint,
            log: self.log.clone(),
        };
        file.metadata.insert(
            CHECKPOINT_KEY.into(),
            serde_json::to_string(&state)
                .map_err(|e| Error::Invalid(format!("cannot encode the training state: {e}")))?,
        );
        let step = self.step;
        let mut add = |name: String, shape: &[usize], mut data: Vec<f32>| -> Result<()> {
            data.truncate(shape.iter().product());
            if data.iter().any(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!("the weights are not finite after step {step} (tensor {name}); {} was not overwritten (try a lower --lr)", path.display())));
            }
            file.tensors.insert(name, HostTensor::new(shape, data));
            Ok(())
        };
        for (name, t) in &self.model.tensors {
            add(name.clone(), t.shape(), t.to_vec()?)?;
        }
        for (name, (m, v)) in &self.moments {
            let shape = self.model.tensors[name].shape().to_vec();
            add(format!("{OPTIMIZER_PREFIX}m.{name}"), &shape, gpu.download(m)?)?;
            add(format!("{OPTIMIZER_PREFIX}v.{name}"), &shape, gpu.download(v)?)?;
        }
        file.write(path, false)?;
        self.saved_step = Some(self.step);
        Ok(())
    }
}

impl BatchMaker {
    /// Sample indices and augmentation of step `step` (from 1): item i is the sample at stream
    /// position (step - 1) * batch + i of the concatenated per-epoch orders. Returns the
    /// preprocessed images [batch, 3, size, size] and the class of every pixel.
    fn make(&self, step: usize) -> (Vec<f32>, Vec<u32>) {
        let (o, len, size) = (&self.options, self.data.len(), self.size);
        let augmentation = Augmentation::default();
        let mut order: (u64, Vec<usize>) = (u64::MAX, Vec::new());
        let mut images: Vec<Image> = Vec::with_capacity(o.batch);
        let mut target: Vec<u32> = Vec::with_capacity(o.batch * size * size);
        for item in 0..o.batch {
            let position = (step - 1) * o.batch + item;
            let epoch = (position / len) as u64;
            if order.0 != epoch {
                order = (epoch, epoch_order(o.seed, epoch, len));
            }
            let sample = &self.data.samples[order.1[position % len]];
            let (seed, step, item) = (o.seed, step as u64, item as u64);
            let randomize = |image: &mut Image| {
                if o.randomize {
                    let device = low_end_device(o.low_end, &mut low_end_rng(seed, step, item));
                    Randomization::default().apply_device(image, &mut randomize_rng(seed, step, item), device);
                }
            };
            let mut focus = focus_rng(seed, step, item);
            let (image, mask) = if o.augment && o.focus > 0.0 && focus.chance(o.focus) {
                // A focus crop is a closer look at a photo already taken, as in the second pass
                // of refinement: the acquisition is drawn on the whole image, then it is cropped.
                let mut whole = sample.image.clone();
                randomize(&mut whole);
                let mut rng = augment_rng(seed, step, item);
                augmentation.apply_focused(&whole, &sample.mask, &mut focus, &mut rng)
            } else {
                let (mut image, mask) = if o.augment {
                    augmentation.apply(&sample.image, &sample.mask, &mut augment_rng(seed, step, item))
                } else {
                    (sample.image.clone(), sample.mask.clone())
                };
                randomize(&mut image);
                (image, mask)
            };
            target.extend(mask.resize_nearest(size, size).labels.into_iter().map(u32::from));
            images.push(image);
        }
        let refs: Vec<&Image> = images.iter().collect();
        (preprocess(&refs, size, self.mean, self.std), target)
    }
}

/// Mean foreground Dice of `model` on `data` (`vlsa eval`'s measure: per image at its own size,
/// averaged over images, then over classes), in batches of `batch`. When no foreground class is
/// in any mask or prediction the Dice is undefined (0/0): that is an error, not a perfect score.
pub fn validation_dice(model: &Model, data: &Dataset, batch: usize) -> Result<f32> {
    validation_dice_with(model, data, batch, &mut |_| {})
}

/// [`validation_dice`], calling `progress` with the number of images done after each batch.
pub fn validation_dice_with(
    model: &Model,
    data: &Dataset,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<f32> {
    let result = crate::eval::evaluate_with_progress(model, data, batch.max(1), progress)?;
    result.mean.map(|d| d as f32).ok_or_else(|| {
        Error::Invalid(format!(
            "no foreground in the validation set {}: neither its masks nor the predictions hold a class other than the background, so Dice is undefined",
            data.root.display()
        ))
    })
}

/// Checks that a validation set has foreground pixels (a Dice is defined on it).
pub fn check_validation_set(data: &Dataset) -> Result<()> {
    if data.samples.iter().all(|s| s.mask.labels.iter().all(|&l| l == 0)) {
        return Err(Error::Invalid(format!(
            "no foreground in the validation set {}: every mask is background only, so its Dice is undefined; give a validation set with labelled structures",
            data.root.display()
        )));
    }
    Ok(())
}

/// How [`run`] reports and saves, without effect on the trajectory.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The checkpoint file (the log and curve go beside it).
    pub out: PathBuf,
    /// Validate every this many steps (and at the last step) when a validation set is given.
    pub val_every: usize,
    /// Write a checkpoint every this many steps (and always at the last step).
    pub checkpoint_every: usize,
    /// Without a terminal, print a progress line every this many steps.
    pub log_every: usize,
    /// Keep the model (without optimizer state) of every this many steps as a snapshot,
    /// [`report::snapshot_path`], e.g. for `vlsa average`; None keeps none.
    pub keep_every: Option<usize>,
    /// Stop after this step (checkpointing) without changing the schedule; None runs to the end.
    pub stop_at: Option<usize>,
    /// No progress output.
    pub quiet: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub interrupt: Option<&'static AtomicBool>,
}

/// What a [`run`] did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The first step this run made (steps before it came from the checkpoint).
    pub first_step: usize,
    /// The last step done.
    pub last_step: usize,
    /// Loss of the last step.
    pub last_loss: Option<f32>,
    /// The last validation Dice measured, if any.
    pub val_dice: Option<f32>,
    /// Training images per second over this run's steps but the first (which compiles the
    /// pipelines), validation and checkpoints excluded; None for a run of one step.
    pub images_per_second: Option<f64>,
    /// GPU dispatches per training step (mean over the run, validation excluded).
    pub dispatches_per_step: f64,
    /// Wall time of the run in seconds.
    pub seconds: f64,
    /// Whether the run stopped early because `interrupt` was set (a checkpoint was written).
    pub interrupted: bool,
}

/// Trains until the last step (or `stop_at`): validation, checkpoints, the log and the curve
/// beside the checkpoint, and a progress display. On any error the last good checkpoint is left
/// untouched and the error says which step stopped and which checkpoint is kept.
pub fn run(trainer: &mut Trainer, val: Option<&Dataset>, opts: &RunOptions) -> Result<RunSummary> {
    let total = trainer.options.steps;
    let stop = opts.stop_at.unwrap_or(total).min(total);
    let first = trainer.step;
    let mut progress = report::Progress::new(first, stop, total, trainer.options.batch, opts.log_every, opts.quiet);
    let gpu = trainer.model.gpu().clone();
    let mut dispatches = 0u64;
    let mut val_dice = None;
    let stopped = |trainer: &Trainer, e: Error, step: usize| {
        let kept = match trainer.saved_step {
            Some(s) => format!("the last good checkpoint {} (step {s}) is kept", opts.out.display()),
            None => format!(
                "no checkpoint had been written yet (the first is due at step {})",
                opts.checkpoint_every.min(stop)
            ),
        };
        Error::Invalid(format!("training stopped at step {step}: {e}; {kept}"))
    };
    let interrupted = || opts.interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
    let mut was_interrupted = false;
    for step in first + 1..=stop {
        if interrupted() {
            was_interrupted = true;
            break;
        }
        let (before, clock) = (gpu.counters().0, std::time::Instant::now());
        let mut entry = trainer.step().map_err(|e| {
            progress.finish();
            stopped(trainer, e, step)
        })?;
        let seconds = clock.elapsed().as_secs_f64();
        dispatches += gpu.counters().0 - before;
        if let Some(v) = val {
            if step % opts.val_every.max(1) == 0 || step == stop {
                let d = validation_dice_with(&trainer.model, v, trainer.options.batch, &mut |done| {
                    progress.validating(done, v.len())
                })
                .map_err(|e| {
                    progress.finish();
                    stopped(trainer, e, step)
                })?;
                entry.val_dice = Some(d);
                if let Some(last) = trainer.log.last_mut() {
                    last.val_dice = Some(d);
                }
                val_dice = Some(d);
            }
        }
        progress.update(step, seconds, &entry);
        if step % opts.checkpoint_every.max(1) == 0 || step == stop || interrupted() {
            trainer.save_checkpoint(&opts.out).map_err(|e| {
                progress.finish();
                stopped(trainer, e, step)
            })?;
            report::write_side_files(&opts.out, &trainer.log)?;
        }
        if opts.keep_every.is_some_and(|k| step % k.max(1) == 0) {
            trainer.model.save(&report::snapshot_path(&opts.out, step, total), false).map_err(|e| {
                progress.finish();
                stopped(trainer, e, step)
            })?;
        }
    }
    if was_interrupted {
        progress.finish();
        // Interrupted before any step of this run: the checkpoint on disk (if any) is current.
        if trainer.saved_step != Some(trainer.step) {
            trainer.save_checkpoint(&opts.out)?;
            report::write_side_files(&opts.out, &trainer.log)?;
        }
    }
    let steps_run = trainer.step - first;
    Ok(RunSummary {
        first_step: first + 1,
        last_step: trainer.step,
        last_loss: trainer.log.last().map(|e| e.loss),
        val_dice,
        images_per_second: progress.images_per_second(),
        dispatches_per_step: if steps_run > 0 { dispatches as f64 / steps_run as f64 } else { 0.0 },
        seconds: progress.elapsed(),
        interrupted: was_interrupted,
    })
}

/// The options a user gave for a run (`None`: not given). A new run fills the rest with
/// [`TrainOptions::new`]'s defaults; a resumed run takes the checkpoint's, and every value given
/// must equal the checkpoint's, since resuming exactly needs the same trajectory.
#[derive(Debug, Clone, Default)]
pub struct OptionChoices {
    /// `--steps`.
    pub steps: Option<usize>,
    /// `--batch`.
    pub batch: Option<usize>,
    /// `--lr`.
    pub lr: Option<f32>,
    /// `--warmup`.
    pub warmup: Option<usize>,
    /// `--weight-decay`.
    pub weight_decay: Option<f32>,
    /// `--vision-lr-mult`.
    pub vision_lr_mult: Option<f32>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `Some(false)` for `--no-augment`.
    pub augment: Option<bool>,
    /// `Some(false)` for `--no-randomize`.
    pub randomize: Option<bool>,
    /// `--focus-crops`.
    pub focus: Option<f32>,
    /// `--low-end`.
    pub low_end: Option<f32>,
}

impl OptionChoices {
    /// The options of a new run: the values given, else the defaults (the vision encoder's
    /// multiplier is 0.1 when the model is `pretrained`, 1 otherwise).
    pub fn new_run(&self, pretrained: bool) -> Result<TrainOptions> {
        let steps = self.steps.ok_or_else(|| Error::Invalid("--steps is required for a new run".into()))?;
        let defaults = TrainOptions::new(steps);
        let options = TrainOptions {
            batch: self.batch.unwrap_or(defaults.batch),
            lr: self.lr.unwrap_or(defaults.lr),
            warmup: self.warmup.unwrap_or(defaults.warmup),
            weight_decay: self.weight_decay.unwrap_or(defaults.weight_decay),
            vision_lr_mult: self.vision_lr_mult.unwrap_or(if pretrained { 0.1 } else { 1.0 }),
            seed: self.seed.unwrap_or(defaults.seed),
            augment: self.augment.unwrap_or(defaults.augment),
            randomize: self.randomize.unwrap_or(defaults.randomize),
            focus: self.focus.unwrap_or(defaults.focus),
            low_end: self.low_end.unwrap_or(defaults.low_end),
            ..defaults
        };
        options.validate()?;
        Ok(options)
    }

    /// Checks every value given against the options the checkpoint `source` was trained with;
    /// the error names the flag and both values.
    pub fn check_resume(&self, o: &TrainOptions, source: &Path) -> Result<()> {
        fn differs<T: PartialEq + std::fmt::Display>(flag: &str, given: Option<T>, had: T) -> Option<String> {
            given.filter(|v| *v != had).map(|v| format!("{flag} {v} differs from the {had} the checkpoint"))
        }
        let augment = |a: bool| if a { "augmentation" } else { "--no-augment" };
        let randomize = |r: bool| if r { "domain randomization" } else { "--no-randomize" };
        let found = differs("--steps", self.steps, o.steps)
            .or_else(|| differs("--batch", self.batch, o.batch))
            .or_else(|| differs("--lr", self.lr, o.lr))
            .or_else(|| differs("--warmup", self.warmup, o.warmup))
            .or_else(|| differs("--weight-decay", self.weight_decay, o.weight_decay))
            .or_else(|| differs("--vision-lr-mult", self.vision_lr_mult, o.vision_lr_mult))
            .or_else(|| differs("--seed", self.seed, o.seed))
            .or_else(|| differs("--focus-crops", self.focus, o.focus))
            .or_else(|| differs("--low-end", self.low_end, o.low_end))
            .or_else(|| {
                self.augment
                    .filter(|a| *a != o.augment)
                    .map(|a| format!("{} differs from the {} the checkpoint", augment(a), augment(o.augment)))
            })
            .or_else(|| {
                self.randomize
                    .filter(|r| *r != o.randomize)
                    .map(|r| format!("{} differs from the {} the checkpoint", randomize(r), randomize(o.randomize)))
            });
        match found {
            Some(what) => Err(Error::Invalid(format!(
                "{what} {} was trained with; resuming exactly needs the same options (leave the flag out to take the checkpoint's)",
                source.display()
            ))),
            None => Ok(()),
        }
    }
}

/// Where a new run's model comes from.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// A random model of this configuration file.
    Config(&'a Path),
    /// This model file (a pretrained model: the vision encoder's default multiplier is 0.1).
    Model(&'a Path),
}

/// What `vlsa train` asks for before the first step.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    /// The checkpoint file.
    pub out: &'a Path,
    /// The training data set.
    pub data: &'a Path,
    /// The model of a new run (with `resume`, a configuration given must be the checkpoint's).
    pub start: Option<Start<'a>>,
    /// Continue from the checkpoint at `out` when there is one.
    pub resume: bool,
    /// Replace an existing checkpoint (and its log and curve) with a new run.
    pub force: bool,
    /// The options given.
    pub choices: &'a OptionChoices,
}

/// How [`prepare`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begun {
    /// From step 0.
    New,
    /// `resume` was asked but there was no checkpoint yet: from step 0.
    NoCheckpointYet,
    /// From the checkpoint's step.
    Resumed,
}

/// Makes the trainer of a run: resumes the checkpoint at `out` (checking the options given
/// against it) or starts a new run. An existing checkpoint, log or curve is never replaced
/// without `force`, and `resume` with `force` is refused.
pub fn prepare(gpu: &Gpu, setup: &Setup) -> Result<(Trainer, Begun)> {
    let out = setup.out;
    if setup.resume && setup.force {
        return Err(Error::Invalid(
            "--resume continues the checkpoint and --force replaces it; give one of them".into(),
        ));
    }
    if setup.resume && out.is_file() {
        let trainer = Trainer::resume(gpu, out, setup.data)?;
        match setup.start {
            Some(Start::Config(path)) if read_config(path)? != trainer.model.config => {
                return Err(Error::Invalid(format!(
                    "{} is not the configuration of the checkpoint {}; resume without --config or with the same one",
                    path.display(),
                    out.display()
                )));
            }
            Some(Start::Model(path)) => {
                return Err(Error::Invalid(format!(
                    "--model {} starts a new run but --resume continues the checkpoint {}; leave out --model to resume",
                    path.display(),
                    out.display()
                )))
            }
            _ => {}
        }
        setup.choices.check_resume(&trainer.options, out)?;
        return Ok((trainer, Begun::Resumed));
    }
    if !setup.resume && !setup.force {
        let (log, curve) = report::side_paths(out);
        let snapshots = report::existing_snapshots(out);
        let mut existing =
            [out, log.as_path(), curve.as_path()].into_iter().chain(snapshots.iter().map(|p| p.as_path()));
        if let Some(existing) = existing.find(|p| p.exists()) {
            return Err(Error::Invalid(format!(
                "{} already exists; add --resume to continue that run or --force to replace it and its log, curve \
                 and snapshots",
                existing.display()
            )));
        }
    }
    let (model, pretrained) = match setup.start {
        Some(Start::Config(c)) => (Model::init(gpu, read_config(c)?, setup.choices.seed.unwrap_or(0))?, false),
        Some(Start::Model(m)) => (Model::load(gpu, m)?, true),
        None => return Err(Error::Invalid("a new run needs --config or --model".into())),
    };
    let options = setup.choices.new_run(pretrained)?;
    let data = training_data(setup.data, &model.config)?;
    if options.batch > data.len() {
        return Err(Error::Invalid(format!(
            "--batch {} is larger than the {} images of {}; give at most {}",
            options.batch,
            data.len(),
            setup.data.display(),
            data.len()
        )));
    }
    let begun = if setup.resume { Begun::NoCheckpointYet } else { Begun::New };
    Ok((Trainer::new(model, options, data)?, begun))
}

/// Reads a configuration file (for `vlsa train --config`).
pub fn read_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Config::from_json(&text, &path.display().to_string())
}

/// The training set under `dir` for a model of `config`: cropped to each image's field of view
/// where the configuration asks for it, as the model predicts ([`Model::segment`]).
fn training_data(dir: &Path, config: &Config) -> Result<Dataset> {
    let data = Dataset::load(dir, config.num_classes())?;
    Ok(if config.field_of_view { data.cropped_to_field_of_view() } else { data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_follows_the_cosine() {
        let o = TrainOptions { warmup: 10, ..TrainOptions::new(110) };
        assert!((learning_rate(&o, 1) - 1e-4).abs() < 1e-9);
        assert!((learning_rate(&o, 10) - 1e-3).abs() < 1e-9);
        assert!((learning_rate(&o, 60) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-9, "half way down at mid-decay");
        assert!((learning_rate(&o, 110) - 1e-5).abs() < 1e-9);
        let mut prev = f32::INFINITY;
        for s in 10..=110 {
            let lr = learning_rate(&o, s);
            assert!(lr <= prev);
            prev = lr;
        }
    }

    #[test]
    fn decay_groups() {
        for name in [
            "vision_model.encoder.layers.0.mlp.fc1.weight",
            "head.decoder.layers.1.cross_attn.q_proj.weight",
            "vision_model.embeddings.patch_embedding.weight",
        ] {
            assert!(decays(name), "{name}");
        }
        for name in [
            "vision_model.embeddings.class_embedding",
            "vision_model.embeddings.position_embedding.weight",
            "vision_model.pre_layrnorm.weight",
            "vision_model.encoder.layers.0.layer_norm1.weight",
            "vision_model.post_layernorm.bias",
            "head.em.norm.weight",
            "head.decoder.layers.0.norm2.weight",
            "head.decoder.norm.weight",
            "head.visual_proj.bias",
            "head.logit_scale",
        ] {
            assert!(!decays(name), "{name}");
        }
        let o = TrainOptions { vision_lr_mult: 0.1, ..TrainOptions::new(1) };
        assert_eq!(lr_multiplier("vision_model.post_layernorm.bias", &o), 0.1);
        assert_eq!(lr_multiplier("head.text_proj.weight", &o), 1.0);
    }
}
