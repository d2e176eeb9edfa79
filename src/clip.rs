//! Hugging Face CLIP vision checkpoints as vlsa's image encoder.
//!
//! A `CLIPVisionModel` (or a whole `CLIPModel`) saved by `save_pretrained` is a folder with
//! `config.json` and `model.safetensors`. Its vision tensors are docs/DESIGN.md's `vision_model.*`
//! names; transformers 5 writes a `CLIPVisionModel` without the `vision_model.` prefix, so both
//! spellings are accepted. Text tower tensors, projections and `position_ids` buffers are ignored.
//! When the model's image size differs from the checkpoint's, the patch position embeddings
//! are resized with bicubic interpolation exactly as transformers' `interpolate_pos_encoding`
//! does (PyTorch bicubic, A = -0.75, align_corners = false); the class row is kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::expected_tensors;
use crate::config::{Activation, Config};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::weights::{self, HostTensor, TensorFile};
use crate::Gpu;

const PREFIX: &str = "vision_model.";

/// The vision tower of a CLIP checkpoint.
#[derive(Debug, Clone)]
pub struct ClipVision {
    /// Image size the checkpoint was trained at.
    pub image_size: usize,
    /// Patch size p.
    pub patch_size: usize,
    /// Width D (`hidden_size`).
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// `intermediate_size / hidden_size`.
    pub mlp_ratio: usize,
    /// The MLP activation.
    pub act: Activation,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// Tensors under docs/DESIGN.md's `vision_model.*` names.
    pub tensors: BTreeMap<String, HostTensor>,
    /// Where it was read from (for messages).
    pub source: String,
}

fn paths(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        (path.join("config.json"), path.join("model.safetensors"))
    } else {
        (path.with_file_name("config.json"), path.to_path_buf())
    }
}

fn field(cfg: &Value, key: &str, source: &str) -> Result<usize> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .filter(|&v| v > 0)
        .map(|v| v as usize)
        .ok_or_else(|| Error::Format { path: source.into(), message: format!("lacks a positive integer \"{key}\"") })
}

impl ClipVision {
    /// Reads a checkpoint folder (or its `model.safetensors`, with `config.json` beside it).
    pub fn load(path: &Path) -> Result<ClipVision> {
        let (config_path, weights_path) = paths(path);
        let cfg_source = config_path.display().to_string();
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Format { path: cfg_source.clone(), message: format!("is not valid JSON ({e})") })?;
        // A CLIPModel config nests the vision tower's settings.
        let cfg = cfg.get("vision_config").cloned().unwrap_or(cfg);
        let width = field(&cfg, "hidden_size", &cfg_source)?;
        let intermediate = field(&cfg, "intermediate_size", &cfg_source)?;
        if intermediate % width != 0 {
            return Err(Error::Format { path: cfg_source, message: format!("intermediate_size {intermediate} is not a multiple of hidden_size {width}; vlsa needs an integer mlp_ratio") });
        }
        let act = match cfg.get("hidden_act").and_then(Value::as_str).unwrap_or("quick_gelu") {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => {
                return Err(Error::Format {
                    path: cfg_source,
                    message: format!("hidden_act \"{other}\" is not supported (quick_gelu or gelu)"),
                })
            }
        };
        let ln_eps = cfg.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-5);
        let file = TensorFile::read(&weights_path)?;
        let source = weights_path.display().to_string();
        let mut tensors = BTreeMap::new();
        for (name, t) in file.tensors {
            let stem = name.strip_prefix(PREFIX).unwrap_or(&name);
            let vision =
                ["embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm."].iter().any(|p| stem.starts_with(p));
            if !vision || stem.ends_with("position_ids") || (name.starts_with("text_model.")) {
                continue;
            }
            if tensors.insert(format!("{PREFIX}{stem}"), t).is_some() {
                return Err(Error::Weights(format!(
                    "{source}: tensor {stem} appears both with and without the {PREFIX} prefix"
                )));
            }
        }
        if tensors.is_empty() {
            return Err(Error::Weights(format!(
                "{source}: holds no CLIP vision tensors (vision_model.* or embeddings.*/encoder.*)"
            )));
        }
        Ok(ClipVision {
            image_size: field(&cfg, "image_size", &cfg_source)?,
            patch_size: field(&cfg, "patch_size", &cfg_source)?,
            width,
            layers: field(&cfg, "num_hidden_layers", &cfg_source)?,
            heads: field(&cfg, "num_attention_heads", &cfg_source)?,
            mlp_ratio: intermediate / width,
            act,
            ln_eps,
            tensors,
            source,
        })
    }

    /// Checks that `config`'s vision encoder is this checkpoint's; the first difference is an
    /// error naming the config key and both values.
    pub fn check(&self, config: &Config) -> Result<()> {
        let v = &config.vision;
        let pairs: [(&str, String, &str, String); 6] = [
            ("vision.width", v.width.to_string(), "hidden_size", self.width.to_string()),
            ("vision.layers", v.layers.to_string(), "num_hidden_layers", self.layers.to_string()),
            ("vision.heads", v.heads.to_string(), "num_attention_heads", self.heads.to_string()),
            (
                "vision.mlp_ratio",
                v.mlp_ratio.to_string(),
                "intermediate_size / hidden_size",
                self.mlp_ratio.to_string(),
            ),
            ("vision.act", format!("{:?}", v.act), "hidden_act", format!("{:?}", self.act)),
            ("patch_size", config.patch_size.to_string(), "patch_size", self.patch_size.to_string()),
        ];
        for (key, ours, their_key, theirs) in pairs {
            if ours != theirs {
                return Err(Error::Config(format!(
                    "{key} is {ours} but the CLIP checkpoint {} has {their_key} {theirs}",
                    self.source
                )));
            }
        }
        if (config.ln_eps as f64 - self.ln_eps).abs() > 1e-6 * self.ln_eps {
            return Err(Error::Config(format!(
                "ln_eps is {} but the CLIP checkpoint {} has layer_norm_eps {}",
                config.ln_eps, self.source, self.ln_eps
            )));
        }
        Ok(())
    }

    /// The encoder tensors for a model of `config` (position embeddings resized to its image
    /// size when it differs), checked against the names and shapes the model expects (and every
    /// value finite); any other tensor is refused.
    pub fn tensors_for(&self, config: &Config) -> Result<BTreeMap<String, HostTensor>> {
        self.check(config)?;
        let mut out = self.tensors.clone();
        let pos_name = format!("{PREFIX}embeddings.position_embedding.weight");
        let from = self.image_size / self.patch_size;
        let to = config.grid();
        if from != to {
            let need = [1 + from * from, self.width];
            let pos =
                out.get(&pos_name).ok_or_else(|| weights::missing_tensor(&pos_name, &need, "tensor", &self.source))?;
            if pos.shape != need {
                return Err(Error::Weights(format!(
                    "{}: tensor {pos_name} has shape {:?} but image_size {} and patch_size {} need {need:?}",
                    self.source, pos.shape, self.image_size, self.patch_size
                )));
            }
            let resized = interpolate_position_embedding(pos, from, to);
            out.insert(pos_name, resized);
        }
        let expected = expected_tensors(config);
        for (name, shape) in expected.iter().filter(|(n, _)| n.starts_with(PREFIX)) {
            weights::checked_tensor(&out, name, shape, "tensor", &self.source)?;
        }
        if let Some(extra) = out.keys().find(|n| !expected.iter().any(|(e, _)| e == *n)) {
            return Err(Error::Weights(format!("{}: unexpected vision tensor {extra}", self.source)));
        }
        Ok(out)
    }
}

