//! A BERT sentence encoder on vlsa's ops: the frozen text encoder of docs/DESIGN.md step 7
//! (all-MiniLM-L6-v2), loaded from a Hugging Face model folder and run for inference only.
//!
//! The computation, as Hugging Face `BertModel` plus sentence-transformers' mean pooling and
//! normalisation do it, for a batch of texts (the attention sees it padded to the longest
//! text; every other step works on the real tokens only):
//!   x = LN(word[ids] + position[0..L] + token_type[0])                       [B, L, D]
//!   per layer: x = LN(x + out(attention(q(x), k(x), v(x), key padding mask)))
//!              x = LN(x + down(gelu(up(x))))                                  (post-norm)
//!   e = mean of x over the text's real tokens; e / max(||e||, 1e-12)          [B, D]
//! The LayerNorm eps is config.json's `layer_norm_eps` (1e-12 for MiniLM). Padding keys are
//! masked out of the attention; padded positions are left out of the mean.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::kernels::l2norm::L2Mode;
use crate::kernels::Gpu;
use crate::tensor::Tensor;

/// Texts per GPU batch in [`TextEncoder::embed`]; texts are sorted by length first, so each
/// batch pads little.
const BATCH: usize = 32;

/// The sizes of a BERT model, from its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Width D of the hidden states (and of the sentence embedding).
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub layers: usize,
    /// Attention heads (D / heads per head).
    pub heads: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Rows of the word embedding table.
    pub vocab_size: usize,
    /// Rows of the position embedding table (the longest input the model takes).
    pub max_positions: usize,
    /// Rows of the token-type embedding table.
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f32,
}

impl BertConfig {
    /// Parses `config.json`; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<BertConfig> {
        let bad = |message: String| Error::Format { path: source.to_string(), message };
        let json: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let size = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(Value::as_u64)
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("`{key}` is missing or not a positive integer")))
        };
        let text_of = |key: &str, default: &str| json.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
        let act = text_of("hidden_act", "gelu");
        if act != "gelu" {
            return Err(bad(format!("hidden_act `{act}` is not supported; vlsa runs BERT with `gelu` (exact erf)")));
        }
        let position = text_of("position_embedding_type", "absolute");
        if position != "absolute" {
            return Err(bad(format!("position_embedding_type `{position}` is not supported; vlsa runs `absolute`")));
        }
        let layer_norm_eps = json.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12);
        if !(layer_norm_eps > 0.0 && layer_norm_eps < 1.0) {
            return Err(bad(format!("layer_norm_eps {layer_norm_eps} is not between 0 and 1")));
        }
        let c = BertConfig {
            hidden_size: size("hidden_size")?,
            layers: size("num_hidden_layers")?,
            heads: size("num_attention_heads")?,
            intermediate_size: size("intermediate_size")?,
            vocab_size: size("vocab_size")?,
            max_positions: size("max_position_embeddings")?,
            type_vocab_size: json.get("type_vocab_size").and_then(Value::as_u64).unwrap_or(2).max(1) as usize,
            layer_norm_eps: layer_norm_eps as f32,
        };
        let head_dim = c.hidden_size / c.heads;
        if !c.hidden_size.is_multiple_of(c.heads)
            || !head_dim.is_multiple_of(4)
            || head_dim > crate::kernels::attention::MAX_HEAD_DIM
        {
            return Err(bad(format!(
                "hidden_size {} over {} heads gives heads of width {}; vlsa's attention takes a whole multiple of 4 up to {}",
                c.hidden_size,
                c.heads,
                c.hidden_size as f32 / c.heads as f32,
                crate::kernels::attention::MAX_HEAD_DIM
            )));
        }
        Ok(c)
    }
}

struct Layer {
    query: (Tensor, Tensor),
    key: (Tensor, Tensor),
    value: (Tensor, Tensor),
    attention_out: (Tensor, Tensor),
    attention_norm: (Tensor, Tensor),
    up: (Tensor, Tensor),
    down: (Tensor, Tensor),
    out_norm: (Tensor, Tensor),
}

/// A BERT sentence encoder with its tokenizer, on the GPU.
pub struct TextEncoder {
    gpu: Gpu,
    config: BertConfig,
    tokenizer: Tokenizer,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: (Tensor, Tensor),
    layers: Vec<Layer>,
}

/// The tensors of `model.safetensors`, read by name (with or without a `bert.` prefix) and
/// shape-checked.
struct Weights<'a> {
    file: SafeTensors<'a>,
    prefix: &'static str,
    source: String,
    gpu: Gpu,
}

