//! Evaluation of a model on data sets (`vlsa eval`): predictions (docs/DESIGN.md step 12: argmax over
//! classes, resized back to each image's size with nearest neighbour) and Dice per class.
//!
//! Dice is computed per image and per foreground class k ≥ 1, 2|P∩T| / (|P| + |T|) over the
//! image's pixels at its original size, then averaged over the images of a data set. A class that
//! is absent from both the prediction and the truth of an image has no Dice there (0/0): that image
//! is skipped for that class, neither rewarding nor punishing it. A data set's mean is the mean
//! over its foreground classes; the mean over data sets (domains) averages each class, and the
//! overall mean, over the data sets where they are defined.
//!
//! A [`Region`] is a union of foreground classes scored as one (`vlsa eval --region`): where
//! classes nest, as the optic cup inside the optic disc, the usual measure of the outer structure
//! is the union ("optic disc" = disc rim and cup), while the model's class 1 is the rim alone.
//! Regions are scored the same way as classes (per image, skipped where empty in both) and
//! reported beside them, with their own mean; the per-class Dice and mean are unchanged.

use std::path::{Path, PathBuf};

use crate::config::AUTO_ZOOM_OUT_MAX;
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

/// A union of foreground classes scored as one structure (`vlsa eval --region NAME=CLASSES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Its name in the table and JSON.
    pub name: String,
    /// The classes it joins (indices ≥ 1, ascending, no repeats).
    pub classes: Vec<u8>,
}

impl Region {
    /// Parses `NAME=C[,C...]`, each C a class index or a class name of `classes` (background
    /// first), e.g. `whole-disc=1,2` or `whole-disc=optic disc,optic cup`.
    pub fn parse(spec: &str, classes: &[String]) -> Result<Region> {
        let bad = |why: String| Error::Invalid(format!("--region {spec:?}: {why}"));
        let (name, list) =
            spec.split_once('=').ok_or_else(|| bad("expected NAME=CLASSES, e.g. \"whole-disc=1,2\"".into()))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("the region has no name before '='".into()));
        }
        let mut members = Vec::new();
        for item in list.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(bad("an empty class in the list after '='".into()));
            }
            let index = match item.parse::<usize>() {
                Ok(i) => i,
                Err(_) => classes.iter().position(|c| c == item).ok_or_else(|| {
                    bad(format!("{item:?} is not one of the model's classes ({})", classes.join(", ")))
                })?,
            };
            if index == 0 || index >= classes.len() {
                return Err(bad(format!(
                    "class {index} is not a foreground class of the model (1..={})",
                    classes.len().saturating_sub(1)
                )));
            }
            if members.contains(&(index as u8)) {
                return Err(bad(format!("class {index} ({}) is listed twice", classes[index])));
            }
            members.push(index as u8);
        }
        members.sort_unstable();
        Ok(Region { name: name.to_string(), classes: members })
    }

    /// Parses several specifications, refusing two regions of the same name.
    pub fn parse_all(specs: &[String], classes: &[String]) -> Result<Vec<Region>> {
        let mut regions: Vec<Region> = Vec::with_capacity(specs.len());
        for spec in specs {
            let r = Region::parse(spec, classes)?;
            if regions.iter().any(|q| q.name == r.name) {
                return Err(Error::Invalid(format!("--region {spec:?}: a region named {:?} is already given", r.name)));
            }
            regions.push(r);
        }
        Ok(regions)
    }

    /// Pixel counts of the region in one image.
    pub fn overlap(&self, predicted: &[u8], truth: &[u8]) -> Overlap {
        assert_eq!(predicted.len(), truth.len(), "prediction and truth must have the same number of pixels");
        let mut o = Overlap::default();
        for (&p, &t) in predicted.iter().zip(truth) {
            let (p, t) = (self.classes.contains(&p), self.classes.contains(&t));
            o.predicted += p as u64;
            o.truth += t as u64;
            o.intersection += (p && t) as u64;
        }
        o
    }
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
    /// Mean Dice over images of each region evaluated (empty without regions).
    pub region_dice: Vec<Option<f64>>,
    /// Images in which each region has a Dice.
    pub region_counted: Vec<usize>,
    /// Mean of the regions' Dice (those defined); None without regions.
    pub region_mean: Option<f64>,
    /// With the automatic zoom-out, the images predicted at each zoom-out (index z - 1 for
    /// zoom-out z); empty otherwise.
    pub zoom_counts: Vec<usize>,
}