impl Model {
    /// A new model whose vision encoder is a CLIP checkpoint's and whose head is freshly
    /// initialised (seeded) — the starting point for fine-tuning.
    pub fn init_with_clip(gpu: &Gpu, config: Config, clip: &ClipVision, seed: u64) -> Result<Model> {
        let vision = clip.tensors_for(&config)?;
        let model = Model::init(gpu, config, seed)?;
        // tensors_for checked every tensor (present, shaped, finite) and refused any other.
        for (name, t) in vision {
            model.get(&name)?.write(&t.data)?;
        }
        Ok(model)
    }
}

/// PyTorch's bicubic convolution weights (A = -0.75) of the 4 taps around fraction `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Source taps (indices clamped to the edge) and weights of output index `dst` when resizing
/// `src_len` to `dst_len` with align_corners = false.
fn cubic_taps(dst: usize, dst_len: usize, src_len: usize) -> ([usize; 4], [f64; 4]) {
    let x = (dst as f64 + 0.5) * src_len as f64 / dst_len as f64 - 0.5;
    let x0 = x.floor();
    let idx = |o: i64| (x0 as i64 + o).clamp(0, src_len as i64 - 1) as usize;
    ([idx(-1), idx(0), idx(1), idx(2)], cubic_weights(x - x0))
}

/// Resizes CLIP position embeddings [1 + g*g, D] to [1 + n*n, D]: the class row is kept, the
/// patch rows (a g x g grid, row-major) are resized bicubically to n x n.
pub fn interpolate_position_embedding(pos: &HostTensor, from: usize, to: usize) -> HostTensor {
    let d = pos.shape[1];
    let mut data = Vec::with_capacity((1 + to * to) * d);
    data.extend_from_slice(&pos.data[..d]);
    let grid = &pos.data[d..];
    let taps: Vec<_> = (0..to).map(|i| cubic_taps(i, to, from)).collect();
    for (ys, wy) in &taps {
        for (xs, wx) in &taps {
            for c in 0..d {
                let mut acc = 0.0f64;
                for (y, wy) in ys.iter().zip(wy) {
                    for (x, wx) in xs.iter().zip(wx) {
                        acc += wy * wx * grid[(y * from + x) * d + c] as f64;
                    }
                }
                data.push(acc as f32);
            }
        }
    }
    HostTensor::new(&[1 + to * to, d], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_weights_sum_to_one_and_identity_resize_is_exact() {
        for t in [0.0, 0.25, 0.5, 0.9] {
            assert!((cubic_weights(t).iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        let pos = HostTensor::new(&[1 + 4, 2], (0..10).map(|v| v as f32).collect());
        assert_eq!(interpolate_position_embedding(&pos, 2, 2), pos);
        // A constant grid stays constant at any size.
        let flat = HostTensor::new(&[1 + 4, 1], vec![9.0, 3.0, 3.0, 3.0, 3.0]);
        let up = interpolate_position_embedding(&flat, 2, 5);
        assert_eq!(up.shape, vec![26, 1]);
        assert!(up.data[1..].iter().all(|&v| (v - 3.0).abs() < 1e-6) && up.data[0] == 9.0);
    }
}
