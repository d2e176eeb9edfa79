//! The VLSA model of docs/DESIGN.md, steps 1–12: a CLIP-style ViT encoder, text projection, EM
//! Aggregation, the text-guided pixel decoder and the cosine mask head, over vlsa's ops.
//!
//! Weights are kept by their docs/DESIGN.md (Hugging Face) names, so a model file written by vlsa
//! and one written by the PyTorch reference are the same thing. The model knows ops, never
//! kernels.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Activation, Config, EmGrad};
use crate::error::{Error, Result};
use crate::kernels::elementwise::UnaryOp;
use crate::kernels::em::{Em, EmShape, GradMode};
use crate::kernels::{Gpu, GpuBuffer};
use crate::random::{Rng, XorShift64Star};
use crate::tensor::Tensor;
use crate::weights::{checked_tensor, HostTensor, TensorFile, CONFIG_KEY};

/// Metadata key that marks a training checkpoint (its value is the training state as JSON).
/// Only files carrying it may hold [`OPTIMIZER_PREFIX`] tensors.
pub const CHECKPOINT_KEY: &str = "vlsa.checkpoint";

/// Name prefix of a checkpoint's optimizer tensors (`optim.m.<name>`, `optim.v.<name>`).
pub const OPTIMIZER_PREFIX: &str = "optim.";

/// Names of tensors that are buffers or frozen inputs, not trained.
pub const FROZEN: [&str; 2] = ["text.class_embeddings", "head.em.bases"];

/// The tensor list lives with the configuration it is a function of; re-exported here, where
/// model users look for it.
pub use crate::config::expected_tensors;

/// The intermediate tensors of one forward pass (the `forward --dump` names).
pub struct ForwardOutputs {
    /// `vision.features` [B,N,D]
    pub vision_features: Tensor,
    /// `head.visual` [B,N,C]
    pub visual: Tensor,
    /// `head.text` [K,C]
    pub text: Tensor,
    /// `em.z` [B,N,M] (absent without EM)
    pub em_z: Option<Tensor>,
    /// `em.mu` [B,M,C] (absent without EM)
    pub em_mu: Option<Tensor>,
    /// `head.aggregated` [B,N,C]
    pub aggregated: Tensor,
    /// `decoder.out` [B,N,C]
    pub decoder_out: Tensor,
    /// `logits` [B,K,h,w]: the token grid, or r times finer with `decoder.upsample` r
    pub logits: Tensor,
    /// `logits_up` [B,K,S,S]
    pub logits_up: Tensor,
}

impl ForwardOutputs {
    /// (dump name, tensor) pairs, as docs/DESIGN.md lists them.
    pub fn named(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v =
            vec![("vision.features", &self.vision_features), ("head.visual", &self.visual), ("head.text", &self.text)];
        if let (Some(z), Some(mu)) = (&self.em_z, &self.em_mu) {
            v.push(("em.z", z));
            v.push(("em.mu", mu));
        }
        v.extend([
            ("head.aggregated", &self.aggregated),
            ("decoder.out", &self.decoder_out),
            ("logits", &self.logits),
            ("logits_up", &self.logits_up),
        ]);
        v
    }
}

/// A VLSA model on the GPU.
pub struct Model {
    /// Its configuration.
    pub config: Config,
    /// Every tensor by its docs/DESIGN.md name; trainable ones are parameters.
    pub tensors: BTreeMap<String, Tensor>,
    gpu: Gpu,
    /// Batch sizes whose forward pipelines [`Model::prepare_forward`] has built.
    pub(crate) prepared: std::sync::Mutex<Vec<usize>>,
}

impl Model {
    /// Builds a model from host tensors, checking names, shapes and the config.
    pub fn from_host(gpu: &Gpu, config: Config, host: BTreeMap<String, HostTensor>, source: &str) -> Result<Model> {
        config.validate()?;
        let expected = expected_tensors(&config);
        let mut tensors = BTreeMap::new();
        for (name, shape) in &expected {
            let t = checked_tensor(&host, name, shape, "tensor", source)?;
            let tensor = if FROZEN.contains(&name.as_str()) {
                Tensor::from_vec(gpu, &t.data, shape)?
            } else {
                Tensor::param(gpu, &t.data, shape)?
            };
            tensors.insert(name.clone(), tensor);
        }
        if let Some(extra) = host.keys().find(|k| !tensors.contains_key(*k)) {
            return Err(Error::Weights(format!(
                "{source}: unexpected tensor {extra} (not part of a model with this config)"
            )));
        }
        Ok(Model { config, tensors, gpu: gpu.clone(), prepared: Default::default() })
    }

    /// Loads a model file (safetensors with `vlsa.config` metadata), or the model inside a
    /// training checkpoint (its optimizer state is ignored).
    pub fn load(gpu: &Gpu, path: &Path) -> Result<Model> {
        Ok(Model::load_checkpoint(gpu, path)?.0)
    }

