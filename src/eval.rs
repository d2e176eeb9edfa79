//! Evaluation of a model on data sets (`vlsa eval`): predictions (docs/DESIGN.md step 12: argmax over
//! classes, resized back to each image's size with nearest neighbour) and Dice per class.
//!
//! Dice is computed per image and per foreground class k ≥ 1, 2|P∩T| / (|P| + |T|) over the
//! image's pixels at its original size, then averaged over the images of a data set. A class that
//! is absent from both the prediction and the truth of an image has no Dice there (0/0): that image
//! is skipped for that class, neither rewarding nor punishing it. A data set's mean is the mean
//! over its foreground classes; the mean over data sets (domains) averages each class, and the
//! overall mean, over the data sets where they are defined.

use std::path::{Path, PathBuf};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::image_io::{Image, Mask};
use crate::model::Model;

/// Pixel counts of one class in one image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overlap {
    /// Pixels of the class in both prediction and truth.
    pub intersection: u64,
    /// Pixels predicted as the class.
    pub predicted: u64,
    /// Pixels of the class in the truth.
    pub truth: u64,
}

impl Overlap {
    /// 2|P∩T| / (|P| + |T|), or None when the class is in neither.
    pub fn dice(&self) -> Option<f64> {
        let total = self.predicted + self.truth;
        (total > 0).then(|| 2.0 * self.intersection as f64 / total as f64)
    }
}

/// Per-class pixel counts of a prediction against the truth (same length); labels ≥ `classes`
/// are counted nowhere.
pub fn overlaps(predicted: &[u8], truth: &[u8], classes: usize) -> Vec<Overlap> {
    assert_eq!(predicted.len(), truth.len(), "prediction and truth must have the same number of pixels");
    let mut out = vec![Overlap::default(); classes];
    for (&p, &t) in predicted.iter().zip(truth) {
        let (p, t) = (p as usize, t as usize);
        if p < classes {
            out[p].predicted += 1;
        }
        if t < classes {
            out[t].truth += 1;
            if p == t {
                out[t].intersection += 1;
            }
        }
    }
    out
}

/// Dice of one data set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// The data set (its folder).
    pub name: String,
    /// Class names, background first.
    pub classes: Vec<String>,
    /// Number of images.
    pub images: usize,
    /// Mean Dice over images of each foreground class (index k - 1 for class k); None when the
    /// class is in no image's prediction or truth.
    pub dice: Vec<Option<f64>>,
    /// Images in which each foreground class has a Dice (present in prediction or truth).
    pub counted: Vec<usize>,
    /// Mean of the foreground classes' Dice (those defined).
    pub mean: Option<f64>,
}

