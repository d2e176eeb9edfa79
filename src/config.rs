//! The model configuration: the JSON stored under `vlsa.config` in a model's safetensors
//! metadata (docs/DESIGN.md, "Configuration"). Unknown keys are errors that name the key; optional
//! keys take docs/DESIGN.md's defaults; sizes are checked to fit together.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod tensors;
pub use tensors::expected_tensors;

/// CLIP's per-channel mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The whole model configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Side S of the square input the model sees.
    pub image_size: usize,
    /// Patch size p; must divide `image_size`.
    pub patch_size: usize,
    #[serde(default = "clip_mean")]
    pub pixel_mean: [f32; 3],
    #[serde(default = "clip_std")]
    pub pixel_std: [f32; 3],
    /// The ViT image encoder.
    pub vision: VisionConfig,
    /// Width Dt of the class text embeddings.
    pub text_dim: usize,
    /// Class names; class 0 is the background.
    pub classes: Vec<String>,
    /// Prompt per class; defaults to the class names.
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    /// The text-guided pixel decoder.
    pub decoder: DecoderConfig,
    /// EM Aggregation.
    pub em: EmConfig,
    #[serde(default = "default_eps")]
    pub ln_eps: f32,
    /// Two-pass inference for one small object (docs/DESIGN.md, "Refinement"); absent: one pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine: Option<RefineConfig>,
    /// Shift ensemble (docs/DESIGN.md, "Shift ensemble"): predict from the mean logits of
    /// shifts x shifts copies of the input moved by patch_size / shifts pixels, so that the
    /// token grid falls in as many places; absent or 1: one forward. Part of how the model
    /// predicts (`vlsa segment`, `vlsa eval`), not of its forward pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shifts: Option<usize>,
    /// Crop each image to its field of view before step 1 where a dark surround leaves more
    /// than a tenth of a side empty (docs/DESIGN.md, "Field of view";
    /// [`crate::image_io::field_of_view`]), e.g. a round fundus field in a wide frame; the
    /// mask is background outside it. In `vlsa segment`, `vlsa eval` and training; absent or
    /// false: the whole image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub field_of_view: bool,
    /// Zoom-out (docs/DESIGN.md, "Zoom-out"): each view is shrunk to 1/zoom_out of the model
    /// input's side in the middle of a black input, for close-ups of an object the model knows
    /// smaller (`vlsa segment --zoom-out`, `vlsa eval --zoom-out`). Absent or 1: the view fills
    /// the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom_out: Option<usize>,
    /// Automatic zoom-out (docs/DESIGN.md, "Zoom-out"): when enabled (`enabled`, or
    /// `--zoom-out auto`) and `zoom_out` is not given, a view that is not a whole round field
    /// ([`crate::image_io::whole_field`]) is segmented at each zoom-out
    /// 1..=[`AUTO_ZOOM_OUT_MAX`] and keeps the one whose predicted object has the extent the
    /// model predicts on its training images. Absent: no search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_zoom_out: Option<AutoZoomOut>,
}

/// The reference of the automatic zoom-out: the object the search measures and its usual size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoZoomOut {
    /// The classes whose union is the object (e.g. rim and cup: the whole optic disc).
    pub classes: Vec<u32>,
    /// The object's extent on the model's training images: the side of a square of its
    /// predicted area as a fraction of the model input's side, in (0, 1).
    pub extent: f32,
    /// Whether `vlsa segment` and `vlsa eval` search without being asked (`--zoom-out auto`
    /// enables it for one command). Left out of the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
}

/// The zoom-out factors the automatic zoom-out tries: 1 to this.
pub const AUTO_ZOOM_OUT_MAX: usize = 4;

/// The largest zoom-out factor.
pub const MAX_ZOOM_OUT: usize = 8;

/// Why `k` is not a zoom-out factor (the text follows "zoom_out" or "--zoom-out").
pub fn check_zoom_out(k: usize) -> std::result::Result<(), String> {
    if !(1..=MAX_ZOOM_OUT).contains(&k) {
        return Err(format!("{k} must be between 1 and {MAX_ZOOM_OUT} (1: the image fills the model input)"));
    }
    Ok(())
}