    /// Loads a model file or a training checkpoint. Returns the model and what else the file
    /// holds: its metadata and, for a checkpoint (metadata key [`CHECKPOINT_KEY`]), the
    /// optimizer tensors ([`OPTIMIZER_PREFIX`]). A plain model file gets the strict check: an
    /// `optim.*` tensor in it is an unexpected tensor.
    pub fn load_checkpoint(gpu: &Gpu, path: &Path) -> Result<(Model, TensorFile)> {
        let mut file = TensorFile::read(path)?;
        let source = path.display().to_string();
        let config = file.config(&source)?;
        let mut rest = TensorFile { tensors: BTreeMap::new(), metadata: std::mem::take(&mut file.metadata) };
        if rest.metadata.contains_key(CHECKPOINT_KEY) {
            let (optim, model) =
                std::mem::take(&mut file.tensors).into_iter().partition(|(name, _)| name.starts_with(OPTIMIZER_PREFIX));
            rest.tensors = optim;
            file.tensors = model;
        }
        Ok((Model::from_host(gpu, config, file.tensors, &source)?, rest))
    }

    /// Writes the model (f32, or f16 storage) atomically.
    pub fn save(&self, path: &Path, f16: bool) -> Result<()> {
        let mut file = TensorFile::default();
        file.metadata.insert(CONFIG_KEY.into(), self.config.to_json());
        for (name, t) in &self.tensors {
            file.tensors.insert(name.clone(), HostTensor::new(t.shape(), t.to_vec()?));
        }
        file.write(path, f16)
    }

    /// A freshly initialised model: weights N(0, 1/fan_in) scaled down for residual outputs,
    /// zero biases, unit norms, L2-normalised bases and class embeddings, logit scale ln(1/0.07).
    pub fn init(gpu: &Gpu, config: Config, seed: u64) -> Result<Model> {
        let host = Model::init_host(&config, seed)?;
        Model::from_host(gpu, config, host, "init")
    }

    /// A model of `config` that starts from the trained model or checkpoint at `path`: every
    /// tensor the configuration expects takes that file's tensor of the same name and shape,
    /// the rest are initialised as [`Model::init`] does (e.g. `decoder.upsample` added to a
    /// trained model). Returns the model and the names of the tensors initialised afresh.
    /// Refuses a file that shares no tensor with the configuration.
    pub fn init_from(gpu: &Gpu, config: Config, seed: u64, path: &Path) -> Result<(Model, Vec<String>)> {
        let mut host = Model::init_host(&config, seed)?;
        let mut file = TensorFile::read(path)?;
        let mut fresh = Vec::new();
        for (name, t) in host.iter_mut() {
            match file.tensors.remove(name) {
                Some(from) if from.shape == t.shape => *t = from,
                _ => fresh.push(name.clone()),
            }
        }
        if fresh.len() == host.len() {
            return Err(Error::Weights(format!(
                "{}: no tensor matches the configuration in name and shape, so there is nothing to start from",
                path.display()
            )));
        }
        Ok((Model::from_host(gpu, config, host, &path.display().to_string())?, fresh))
    }

    /// The host tensors of [`Model::init`].
    fn init_host(config: &Config, seed: u64) -> Result<BTreeMap<String, HostTensor>> {
        config.validate()?;
        let mut rng = Normal::new(seed);
        let mut host = BTreeMap::new();
        for (name, shape) in expected_tensors(config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("logit_scale") {
                vec![(1.0f32 / 0.07).ln()]
            } else if name.contains("norm") || name.contains("layrnorm") {
                vec![if name.ends_with(".weight") { 1.0 } else { 0.0 }; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else if name == "head.em.bases" || name == "text.class_embeddings" {
                let mut v: Vec<f32> = (0..n).map(|_| rng.sample()).collect();
                for row in v.chunks_mut(*shape.last().expect("2-D")) {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                    row.iter_mut().for_each(|x| *x /= norm);
                }
                v
            } else if name == "head.decoder.upsample.weight" {
                // r * r identities stacked: every sub-token starts as its token, so the model
                // starts as the one without sub-tokens, its logits on the finer grid.
                let w = shape[1];
                (0..n).map(|i| f32::from(i / w % w == i % w)).collect()
            } else if name.ends_with("class_embedding") || name.contains("position_embedding") {
                (0..n).map(|_| 0.02 * rng.sample()).collect()
            } else {
                let fan_in: usize = shape[1..].iter().product();
                let std = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| std * rng.sample()).collect()
            };
            host.insert(name, HostTensor::new(&shape, data));
        }
        Ok(host)
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::Weights(format!("the model has no tensor {name}")))
    }