fn mean(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let defined: Vec<f64> = values.into_iter().flatten().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// Dice of predictions against truths, image by image (same order, same sizes).
pub fn evaluate_predictions(name: &str, classes: &[String], predicted: &[Mask], truth: &[Mask]) -> Result<EvalResult> {
    evaluate_predictions_with_regions(name, classes, &[], predicted, truth)
}

/// [`evaluate_predictions`], also scoring each of `regions`.
pub fn evaluate_predictions_with_regions(
    name: &str,
    classes: &[String],
    regions: &[Region],
    predicted: &[Mask],
    truth: &[Mask],
) -> Result<EvalResult> {
    if predicted.len() != truth.len() {
        return Err(Error::Invalid(format!("{name}: {} predictions for {} masks", predicted.len(), truth.len())));
    }
    let k = classes.len();
    let mut sums = vec![0.0f64; k.saturating_sub(1)];
    let mut counted = vec![0usize; k.saturating_sub(1)];
    let mut region_sums = vec![0.0f64; regions.len()];
    let mut region_counted = vec![0usize; regions.len()];
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
        for (j, r) in regions.iter().enumerate() {
            if let Some(d) = r.overlap(&p.labels, &t.labels).dice() {
                region_sums[j] += d;
                region_counted[j] += 1;
            }
        }
    }
    let average = |sums: &[f64], counted: &[usize]| -> Vec<Option<f64>> {
        sums.iter().zip(counted).map(|(&s, &n)| (n > 0).then(|| s / n as f64)).collect()
    };
    let dice = average(&sums, &counted);
    let region_dice = average(&region_sums, &region_counted);
    Ok(EvalResult {
        name: name.to_string(),
        classes: classes.to_vec(),
        images: truth.len(),
        mean: mean(dice.iter().copied()),
        dice,
        counted,
        region_mean: mean(region_dice.iter().copied()),
        region_dice,
        region_counted,
        zoom_counts: Vec::new(),
    })
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
    evaluate_regions_with_progress(model, dataset, batch, &[], progress)
}

/// [`evaluate_with_progress`], also scoring each of `regions`.
pub fn evaluate_regions_with_progress(
    model: &Model,
    dataset: &Dataset,
    batch: usize,
    regions: &[Region],
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
    let mut zoom_counts = vec![0usize; AUTO_ZOOM_OUT_MAX];
    for chunk in dataset.samples.chunks(batch) {
        let images: Vec<&Image> = chunk.iter().map(|s| &s.image).collect();
        for (mask, zoom) in model.segment_zoomed(&images)? {
            predicted.push(mask);
            if let Some(n) = zoom_counts.get_mut(zoom - 1) {
                *n += 1;
            }
        }
        progress(predicted.len());
    }
    let truth: Vec<Mask> = dataset.samples.iter().map(|s| s.mask.clone()).collect();
    let mut result = evaluate_predictions_with_regions(
        &dataset.root.display().to_string(),
        &model.config.classes,
        regions,
        &predicted,
        &truth,
    )?;
    if model.config.auto_zoom().is_some() {
        result.zoom_counts = zoom_counts;
    }
    Ok(result)
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
    /// The regions scored (empty without `--region`).
    pub regions: Vec<Region>,
    /// Mean over data sets of each region's Dice.
    pub mean_region_dice: Vec<Option<f64>>,
    /// Mean over data sets of their regions' mean Dice.
    pub region_mean: Option<f64>,
    /// Shifts per axis of the shift ensemble that predicted (1: one forward per image).
    pub shifts: usize,
    /// The zoom-out factor images were predicted at (1: filling the model input).
    pub zoom_out: usize,
}