/// Most shifts per axis of a shift ensemble (64 forwards per image).
pub const MAX_SHIFTS: usize = 8;

/// Two-pass inference: after the first pass, the model segments again a square window around
/// the predicted foreground, and the mask is that window's prediction (background elsewhere).
/// Part of how the model predicts (`vlsa segment`, `vlsa eval`), not of its forward pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineConfig {
    /// The window's side as a fraction of the image's shorter side, in (0, 1].
    pub crop: f32,
}

/// The ViT encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: usize,
    #[serde(default = "default_act")]
    pub act: Activation,
}

/// The MLP activation of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x * sigmoid(1.702 x)
    QuickGelu,
    /// exact erf GELU
    Gelu,
}

/// The text-guided pixel decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: usize,
    /// Whether each layer cross-attends to the class text embeddings (docs/DESIGN.md step 9); false
    /// is the "no text cross-attention" ablation, whose layers have no `norm2`/`cross_attn`.
    /// Left out of the JSON when true, so full models' metadata is unchanged.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub cross_attn: bool,
    /// Sub-token logits (docs/DESIGN.md step 10): with r > 1, a Linear `head.decoder.upsample`
    /// turns each decoder token into r x r sub-tokens (pixel shuffle) before the mask head, so
    /// the logits come on a grid r times finer than the patches. Left out of the JSON when 1
    /// (the paper's head), so other models' metadata is unchanged.
    #[serde(default = "default_one", skip_serializing_if = "is_one")]
    pub upsample: usize,
}

/// EM Aggregation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmConfig {
    /// Number of bases M.
    pub bases: usize,
    #[serde(default = "default_iters")]
    pub iters: usize,
    #[serde(default = "default_lambda")]
    pub lambda: f32,
    #[serde(default = "default_momentum")]
    pub momentum: f32,
    #[serde(default)]
    pub grad: EmGrad,
}

/// How gradients pass the EM loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmGrad {
    /// EMANet: Z and mu are constants in backward.
    #[default]
    Detached,
    /// Exact gradient through all iterations.
    Unrolled,
}

/// Why `k` shifts per axis do not suit patches of `patch` pixels (the text follows "shifts"
/// or a flag's name), or nothing when they do: the shift step patch / k must be whole pixels.
pub fn check_shifts(k: usize, patch: usize) -> std::result::Result<(), String> {
    if k == 0 || k > MAX_SHIFTS {
        return Err(format!("{k} must be between 1 and {MAX_SHIFTS} (shifts per axis; 1 is one forward)"));
    }
    if !patch.is_multiple_of(k) {
        return Err(format!("{k} must divide the patch size {patch}, so that each shift is whole pixels"));
    }
    Ok(())
}

fn clip_mean() -> [f32; 3] {
    CLIP_MEAN
}
fn clip_std() -> [f32; 3] {
    CLIP_STD
}
fn default_eps() -> f32 {
    1e-5
}
fn default_mlp_ratio() -> usize {
    4
}
fn default_act() -> Activation {
    Activation::QuickGelu
}
fn default_one() -> usize {
    1
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
fn default_true() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}
fn default_iters() -> usize {
    3
}
fn default_lambda() -> f32 {
    1.0
}
fn default_momentum() -> f32 {
    0.9
}

/// Largest sizes accepted, so that a corrupt or hostile config fails here, not in the GPU.
const MAX_IMAGE: usize = 4096;
const MAX_WIDTH: usize = 8192;
const MAX_LAYERS: usize = 256;
const MAX_CLASSES: usize = 256;
const MAX_MLP_RATIO: usize = 16;
const MAX_EM_ITERS: usize = 100;
const MAX_UPSAMPLE: usize = 8;
const MAX_PARAMETERS: usize = 1 << 30;
/// The storage-buffer binding size every WebGPU adapter offers (128 MiB): a model must fit one
/// image's largest tensor in it, so that it runs on any GPU at batch size 1.
pub const PORTABLE_BINDING_BYTES: u64 = 128 << 20;