impl Weights<'_> {
    fn take(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .file
            .tensor(&full)
            .map_err(|_| crate::weights::missing_tensor(&full, shape, "tensor", &self.source))?;
        crate::weights::check_shape(view.shape(), &full, shape, "tensor", &self.source)?;
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => {
                return Err(Error::Weights(format!(
                    "{}: tensor {full} has dtype {other:?}; vlsa reads F32, F16 and BF16",
                    self.source
                )))
            }
        };
        crate::weights::check_finite(&data, &full, "tensor", &self.source)?;
        Ok(Tensor::from_vec(&self.gpu, &data, shape)?)
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.take(&format!("{name}.weight"), &[out, inp])?, self.take(&format!("{name}.bias"), &[out])?))
    }

    fn norm(&self, name: &str, width: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.take(&format!("{name}.weight"), &[width])?, self.take(&format!("{name}.bias"), &[width])?))
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// The longest input of a sentence-transformers model folder: `max_seq_length` of
/// `sentence_bert_config.json` when there is one (256 for all-MiniLM-L6-v2; the tokenizer's
/// own truncation, 128, is not what sentence-transformers uses), else the tokenizer's, and
/// never more than the position table.
fn max_length(dir: &Path, tokenizer: &Tokenizer, config: &BertConfig) -> Result<usize> {
    let path = dir.join("sentence_bert_config.json");
    let from_sentence_config = if path.exists() {
        let json: Value = serde_json::from_str(&read_text(&path)?).map_err(|e| Error::Format {
            path: path.display().to_string(),
            message: format!("not valid JSON ({e})"),
        })?;
        json.get("max_seq_length").and_then(Value::as_u64).map(|v| v as usize)
    } else {
        None
    };
    Ok(from_sentence_config.unwrap_or(tokenizer.max_length()).min(config.max_positions))
}

/// Checks that a sentence-transformers pooling config, when present, asks for mean pooling.
fn check_pooling(dir: &Path) -> Result<()> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.exists() {
        return Ok(());
    }
    let json: Value = serde_json::from_str(&read_text(&path)?)
        .map_err(|e| Error::Format { path: path.display().to_string(), message: format!("not valid JSON ({e})") })?;
    if json.get("pooling_mode_mean_tokens").and_then(Value::as_bool) == Some(false) {
        return Err(Error::Format {
            path: path.display().to_string(),
            message: "the model pools without mean_tokens; vlsa's text encoder mean-pools".into(),
        });
    }
    Ok(())
}