    /// Replaces the frozen class text embeddings `text.class_embeddings` with `embeddings`
    /// [K, text_dim] (e.g. from `text::TextEncoder::embed` of the prompts).
    pub fn set_class_embeddings(&mut self, embeddings: &HostTensor) -> Result<()> {
        let want = [self.config.num_classes(), self.config.text_dim];
        if embeddings.shape != want {
            return Err(Error::Invalid(format!(
                "class embeddings of shape {:?} do not fit a model of {} classes and text_dim {} (the text encoder's width must equal text_dim)",
                embeddings.shape, want[0], want[1]
            )));
        }
        if embeddings.data.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid("the class embeddings hold a non-finite value".into()));
        }
        let tensor = Tensor::from_vec(&self.gpu, &embeddings.data, &want)?;
        self.tensors.insert("text.class_embeddings".into(), tensor);
        Ok(())
    }

    /// Trainable parameters (all but the frozen class embeddings and the EM bases).
    pub fn parameters(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter().filter(|(n, _)| !FROZEN.contains(&n.as_str()))
    }

    /// The GPU the model lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        Ok(x.linear(self.get(&format!("{name}.weight"))?, Some(self.get(&format!("{name}.bias"))?))?)
    }

    fn norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        Ok(x.layer_norm(self.get(&format!("{name}.weight"))?, self.get(&format!("{name}.bias"))?, self.config.ln_eps)?)
    }

    /// `act(linear(x))`, bias and activation in one pass.
    fn linear_act(&self, x: &Tensor, name: &str, act: UnaryOp) -> Result<Tensor> {
        Ok(x.linear_act(self.get(&format!("{name}.weight"))?, self.get(&format!("{name}.bias"))?, act)?)
    }

    /// `residual + linear(x)`, bias and residual add in one pass.
    fn linear_residual(&self, x: &Tensor, name: &str, residual: &Tensor) -> Result<Tensor> {
        Ok(x.linear_residual(self.get(&format!("{name}.weight"))?, self.get(&format!("{name}.bias"))?, residual)?)
    }

    /// `residual + attention(x, kv)` (the output projection's bias and the residual add fused).
    fn attention(&self, x: &Tensor, kv: &Tensor, name: &str, heads: usize, residual: &Tensor) -> Result<Tensor> {
        let q = self.linear(x, &format!("{name}.q_proj"))?;
        let k = self.linear(kv, &format!("{name}.k_proj"))?;
        let v = self.linear(kv, &format!("{name}.v_proj"))?;
        let o = q.attention(&k, &v, heads, false, None)?;
        self.linear_residual(&o, &format!("{name}.out_proj"), residual)
    }

    /// Steps 2–12 on a normalised input [B,3,S,S].
    pub fn forward(&self, input: &Tensor) -> Result<ForwardOutputs> {
        let c = &self.config;
        let s = input.shape();
        if s.len() != 4 || s[1] != 3 || s[2] != c.image_size || s[3] != c.image_size {
            return Err(Error::Invalid(format!("the model takes input [B, 3, {0}, {0}], not {s:?}", c.image_size)));
        }
        let b = s[0];
        c.check_batch(b, self.gpu.limits().max_storage_buffer_binding_size)?;
        let (d, n, k) = (c.vision.width, c.tokens(), c.num_classes());
        let vm = "vision_model";
        // 2-3: patch tokens, class token, position embeddings, pre-norm.
        let patches = input.patch_embed(self.get(&format!("{vm}.embeddings.patch_embedding.weight"))?)?;
        let cls = self.get(&format!("{vm}.embeddings.class_embedding"))?.reshape(&[1, 1, d])?;
        let cls = Tensor::zeros(&self.gpu, &[b, 1, d])?.add(&cls)?;
        let mut t = Tensor::concat(&[&cls, &patches], 1)?
            .add(self.get(&format!("{vm}.embeddings.position_embedding.weight"))?)?;
        t = self.norm(&t, &format!("{vm}.pre_layrnorm"))?;
        // 4: pre-norm transformer blocks.
        for i in 0..c.vision.layers {
            let l = format!("{vm}.encoder.layers.{i}");
            let h = self.norm(&t, &format!("{l}.layer_norm1"))?;
            t = self.attention(&h, &h, &format!("{l}.self_attn"), c.vision.heads, &t)?;
            let h = self.norm(&t, &format!("{l}.layer_norm2"))?;
            let act = match c.vision.act {
                Activation::QuickGelu => UnaryOp::QuickGelu,
                Activation::Gelu => UnaryOp::Gelu,
            };
            let h = self.linear_act(&h, &format!("{l}.mlp.fc1"), act)?;
            t = self.linear_residual(&h, &format!("{l}.mlp.fc2"), &t)?;
        }
        // 5-7: dense features, visual and text projections.
        let vision_features = self.norm(&t.narrow(1, 1, n)?, &format!("{vm}.post_layernorm"))?;
        let visual = self.linear(&vision_features, "head.visual_proj")?;
        let text = self.linear(self.get("text.class_embeddings")?, "head.text_proj")?;
        // 8: EM Aggregation (skipped when em.bases is 0).
        let (aggregated, em_z, em_mu) = if c.em.bases > 0 {
            let u = self.linear(&visual, "head.em.in_proj")?;
            let mode = match c.em.grad {
                EmGrad::Detached => GradMode::Detached,
                EmGrad::Unrolled => GradMode::Unrolled,
            };
            let em = u.em_aggregate(self.get("head.em.bases")?, c.em.iters, c.em.lambda, mode)?;
            let r = self.linear(&em.recon.relu()?, "head.em.out_proj")?;
            (visual.add(&self.norm(&r, "head.em.norm")?)?, Some(em.z), Some(em.mu))
        } else {
            (visual.clone(), None, None)
        };
        // 9: text-guided pixel decoder; keys and values are the class embeddings, shared by the batch.
        let text_kv = text.reshape(&[1, k, c.decoder.width])?;
        let mut x = aggregated.clone();
        for j in 0..c.decoder.layers {
            let l = format!("head.decoder.layers.{j}");
            let h = self.norm(&x, &format!("{l}.norm1"))?;
            x = self.attention(&h, &h, &format!("{l}.self_attn"), c.decoder.heads, &x)?;
            if c.decoder.cross_attn {
                let h = self.norm(&x, &format!("{l}.norm2"))?;
                x = self.attention(&h, &text_kv, &format!("{l}.cross_attn"), c.decoder.heads, &x)?;
            }
            let h = self.norm(&x, &format!("{l}.norm3"))?;
            let h = self.linear_act(&h, &format!("{l}.mlp.fc1"), UnaryOp::Gelu)?;
            x = self.linear_residual(&h, &format!("{l}.mlp.fc2"), &x)?;
        }
        let decoder_out = self.norm(&x, "head.decoder.norm")?;
        // 10: with decoder.upsample r > 1, each token's r x r sub-tokens (pixel shuffle: a
        // Linear to r * r * width, then sub-token (i, j) of token (y, x) at (y r + i, x r + j));
        // the cosine mask head, then bilinear upsampling to the input size.
        let (g, r) = (c.grid(), c.decoder.upsample);
        let pixels = if r > 1 {
            self.linear(&decoder_out, "head.decoder.upsample")?.pixel_shuffle(g, r)?
        } else {
            decoder_out.clone()
        };
        let gl = c.logit_grid();
        let logits = pixels.mask_head(&text, self.get("head.logit_scale")?)?.reshape(&[b, k, gl, gl])?;
        let logits_up = logits.resize_bilinear(c.image_size, c.image_size)?;
        Ok(ForwardOutputs { vision_features, visual, text, em_z, em_mu, aggregated, decoder_out, logits, logits_up })
    }

    /// Step 11: mean pixel cross-entropy plus Dice loss of upsampled logits against class
    /// indices [B,S,S] (u32).
    pub fn loss(&self, logits_up: &Tensor, target: &Arc<GpuBuffer>) -> Result<Tensor> {
        Ok(logits_up.cross_entropy(target)?.add(&logits_up.dice_loss(target)?)?)
    }

    /// The EM bases moving average (training only, no gradient):
    /// bases <- l2norm(momentum * bases + (1 - momentum) * mean_B(mu_T)).
    pub fn update_bases(&self, mu: &Tensor) -> Result<()> {
        let c = &self.config;
        if c.em.bases == 0 {
            return Ok(());
        }
        let bases = self.get("head.em.bases")?;
        let spec = EmShape {
            batch: mu.shape()[0],
            tokens: 1,
            width: c.decoder.width,
            bases: c.em.bases,
            iters: c.em.iters,
            lambda: c.em.lambda,
        };
        let next = Em::new(&self.gpu, spec)?.update_bases(bases.buffer(), mu.buffer(), c.em.momentum)?;
        bases.assign(&Tensor::from_buffer(&self.gpu, next, bases.shape())?)?;
        Ok(())
    }
}

/// A seeded standard-normal generator (xorshift64* and Box-Muller in f64, both values of each
/// pair used), so init is reproducible.
struct Normal {
    rng: Rng,
    spare: Option<f32>,
}

impl Normal {
    fn new(seed: u64) -> Normal {
        let state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        Normal { rng: Rng::from_source(XorShift64Star::from_state(state)), spare: None }
    }
    fn sample(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.rng.uniform_open_f64(), self.rng.uniform_open_f64());
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        self.spare = Some((r * th.sin()) as f32);
        (r * th.cos()) as f32
    }
}