impl EvalReport {
    /// Combines per-data-set results (same classes).
    pub fn new(model: &str, classes: &[String], results: Vec<EvalResult>) -> EvalReport {
        EvalReport::with_regions(model, classes, &[], results)
    }

    /// Combines per-data-set results (same classes, scored on the same `regions`).
    pub fn with_regions(model: &str, classes: &[String], regions: &[Region], results: Vec<EvalResult>) -> EvalReport {
        let foreground = classes.len().saturating_sub(1);
        let mean_dice = (0..foreground).map(|c| mean(results.iter().map(|r| r.dice[c]))).collect();
        let overall = mean(results.iter().map(|r| r.mean));
        let mean_region_dice =
            (0..regions.len()).map(|j| mean(results.iter().map(|r| r.region_dice.get(j).copied().flatten()))).collect();
        let region_mean = mean(results.iter().map(|r| r.region_mean));
        EvalReport {
            shifts: 1,
            zoom_out: 1,
            model: model.to_string(),
            classes: classes.to_vec(),
            results,
            mean_dice,
            mean: overall,
            regions: regions.to_vec(),
            mean_region_dice,
            region_mean,
        }
    }

    /// Whether the automatic zoom-out chose each image's zoom-out (the results' `zoom_counts`).
    fn auto_zoom_out(&self) -> bool {
        self.results.iter().any(|r| !r.zoom_counts.is_empty())
    }

    /// The names of the classes a region joins.
    fn members(&self, r: &Region) -> Vec<&str> {
        r.classes.iter().map(|&c| self.classes[c as usize].as_str()).collect()
    }