impl TextEncoder {
    /// Loads a Hugging Face BERT model folder: `config.json`, `model.safetensors` (BertModel
    /// names, with or without a `bert.` prefix) and `tokenizer.json`. A missing file, a bad
    /// config or a missing or mis-shaped tensor is one error naming it.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<TextEncoder> {
        if !dir.is_dir() {
            return Err(Error::Io { path: dir.display().to_string(), message: "not a folder; a text encoder is a Hugging Face model folder (config.json, model.safetensors, tokenizer.json)".into() });
        }
        let file = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Io { path: path.display().to_string(), message: "missing; a text encoder folder holds config.json, model.safetensors and tokenizer.json (scripts/fetch-minilm.sh fetches all-MiniLM-L6-v2)".into() })
            }
        };
        let (config_path, weights_path, tokenizer_path) =
            (file("config.json")?, file("model.safetensors")?, file("tokenizer.json")?);
        let config = BertConfig::from_json(&read_text(&config_path)?, &config_path.display().to_string())?;
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        tokenizer.set_max_length(max_length(dir, &tokenizer, &config)?)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::Format {
                path: tokenizer_path.display().to_string(),
                message: format!(
                    "the vocabulary has {} entries but the model's word embeddings only {}",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        check_pooling(dir)?;

        let bytes = std::fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
        let source = weights_path.display().to_string();
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Format {
            path: source.clone(),
            message: format!("not a valid safetensors file ({e})"),
        })?;
        let prefix = if st.tensor("embeddings.word_embeddings.weight").is_err()
            && st.tensor("bert.embeddings.word_embeddings.weight").is_ok()
        {
            "bert."
        } else {
            ""
        };
        let w = Weights { file: st, prefix, source, gpu: gpu.clone() };
        let (d, m) = (config.hidden_size, config.intermediate_size);
        let word = w.take("embeddings.word_embeddings.weight", &[config.vocab_size, d])?;
        let position = w.take("embeddings.position_embeddings.weight", &[config.max_positions, d])?;
        // Every token has type 0 (one text per input), so only that row is kept, as [1, D].
        let token_type =
            w.take("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, d])?.narrow(0, 0, 1)?;
        let embedding_norm = w.norm("embeddings.LayerNorm", d)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let l = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: w.linear(&format!("{l}.attention.self.query"), d, d)?,
                key: w.linear(&format!("{l}.attention.self.key"), d, d)?,
                value: w.linear(&format!("{l}.attention.self.value"), d, d)?,
                attention_out: w.linear(&format!("{l}.attention.output.dense"), d, d)?,
                attention_norm: w.norm(&format!("{l}.attention.output.LayerNorm"), d)?,
                up: w.linear(&format!("{l}.intermediate.dense"), m, d)?,
                down: w.linear(&format!("{l}.output.dense"), d, m)?,
                out_norm: w.norm(&format!("{l}.output.LayerNorm"), d)?,
            });
        }
        Ok(TextEncoder { gpu: gpu.clone(), config, tokenizer, word, position, token_type, embedding_norm, layers })
    }

    /// Width of the sentence embeddings (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The model's sizes.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The tokenizer (its maximum length is the encoder's).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// L2-normalised sentence embeddings of `texts`, `[texts.len(), dim]` row-major.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenizer.encode(t)).collect();
        // Batches of texts of similar length pad little; rows go back to the input order.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let d = self.dim();
        let mut out = vec![0.0; texts.len() * d];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let rows = self.embed_ids(&batch)?;
            for (row, &i) in rows.chunks_exact(d).zip(chunk) {
                out[i * d..(i + 1) * d].copy_from_slice(row);
            }
        }
        Ok(out)
    }

    /// Sentence embeddings of already tokenized texts (each `[CLS] ... [SEP]`), run as one
    /// batch; `[ids.len(), dim]` row-major.
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        crate::no_grad(|| self.forward(ids))?.to_vec().map_err(Error::from)
    }

    /// The pooled, normalised embeddings `[B, D]` of one batch, as a tensor.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let (b, d) = (ids.len(), self.dim());
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || len == 0 {
            return Err(Error::Invalid("nothing to encode: the batch has no tokens".into()));
        }
        if len > self.config.max_positions {
            return Err(Error::Invalid(format!(
                "a text of {len} tokens is longer than the model's {} positions",
                self.config.max_positions
            )));
        }
        if let Some(&bad) = ids.iter().flatten().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {} entries",
                self.config.vocab_size
            )));
        }
        if ids.iter().any(Vec::is_empty) {
            return Err(Error::Invalid("every text to encode needs at least one token".into()));
        }
        // Tokens are kept packed, [T, D] with T the real tokens of all texts, so no linear layer
        // works on padding; only attention sees the padded [B, L, D] layout. `to_padded` maps
        // each padded slot to a packed row (a padding slot to its text's first token: it is
        // masked as a key and never read as a query), `to_packed` maps back.
        let mut packed_ids = Vec::new();
        let mut positions = Vec::new();
        let mut to_padded = Vec::with_capacity(b * len);
        let mut to_packed = Vec::new();
        let mut mask = Vec::with_capacity(b * len);
        for (i, row) in ids.iter().enumerate() {
            let first = packed_ids.len() as u32;
            packed_ids.extend_from_slice(row);
            positions.extend(0..row.len() as u32);
            to_padded.extend((0..len).map(|j| first + if j < row.len() { j as u32 } else { 0 }));
            to_packed.extend((0..row.len()).map(|j| (i * len + j) as u32));
            mask.extend((0..len).map(|j| u32::from(j < row.len())));
        }
        let tokens = packed_ids.len();

        let x = self.word.embedding(&packed_ids)?.add(&self.position.embedding(&positions)?)?.add(&self.token_type)?;
        let eps = self.config.layer_norm_eps;
        let mut x = x.layer_norm(&self.embedding_norm.0, &self.embedding_norm.1, eps)?;
        let key_mask = std::sync::Arc::new(self.gpu.upload(&mask)?);
        let padded = |t: Tensor| -> Result<Tensor> { Ok(t.embedding(&to_padded)?.reshape(&[b, len, d])?) };
        for layer in &self.layers {
            let q = padded(x.linear(&layer.query.0, Some(&layer.query.1))?)?;
            let k = padded(x.linear(&layer.key.0, Some(&layer.key.1))?)?;
            let v = padded(x.linear(&layer.value.0, Some(&layer.value.1))?)?;
            let a = q.attention(&k, &v, self.config.heads, false, Some(key_mask.clone()))?;
            let a = a.reshape(&[b * len, d])?.embedding(&to_packed)?;
            let a = a.linear(&layer.attention_out.0, Some(&layer.attention_out.1))?;
            x = a.add(&x)?.layer_norm(&layer.attention_norm.0, &layer.attention_norm.1, eps)?;
            let h = x.linear(&layer.up.0, Some(&layer.up.1))?.gelu()?;
            let h = h.linear(&layer.down.0, Some(&layer.down.1))?;
            x = h.add(&x)?.layer_norm(&layer.out_norm.0, &layer.out_norm.1, eps)?;
        }

        // Mean over each text's tokens as one product: pool [B, T] holds 1/n_b where row b
        // meets its own n_b tokens, zeros elsewhere.
        let mut pool = vec![0.0f32; b * tokens];
        let mut first = 0;
        for (i, row) in ids.iter().enumerate() {
            for j in 0..row.len() {
                pool[i * tokens + first + j] = 1.0 / row.len() as f32;
            }
            first += row.len();
        }
        let pool = Tensor::from_vec(&self.gpu, &pool, &[b, tokens])?;
        let pooled = pool.matmul(&x)?;
        Ok(pooled.l2_normalize(L2Mode::ClampMin(1e-12))?)
    }
}