impl Config {
    /// Parses and validates a config from JSON text; `source` names the file in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Config> {
        let config: Config = serde_json::from_str(text).map_err(|e| match key_path_at(text, e.line(), e.column()) {
            Some(key) => Error::Config(format!("{source}: key `{key}`: {e}")),
            None => Error::Config(format!("{source}: {e}")),
        })?;
        config.validate().map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{source}: {m}")),
            other => other,
        })?;
        Ok(config)
    }

    /// The config as compact JSON (what goes into the safetensors metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a config always serializes")
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let p = self.patch_size;
        if self.image_size == 0 || self.image_size > MAX_IMAGE {
            return bad(format!("image_size {} is not between 1 and {MAX_IMAGE}", self.image_size));
        }
        if p == 0 || !self.image_size.is_multiple_of(p) {
            return bad(format!("patch_size {p} does not divide image_size {}", self.image_size));
        }
        for (what, width, heads, layers) in [
            ("vision", self.vision.width, self.vision.heads, self.vision.layers),
            ("decoder", self.decoder.width, self.decoder.heads, self.decoder.layers),
        ] {
            if width == 0 || width > MAX_WIDTH {
                return bad(format!("{what}.width {width} is not between 1 and {MAX_WIDTH}"));
            }
            if heads == 0 || width % heads != 0 {
                return bad(format!("{what}.heads {heads} does not divide {what}.width {width}"));
            }
            let head_dim = width / heads;
            if head_dim % 4 != 0 || head_dim > 128 {
                return bad(format!(
                    "{what} head width {head_dim} (width {width} / heads {heads}) must be a multiple of 4 up to 128"
                ));
            }
            if layers > MAX_LAYERS {
                return bad(format!("{what}.layers {layers} is more than {MAX_LAYERS}"));
            }
        }
        for (key, ratio) in [("vision.mlp_ratio", self.vision.mlp_ratio), ("decoder.mlp_ratio", self.decoder.mlp_ratio)]
        {
            if ratio == 0 || ratio > MAX_MLP_RATIO {
                return bad(format!("{key} {ratio} is not between 1 and {MAX_MLP_RATIO}"));
            }
        }
        let r = self.decoder.upsample;
        if r == 0 || r > MAX_UPSAMPLE || !p.is_multiple_of(r) {
            return bad(format!(
                "decoder.upsample {r} must be between 1 and {MAX_UPSAMPLE} and divide patch_size {p} (sub-tokens per patch side)"
            ));
        }
        if self.text_dim == 0 || self.text_dim > MAX_WIDTH {
            return bad(format!("text_dim {} is not between 1 and {MAX_WIDTH}", self.text_dim));
        }
        if self.classes.len() < 2 || self.classes.len() > MAX_CLASSES {
            return bad(format!(
                "{} classes given; a model needs between 2 and {MAX_CLASSES} (class 0 is the background)",
                self.classes.len()
            ));
        }
        if let Some(p) = &self.prompts {
            if p.len() != self.classes.len() {
                return bad(format!("{} prompts given for {} classes", p.len(), self.classes.len()));
            }
        }
        if self.em.bases > 64 {
            return bad(format!("em.bases {} is more than 64", self.em.bases));
        }
        if self.em.bases > 0 && self.em.iters == 0 {
            return bad("em.iters must be at least 1".into());
        }
        if self.em.iters > MAX_EM_ITERS {
            return bad(format!("em.iters {} is more than {MAX_EM_ITERS}", self.em.iters));
        }
        if !(self.em.lambda.is_finite() && self.em.lambda > 0.0) {
            return bad(format!("em.lambda {} must be a positive number", self.em.lambda));
        }
        if !(0.0..=1.0).contains(&self.em.momentum) {
            return bad(format!("em.momentum {} must be between 0 and 1", self.em.momentum));
        }
        if !(self.ln_eps > 0.0 && self.ln_eps < 1.0) {
            return bad(format!("ln_eps {} must be between 0 and 1", self.ln_eps));
        }
        if let Some(r) = &self.refine {
            if !(r.crop > 0.0 && r.crop <= 1.0) {
                return bad(format!("refine.crop {} must be a fraction of the image side in (0, 1]", r.crop));
            }
        }
        if let Some(k) = self.zoom_out {
            if let Err(why) = check_zoom_out(k) {
                return bad(format!("zoom_out {why}"));
            }
            if k > 1 && self.refine.is_some() {
                return bad("zoom_out and refine do not combine; give one of them".into());
            }
        }
        if let Some(a) = &self.auto_zoom_out {
            let k = self.classes.len();
            if a.classes.is_empty() || a.classes.iter().any(|&c| c == 0 || c as usize >= k) {
                return bad(format!(
                    "auto_zoom_out.classes {:?} must name foreground classes, 1 to {} (class 0 is the background)",
                    a.classes,
                    k - 1
                ));
            }
            if !(a.extent > 0.0 && a.extent < 1.0) {
                return bad(format!(
                    "auto_zoom_out.extent {} must be a fraction of the input's side in (0, 1)",
                    a.extent
                ));
            }
            if self.refine.is_some() {
                return bad("auto_zoom_out and refine do not combine; give one of them".into());
            }
        }
        if let Some(k) = self.shifts {
            if let Err(why) = check_shifts(k, self.patch_size) {
                return bad(format!("shifts {why}"));
            }
        }
        if self.pixel_std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return bad("pixel_std values must be positive".into());
        }
        if self.pixel_mean.iter().any(|m| !m.is_finite()) {
            return bad("pixel_mean values must be finite numbers".into());
        }
        // Sizes are bounded above, so these products cannot overflow.
        let parameters: usize = expected_tensors(self).iter().map(|(_, shape)| shape.iter().product::<usize>()).sum();
        if parameters > MAX_PARAMETERS {
            return bad(format!("the sizes give {parameters} parameters, more than vlsa's limit of {MAX_PARAMETERS}; lower vision.width, vision.layers, decoder.width or decoder.layers"));
        }
        let largest = self.largest_tensor(1);
        if largest.bytes() > PORTABLE_BINDING_BYTES {
            return bad(format!(
                "{} would be {} MiB for one image, over the {} MiB a GPU storage binding is guaranteed to hold; lower {}",
                largest.describe(),
                largest.bytes() >> 20,
                PORTABLE_BINDING_BYTES >> 20,
                largest.keys
            ));
        }
        Ok(())
    }

    /// Refuses a batch whose largest tensor would not fit in one storage binding of
    /// `binding_limit` bytes (the adapter's `max_storage_buffer_binding_size`), before any
    /// kernel runs; the error says by how much and the largest batch that fits.
    pub fn check_batch(&self, batch: usize, binding_limit: u64) -> Result<()> {
        let largest = self.largest_tensor(batch);
        if largest.bytes() <= binding_limit {
            return Ok(());
        }
        let per_image = self.largest_activation(1).bytes().max(1);
        Err(Error::Invalid(format!(
            "a batch of {batch} images needs {} of {} bytes, over this GPU's max_storage_buffer_binding_size of {binding_limit} bytes by {}; use batches of at most {} images",
            largest.describe(),
            largest.bytes(),
            largest.bytes() - binding_limit,
            binding_limit / per_image
        )))
    }

    /// The largest tensor a forward and backward pass over `batch` images binds to one kernel:
    /// a weight, or an activation (these grow with the batch).
    pub fn largest_tensor(&self, batch: usize) -> TensorSize {
        let keys = "image_size, vision.width, vision.mlp_ratio, decoder.width or decoder.mlp_ratio";
        let weights = expected_tensors(self).into_iter().map(|(name, shape)| TensorSize {
            name: format!("weight {name}"),
            shape,
            keys,
        });
        let activation = self.largest_activation(batch);
        weights.fold(activation, |a, w| if w.elements() > a.elements() { w } else { a })
    }

    /// The largest activation of a pass over `batch` images.
    pub fn largest_activation(&self, batch: usize) -> TensorSize {
        let (s, d, n, k) = (self.image_size, self.vision.width, self.tokens(), self.num_classes());
        let c = self.decoder.width;
        let tokens = "image_size (or raise patch_size)";
        [
            TensorSize { name: "the input".into(), shape: vec![batch, 3, s, s], keys: "image_size" },
            TensorSize { name: "the encoder activations".into(), shape: vec![batch, 1 + n, d], keys: tokens },
            TensorSize {
                name: "the encoder MLP activations".into(),
                shape: vec![batch, 1 + n, d * self.vision.mlp_ratio],
                keys: "image_size or vision.mlp_ratio",
            },
            TensorSize {
                name: "the decoder MLP activations".into(),
                shape: vec![batch, n, c * self.decoder.mlp_ratio],
                keys: "image_size or decoder.mlp_ratio",
            },
            TensorSize {
                name: "the decoder's sub-tokens".into(),
                shape: vec![batch, n, c * self.decoder.upsample * self.decoder.upsample],
                keys: "image_size or decoder.upsample",
            },
            TensorSize { name: "the EM responsibilities".into(), shape: vec![batch, n, self.em.bases], keys: tokens },
            TensorSize {
                name: "the upsampled logits".into(),
                shape: vec![batch, k, s, s],
                keys: "image_size or the number of classes",
            },
        ]
        .into_iter()
        .fold(None::<TensorSize>, |a, t| match a {
            Some(a) if a.elements() >= t.elements() => Some(a),
            _ => Some(t),
        })
        .expect("the list is not empty")
    }

    /// Patches per side, h = w = S / p.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Logits per side: the grid times `decoder.upsample`.
    pub fn logit_grid(&self) -> usize {
        self.grid() * self.decoder.upsample
    }

    /// Patch tokens N = h * w.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Number of classes K.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The zoom-out factor (1: the view fills the model input).
    pub fn zoom_out(&self) -> usize {
        self.zoom_out.unwrap_or(1)
    }

    /// The automatic zoom-out's reference where it chooses the zoom-out: with `auto_zoom_out`
    /// enabled and no fixed `zoom_out`.
    pub fn auto_zoom(&self) -> Option<&AutoZoomOut> {
        self.auto_zoom_out.as_ref().filter(|a| a.enabled && self.zoom_out.is_none())
    }

    /// Shifts per axis of the shift ensemble (1: one forward).
    pub fn shifts(&self) -> usize {
        self.shifts.unwrap_or(1)
    }

    /// The prompt of each class (the class names when none are given).
    pub fn prompt_texts(&self) -> Vec<String> {
        self.prompts.clone().unwrap_or_else(|| self.classes.clone())
    }
}