    /// The table printed by `vlsa eval`.
    pub fn table(&self) -> String {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |d| format!("{d:.4}"));
        let names: Vec<&str> = self.results.iter().map(|r| r.name.as_str()).collect();
        let first = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(24);
        let width = |name: &str| name.chars().count().max(8);
        let widths: Vec<usize> = self.classes[1..].iter().map(|c| width(c)).collect();
        let region_widths: Vec<usize> = self.regions.iter().map(|r| width(&r.name)).collect();
        let regions = !self.regions.is_empty();
        let mut ensemble = if self.shifts > 1 {
            format!("; predicted by a shift ensemble of {0} x {0} forwards", self.shifts)
        } else {
            String::new()
        };
        if self.zoom_out > 1 {
            ensemble += &format!("; each image zoomed out to 1/{} of the input", self.zoom_out);
        }
        if self.auto_zoom_out() {
            ensemble += "; zoom-out chosen per image by the automatic zoom-out";
        }
        let mut out = format!(
            "Dice of {} (per image, then averaged; classes absent in both prediction and truth skipped{ensemble})\n",
            self.model
        );
        if regions {
            out += "regions: ";
            out += &self
                .regions
                .iter()
                .map(|r| format!("{} = {}", r.name, self.members(r).join(" + ")))
                .collect::<Vec<_>>()
                .join("; ");
            out += "\n";
        }
        out += &format!("{:<first$}  {:>6}", "data set", "images");
        for (c, w) in self.classes[1..].iter().zip(&widths) {
            out += &format!("  {c:>w$}");
        }
        out += &format!("  {:>8}", "mean");
        for (r, w) in self.regions.iter().zip(&region_widths) {
            out += &format!("  {:>w$}", r.name);
        }
        if regions {
            out += &format!("  {:>12}", "regions mean");
        }
        out += "\n";
        let mut row = |name: &str, images: String, dice: &[Option<f64>], m: Option<f64>, rd: &[Option<f64>], rm| {
            out += &format!("{name:<first$}  {images:>6}");
            for (d, w) in dice.iter().zip(&widths) {
                out += &format!("  {:>w$}", fmt(*d));
            }
            out += &format!("  {:>8}", fmt(m));
            for (d, w) in rd.iter().zip(&region_widths) {
                out += &format!("  {:>w$}", fmt(*d));
            }
            if regions {
                out += &format!("  {:>12}", fmt(rm));
            }
            out += "\n";
        };
        for r in &self.results {
            row(&r.name, r.images.to_string(), &r.dice, r.mean, &r.region_dice, r.region_mean);
        }
        if self.results.len() > 1 {
            let name = format!("mean over {} data sets", self.results.len());
            row(&name, String::new(), &self.mean_dice, self.mean, &self.mean_region_dice, self.region_mean);
        }
        for r in self.results.iter().filter(|r| !r.zoom_counts.is_empty()) {
            let counts: Vec<String> = r
                .zoom_counts
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(z, n)| format!("{n} at {}", z + 1))
                .collect();
            out += &format!("zoom-out chosen, {}: {}\n", r.name, counts.join(", "));
        }
        out
    }

    /// The report as JSON (`vlsa eval --json`); undefined Dice values are null.
    pub fn to_json(&self) -> serde_json::Value {
        let per_class = |dice: &[Option<f64>]| -> serde_json::Map<String, serde_json::Value> {
            self.classes[1..].iter().zip(dice).map(|(c, d)| (c.clone(), serde_json::json!(d))).collect()
        };
        let mut json = serde_json::json!({
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
        });
        if self.shifts > 1 {
            // Only with a shift ensemble, so that one-forward reports keep their exact form.
            json["shifts"] = serde_json::json!(self.shifts);
        }
        if self.zoom_out > 1 {
            json["zoom_out"] = serde_json::json!(self.zoom_out);
        }
        if self.auto_zoom_out() {
            // Only with the automatic zoom-out, so that other reports keep their exact form.
            json["zoom_out"] = serde_json::json!("auto");
            for (set, r) in json["datasets"].as_array_mut().expect("datasets is an array").iter_mut().zip(&self.results)
            {
                let counts: serde_json::Map<String, serde_json::Value> = r
                    .zoom_counts
                    .iter()
                    .enumerate()
                    .map(|(z, n)| ((z + 1).to_string(), serde_json::json!(n)))
                    .collect();
                set["zoom_out_chosen"] = serde_json::Value::Object(counts);
            }
        }
        if !self.regions.is_empty() {
            // Only with --region, so that reports without regions keep their exact form.
            let per_region = |dice: &[Option<f64>]| -> serde_json::Map<String, serde_json::Value> {
                self.regions.iter().zip(dice).map(|(r, d)| (r.name.clone(), serde_json::json!(d))).collect()
            };
            json["regions"] = self
                .regions
                .iter()
                .map(|r| (r.name.clone(), serde_json::json!(self.members(r))))
                .collect::<serde_json::Map<_, _>>()
                .into();
            for (d, r) in json["datasets"].as_array_mut().expect("an array").iter_mut().zip(&self.results) {
                d["region_dice"] = per_region(&r.region_dice).into();
                d["region_counted"] = self
                    .regions
                    .iter()
                    .zip(&r.region_counted)
                    .map(|(q, n)| (q.name.clone(), serde_json::json!(n)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                d["region_mean"] = serde_json::json!(r.region_mean);
            }
            json["mean_over_datasets"]["region_dice"] = per_region(&self.mean_region_dice).into();
            json["mean_over_datasets"]["region_mean"] = serde_json::json!(self.region_mean);
        }
        json
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
    evaluate_folders_with_progress(model, dirs, batch, &[], &mut |_, _, _| {})
}

/// [`evaluate_folders`] with `regions` scored too, calling `progress(folder, images done, images
/// in the folder)` after each batch.
pub fn evaluate_folders_with_progress(
    model: &Model,
    dirs: &[PathBuf],
    batch: usize,
    regions: &[Region],
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
        results.push(evaluate_regions_with_progress(model, &dataset, batch, regions, &mut |done| {
            progress(dir, done, total)
        })?);
    }
    Ok(EvalReport::with_regions("model", classes, regions, results))
}