fn mean(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let defined: Vec<f64> = values.into_iter().flatten().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// Dice of predictions against truths, image by image (same order, same sizes).
pub fn evaluate_predictions(name: &str, classes: &[String], predicted: &[Mask], truth: &[Mask]) -> Result<EvalResult> {
    if predicted.len() != truth.len() {
        return Err(Error::Invalid(format!("{name}: {} predictions for {} masks", predicted.len(), truth.len())));
    }
    let k = classes.len();
    let mut sums = vec![0.0f64; k.saturating_sub(1)];
    let mut counted = vec![0usize; k.saturating_sub(1)];
    for (i, (p, t)) in predicted.iter().zip(truth).enumerate() {
        if (p.width, p.height) != (t.width, t.height) {
            return Err(Error::Invalid(format!(
                "{name}: prediction {i} is {}x{} but its mask is {}x{}",
                p.width, p.height, t.width, t.height
            )));
        }
        for (c, o) in overlaps(&p.labels, &t.labels, k).iter().enumerate().skip(1) {
            if let Some(d) = o.dice() {
                sums[c - 1] += d;
                counted[c - 1] += 1;
            }
        }
    }
    let dice: Vec<Option<f64>> = sums.iter().zip(&counted).map(|(&s, &n)| (n > 0).then(|| s / n as f64)).collect();
    let mean = mean(dice.iter().copied());
    Ok(EvalResult { name: name.to_string(), classes: classes.to_vec(), images: truth.len(), dice, counted, mean })
}

/// Class per pixel (argmax over K of the upsampled logits, on the GPU) of each image, resized
/// (nearest) to its image's size: [`Model::segment`].
pub fn predict(model: &Model, images: &[&Image]) -> Result<Vec<Mask>> {
    model.segment(images)
}

/// Dice of `model` on a data set, running `batch` images per forward pass. The data set's masks
/// must use the model's classes.
pub fn evaluate(model: &Model, dataset: &Dataset, batch: usize) -> Result<EvalResult> {
    evaluate_with_progress(model, dataset, batch, &mut |_| {})
}

/// [`evaluate`], calling `progress` with the number of images predicted after each batch.
pub fn evaluate_with_progress(
    model: &Model,
    dataset: &Dataset,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalResult> {
    if batch == 0 {
        return Err(Error::Invalid("the evaluation batch size must be at least 1".into()));
    }
    let k = model.config.num_classes();
    for s in &dataset.samples {
        if let Some(&bad) = s.mask.labels.iter().find(|&&v| v as usize >= k) {
            return Err(Error::Invalid(format!(
                "{}: mask {} has class {bad}, but the model has {k} classes ({}); the data set and the model do not match",
                dataset.root.display(), s.name, model.config.classes.join(", ")
            )));
        }
    }
    let mut predicted = Vec::with_capacity(dataset.len());
    for chunk in dataset.samples.chunks(batch) {
        let images: Vec<&Image> = chunk.iter().map(|s| &s.image).collect();
        predicted.extend(predict(model, &images)?);
        progress(predicted.len());
    }
    let truth: Vec<Mask> = dataset.samples.iter().map(|s| s.mask.clone()).collect();
    evaluate_predictions(&dataset.root.display().to_string(), &model.config.classes, &predicted, &truth)
}

/// Dice on several data sets (domains) and the mean over them.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// The model's name (its file), for the table and JSON.
    pub model: String,
    /// Class names, background first.
    pub classes: Vec<String>,
    /// One result per data set, in the order given.
    pub results: Vec<EvalResult>,
    /// Mean over data sets of each foreground class's Dice.
    pub mean_dice: Vec<Option<f64>>,
    /// Mean over data sets of their mean Dice.
    pub mean: Option<f64>,
}

impl EvalReport {
    /// Combines per-data-set results (same classes).
    pub fn new(model: &str, classes: &[String], results: Vec<EvalResult>) -> EvalReport {
        let foreground = classes.len().saturating_sub(1);
        let mean_dice = (0..foreground).map(|c| mean(results.iter().map(|r| r.dice[c]))).collect();
        let overall = mean(results.iter().map(|r| r.mean));
        EvalReport { model: model.to_string(), classes: classes.to_vec(), results, mean_dice, mean: overall }
    }

    /// The table printed by `vlsa eval`.
    pub fn table(&self) -> String {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |d| format!("{d:.4}"));
        let names: Vec<&str> = self.results.iter().map(|r| r.name.as_str()).collect();
        let first = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(24);
        let widths: Vec<usize> = self.classes[1..].iter().map(|c| c.chars().count().max(8)).collect();
        let mut out = format!(
            "Dice of {} (per image, then averaged; classes absent in both prediction and truth skipped)\n",
            self.model
        );
        out += &format!("{:<first$}  {:>6}", "data set", "images");
        for (c, w) in self.classes[1..].iter().zip(&widths) {
            out += &format!("  {c:>w$}");
        }
        out += &format!("  {:>8}\n", "mean");
        let mut row = |name: &str, images: String, dice: &[Option<f64>], m: Option<f64>| {
            out += &format!("{name:<first$}  {images:>6}");
            for (d, w) in dice.iter().zip(&widths) {
                out += &format!("  {:>w$}", fmt(*d));
            }
            out += &format!("  {:>8}\n", fmt(m));
        };
        for r in &self.results {
            row(&r.name, r.images.to_string(), &r.dice, r.mean);
        }
        if self.results.len() > 1 {
            row(&format!("mean over {} data sets", self.results.len()), String::new(), &self.mean_dice, self.mean);
        }
        out
    }

    /// The report as JSON (`vlsa eval --json`); undefined Dice values are null.
    pub fn to_json(&self) -> serde_json::Value {
        let per_class = |dice: &[Option<f64>]| -> serde_json::Map<String, serde_json::Value> {
            self.classes[1..].iter().zip(dice).map(|(c, d)| (c.clone(), serde_json::json!(d))).collect()
        };
        serde_json::json!({
            "model": self.model,
            "classes": self.classes,
            "dice": "per image 2|P∩T|/(|P|+|T|) at the image's size, averaged over images; an image where a class is in neither prediction nor truth is skipped for that class",
            "datasets": self.results.iter().map(|r| serde_json::json!({
                "path": r.name,
                "images": r.images,
                "dice": per_class(&r.dice),
                "counted": self.classes[1..].iter().zip(&r.counted).map(|(c, n)| (c.clone(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
                "mean": r.mean,
            })).collect::<Vec<_>>(),
            "mean_over_datasets": {"dice": per_class(&self.mean_dice), "mean": self.mean},
        })
    }
}

/// The class count a `vlsa synth` folder declares in its `domain.json`, if it has one.
fn declared_classes(dir: &Path) -> Result<Option<Vec<String>>> {
    let path = dir.join("domain.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Format { path: path.display().to_string(), message: format!("is not valid JSON ({e})") })?;
    Ok(value
        .get("classes")
        .and_then(|c| c.as_array())
        .map(|c| c.iter().map(|v| v.as_str().unwrap_or("?").to_string()).collect()))
}

/// Loads each folder and evaluates `model` on it (what `vlsa eval` runs).
pub fn evaluate_folders(model: &Model, dirs: &[PathBuf], batch: usize) -> Result<EvalReport> {
    evaluate_folders_with_progress(model, dirs, batch, &mut |_, _, _| {})
}

/// [`evaluate_folders`], calling `progress(folder, images done, images in the folder)` after
/// each batch.
pub fn evaluate_folders_with_progress(
    model: &Model,
    dirs: &[PathBuf],
    batch: usize,
    progress: &mut dyn FnMut(&Path, usize, usize),
) -> Result<EvalReport> {
    let classes = &model.config.classes;
    let mut results = Vec::with_capacity(dirs.len());
    for dir in dirs {
        if let Some(declared) = declared_classes(dir)? {
            if declared.len() != classes.len() {
                return Err(Error::Invalid(format!(
                    "the data set {} has {} classes ({}) but the model has {} ({})",
                    dir.display(),
                    declared.len(),
                    declared.join(", "),
                    classes.len(),
                    classes.join(", ")
                )));
            }
        }
        // Masks are read without a class limit so that a mismatch is reported against the model.
        let dataset = Dataset::load(dir, 256)?;
        let total = dataset.len();
        results.push(evaluate_with_progress(model, &dataset, batch, &mut |done| progress(dir, done, total))?);
    }
    Ok(EvalReport::new("model", classes, results))
}