/// A tensor's name, shape and the config keys that set its size.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSize {
    /// What the tensor is.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The config keys to change to make it smaller.
    pub keys: &'static str,
}

impl TensorSize {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX)
    }
    /// Bytes in f32.
    pub fn bytes(&self) -> u64 {
        (self.elements() as u64).saturating_mul(4)
    }
    /// "name [shape]".
    pub fn describe(&self) -> String {
        format!("{} {:?}", self.name, self.shape)
    }
}

/// The dotted path of the JSON key at (1-based) `line` and `column` of `text`, e.g.
/// `vision.width`, so a type error from serde names the key it is about.
fn key_path_at(text: &str, line: usize, column: usize) -> Option<String> {
    let start: usize = text.split('\n').take(line.checked_sub(1)?).map(|l| l.len() + 1).sum();
    let end = (start + column).min(text.len());
    // Each open container: an object with the key being read, or an array.
    let mut open: Vec<Option<String>> = Vec::new();
    let mut in_object: Vec<bool> = Vec::new();
    let mut last_string = None;
    let bytes = &text.as_bytes()[..end];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let from = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                last_string = Some(String::from_utf8_lossy(&bytes[from..i.min(bytes.len())]).into_owned());
            }
            b':' => {
                if let Some(key) = open.last_mut() {
                    *key = last_string.take();
                }
            }
            b'{' | b'[' => {
                open.push(None);
                in_object.push(bytes[i] == b'{');
            }
            b'}' | b']' => {
                open.pop();
                in_object.pop();
            }
            b',' if in_object.last() == Some(&true) => {
                if let Some(key) = open.last_mut() {
                    *key = None;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let path: Vec<String> = open.into_iter().flatten().collect();
    (!path.is_empty()).then(|| path.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN: &str = r#"{
      "image_size": 128, "patch_size": 8,
      "pixel_mean": [0.48145466, 0.4578275, 0.40821073],
      "pixel_std":  [0.26862954, 0.26130258, 0.27577711],
      "vision":  {"width": 192, "layers": 4, "heads": 3, "mlp_ratio": 4, "act": "quick_gelu"},
      "text_dim": 384,
      "classes": ["background", "optic disc", "optic cup"],
      "prompts": ["background of a retinal fundus photograph", "the optic disc", "the optic cup"],
      "decoder": {"width": 128, "layers": 2, "heads": 4, "mlp_ratio": 4},
      "em":      {"bases": 16, "iters": 3, "lambda": 1.0, "momentum": 0.9, "grad": "detached"},
      "ln_eps": 1e-5
    }"#;

    #[test]
    fn design_config_parses_and_round_trips() {
        let c = Config::from_json(DESIGN, "design").unwrap();
        assert_eq!(c.tokens(), 256);
        assert_eq!(c.vision.act, Activation::QuickGelu);
        assert_eq!(Config::from_json(&c.to_json(), "again").unwrap(), c);
    }

    #[test]
    fn optional_keys_take_defaults() {
        let minimal = r#"{"image_size": 32, "patch_size": 8, "vision": {"width": 32, "layers": 1, "heads": 2},
            "text_dim": 8, "classes": ["bg", "a"], "decoder": {"width": 16, "layers": 1, "heads": 2}, "em": {"bases": 4}}"#;
        let c = Config::from_json(minimal, "m").unwrap();
        assert_eq!(c.pixel_mean, CLIP_MEAN);
        assert_eq!(c.em.iters, 3);
        assert_eq!(c.em.grad, EmGrad::Detached);
        assert_eq!(c.prompt_texts(), vec!["bg", "a"]);
        assert_eq!(c.ln_eps, 1e-5);
        assert!(c.decoder.cross_attn);
        assert!(!c.to_json().contains("cross_attn"), "the default is not written");
    }

    #[test]
    fn the_field_of_view_crop_is_off_unless_asked_for_and_round_trips() {
        let c = Config::from_json(DESIGN, "design").unwrap();
        assert!(!c.field_of_view && !c.to_json().contains("field_of_view"), "absent unless on");
        let on = DESIGN.replace("\"ln_eps\": 1e-5", "\"ln_eps\": 1e-5, \"field_of_view\": true");
        let c = Config::from_json(&on, "on").unwrap();
        assert!(c.field_of_view);
        assert_eq!(Config::from_json(&c.to_json(), "again").unwrap(), c);
        let bad = DESIGN.replace("\"ln_eps\": 1e-5", "\"ln_eps\": 1e-5, \"field_of_view\": 1");
        assert!(Config::from_json(&bad, "cfg.json").unwrap_err().to_string().contains("cfg.json"));
    }

    #[test]
    fn zoom_out_is_optional_checked_and_round_trips() {
        let c = Config::from_json(DESIGN, "design").unwrap();
        assert_eq!((c.zoom_out, c.zoom_out()), (None, 1));
        assert!(!c.to_json().contains("zoom_out"), "absent unless given");
        let with = |k: &str| DESIGN.replace("\"ln_eps\": 1e-5", &format!("\"ln_eps\": 1e-5, \"zoom_out\": {k}"));
        let c = Config::from_json(&with("3"), "on").unwrap();
        assert_eq!(c.zoom_out(), 3);
        assert_eq!(Config::from_json(&c.to_json(), "again").unwrap(), c);
        for k in ["0", "9"] {
            let e = Config::from_json(&with(k), "cfg.json").unwrap_err().to_string();
            assert!(e.contains(&format!("zoom_out {k} must be between 1 and 8")) && e.contains("cfg.json"), "{e}");
        }
        let both = with("2").replace("\"ln_eps\": 1e-5", "\"ln_eps\": 1e-5, \"refine\": {\"crop\": 0.4}");
        assert!(Config::from_json(&both, "cfg.json").unwrap_err().to_string().contains("do not combine"));
        assert!(Config::from_json(
            &with("1").replace("\"ln_eps\": 1e-5", "\"ln_eps\": 1e-5, \"refine\": {\"crop\": 0.4}"),
            "ok"
        )
        .is_ok());
    }

    #[test]
    fn the_automatic_zoom_out_is_optional_checked_off_unless_enabled_and_round_trips() {
        let c = Config::from_json(DESIGN, "design").unwrap();
        assert!(c.auto_zoom_out.is_none() && c.auto_zoom().is_none() && !c.to_json().contains("auto_zoom_out"));
        let with = |a: &str| DESIGN.replace("\"ln_eps\": 1e-5", &format!("\"ln_eps\": 1e-5, \"auto_zoom_out\": {a}"));
        let c = Config::from_json(&with(r#"{"classes": [1], "extent": 0.12}"#), "on").unwrap();
        let a = c.auto_zoom_out.clone().unwrap();
        assert_eq!((a.classes, a.extent, a.enabled), (vec![1], 0.12, false));
        assert!(c.auto_zoom().is_none(), "a reference alone does not search");
        assert!(!c.to_json().contains("enabled"), "enabled is absent unless true");
        assert_eq!(Config::from_json(&c.to_json(), "again").unwrap(), c);
        let mut on = Config::from_json(&with(r#"{"classes": [1], "extent": 0.12, "enabled": true}"#), "on").unwrap();
        assert_eq!(on.auto_zoom().map(|a| a.extent), Some(0.12));
        assert_eq!(Config::from_json(&on.to_json(), "again").unwrap(), on);
        on.zoom_out = Some(1);
        assert!(on.auto_zoom().is_none(), "a fixed zoom-out overrides the search");
        let k = 3; // DESIGN's class count: one past the last class
        for (bad, why) in [
            (r#"{"classes": [0], "extent": 0.1}"#.to_string(), "must name foreground classes"),
            (format!(r#"{{"classes": [{k}], "extent": 0.1}}"#), "must name foreground classes"),
            (r#"{"classes": [], "extent": 0.1}"#.to_string(), "must name foreground classes"),
            (r#"{"classes": [1], "extent": 0}"#.to_string(), "auto_zoom_out.extent 0 must be a fraction"),
            (r#"{"classes": [1], "extent": 1.5}"#.to_string(), "auto_zoom_out.extent 1.5 must be a fraction"),
            (r#"{"classes": [1], "size": 0.1}"#.to_string(), "size"),
        ] {
            let e = Config::from_json(&with(&bad), "cfg.json").unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("cfg.json"), "{bad}: {e}");
        }
        let both = with(r#"{"classes": [1], "extent": 0.1}"#)
            .replace("\"ln_eps\": 1e-5", "\"ln_eps\": 1e-5, \"refine\": {\"crop\": 0.4}");
        assert!(Config::from_json(&both, "cfg.json").unwrap_err().to_string().contains("do not combine"));
    }

    #[test]
    fn the_shift_ensemble_is_optional_checked_and_round_trips() {
        let c = Config::from_json(DESIGN, "design").unwrap();
        assert_eq!((c.shifts, c.shifts()), (None, 1));
        assert!(!c.to_json().contains("shifts"), "absent unless given");
        let on = DESIGN.replace("\"ln_eps\": 1e-5", "\"ln_eps\": 1e-5, \"shifts\": 2");
        let c = Config::from_json(&on, "on").unwrap();
        assert_eq!(c.shifts(), 2);
        assert_eq!(Config::from_json(&c.to_json(), "again").unwrap(), c);
        for (k, why) in
            [(0, "must be between 1 and 8"), (9, "must be between 1 and 8"), (3, "must divide the patch size 8")]
        {
            let bad = DESIGN.replace("\"ln_eps\": 1e-5", &format!("\"ln_eps\": 1e-5, \"shifts\": {k}"));
            let e = Config::from_json(&bad, "cfg.json").unwrap_err().to_string();
            assert!(e.contains(&format!("shifts {k} {why}")) && e.contains("cfg.json"), "{e}");
        }
        assert_eq!(check_shifts(8, 8), Ok(()));
        assert!(check_shifts(4, 14).is_err());
    }

    #[test]
    fn decoder_cross_attention_can_be_turned_off() {
        let off = DESIGN.replace("\"mlp_ratio\": 4}", "\"mlp_ratio\": 4, \"cross_attn\": false}");
        let c = Config::from_json(&off, "off").unwrap();
        assert!(!c.decoder.cross_attn);
        assert_eq!(Config::from_json(&c.to_json(), "again").unwrap(), c);
    }

    #[test]
    fn refinement_is_optional_checked_and_round_trips() {
        let c = Config::from_json(DESIGN, "design").unwrap();
        assert!(c.refine.is_none() && !c.to_json().contains("refine"), "absent unless given");
        let on = DESIGN.replace("\"ln_eps\": 1e-5", "\"ln_eps\": 1e-5, \"refine\": {\"crop\": 0.35}");
        let c = Config::from_json(&on, "on").unwrap();
        assert_eq!(c.refine, Some(RefineConfig { crop: 0.35 }));
        assert_eq!(Config::from_json(&c.to_json(), "again").unwrap(), c);
        for bad in ["0", "1.5", "-0.2"] {
            let e = Config::from_json(&on.replace("0.35", bad), "cfg.json").unwrap_err().to_string();
            assert!(e.contains("refine.crop") && e.contains("cfg.json"), "{e}");
        }
        let unknown = on.replace("\"crop\"", "\"size\"");
        assert!(Config::from_json(&unknown, "c").unwrap_err().to_string().contains("size"));
    }

    #[test]
    fn errors_name_the_key_or_value() {
        let unknown = DESIGN.replace("\"ln_eps\"", "\"ln_epsilon\"");
        let e = Config::from_json(&unknown, "cfg.json").unwrap_err().to_string();
        assert!(e.contains("ln_epsilon") && e.contains("cfg.json"), "{e}");
        let missing = DESIGN.replace("\"text_dim\": 384,", "");
        let e = Config::from_json(&missing, "cfg.json").unwrap_err().to_string();
        assert!(e.contains("text_dim"), "{e}");
        let patch = DESIGN.replace("\"patch_size\": 8", "\"patch_size\": 7");
        let e = Config::from_json(&patch, "cfg.json").unwrap_err().to_string();
        assert!(e.contains("patch_size 7") && e.contains("128"), "{e}");
        let heads = DESIGN.replace("\"heads\": 3", "\"heads\": 5");
        assert!(Config::from_json(&heads, "c").unwrap_err().to_string().contains("vision.heads 5"));
        let absurd = DESIGN.replace("\"width\": 192", "\"width\": 1000000000");
        assert!(Config::from_json(&absurd, "c").unwrap_err().to_string().contains("vision.width"));
        let grad = DESIGN.replace("\"detached\"", "\"sideways\"");
        assert!(Config::from_json(&grad, "c").unwrap_err().to_string().contains("sideways"));
    }
}
